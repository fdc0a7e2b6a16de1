"""docs/configuration.md, generated from the pipeline.toml schema: every section and key with its type,
limits, default and description (the field descriptions in pipeline/config.py and the backends' config
modules are the single source). tests/test_docs.py fails when the committed page is stale.

    python -m pipeline.docs    # rewrite docs/configuration.md
"""
from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pipeline.config import PipelineConfig
from pipeline.core.section import NOT_IN_KEY

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
HEADER = """# pipeline.toml reference

Generated from the schema by `python -m pipeline.docs` (do not edit: tests/test_docs.py fails when this
page and the schema differ). `manifold-edge schema` prints the same schema as JSON Schema.

Every section is optional: what is not given takes the schema's default below (the shipped pipeline.toml
sets a few of its own, e.g. `distill.epochs = 4`, `distill.lr = 2e-3`). Unknown keys, wrong types (strict:
`"3"` is not an integer, `"yes"` is not a boolean), values outside the limits and non-finite numbers are
errors that name the key. Any key can be set from the command line: `--set section.key=value` (TOML
syntax, e.g. `--set "student.model='deit_tiny_patch16_224'"`). Keys marked *not in the cache key* change
how a stage runs, not what it computes: changing them reuses every cached artifact.
"""


def section_model(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """('', model) for a sub-section, ('[]', model) for a list of tables, ('<name>', model) for a table of
    named tables."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "", annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return "[]", args[0]
    if origin is dict and len(args) == 2 and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        return "<name>", args[1]
    return None


def type_text(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        text = " or ".join(type_text(a) for a in rest)
        return f"{text} (or unset)" if len(rest) < len(args) else text
    if origin is list:
        return f"list of {type_text(args[0])}" if args else "list"
    if origin is dict:
        return "table"
    return getattr(annotation, "__name__", str(annotation))


def limits_text(field: FieldInfo) -> str:
    parts = []
    for item in field.metadata:
        for name, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(item, name, None) is not None:
                parts.append(f"{symbol} {getattr(item, name):,}")
        if getattr(item, "min_length", None):
            parts.append(f"at least {item.min_length}")
        if getattr(item, "max_length", None):
            parts.append(f"at most {item.max_length:,} characters")
        if getattr(item, "pattern", None):
            parts.append(f"matches `{item.pattern}`")
    return ", ".join(parts)


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    if value is None:
        return "unset"
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    """Text for a Markdown table cell: pipes escaped, one line."""
    return text.replace("|", "\\|").replace("\n", " ")


def sections(model: type[BaseModel], name: str) -> list[tuple[str, type[BaseModel]]]:
    """(table name, model) of a model and every table under it, depth first in declaration order."""
    found = [(name, model)]
    for key, field in model.model_fields.items():
        sub = section_model(field.annotation)
        if sub:
            kind, child = sub
            child_name = f"{name}.{key}" if name else key
            found += sections(child, f"{child_name}.{kind}" if kind == "<name>" else
                              f"[{child_name}]" if kind == "[]" else child_name)
    return found


def section_text(name: str, model: type[BaseModel]) -> str:
    rows = []
    for key, field in model.model_fields.items():
        sub = section_model(field.annotation)
        if sub and sub[0] != "[]":  # a table of its own, below
            continue
        description = field.description or ""
        if (field.json_schema_extra or {}).get(NOT_IN_KEY):
            description += " *(not in the cache key)*"
        kind = f"list of [[{name}.{key}]] tables" if sub else type_text(field.annotation)
        limits = limits_text(field)
        rows.append(f"| `{key}` | {_cell(kind)}{', ' + _cell(limits) if limits else ''} | {default_text(field)} "
                    f"| {_cell(description)} |")
    doc = model.__dict__.get("__doc__")
    lines = [f"## [{name}]", ""]
    if doc:
        lines += [" ".join(doc.split()), ""]
    if rows:
        lines += ["| key | type | default | description |", "|---|---|---|---|", *rows, ""]
    return "\n".join(lines)


def reference() -> str:
    parts = [HEADER]
    for name, model in sections(PipelineConfig, "")[1:]:
        parts.append(section_text(name, model))
    return "\n".join(parts)


def main() -> None:
    PAGE.parent.mkdir(exist_ok=True)
    PAGE.write_text(reference())
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
