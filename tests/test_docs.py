"""The pipeline.toml reference in docs/ is generated from the schema and kept current."""
from __future__ import annotations

from pipeline.config import PipelineConfig
from pipeline.docs import PAGE, reference, section_model, sections


def test_the_configuration_page_is_the_schema_as_it_is_now():
    assert PAGE.read_text() == reference(), "docs/configuration.md is stale: run `python -m pipeline.docs`"


def test_every_key_has_a_description_and_every_section_a_heading():
    page = reference()
    for name, model in sections(PipelineConfig, "")[1:]:
        assert f"## [{name}]" in page
        undescribed = [key for key, field in model.model_fields.items() if not field.description
                       and (section_model(field.annotation) or ("[]",))[0] == "[]"]  # sub-tables have headings
        assert not undescribed, f"[{name}]: give these keys a description: {undescribed}"
