"""An emulated arm64 device: the aarch64 builds of the runtimes, run by QEMU user-mode emulation in a Debian
bookworm arm64 root, with QEMU_CPU naming the core whose features (dotprod, i8mm, SVE...) pick the kernels.
It answers numerics (what a phone's own kernels compute), never latency: emulated code runs 50-85x slower than
this host's own, and its speed says nothing of the core's, so the device refuses timing calls.

`make arm64` (targets/arm64_build.py) builds the root once, as root, into ~/.cache/manifold-edge/arm64
($MANIFOLD_EDGE_ARM64_ROOT); this module reads the stamp it leaves there. Nothing downloads at run time.

At run time the agent (targets/agent/, as its zipapp) runs as `chroot ROOT qemu-aarch64-static python3.11
arm64_boot.py agent.pyz ...` with QEMU_CPU set from the profile's `cpu` (ExecuTorch files: the runner, after
arm64_boot.py).
/proc and /sys are not mounted in the root (with the host's x86 /proc/cpuinfo, ONNX Runtime's cpuinfo crashes
qemu); targets/arm64_boot.py first writes them as plain files describing the emulated core (its MIDR and
features), without which cpuinfo fails and XNNPACK, so the phone's kernels, would not start.
"""
from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pipeline.core.errors import UserError
from pipeline.core.intervals import wilson
from targets import arm64_boot
from targets.agent.bundle import zipapp_file
from targets.agent.host import ARM_HWCAP, ARM_HWCAP2
from targets.agent.predict import encode
from targets.devices import TEMP_PREFIX, Deadline, DeviceError, agent_result, as_list, files_for, last_line
from targets.profiles import TargetProfile

log = logging.getLogger(__name__)

ROOT_ENV = "MANIFOLD_EDGE_ARM64_ROOT"
DEFAULT_ROOT = "~/.cache/manifold-edge/arm64"
STAMP = "manifold-edge-arm64.json"  # in the root: what the build installed; written last
LOCK = ".manifold-edge-core.lock"  # in the root's /tmp: held by each call
BOOT = Path(arm64_boot.__file__)  # runs first in the emulated process: describes the core, then runs the agent
QEMU = "/usr/bin/qemu-aarch64-static"
PYTHON = "/usr/bin/python3.11"
RUNTIMES = {"onnxruntime": "onnxruntime", "litert": "ai-edge-litert", "executorch": "executorch"}  # -> its wheel
ET_RUNNER = "/usr/local/bin/executorch-runner"  # in the root: runs .pte files (the build cross-compiles it)
BATCH = 256  # images per x86 call
BUILD_HINT = "build it with `make arm64` (as root: a few minutes and 0.5 GB, once)"


def root_path() -> Path:
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT).expanduser()


def read_stamp(root: Path) -> dict | None:
    """What the build installed into root, or None when root holds no finished build."""
    try:
        return json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return None


def ready(root: Path | None = None) -> bool:
    return read_stamp(root or root_path()) is not None


def usable() -> bool:
    """The root is built and this process may enter it (chroot needs root)."""
    return ready() and os.geteuid() == 0


def chroot() -> str:
    """This host's chroot (in /usr/sbin, which the emulated command's own PATH leaves out)."""
    return shutil.which("chroot") or "/usr/sbin/chroot"


def require_root(root: Path | None = None) -> dict:
    """The finished build's stamp, or a one-line UserError saying how to build it."""
    root = root or root_path()
    stamp = read_stamp(root)
    if stamp is None:
        raise UserError(f"no emulated arm64 root at {root} (set {ROOT_ENV} to use another): {BUILD_HINT}")
    return stamp


class Arm64Device:
    """A profile with connection = 'arm64-emulated': the agent in its predict mode (ExecuTorch files: the root's
    runner) inside the arm64 root, on the profile's `cpu`. Each call gets a fresh folder in the root's /tmp (each
    model in a subfolder of its own, so files of the same name can share a call), removed afterwards whatever
    happens."""

    connection = "arm64-emulated"
    label = "emulated"

    def __init__(self, profile: TargetProfile, name: str):
        self.profile, self.name, self.root = profile, name, root_path()

    @property
    def target(self) -> str:
        return f"target '{self.name}' (emulated arm64, {self.profile.cpu})"

    def check(self) -> None:
        """Nothing to reach: run_agent checks the root, after refusing a timing call, so that a benchmark of this
        target gets that refusal rather than timing this host in its place as a proxy."""

    def usable(self) -> None:
        """Raise DeviceError('unreachable') unless the root is built and this process may chroot into it."""
        try:
            require_root(self.root)
        except UserError as exc:
            raise DeviceError("unreachable", f"{self.target}: {exc}") from None
        if os.geteuid() != 0:
            raise DeviceError("unreachable", f"{self.target}: entering the arm64 root needs chroot, which needs "
                                             "root: run as root (or sudo)")

    def run_agent(self, model: Path | Sequence[Path], agent_args: list[str], timeout: float) -> dict:
        """The agent's predict mode on the models (ExecuTorch files: the root's ExecuTorch runner, in a call of
        their own), in the format of the agent's output."""
        if "--predict" not in agent_args:
            raise DeviceError("agent_failed", f"{self.target}: an emulated device gives accuracy only, never "
                                              "latency (emulated speed says nothing of the core's): remove it from "
                                              "benchmark.targets; evaluate.arm64_targets measures its accuracy")
        self.usable()
        models = as_list(model)
        at = agent_args.index("--predict") + 1
        runtimes = set(agent_args[agent_args.index("--runtime") + 1].split(","))
        if "executorch" in runtimes and len(runtimes) > 1:
            raise DeviceError("agent_failed", f"{self.target}: ExecuTorch files run by the root's own runner: give "
                                              "them a call of their own")
        deadline = Deadline(timeout)
        with open(self.root / "tmp" / LOCK, "w") as lock, \
                tempfile.TemporaryDirectory(prefix=TEMP_PREFIX, dir=self.root / "tmp") as folder:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the root's /proc/cpuinfo describes one core at a time
            inside = "/tmp/" + Path(folder).name
            shutil.copy(BOOT, folder)
            paths = []
            for i, m in enumerate(models):
                Path(folder, str(i)).mkdir()
                for f in files_for(self.target, m):
                    (shutil.copytree if f.is_dir() else shutil.copy)(f, Path(folder, str(i), f.name))
                paths.append(f"{inside}/{i}/{m.name}")
            if "executorch" in runtimes:
                return self.executorch(Path(agent_args[at]), Path(folder), paths, deadline)
            agent = Path(shutil.copy(zipapp_file(), folder))
            shutil.copy(agent_args[at], Path(folder, "images.npz"))
            args = [*agent_args[:at], f"{inside}/images.npz", *agent_args[at + 1:]]
            proc = self.emulate([PYTHON, f"{inside}/{BOOT.name}", f"{inside}/{agent.name}", *paths, *args],
                                deadline, "the predictions")
            return agent_result(self.target, self.name, f"{PYTHON} in {self.root}", proc)

    def emulate(self, argv: list[str], deadline: Deadline, what: str) -> subprocess.CompletedProcess:
        """argv run in the root on the profile's core."""
        env = {"QEMU_CPU": self.profile.cpu, "PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            return subprocess.run([chroot(), str(self.root), QEMU, *argv], capture_output=True, text=True,
                                  timeout=deadline.left(), env=env, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DeviceError("timeout", f"{self.target}: {what} took too long; raise timeout_s in "
                                         f"[targets.{self.name}]") from None

    def executorch(self, images_file: Path, folder: Path, paths: list[str], deadline: Deadline) -> dict:
        """Each .pte through the root's ExecuTorch runner (targets/arm64_executorch_runner.cpp), after the boot
        script has described the core; the result as the agent's predict mode gives it."""
        version = read_stamp(self.root)["packages"].get("executorch")
        if version is None:
            raise DeviceError("runtime_missing", f"{self.target}: this arm64 root has no ExecuTorch runner: run "
                                                 "`make arm64` again")
        with np.load(images_file, allow_pickle=False) as f:
            images = f["images"]
        images.astype("<f4").tofile(folder / "images.f32")
        inside = "/tmp/" + folder.name
        described = self.emulate([PYTHON, f"{inside}/{BOOT.name}"], deadline, "describing the core")
        if described.returncode != 0:
            raise DeviceError("agent_failed", f"{self.target}: describing the core failed: {described.stderr[-300:]}")
        features = json.loads(described.stdout)["features"]
        results = []
        for i, path in enumerate(paths):
            proc = self.emulate([ET_RUNNER, path, f"{inside}/images.f32", str(len(images)), *map(str, images.shape[1:]),
                                 f"{inside}/{i}/logits.f32"], deadline, f"ExecuTorch on {Path(path).name}")
            if proc.returncode != 0:
                raise DeviceError("bad_model", f"{self.target}: {last_line(proc.stderr) or 'the runner failed'}",
                                  Path(path).name)
            logits = np.fromfile(folder / str(i) / "logits.f32", "<f4").reshape(len(images), -1)
            results.append({"model": Path(path).name, "runtime": "executorch", "runtime_version": version,
                            "images": len(logits), "argmax": logits.argmax(1).tolist(),
                            "logits": encode(logits)})
        shown = set(ARM_HWCAP) | set(ARM_HWCAP2)
        return {"ok": True, "results": results,
                "host": {"machine": "aarch64", "cpu_features": [f for f in features if f in shown]}}


# Accuracy on the emulated cores (the evaluate stage).
def emulated_profiles(names: list[str], user: dict[str, TargetProfile] | None) -> dict[str, TargetProfile]:
    """The profiles evaluate.arm64_targets names, each an arm64-emulated one, or a one-line UserError."""
    from targets.profiles import all_profiles

    known = all_profiles(user)
    emulated = [n for n, p in known.items() if p.connection == "arm64-emulated"]
    for name in names:
        if name not in known or known[name].connection != "arm64-emulated":
            what = "no such target profile" if name not in known else "its connection is not 'arm64-emulated'"
            raise UserError(f"evaluate.arm64_targets: {name!r}: {what}; emulated ones: {', '.join(emulated)} "
                            "(or a [targets.NAME] table with connection = 'arm64-emulated' and cpu)")
    return {n: known[n] for n in names}


def check_config(names: list[str], user: dict[str, TargetProfile] | None) -> None:
    """For evaluate.arm64 = 'on': the targets resolve, the root is built and this process may enter it."""
    emulated_profiles(names, user)
    require_root()
    if os.geteuid() != 0:
        raise UserError("evaluate.arm64 = 'on' enters the arm64 root with chroot, which needs root: run as root, or "
                        "set evaluate.arm64 = 'auto' (on only where it can run)")


def stage_accuracy(inputs: dict[str, Path], test, names: list[str], user: dict[str, TargetProfile] | None,
                   images: int, torch_logits: Callable[[np.ndarray], np.ndarray]) -> dict:
    """The evaluate stage's arm64 part: the exported and quantized files on each target of `names`, over a fixed
    random subset of `images` test images. `test`: the test split (stages.batches.Batches: subset, head);
    `torch_logits`: the fp32 checkpoint's logits for a batch (the reference)."""
    from pipeline.core.fileio import read_json

    files = []
    for stage in ("export", "quantize"):
        for key, a in read_json(inputs[stage] / f"{stage}.json")["artifacts"].items():
            files.append({"artifact": key, "path": inputs[stage] / a["file"], "runtime": a["runtime"],
                          "precision": a["precision"], "numerics": a["numerics"]})
    idx = subset(len(test), images)
    x, y = test.subset(idx).head(len(idx))
    result = accuracy(files, x, y, emulated_profiles(names, user), torch_logits(x).argmax(1))
    for row in result["rows"]:
        log.log(logging.WARNING if "error" in row else logging.INFO, row_text(row))
    return result


def row_text(row: dict) -> str:
    head = f"{row['target']} / {row['artifact']} (emulated {row['cpu']})"
    if "error" in row:
        return f"{head}: not measured: {row['error']}"
    lo, hi = row["arm64_top1_interval"]
    return (f"{head}: top-1 {row['arm64_top1']:.2f}% [{lo:.2f}, {hi:.2f}] on {row['images']} images (x86 "
            f"{row['x86_top1']:.2f}%, torch {row['torch_top1']:.2f}%), agreement with torch {row['agreement']:.2f}%; "
            f"vs x86: {row['vs_x86']['argmax_differ']} argmax differ, max |logit diff| "
            f"{row['vs_x86']['max_abs_diff']:.2g}")


def subset(n: int, size: int) -> np.ndarray:
    """A fixed random subset (seed 0) of a split's n indices, sorted: the same images in every run."""
    return np.sort(np.random.default_rng(0).choice(n, min(size, n), replace=False))


def decode(record: dict) -> np.ndarray:
    """The agent's logits record (float32 little-endian, base64) as an array."""
    return np.frombuffer(base64.b64decode(record["base64"]), dtype=record["dtype"]).reshape(record["shape"])


def share(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """How many of a equal b, and that as a percentage."""
    hits = int((a == b).sum())
    return hits, round(100 * hits / len(a), 3)


def accuracy(files: list[dict], x: np.ndarray, y: np.ndarray, profiles: dict[str, TargetProfile],
             torch_pred: np.ndarray) -> dict:
    """Each file of a target's runtimes run on its emulated core over the images x (labels y), against torch
    (`torch_pred`: the fp32 checkpoint's argmax for x) and the same file's x86 run: top-1 with its 95% interval,
    argmax agreement with torch, how many argmaxes differ from x86 and the largest logit difference. A file its
    runtime cannot run there gets a row with the reason."""
    from backends import load_runner
    from backends.base import predict
    from targets.devices import make_device

    stamp = require_root()
    threads_cap = len(os.sched_getaffinity(0))

    inputs: dict[bytes, np.ndarray] = {}  # the files' own inputs for x, by digest (most files share one)

    def run(path: Path) -> tuple[np.ndarray, bytes]:
        """x86 logits, and the digest of the file's own input for x (a runner may make it: app pixels for a
        .tflite that takes them)."""
        runner = load_runner(path)
        model_input = runner.feed(x) if hasattr(runner, "feed") else x
        digest = hashlib.sha256(model_input).digest()
        inputs.setdefault(digest, model_input)
        return predict(runner, (x[i:i + BATCH] for i in range(0, len(x), BATCH))), digest

    wanted = {runtime for p in profiles.values() for runtime in p.all_runtimes}
    x86 = {f["artifact"]: run(f["path"]) for f in files if f["runtime"] in wanted and f["runtime"] in RUNTIMES}
    rows = []
    for name, profile in profiles.items():
        device = make_device(profile, name)
        fitting = [f for f in files if f["runtime"] in profile.all_runtimes]
        base = {f["artifact"]: {"target": name, "cpu": profile.cpu, "artifact": f["artifact"], "runtime": f["runtime"],
                                "precision": f["precision"], "numerics": f["numerics"], "file": f["path"].name}
                for f in fitting}
        groups: dict[tuple[str, bytes], list[dict]] = {}
        for f in fitting:
            if f["runtime"] not in RUNTIMES:
                rows.append({**base[f["artifact"]], "error": f"{f['runtime']} is not in the arm64 root (it has "
                                                             f"{', '.join(RUNTIMES.values())})"})
            else:
                groups.setdefault((f["runtime"], x86[f["artifact"]][1]), []).append(f)
        for (runtime, digest), group in groups.items():
            with tempfile.TemporaryDirectory() as folder:
                images = Path(folder, "images.npz")
                np.savez(images, images=inputs[digest])
                args = ["--runtime", runtime, "--threads", str(min(profile.threads, threads_cap)),
                        "--predict", str(images)]
                try:
                    out = device.run_agent([f["path"] for f in group], args, profile.timeout_s * len(group))
                except DeviceError as exc:
                    rows += [{**base[f["artifact"]], "error": str(exc)} for f in group]
                    continue
            for f, result in zip(group, out["results"]):
                logits, x86_logits = decode(result["logits"]), x86[f["artifact"]][0]
                pred, x86_pred = logits.argmax(1), x86_logits.argmax(1)
                top1, agree, x86_agree = share(pred, y), share(pred, torch_pred), share(x86_pred, torch_pred)
                rows.append({**base[f["artifact"]], "images": len(y), "runtime_version": result["runtime_version"],
                             "cpu_features": out["host"]["cpu_features"],
                             "torch_top1": share(torch_pred, y)[1], "x86_top1": share(x86_pred, y)[1],
                             "arm64_top1": top1[1], "arm64_top1_interval": wilson(top1[0], len(y)),
                             "agreement": agree[1], "agreement_interval": wilson(agree[0], len(y)),
                             "x86_agreement": x86_agree[1],
                             **{k: result[k] for k in ("xnnpack_partitions",) if k in result},
                             "vs_x86": {"argmax_differ": int((pred != x86_pred).sum()),
                                        "max_abs_diff": float(np.abs(logits - x86_logits).max())}})
    order = {(name, f["artifact"]): i for i, (name, f) in enumerate((n, f) for n in profiles for f in files)}
    rows.sort(key=lambda r: order[(r["target"], r["artifact"])])
    return {"images": len(y), "subset": "a fixed random subset (seed 0) of the test split", "confidence": 0.95,
            "qemu": stamp["qemu"], "packages": stamp["packages"], "rows": rows}
