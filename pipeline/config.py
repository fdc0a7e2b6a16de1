"""The pipeline.toml schema (pydantic v2), loading with `--set` overrides, and readable errors.

The schema is composed here from the config models declared beside their stages (stages/*.py), the
backends' fields (backends/*/__init__.py, composed into [export] and [quantize]) and target profiles
(targets/profiles.py); the engine's own sections
([run], [report]) are declared here."""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, Field, ValidationError, model_validator

import backends
from pipeline.core.errors import UserError, clip, quote
from pipeline.core.section import MAX_KEY_DEPTH, Section
from pipeline.ship import ShipConfig
from stages.benchmark import BenchmarkConfig
from stages.data import DataConfig
from stages.distill import DistillConfig, StudentConfig
from stages.evaluate import EvaluateConfig
from stages.export import export_config
from stages.quantize import quantize_config
from stages.teacher import TeacherConfig
from targets.profiles import TargetProfile


class RunConfig(Section):
    name: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100,
                      description="run name: results go to <output_dir>/<name>/")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed for the data split, initialisation and batches")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available")
    output_dir: str = Field("runs", description="where runs and the shared artifact cache live")
    threads: int = Field(0, ge=0, description="CPU threads for torch (per process); 0 = all cores "
                                              "(shared out between processes when nproc > 1)")
    nproc: int = Field(1, ge=1, le=1024, description="processes for the teacher and distill stages (DDP under "
                                                     "torchrun): one per GPU, or e.g. 2 on a CPU")
    compile: bool = Field(False, description="torch.compile the model being trained (the teacher and distill "
                                             "stages; pays off on long GPU runs)")
    channels_last: bool = Field(True, description="channels-last memory format for the convolutions of the "
                                                  "model being trained and of the distill stage's teacher (conv "
                                                  "stems: 4-10% faster steps on CPU, faster under bf16 on "
                                                  "CUDA); on CPU a model with a 1-channel stride-2 1x1 "
                                                  "convolution keeps NCHW (oneDNN's AVX2 kernel for it is unsafe)")


class ReportConfig(Section):
    title: str = Field("manifold-edge run", description="heading of report.md")


ExportConfig = export_config()  # [export] and [quantize]: composed from the registered backends' fields
QuantizeConfig = quantize_config()


class PipelineConfig(Section):
    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    ship: ShipConfig = Field(default_factory=ShipConfig)
    targets: dict[str, TargetProfile] = Field(default_factory=dict, description="your own target profiles "
                                              "([targets.NAME]); a built-in name here replaces the built-in")

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        for backend in backends.backends():
            backend.check_config(self)
        bad = [n for n in self.targets if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", n)]
        if bad:
            raise ValueError(f"[targets.{bad[0]}]: a target name may use letters, digits, '.', '_' and '-' only")
        from targets.profiles import resolve  # a misspelt name is a mistake with the stage off too

        try:
            resolve(self.benchmark.targets, self.targets)
        except UserError as exc:
            raise ValueError(str(exc)) from None
        names = [v.name for v in self.quantize.coreml.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"quantize.coreml.variants: names must be unique, got {names}")
        late = [v.name for v in self.quantize.coreml.variants if v.granularity in ("per_block", "per_grouped_channel")
                and self.export.coreml.target not in ("iOS18", "macOS15", "watchOS11")]
        if late:
            raise ValueError(f"quantize.coreml.variants {late}: per_block / per_grouped_channel need "
                             f"export.coreml.target iOS18 (or macOS15, watchOS11), not {self.export.coreml.target}")
        return self

    def section(self, name: str) -> dict:
        if name == "targets":  # the profiles a run benchmarks on, built-ins included: editing one reruns
            from targets.profiles import resolve

            names = self.benchmark.targets if self.benchmark.enabled else []
            return {n: p.key_fields() for n, p in resolve(names, self.targets).items()}
        return getattr(self, name).key_fields()

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def load_config(path: str | Path | dict | None, overrides: list[str] = ()) -> PipelineConfig:
    """Read a pipeline.toml (a dict of its tables, or the defaults when path is None), apply `key=value`
    overrides, validate."""
    raw: dict[str, Any] = {}
    if isinstance(path, dict):
        raw, path = copy.deepcopy(path), None
    elif path is not None:
        path = Path(path)
        if path.is_dir():
            raise UserError(f"config file {clip(str(path), 120)} is a folder: pass the pipeline.toml inside it "
                            f"(e.g. {clip(str(path / 'pipeline.toml'), 140)})")
        if not path.is_file():
            raise UserError(f"config file {clip(str(path), 120)} not found: pass a pipeline.toml path or run from the "
                            "project folder")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}): "
                            "save it as UTF-8 TOML") from None
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{path}: not valid TOML: {exc}") from None
        except RecursionError:
            raise UserError(f"{path}: nested too deeply to read as TOML (arrays or tables inside each other "
                            "hundreds of levels deep): flatten it") from None
    for item in overrides:
        _apply_override(raw, item)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        source = str(path) if path is not None else "config"
        source = source if len(source) <= 60 else "..." + source[-57:]
        raise UserError("\n".join(f"{source}: {_describe(e, LINE_CHARS - len(source) - 2)}"
                                  for e in exc.errors())) from None
    except RecursionError:
        raise UserError(f"{path or 'config'}: a value nested too deeply (hundreds of levels): flatten it") from None


def _apply_override(raw: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise UserError(f"--set {quote(item)}: expected section.key=value, e.g. --set distill.epochs=3")
    if len(parts) > MAX_KEY_DEPTH + 2:
        raise UserError(f"--set {quote(key)}: {len(parts)} dotted levels; keys are at most {MAX_KEY_DEPTH + 2} "
                        "deep (section.key, or section.overrides.name)")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word: take it as a string
    except RecursionError:
        raise UserError(f"--set {quote(item)}: the value is nested too deeply (hundreds of levels)") from None
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {quote(item)}: {part} is not a section")
    node[parts[-1]] = value


def _describe(err: dict, room: int) -> str:
    """One error as a line of at most `room` characters: a quoted value gets what the rest leaves."""
    loc = clip(".".join(str(p) for p in err["loc"]), 60)
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(err["loc"][:-1])
        close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown key '{loc}'{hint}; allowed here: {_listing(allowed)}"
    if err["type"] == "value_error":
        msg = clip(err["msg"].removeprefix("Value error, "), room - len(loc) - 30)
        if loc and msg.split(":", 1)[0] in _allowed_keys(err["loc"]):  # "overrides: ..." of [teacher]
            return f"{loc}.{msg}"
        return f"{loc}: {msg}" if loc and not msg.startswith((loc.split(".")[0], "[")) else msg
    if err["type"] == "missing":
        return f"{loc} is required and missing"
    msg = clip(err["msg"][0].lower() + err["msg"][1:], 100)
    value = clip(repr(err["input"]), max(20, room - len(loc) - len(msg) - 40))
    return f"{loc}: got {value}, but {msg}"


LINE_CHARS = 290  # an error line of the config, at most


def _listing(names: list[str], limit: int = 100) -> str:
    """Names joined up to about `limit` characters, then how many more and where they all are."""
    shown = []
    for name in names:
        if shown and len(", ".join([*shown, name])) > limit:
            return f"{', '.join(shown)} and {len(names) - len(shown)} more (docs/configuration.md)"
        shown.append(name)
    return ", ".join(shown)


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = PipelineConfig
    parts = list(loc)
    while parts:
        annotation = model.model_fields[parts.pop(0)].annotation
        if get_origin(annotation) is dict and parts:  # a table of tables: [targets.NAME]
            annotation = get_args(annotation)[1]
            parts.pop(0)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def json_schema() -> dict:
    return PipelineConfig.model_json_schema()
