"""docs/configuration.md, generated from the pipeline.toml schema: every section and key with its type,
limits, default and description (the field descriptions in pipeline/config.py and the backends' config
modules are the single source); and docs/cli.md's reference of the `--json` documents, generated from
pipeline/documents.py. tests/test_docs.py fails when a committed page is stale.

    python -m pipeline.docs    # rewrite docs/configuration.md and that part of docs/cli.md
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
from pipeline.documents import DOCUMENTS

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
CLI_PAGE = PAGE.parent / "cli.md"
BEGIN = "<!-- generated from pipeline/documents.py by `python -m pipeline.docs`: do not edit -->"
END = "<!-- end of the generated part -->"
JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
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


def json_type(annotation: Any) -> str:
    """A field's JSON type; a nested object links to its table."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " or ".join(f"`{json.dumps(a)}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(json_type(a) for a in args)
    if origin is list:
        return f"array of {json_type(args[0])}"
    if origin is dict:
        return "object" if args[1] is Any else f"object: name -> {json_type(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return JSON_TYPES.get(annotation, "any")


def nested(model: type[BaseModel]) -> list[type[BaseModel]]:
    """The object types a model's fields hold, depth first."""
    found: list[type[BaseModel]] = []
    for field in model.model_fields.values():
        for arg in [field.annotation, *typing.get_args(field.annotation)]:
            for inner in [arg, *typing.get_args(arg)]:
                if isinstance(inner, type) and issubclass(inner, BaseModel) and inner not in found:
                    found += [inner, *(m for m in nested(inner) if m not in found)]
    return found


def object_table(heading: str, model: type[BaseModel]) -> str:
    rows = [f"| `{field.alias or key}` | {_cell(json_type(field.annotation))} | {_cell(field.description or '')} |"
            for key, field in model.model_fields.items()]
    return "\n".join([heading, "", " ".join((model.__doc__ or "").split()), "", "| key | type | description |",
                      "|---|---|---|", *rows, ""])


def documents_reference() -> str:
    """Each `--json` document, then each object type they hold."""
    parts, objects = [], []
    for doc in DOCUMENTS:
        parts.append(object_table(f"### `{doc.model_fields['schema_'].default}`", doc))
        objects += [m for m in nested(doc) if m not in objects]
    parts += [object_table(f"#### {model.__name__}", model) for model in objects]
    return "\n".join(parts)


def cli_page() -> str:
    """docs/cli.md with its generated part as the models say now."""
    head, rest = CLI_PAGE.read_text().split(BEGIN)
    return f"{head}{BEGIN}\n\n{documents_reference()}\n{END}{rest.split(END)[1]}"


def main() -> None:
    PAGE.parent.mkdir(exist_ok=True)
    PAGE.write_text(reference())
    CLI_PAGE.write_text(cli_page())
    print(f"wrote {PAGE} and {CLI_PAGE}'s --json reference")


if __name__ == "__main__":
    main()
