"""What a format declares and does: `Backend`, one subclass per backends/<name>/__init__.py, and the jobs the
export and quantize stages hand it. A backend's package imports only pipeline/core, other backends and the
agent's measurement code (targets/agent) at its top; its converters and runtimes are imported inside its methods,
so the engine reads every declaration (config fields, suffixes, runtime) without torch or a runtime.

A backend's records are JSON dicts {file, runtime, precision, numerics, bytes, seconds, ...} keyed by artifact
name (`onnx`, `onnx_int8_static`...): the evaluate, benchmark, ship and deploy steps read only these and the
backend's runner, found by the file's suffix (backends.for_file)."""
from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from pipeline.core.errors import UserError
from pipeline.core.section import Section

log = logging.getLogger(__name__)


class Runner(Protocol):
    runtime: str
    evaluation: str  # "measured" (the runtime itself) or "simulated" (Core ML on Linux)

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


@dataclass
class ExportJob:
    """What each backend's export is given: the export config, the torch student and the images its parity is
    checked on, the records of the backends before it, and the folder to write."""
    cfg: Any  # the composed [export] section (stages/export.py)
    model: Any  # the torch student, in eval mode
    record: dict  # the student's checkpoint record (its model name, classes...)
    shape: tuple[int, ...]  # one image, C x H x W
    meta: dict  # the dataset's meta (classes, mean, std)
    out: Path
    key: str  # the stage's cache key (Core ML writes it into the package's metadata)
    artifacts: dict[str, dict]  # records so far, in registry order

    @property
    def model_name(self) -> str:
        return self.record["model"]


@dataclass
class QuantizeJob:
    """What each backend's quantize is given: the config, the exported files, the torch student (ExecuTorch's
    PT2E quantizes the model, not a file), and the images it calibrates and validates on."""
    cfg: Any  # the composed [quantize] section (stages/quantize.py)
    exported: dict  # export.json's artifacts
    export_dir: Path
    load_model: Callable[[], Any]  # the torch student, loaded when a backend asks
    out: Path
    calibration: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    notes: list[str] = field(default_factory=list)

    @property
    def calibration_images(self) -> int:
        return len(self.calibration)

    def note(self, message: str) -> None:
        """A note for the report, also logged."""
        self.notes.append(message)
        log.warning(message)


class Backend:
    """One model format: its declarations as class attributes, its work as methods (each imports its toolchain
    when called). Override what the format has; the defaults say it has none."""

    name: ClassVar[str]  # the registry key, and the [export] / [quantize] fields' prefix where it has a table
    runtime: ClassVar[str]  # the runtime its files run in: a target profile's `runtime` names it
    runtime_title: ClassVar[str]  # the SDK as an app developer knows it: "ONNX Runtime"
    package: ClassVar[str]  # the Python package whose version the report and model cards state
    suffixes: ClassVar[tuple[str, ...]]  # the file types it writes and runs (the first: its main file)
    extra: ClassVar[str]  # the pip extra that installs its packages
    export_fields: ClassVar[type[Section] | None] = None  # fields it adds to [export]
    quantize_fields: ClassVar[type[Section] | None] = None  # fields it adds to [quantize]
    switches: ClassVar[tuple[str, ...]] = ()  # the settings that turn it off, named when a model fails in it
    agent: ClassVar[str | None] = None  # "module:Class": the agent's adapter that times its files on a device
    profiled: ClassVar[bool] = False  # its agent adapter gives a per-layer profile
    relative_parity: ClassVar[bool] = False  # its parity bound is relative to the largest |logit| (fp16 programs)

    def export(self, job: ExportJob) -> dict[str, dict]:
        """Write this format's files into job.out; their records by artifact name (none when turned off)."""
        return {}

    def quantize(self, job: QuantizeJob) -> dict[str, dict]:
        """Write this format's INT8 (or compressed) files into job.out; their records (none when turned off)."""
        return {}

    def runner(self, path: Path, threads: int = 0) -> Runner:
        raise UserError(f"{path}: {self.name} files have no runner here")

    def parity_bounds(self, cfg: Any, record: dict) -> tuple[float, float]:
        """(bound on the logits' max |diff| vs torch, minimum argmax agreement) for one exported record."""
        fp16 = record["numerics"]["weights"] == "fp16"
        return (cfg.parity_max_abs_diff_fp16 if fp16 else cfg.parity_max_abs_diff), cfg.parity_min_agreement

    def check_config(self, cfg: Any) -> None:
        """Raise ValueError for settings of this format that contradict each other across sections."""


def require(module: str, extra: str):
    """Import a runtime package or stop with the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"the {module} package is missing: pip install 'manifold-edge[{extra}]' "
                        f"(or `make setup`, which installs every pinned runtime)") from None


def unsupported(runtime: str, path: Path, exc: BaseException, action: str = "run") -> UserError:
    """A runtime's refusal of a graph (an op or type it has no kernel or conversion for) as one line."""
    lines = [line.strip(" -") for line in str(exc).splitlines() if line.strip(" -")]
    keys = ("implementation for", "conversion rule", "Unsupported operation", "not supported")
    detail = next((line for line in lines if any(k in line for k in keys)), lines[-1] if lines else type(exc).__name__)
    return UserError(f"{runtime} cannot {action} {Path(path).name}: {detail.split(' : ')[-1]}")


def predict(runner: Runner, batches: Iterable[np.ndarray]) -> np.ndarray:
    """Logits for every batch, concatenated."""
    return np.concatenate([runner(np.ascontiguousarray(x, dtype=np.float32)) for x in batches])
