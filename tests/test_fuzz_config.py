"""Property: any pipeline.toml and any --set overrides give a validated config or a user error, never a
traceback (hypothesis generates the documents from the schema's own field names plus junk)."""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from pipeline.config import PipelineConfig, load_config
from pipeline.core.errors import UserError
from pipeline.graph import Pipeline


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += _fields(annotation, f"{prefix}{name}.")
        else:
            names.append(f"{prefix}{name}")
    return names


FIELDS = _fields(PipelineConfig) + ["targets.my-board.runtime", "targets.my-board.threads",
                                    "targets.my-board.connection", "targets.my-board.host", "targets.x y.runtime"]
SECTIONS = sorted({f.split(".")[0] for f in FIELDS}) + ["junk"]


def _toml_float(x: float) -> str:
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf") if math.isinf(x) else repr(x)


scalars = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(_toml_float),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(max_size=12).map(json.dumps),
    st.sampled_from(["'soft'", "'none'", "'onnxruntime'", "'ssh'", "'cuda'", "'imagefolder'", "'android-phone'",
                     "'iOS18'", "'palettize'", "''", "'/nonexistent'"]),
)
values = st.one_of(scalars, scalars, st.lists(scalars, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
                   st.lists(st.tuples(st.sampled_from(["name", "kind", "nbits", "a"]), scalars), max_size=3)
                   .map(lambda kv: "{ " + ", ".join(f"{k} = {v}" for k, v in dict(kv).items()) + " }"))
junk_keys = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)


@st.composite
def documents(draw) -> str:
    """A TOML document of [section] tables (schema sections and junk) with schema fields and junk keys;
    sometimes garbage text that is not TOML at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=40))
    lines = []
    for section in draw(st.lists(st.sampled_from(SECTIONS), max_size=4, unique=True)):
        fields = [f[len(section) + 1:] for f in FIELDS if f.startswith(section + ".")] or ["x"]
        chosen = draw(st.lists(st.one_of(st.sampled_from(fields), junk_keys), max_size=4, unique=True))
        lines.append(f"[{section}]")
        lines += [f'{".".join(json.dumps(p) for p in key.split("."))} = {draw(values)}' for key in chosen]
    return "\n".join(lines) + "\n"


keys = st.one_of(st.sampled_from(FIELDS), st.text("abcdefghijklmnopqrstuvwxyz_.", min_size=1, max_size=15))
overrides = st.lists(st.one_of(st.tuples(keys, values).map(lambda kv: f"{kv[0]}={kv[1]}"),
                               st.text(max_size=20)), max_size=3)


def check(document: str | bytes | None, sets: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = None
        if document is not None:
            path = Path(folder) / "pipeline.toml"
            path.write_bytes(document if isinstance(document, bytes) else document.encode())
        try:
            cfg = load_config(path, sets)
        except UserError as exc:
            message = str(exc)
            assert message.strip() and "Traceback" not in message
            assert all(line.strip() and len(line) < 300 for line in message.splitlines()), message[:3000]
            return
        Pipeline(cfg).plan()  # every section hashes: the cache keys of a valid config can be computed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), overrides)
def test_random_documents_and_overrides_never_crash(document, sets):
    check(document, sets)


@settings(max_examples=200, deadline=None)
@given(overrides)
def test_random_overrides_on_the_defaults_never_crash(sets):
    check(None, sets)


nested = st.integers(1, 5000).map(lambda depth: "[" * depth + "]" * depth)
huge = st.integers(10**4, 10**6).map(lambda n: json.dumps("x" * n))


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.binary(max_size=200), nested.map(lambda v: f"a = {v}\n".encode()),
                 st.sampled_from(FIELDS).flatmap(lambda f: st.one_of(nested, huge).map(
                     lambda v: f"{f} = {v}\n".encode()))),
       st.lists(st.tuples(st.sampled_from(FIELDS), st.one_of(nested, huge, st.sampled_from(["nan", "inf", "-inf"]))),
                max_size=2).map(lambda kvs: [f"{k}={v}" for k, v in kvs]))
def test_bytes_deep_nesting_huge_and_non_finite_values_never_crash(document, sets):
    check(document, sets)


PATH_FIELDS = ["run.output_dir", "data.path", "teacher.checkpoint", "teacher.pretrained_file"]
odd_paths = st.one_of(
    st.lists(st.sampled_from(["\x00", "\n", "\r", "\t", "/", "a", "..", "é", " ", "'", '"', "\\", "*"]),
             max_size=16).map("".join),
    st.text(max_size=24),
    st.integers(250, 5000).map(lambda n: "/tmp/" + "p" * n),
    st.integers(1, 40).map(lambda n: "/tmp" + "/d" * n + "/x.pt"))
layer_lists = st.one_of(st.none(), st.lists(st.integers(-30, 40), max_size=5))


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(PATH_FIELDS), odd_paths, layer_lists, layer_lists)
def test_odd_paths_and_layer_maps_pass_every_check_or_are_one_line(field, path, student, teacher):
    """Paths with NUL, newlines or thousands of characters, and layer maps of any integers, through every
    check a run makes before its first stage: a user error (or an OS error the CLI words as one), never a
    traceback, and nothing written."""
    from pipeline.api import prepare
    from pipeline.cli import os_error_message

    with tempfile.TemporaryDirectory() as folder:
        sets = [f"run.output_dir={json.dumps(folder + '/runs')}", f"{field}={json.dumps(path)}"]
        if field == "data.path":
            sets.append("data.dataset='imagefolder'")
        if field == "teacher.pretrained_file":
            sets.append("teacher.pretrained=true")
        sets += [f"distill.{side}_layers={layers}" for side, layers in (("student", student), ("teacher", teacher))
                 if layers is not None]
        try:
            prepare(load_config(None, sets), None, None, None)
        except UserError as exc:  # one line per config error
            assert all(line.strip() and len(line) < 300 for line in str(exc).splitlines()), str(exc)[:3000]
        except OSError as exc:
            assert os_error_message(exc, None), repr(exc)
        assert not (Path(folder) / "runs").exists() or field == "run.output_dir"
