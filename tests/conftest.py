"""Shared helpers: a tiny, fast pipeline configuration on real data (Fashion-MNIST subset or digits)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch  # at module level: the custom op's annotations are resolved here

from pipeline.config import load_config

TINY = [
    "teacher.overrides.embed_dim=32", "teacher.overrides.depth=2", "teacher.overrides.num_heads=2",
    "teacher.epochs=1", "teacher.batch_size=64",
    "student.overrides.embed_dim=16", "student.overrides.depth=2", "student.overrides.num_heads=2",
    "distill.epochs=1", "distill.batch_size=64", "distill.k=32",
    "benchmark.runs=20", "benchmark.max_seconds=0.5", "benchmark.warmup=2",
    "export.executorch.enabled=false", "export.litert.enabled=false",  # ~40 s a run; on in trained_run
    # a one-epoch model's logits are near ties: fp16 Core ML may flip 1 of its 60 parity images (|diff| ~2e-4)
    "export.coreml.parity_min_agreement=0.95",
]


def tiny_overrides(tmp_path: Path, *extra: str, dataset: str = "fashion-mnist") -> list[str]:
    data = ["data.dataset='digits'", "data.subset=400"] if dataset == "digits" else \
        ["data.subset=600", "data.test_subset=200"]
    return [f"run.output_dir='{tmp_path / 'runs'}'", "run.threads=2", *data, *TINY, *extra]


def tiny_config(tmp_path: Path, *extra: str, dataset: str = "fashion-mnist"):
    return load_config(None, tiny_overrides(tmp_path, *extra, dataset=dataset))


def cli_args(tmp_path: Path, command: str, *extra: str, dataset: str = "fashion-mnist") -> list[str]:
    args = [command]
    config = tmp_path / "pipeline.toml"
    if not config.exists():
        config.write_text("")
    args += ["--config", str(config)]
    for item in tiny_overrides(tmp_path, *extra, dataset=dataset):
        args += ["--set", item]
    return args


def read_report(tmp_path: Path, name: str = "default") -> dict:
    return json.loads((tmp_path / "runs" / name / "report.json").read_text())



TRAINED = ("teacher.epochs=3", "teacher.lr=3e-3", "distill.epochs=4", "distill.lr=3e-3", "data.subset=3000",
           "student.overrides.embed_dim=48", "teacher.overrides.embed_dim=64",
           "export.executorch.enabled=true", "export.litert.enabled=true",
           "quantize.max_drop=2.0")  # within budget: the fallback loops have their own tests (20 s less)


def artifact_folder(tmp_path: Path, stage: str) -> Path:
    return next(p for p in (tmp_path / "runs" / ".cache").glob(f"{stage}-*") if p.suffix != ".partial")


def distilled_weights(tmp_path: Path) -> dict:
    """The student's state_dict from the run in tmp_path's distill artifact."""
    import torch

    return torch.load(artifact_folder(tmp_path, "distill") / "model.pt", weights_only=True)["state_dict"]


def undecodable_png(path: Path) -> Path:
    """A PNG whose header and chunk checksums are sound (the pre-flight passes it) but whose pixel data is not a
    zlib stream: it fails only when the data stage decodes it, a failure inside a stage."""
    import io
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8, 8), 50).save(buffer, "PNG")
    png = buffer.getvalue()
    start = png.index(b"IDAT") - 4
    size = struct.unpack(">I", png[start:start + 4])[0]
    data = bytes(size)
    chunk = struct.pack(">I", size) + b"IDAT" + data + struct.pack(">I", zlib.crc32(b"IDAT" + data))
    path.write_bytes(png[:start] + chunk + png[start + 12 + size:])
    return path


def folder_with_a_broken_image(root: Path, per_class: int = 4) -> Path:
    """root/images: an ImageFolder of two classes (cat, dog; `per_class` 8x8 grayscale pictures each) whose
    dog/broken.png passes the pre-flight and fails when the data stage reads it (undecodable_png)."""
    from PIL import Image

    images = root / "images"
    for name in ("cat", "dog"):
        (images / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (8, 8), 40 * i).save(images / name / f"{i}.png")
    undecodable_png(images / "dog" / "broken.png")
    return images


def model_with_an_unknown_op(op_name: str):
    """A module whose forward calls a custom op (`op_name`, registered here with a fake for tracing) that no
    exporter knows: the converters must name it in one line."""
    @torch.library.custom_op(op_name, mutates_args=())
    def unknown(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @unknown.register_fake
    def _(x):
        return torch.empty_like(x)

    class Odd(torch.nn.Module):
        def forward(self, x):
            return unknown(x).flatten(1)

    return Odd()


def sabotage_attention(model):
    """Scale one V channel of block 0 by 1000 and undo it in the projection: fp32 outputs are unchanged, but
    the per-tensor INT8 ranges of that attention are ruined, so an accuracy fallback must keep it in float."""
    attn = model.blocks[0].attn
    dim = attn.proj.in_features
    with torch.no_grad():
        attn.qkv.weight[2 * dim] *= 1000
        attn.qkv.bias[2 * dim] *= 1000
        attn.proj.weight[:, 0] /= 1000
    return model


def _uses(item, fixture: str) -> bool:
    return fixture in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(items):
    """A test on the shared trained run pays for that run (about a minute and a half): it is slow. The tests on
    background work (EARLY runs, the model zoo, the trained run, then the work on copies of it: AFTER_TRAINED) go
    last: that work starts in background processes after collection (one thread each, nice 19) and uses what the
    other tests leave of the host."""
    for item in items:
        if _uses(item, "trained_run"):
            item.add_marker(pytest.mark.slow)
    rank = {**dict.fromkeys(EARLY, 1), "zoo_report": 1, "trained_run": 2, **dict.fromkeys(AFTER_TRAINED, 3)}
    items.sort(key=lambda item: max((r for f, r in rank.items() if _uses(item, f)), default=0))


class Background:
    """A process started after collection whose outputs tests wait for; its stderr (`log`) explains a failure,
    its stdout is `out` (both pipes, not terminals, as a user's redirect)."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None):
        self.folder = Path(tempfile.mkdtemp(prefix="manifold-edge-test-"))
        self.log = self.folder / "background.log"
        self.out = self.folder / "background.out"
        with open(self.log, "w") as log, open(self.out, "w") as out:
            self.proc = subprocess.Popen([sys.executable, *argv(self.folder)], stdout=out, stderr=log,
                                         stdin=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[1],
                                         env={**os.environ, **(env or {})},
                                         preexec_fn=lambda: os.nice(19))  # the foreground tests come first

    def wait(self, path: Path | None = None, timeout: float = 1200) -> None:
        """Until `path` exists (None: until the process ends); fails with the log's tail if it never will."""
        end = time.monotonic() + timeout
        while (path is None or not path.exists()) and self.proc.poll() is None and time.monotonic() < end:
            time.sleep(0.2)
        done = path.exists() if path is not None else self.proc.returncode == 0
        assert done, f"background run: exit {self.proc.poll()}\n{self.out.read_text()[-2000:]}\n" \
                     f"{self.log.read_text()[-4000:]}"

    def stop(self) -> None:
        if self.proc.poll() is None:  # the session was interrupted first
            self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


ZOO_SCRIPT = ("import sys; from pathlib import Path; from bench.model_zoo import run_model; "
              "cut = sys.argv.index('--'); "
              "[run_model(name, Path(sys.argv[1]), tuple(sys.argv[cut + 1:])) for name in sys.argv[2:cut]]")
_background: dict[str, Background] = {}


# The runs the reliability tests interrupt (tests/test_reliability.py, tests/test_resume.py): each then finishes with
# clean_run's results, bit for bit (one thread: the same sums)
INTERRUPTED = ("distill.epochs=3", "benchmark.enabled=false", "export.coreml.enabled=false",
               "quantize.coreml.enabled=false", "export.openvino=false", "quantize.openvino=false", "run.threads=1")

# Single-process CLI runs whose test only reads what they printed or wrote: started after collection like the runs
# above (a test using the fixture of that name goes last and gets the finished Background), so the host's second core
# runs them while the foreground tests leave it idle. fixture -> (its argv for a run folder, its extra environment)
EARLY: dict[str, tuple[Callable[[Path], list[str]], dict[str, str]]] = {
    "clean_run": (lambda folder: ["-m", "pipeline", *cli_args(folder, "run", *INTERRUPTED)], {}),
    # the conditions that corrupted the heap: a RepVGG teacher (1x1 stride-2 stem branch, 1 input channel),
    # augmented batches, one thread, oneDNN's AVX2 kernels
    "repvgg_teacher_run": (lambda folder: ["-m", "pipeline", *cli_args(
        folder, "run", "teacher.model='repvgg_a0'", "teacher.overrides={}", "teacher.epochs=2",
        "teacher.batch_size=32", "run.threads=1"), "--until", "teacher"],
        {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}),
}


def _early(name: str):
    @pytest.fixture(name=name)
    def finished() -> Background:
        background = _background[name]
        background.wait()
        return background
    return finished


for _name in EARLY:
    globals()[_name] = _early(_name)


# Work on a copy of the shared trained run whose test only reads what it gave: "module:function" (a function of a
# test module, called as function(trained_run_folder, own_folder) -> a JSON-able result) run in a background process
# that starts after collection and waits for the trained run, so it too runs on the core the foreground leaves idle.
# The test's fixture of that name gets the result.
AFTER_TRAINED = {"toy_format_rerun": "test_backends:rerun_with_the_toy_format",
                 "cached_rerun_and_reports": "test_cli_output:cached_rerun_and_reports",
                 "rebuilt_without_report_files": "test_report:rebuild_without_report_files",
                 "another_run_and_compared": "test_report:another_run_and_compare",
                 "reported_from_elsewhere": "test_report:report_from_elsewhere_then_damaged"}
TRAINED_RUN = """import subprocess, sys
code = subprocess.run([sys.executable, "-m", "pipeline", *sys.argv[2:]]).returncode
open(sys.argv[1], "w").write(str(code))
sys.exit(code)"""
AFTER = """import importlib, json, os, sys, time
from pathlib import Path
done, trained, call, folder = sys.argv[1:]
while not os.path.exists(done):
    time.sleep(0.5)
assert open(done).read() == "0", "the trained run failed"
sys.path.insert(0, "tests")
module, _, name = call.partition(":")
result = getattr(importlib.import_module(module), name)(Path(trained), Path(folder) / "work")
(Path(folder) / "result.json").write_text(json.dumps(result))"""


def _after_trained(name: str):
    @pytest.fixture(name=name, scope="session")
    def result(trained_run):
        background = _background[name]
        background.wait(background.folder / "result.json")
        return json.loads((background.folder / "result.json").read_text())
    return result


for _name in AFTER_TRAINED:
    globals()[_name] = _after_trained(_name)


def pytest_collection_finish(session):
    for name, (argv, env) in EARLY.items():
        if any(_uses(item, name) for item in session.items):
            _background[name] = Background(argv, env)
    if any(_uses(item, "trained_run") for item in session.items):
        _background["trained"] = trained = Background(lambda folder: ["-c", TRAINED_RUN, str(folder / "done"), *(
            cli_args(folder, "run", *TRAINED, "quantize.calibration_images=100000", "run.threads=1"))])
        for name in (name for name in AFTER_TRAINED if any(_uses(item, name) for item in session.items)):
            _background[name] = Background(lambda folder, name=name: [
                "-c", AFTER, str(trained.folder / "done"), str(trained.folder), AFTER_TRAINED[name], str(folder)])
    zoo = [item for item in session.items if _uses(item, "zoo_report")]
    if zoo:
        names = list(dict.fromkeys(item.callspec.params["name"] for item in zoo))
        extra = [*zoo[0].module.LEANER, "run.threads=1"]
        _background["zoo"] = Background(lambda folder: ["-c", ZOO_SCRIPT, str(folder), *names, "--", *extra])


def pytest_sessionfinish(session):
    for background in _background.values():
        background.stop()


@pytest.fixture
def zoo_report(request) -> dict:
    """The report.json of the zoo model the test is parametrized with (`name`), from the background zoo run
    (bench/model_zoo.py's run_model with the test module's LEANER overrides)."""
    zoo = _background["zoo"]
    path = zoo.folder / request.node.callspec.params["name"] / "report.json"
    zoo.wait(path)
    return json.loads(path.read_text())


def _fingerprint(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and ".locks" not in p.parts}


@pytest.fixture(scope="session")
def trained_run_console(trained_run) -> tuple[str, str]:
    """What the shared trained run's `manifold-edge run` printed: (stdout, stderr), each a pipe."""
    background = _background["trained"]
    return background.out.read_text(), background.log.read_text()


@pytest.fixture(scope="session")
def trained_run():
    """One full pipeline run (every stage) of a small trained student, shared by the runtime tests: the
    background process started after collection, waited for here.

    Read-only: a test that runs the pipeline on it must copy it first (checked after the session)."""
    background = _background["trained"]
    background.wait()
    folder = background.folder
    before = _fingerprint(folder)
    yield folder
    after = _fingerprint(folder)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert not changed, f"a test changed the shared trained_run ({changed[:5]}): copy it first (shutil.copytree)"


@pytest.fixture(scope="session", autouse=True)
def stop_adb_server():
    """Runs with adb targets ask `adb devices`, which starts adb's server: stop it after the session
    unless it was running before."""
    running = False
    if shutil.which("adb"):
        with socket.socket() as s:
            running = s.connect_ex(("127.0.0.1", 5037)) == 0
    yield
    if shutil.which("adb") and not running:
        subprocess.run(["adb", "kill-server"], capture_output=True, timeout=30)
