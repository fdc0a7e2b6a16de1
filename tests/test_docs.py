"""The README stays one screenful, the docs' links hold, and the pipeline.toml reference in docs/ is generated
from the schema and kept current."""
from __future__ import annotations

import re
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.docs import CLI_PAGE, PAGE, cli_page, reference, section_model, sections


def test_the_configuration_page_is_the_schema_as_it_is_now():
    assert PAGE.read_text() == reference(), "docs/configuration.md is stale: run `python -m pipeline.docs`"


def test_the_cli_page_s_json_reference_is_the_documents_as_they_are_now():
    assert CLI_PAGE.read_text() == cli_page(), "docs/cli.md's --json reference is stale: run `python -m pipeline.docs`"


def test_every_key_has_a_description_and_every_section_a_heading():
    page = reference()
    for name, model in sections(PipelineConfig, "")[1:]:
        assert f"## [{name}]" in page
        undescribed = [key for key, field in model.model_fields.items() if not field.description
                       and (section_model(field.annotation) or ("[]",))[0] == "[]"]  # sub-tables have headings
        assert not undescribed, f"[{name}]: give these keys a description: {undescribed}"


ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"(?m)^#+ (.+)$", text)}


def test_the_readme_fits_in_10_kb():
    assert len((ROOT / "README.md").read_bytes()) <= 10 * 1024


def test_every_link_between_the_pages_reaches_a_file_and_a_heading():
    broken = []
    for page in PAGES:
        for target, anchor in re.findall(r"\]\(([^)#\s]*\.md|)(?:#([^)\s]+))?\)", page.read_text()):
            path = (page.parent / target).resolve() if target else page
            if not path.is_file() or (anchor and anchor not in _anchors(path.read_text())):
                broken.append(f"{page.relative_to(ROOT)}: ({target}#{anchor})")
    assert not broken, broken


def test_the_readme_s_example_config_is_valid(tmp_path):
    from pipeline.config import load_config

    example = re.search(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)[1]
    (tmp_path / "my.toml").write_text(example)
    cfg = load_config(str(tmp_path / "my.toml"))
    assert cfg.data.dataset == "imagefolder" and cfg.distill.alpha == 1.0 and cfg.teacher.pretrained
