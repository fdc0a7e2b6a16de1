"""Target profiles: the built-in devices (targets/profiles.toml) plus a run's own [targets.NAME] tables."""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

import backends
from pipeline.core.errors import UserError
from pipeline.core.section import Section

BUILTIN_FILE = Path(__file__).with_name("profiles.toml")
# The cores QEMU 7.2 (Debian bookworm's qemu-user-static) emulates: `qemu-aarch64-static -cpu help`.
ARM64_CORES = ("cortex-a35", "cortex-a53", "cortex-a57", "cortex-a72", "cortex-a76", "neoverse-n1", "a64fx", "max")
RUNTIME = Literal[tuple(backends.runtimes())]  # the registered backends' runtimes (backends/)


class TargetProfile(Section):
    """A device to benchmark on: what runs there, how to reach it, and its budgets."""

    description: str = Field("", description="what the device is")
    device: Literal["phone", "watch", "board", "laptop", "desktop"] = Field("board", description="device class")
    runtime: RUNTIME = Field(description="the runtime the app ships")
    runtimes: list[RUNTIME] = Field(default_factory=list, description="other runtimes the app could ship instead "
                                    "(e.g. executorch, litert on Android): their artifacts are timed on this "
                                    "target too and compete in the ship rule")
    precision: Literal["int8", "fp16", "fp32"] = Field("int8", description="the precision the device's "
                                                                          "accelerator favours, for information "
                                                                          "(`manifold-edge targets`): the ship rule "
                                                                          "goes by measured speed and accuracy")
    threads: int = Field(1, ge=1, le=256, description="runtime threads (batch-1 latency)")
    input_size: int | None = Field(None, ge=4, le=4096, description="H = W of the input; default: the model's")
    memory_budget_mb: float = Field(64.0, gt=0, description="memory the model may add to the app (RSS)")
    latency_budget_ms: float = Field(10.0, gt=0, description="batch-1 p90 latency budget")
    connection: Literal["local", "ssh", "adb", "predicted", "arm64-emulated"] = Field(
        "local", description="local = this host stands in for the device (proxy); ssh / adb = measured on the "
                             "device; predicted = not timed anywhere: latency predicted from public measurements "
                             "of public_device; arm64-emulated = the aarch64 runtimes under QEMU on this host "
                             "(`make arm64`), for accuracy only (evaluate.arm64_targets), never timed")
    cpu: str | None = Field(None, pattern=r"^[a-z0-9-]+(,[a-z0-9-]+=[a-z0-9]+)*$",
                            description="the core an arm64-emulated target emulates (QEMU_CPU: cortex-a76, "
                                        "cortex-a53, max...; `qemu-aarch64-static -cpu help`), optionally with "
                                        "QEMU's feature switches (max,sme=off)")
    public_device: str | None = Field(None, description="the device's name in Qualcomm AI Hub's public "
                                      "measurements (e.g. 'Samsung Galaxy S24'; `manifold-edge targets` lists "
                                      "them): adds predicted latency rows, beside measured ones when the device "
                                      "is attached")
    public_runtime: Literal["tflite", "qnn_dlc", "onnx"] | None = Field(
        None, description="the AI Hub runtime predicted for: tflite (LiteRT with the NPU delegate; from our litert "
                          "artifacts), qnn_dlc (QNN, compiled from our ONNX), onnx (ONNX Runtime's QNN provider); "
                          "default tflite for runtime litert, onnx for onnxruntime")
    host: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9.:_-]*$", description="ssh host name or address")
    user: str | None = Field(None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]*$", description="ssh user")
    port: int = Field(22, ge=1, le=65535, description="ssh port")
    identity_file: str | None = Field(None, description="ssh private key")
    known_hosts_file: str | None = Field(None, description="ssh known_hosts (default: ~/.ssh/known_hosts)")
    strict_host_key_checking: bool = Field(True, description="refuse unknown ssh host keys; false only for "
                                                             "throwaway lab devices")
    serial: str | None = Field(None, pattern=r"^[A-Za-z0-9.:_-]+$", description="adb device serial "
                                                                              "(default: the only device)")
    python: str = Field("python3", pattern=r"^[A-Za-z0-9/._+-]+$", description="Python on the device "
                        "(adb: Termux's, e.g. /data/data/com.termux/files/usr/bin/python3)")
    remote_dir: str = Field("/tmp", pattern=r"^/[A-Za-z0-9/._-]*$", description="where a per-run temp folder "
                            "is made on the device (adb: /data/local/tmp)")
    compute_units: Literal["CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL"] = Field(
        "ALL", description="Core ML compute units")
    timeout_s: float = Field(300.0, gt=0, description="give up on the device after this long per model")
    execution_provider: Literal["CPUExecutionProvider", "XnnpackExecutionProvider", "CoreMLExecutionProvider",
                                "NnapiExecutionProvider"] | None = Field(
        None, description="ONNX Runtime execution provider (CPU ops fall back to CPUExecutionProvider); "
                          "default CPUExecutionProvider")
    graph_optimization_level: Literal["disabled", "basic", "extended", "all"] | None = Field(
        None, description="ONNX Runtime graph optimisation level; default all (static QDQ INT8 needs extended "
                          "or all to fuse into INT8 kernels)")
    ov_precision_hint: Literal["f32", "bf16", "f16"] | None = Field(
        None, description="OpenVINO INFERENCE_PRECISION_HINT for float layers; default f32")

    @property
    def predicted_runtime(self) -> str | None:
        """The AI Hub runtime this target's predictions are for (None: no public_device)."""
        if not self.public_device:
            return None
        return self.public_runtime or {"litert": "tflite", "onnxruntime": "onnx"}.get(self.runtime)

    @property
    def all_runtimes(self) -> list[str]:
        """`runtime` first, then `runtimes`."""
        return [self.runtime, *(r for r in self.runtimes if r != self.runtime)]

    @model_validator(mode="after")
    def _check(self) -> TargetProfile:
        if "coreml" in self.runtimes and self.runtime != "coreml":
            raise ValueError("runtimes cannot add coreml to a target of another runtime: Core ML runs on Apple "
                             "devices only; make a separate target with runtime = 'coreml'")
        if self.connection == "predicted" and not self.public_device:
            raise ValueError("connection = 'predicted' needs public_device (a device with public measurements: "
                             "`manifold-edge targets` lists them)")
        if self.public_device:
            from targets.predict.predictor import check_public

            check_public(self.public_device, self.predicted_runtime, self.runtime)
        if (self.connection == "arm64-emulated") != (self.cpu is not None):
            raise ValueError("cpu names the core of connection = 'arm64-emulated', and such a target needs it "
                             "(e.g. cpu = 'cortex-a76'): set both or neither")
        if self.cpu and self.cpu.split(",")[0] not in ARM64_CORES:
            raise ValueError(f"cpu: QEMU emulates no core {self.cpu.split(',')[0]!r}; choose from "
                             f"{', '.join(ARM64_CORES)}")
        if self.cpu and self.cpu.split(",")[0] == "max" and "sme=off" not in self.cpu.split(","):
            raise ValueError("cpu = 'max' has SME, and with it every runtime's INT8 results under QEMU 7.2 are wrong "
                             "(1,637-1,787 of 2,000 argmaxes off x86's): use 'max,sme=off'")
        if self.connection == "ssh" and not self.host:
            raise ValueError("a target with connection = 'ssh' needs host (and usually user, identity_file)")
        for field, runtime in (("execution_provider", "onnxruntime"), ("graph_optimization_level", "onnxruntime"),
                               ("ov_precision_hint", "openvino")):
            if getattr(self, field) is not None and self.runtime != runtime:
                raise ValueError(f"{field} applies to runtime = '{runtime}' only, not '{self.runtime}': remove it "
                                 f"or set runtime = '{runtime}'")
        if self.execution_provider == "NnapiExecutionProvider" and self.connection != "adb":
            raise ValueError("execution_provider = 'NnapiExecutionProvider' runs on Android only: use "
                             "connection = 'adb', or execution_provider = 'XnnpackExecutionProvider' / "
                             "'CPUExecutionProvider'")
        if self.execution_provider == "CoreMLExecutionProvider" and self.connection == "adb":
            raise ValueError("execution_provider = 'CoreMLExecutionProvider' runs on Apple devices only, not over "
                             "adb: use 'NnapiExecutionProvider', 'XnnpackExecutionProvider' or "
                             "'CPUExecutionProvider'")
        return self


def builtin_profiles() -> dict[str, TargetProfile]:
    raw = tomllib.loads(BUILTIN_FILE.read_text())
    try:
        return {name: TargetProfile.model_validate(fields) for name, fields in raw.items()}
    except ValidationError as exc:  # a broken built-in is our bug, not the user's
        raise RuntimeError(f"{BUILTIN_FILE}: {exc}") from None


def all_profiles(user: dict[str, TargetProfile] | None = None) -> dict[str, TargetProfile]:
    """Built-ins, then the user's tables (which replace a built-in of the same name)."""
    return {**builtin_profiles(), **(user or {})}


def resolve(names: list[str], user: dict[str, TargetProfile] | None = None) -> dict[str, TargetProfile]:
    known = all_profiles(user)
    missing = [n for n in names if n not in known]
    if missing:
        import difflib

        hints = [f"'{n}'" + (f" (did you mean '{c[0]}'?)" if (c := difflib.get_close_matches(n, known, n=1)) else "")
                 for n in missing]
        raise UserError(f"benchmark.targets: no target profile {', '.join(hints)}; known: {', '.join(known)} "
                        "(or define [targets.NAME] in pipeline.toml)")
    return {n: known[n] for n in names}
