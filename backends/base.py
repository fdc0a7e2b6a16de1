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

from pipeline.core.errors import UserError, skippable
from pipeline.core.section import Section

log = logging.getLogger(__name__)


class NotRunHere(UserError):
    """A file this host cannot run (Core ML off macOS, with an op the simulation lacks): its rows say why, and
    the run goes on."""


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
    images: np.ndarray  # the parity images (validation split)
    reference: np.ndarray  # torch's logits for them
    artifacts: dict[str, dict] = field(default_factory=dict)  # records so far, in registry order

    @property
    def model_name(self) -> str:
        return self.record["model"]

    def check_parity(self, label: str, record: dict, switches: tuple[str, ...] | None = None) -> None:
        """Run record's file in its runtime on the parity images against torch's logits, within its backend's
        bounds (record["parity"]); a UserError naming `switches` (default: the backend's) when it is outside.
        A file this host cannot run is recorded as not simulated."""
        from backends import for_file

        backend = for_file(record["file"])
        bound, agreement = backend.parity_bounds(self.cfg, record)
        with skippable(*(backend.switches if switches is None else switches)):
            record["parity"] = parity_check(label, backend, self.out / record["file"], self.model_name, self.images,
                                            self.reference, bound, agreement)


@dataclass
class QuantizeJob:
    """What each backend's quantize is given: the config, the exported files, the torch student (ExecuTorch's
    PT2E quantizes the model, not a file), and the images it calibrates and validates on."""
    cfg: Any  # the composed [quantize] section (stages/quantize.py)
    exported: dict  # export.json's artifacts
    export_dir: Path
    load_model: Callable[[], tuple[Any, dict]]  # the torch student and its record, loaded when a backend asks
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
    """One model format: its declarations as class attributes; its work in the modules it names, imported when
    called (each with a `run(job)` returning its records, an empty dict when the config turns it off)."""

    name: ClassVar[str]  # the registry key
    runtime: ClassVar[str]  # the runtime its files run in: a target profile's `runtime` names it
    runtime_title: ClassVar[str]  # the SDK as an app developer knows it: "ONNX Runtime"
    package: ClassVar[str]  # the Python package whose version the report and model cards state
    suffixes: ClassVar[tuple[str, ...]]  # the file types it writes and runs
    extra: ClassVar[str]  # the pip extra that installs its packages
    export_fields: ClassVar[type[Section] | None] = None  # fields it adds to [export]
    quantize_fields: ClassVar[type[Section] | None] = None  # fields it adds to [quantize]
    export_module: ClassVar[str | None] = None  # its `run(ExportJob)`
    quantize_module: ClassVar[str | None] = None  # its `run(QuantizeJob)`
    runner_factory: ClassVar[str | None] = None  # "module:callable": (path, threads) -> Runner, on this host
    agent: ClassVar[str | None] = None  # "module:Class": the agent's adapter that times its files on a device
    switches: ClassVar[tuple[str, ...]] = ()  # the settings that turn it off, named when a model fails in it
    relative_parity: ClassVar[bool] = False  # its parity bound is relative to the largest |logit| (fp16 programs)
    scratch: ClassVar[tuple[str, ...]] = ()  # working files its quantize leaves, removed when the stage completes
    own_process: ClassVar[bool] = False  # its export and quantize run in a process of their own where two cores are
    # free (stages/formats.py): for a format whose work is most of a stage's; it reads no earlier backend's record
    independent: ClassVar[bool] = False  # its export and quantize read no other backend's record of the same stage
    # (job.artifacts): the formats' worker may run them (stages/formats.py); a plug-in that converts another's file
    # keeps the default
    simulation: ClassVar[str | None] = None  # what its "simulated" rows are, where this host cannot run the runtime
    app_module: ClassVar[str | None] = None  # what the deploy folder says of its files: the app methods below

    def export(self, job: ExportJob) -> dict[str, dict]:
        """Write this format's files into job.out; their records by artifact name."""
        return importlib.import_module(self.export_module).run(job) if self.export_module else {}

    def quantize(self, job: QuantizeJob) -> dict[str, dict]:
        """Write this format's INT8 (or compressed) files into job.out; their records by artifact name."""
        return importlib.import_module(self.quantize_module).run(job) if self.quantize_module else {}

    def runner(self, path: Path, threads: int = 0) -> Runner:
        if not self.runner_factory:
            raise UserError(f"{Path(path).name}: {self.name} files have no runner on this host")
        module, _, attr = self.runner_factory.partition(":")
        return getattr(importlib.import_module(module), attr)(path, threads)

    def modules(self, *kinds: str) -> tuple[str, ...]:
        """The modules behind `kinds` ("export", "quantize", "runner", "agent", "app") with the declaration's own: what
        a stage's cache key hashes for this backend (pipeline/fingerprint.py follows their imports)."""
        named = {"export": self.export_module, "quantize": self.quantize_module, "runner": self.runner_factory,
                 "agent": self.agent, "app": self.app_module}
        return (type(self).__module__, *(named[k].partition(":")[0] for k in kinds if named[k]))

    def parity_bounds(self, cfg: Any, record: dict) -> tuple[float, float]:
        """(bound on the logits' max |diff| vs torch, minimum argmax agreement) for one exported record."""
        fp16 = (record.get("numerics") or {}).get("weights") == "fp16"  # an .ort sibling: its .onnx's (fp32)
        return (cfg.parity_max_abs_diff_fp16 if fp16 else cfg.parity_max_abs_diff), cfg.parity_min_agreement

    def app_needs(self, record: dict, settings: dict) -> str:
        """What an app must link or set to run this record's file as timed (its MODEL_CARD's runtime line);
        `settings`: the target profile's."""
        return f"the {self.runtime_title} runtime"

    # The deploy folder (pipeline/app_files.py): each method below calls the function of the same name in
    # `app_module` where it has one (imported then, with the format's own libraries), else says what the record
    # and the data say. A format without an app module ships with preprocess.json and MODEL_CARD.md written
    # from its export record, and nothing written into its file.

    def _app(self, function: str) -> Callable | None:
        """`function` of the app module; None where there is no app module or it has no such function."""
        if not self.app_module:
            return None
        return getattr(importlib.import_module(self.app_module), function, None)

    def describe_io(self, path: Path, record: dict, data: dict) -> dict:
        """The file's inputs and outputs as its runtime reads them: {"inputs": [...], "outputs": [...]}, each a
        dict with the tensor's name, shape (None or a name for a dynamic dimension) and dtype, or the format's own
        terms (Core ML's features), plus what the app module's other functions read back (pixel_preprocess,
        minimum_os); `record`: the file's export or quantize record, `data`: the data stage's summary. Default:
        record_io(), one NCHW input and one logits output as the export wrote them."""
        reader = self._app("describe_io")
        if reader:
            return reader(Path(path), record, data)
        return self.record_io(record, data, f"{self.runtime_title} files are not read here")

    @staticmethod
    def record_io(record: dict, data: dict, why: str) -> dict:
        """The inputs and outputs the export made, from its record and the data (float32 NCHW images in, a
        logit per class out; the batch: the record's max_batch, else 1), "source" saying so and `why`."""
        batch = record.get("max_batch", 1)
        return {"source": f"the export record ({why})",
                "inputs": [{"name": "input 0", "shape": [batch, data["channels"], data["img_size"], data["img_size"]],
                            "dtype": "float32"}],
                "outputs": [{"name": "output 0", "shape": [batch, len(data["classes"])], "dtype": "float32"}]}

    def pixel_preprocess(self, io: dict, data: dict) -> dict | None:
        """preprocess.json's fields for a file that takes pixels 0-255 and normalises them inside (what it
        expects, the formula, what the output is), in the order they are written after the common ones; None
        (the default) for a file that takes the normalised tensor, which preprocess.json then describes from
        `io` (layout, shape, dtype, mean, std, formula). `io`: describe_io()'s."""
        fields = self._app("pixel_preprocess")
        return fields(io, data) if fields else None

    def runtime_line(self, version: str, record: dict, settings: dict, target: str, files: list[str]) -> str:
        """MODEL_CARD's runtime line: the runtime with the version this run used (`version`, of `package`) and
        what an app needs to run the file as timed (app_needs(), then file_notes()); `settings`: the target
        profile's, `files`: the deploy folder's model files. The app module's `runtime_line` replaces it (Core
        ML: the OS's runtime)."""
        line = self._app("runtime_line")
        if line:
            return line(version, record, settings, target, files)
        needs = "; ".join([self.app_needs(record, settings), *self.file_notes(files)])
        return f"{self.runtime_title} {version} (`{self.package}`, the version this run used); needs {needs}"

    def file_notes(self, files: list[str]) -> list[str]:
        """What the files beside the model file are for, one note each (ONNX: the .ort for ONNX Runtime Mobile);
        default none."""
        notes = self._app("file_notes")
        return notes(files) if notes else []

    def minimum_os(self, io: dict, settings: dict) -> str:
        """MODEL_CARD's minimum OS for the file (`io`: describe_io()'s, `settings`: the target profile's).
        Default: not stated, the runtime's library being what an app links."""
        stated = self._app("minimum_os")
        if stated:
            return stated(io, settings)
        return (f"not stated (the docs of {self.runtime_title}'s own library give no minimum OS for this version; "
                "check the library you link)")

    def metadata_note(self, spec: dict) -> str | None:
        """MODEL_CARD's line on what embed_metadata() writes into the file ("TFLite metadata: ..."), given the
        preprocess.json `spec`; None for no line: the app module's `metadata_note`, else none where there is an
        app module, and "none" where there is not."""
        note = self._app("metadata_note")
        if note:
            return note(spec)
        if self.app_module:
            return None
        return f"Metadata in the file: none ({self.name} has no app module; labels.txt and preprocess.json say it)"

    def embed_metadata(self, path: Path, meta: dict[str, str]) -> None:
        """Write `meta` (labels, preprocess, model_card: JSON and text) into the copied model file where its format
        has a place for it, in place; default none (labels.txt and preprocess.json say it)."""
        embed = self._app("embed_metadata")
        if embed:
            embed(Path(path), meta)

    def check_config(self, cfg: Any) -> None:
        """Raise ValueError for settings of this format that contradict each other across sections (`cfg`: the
        whole PipelineConfig, validated)."""

    def check(self, cfg: Any, world_size: int) -> None:
        """Raise UserError for a setting its toolchain refuses, found before any stage runs (may import it)."""


def parity(reference: np.ndarray, logits: np.ndarray) -> dict:
    diff = float(np.abs(reference - logits).max())
    return {"max_abs_diff": diff, "max_rel_diff": diff / max(float(np.abs(reference).max()), 1e-12),
            "argmax_agreement": float((reference.argmax(1) == logits.argmax(1)).mean()),
            "images": int(len(reference))}


EARLY_IMAGES = 64  # parity looks at this many images first
EARLY_MARGIN = 10  # and stops there when the logits are this many times inside the bound, every argmax equal
EARLY_RULE = (f"the first {EARLY_IMAGES} images; all of them unless max |diff| there is under 1/{EARLY_MARGIN} of "
              "the bound with every argmax equal")


def parity_check(label: str, backend: Backend, path: Path, model_name: str, images: np.ndarray,
                 reference: np.ndarray, bound: float, agreement: float) -> dict:
    """The parity record of one exported file, or a UserError when it is outside the bounds (relative to the
    largest |logit| where the backend says so). Checked on EARLY_IMAGES images first, and on all of them unless
    those are well inside the bound (EARLY_RULE, recorded as `rule` with the `images` checked): a file that is
    exact there (float exports agree to 1e-5 of a 1e-3 bound) is not run on the rest, one near or over the bound
    is judged on all."""
    try:
        runner = backend.runner(path)
    except NotRunHere as exc:
        log.warning(f"{label}: {exc}")
        return {"evaluation": "not simulated", "reason": str(exc)}
    relative = backend.relative_parity
    measure = "max_rel_diff" if relative else "max_abs_diff"
    first = predict(runner, [images[:EARLY_IMAGES]])
    check = parity(reference[:EARLY_IMAGES], first)
    if len(images) > EARLY_IMAGES and not (check[measure] < bound / EARLY_MARGIN and check["argmax_agreement"] == 1):
        check = parity(reference, np.concatenate([first, predict(runner, [images[EARLY_IMAGES:]])]))
    check.update(evaluation=runner.evaluation, rule=EARLY_RULE)
    log.info(f"{label} ({runner.evaluation}) vs torch on {check['images']} validation images: max |diff| "
             f"{check['max_abs_diff']:.2e}, argmax agreement {100 * check['argmax_agreement']:.2f}%")
    if check[measure] > bound or check["argmax_agreement"] < agreement:
        allowed = f"{bound:.2%} of the largest |logit|" if relative else f"{bound:g}"
        raise UserError(f"{label} export of {model_name} fails the parity check: max |logit diff| "
                        f"{check['max_abs_diff']:.3g} ({check['max_rel_diff']:.2%} of the largest |logit|; allowed "
                        f"{allowed}), argmax agreement {check['argmax_agreement']:.4f} (required {agreement:g}); "
                        "nothing downstream uses it. Loosen [export] parity_* only if you accept this")
    return check


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
