"""The model formats, one package each (backends/<name>/), found through one registry: name -> the import string
of its `BACKEND` (backends/base.py), imported on first use. The registry's order is the order the export and
quantize stages run them in (a backend may read the records of those before it: OpenVINO's IR comes from the
ONNX file). Adding a format: a folder and one line here (docs/development.md, "Adding a format")."""
from __future__ import annotations

import importlib
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.errors import UserError, quote

if TYPE_CHECKING:
    from backends.base import Backend

REGISTRY: dict[str, str] = {
    "onnx": "backends.onnx:BACKEND",
    "openvino": "backends.openvino:BACKEND",
    "executorch": "backends.executorch:BACKEND",
    "litert": "backends.litert:BACKEND",
    "coreml": "backends.coreml:BACKEND",
}


def register(name: str, target: str) -> None:
    """Add a backend (a plug-in, or a test's toy format) before the config schema is first composed."""
    if name in REGISTRY:
        raise ValueError(f"backend {name!r} is already registered")
    REGISTRY[name] = target
    _load.cache_clear()


@cache
def _load(target: str) -> Backend:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def get(name: str) -> Backend:
    return _load(REGISTRY[name])


def backends() -> list[Backend]:
    """Every registered backend, in registry order."""
    return [_load(target) for target in REGISTRY.values()]


def runtimes() -> list[str]:
    """The runtimes the backends' files run in, in registry order, each once."""
    return list(dict.fromkeys(b.runtime for b in backends()))


def for_runtime(runtime: str) -> Backend:
    """The first backend whose files run in `runtime` (its title and package name the runtime)."""
    return next(b for b in backends() if b.runtime == runtime)


def runtime_name(runtime: str) -> str:
    """The SDK's name as an app developer knows it: ONNX Runtime, Core ML..."""
    return for_runtime(runtime).runtime_title


def for_file(path: str | Path) -> Backend:
    """The backend whose files have this suffix; a UserError naming the known suffixes otherwise."""
    suffix = Path(path).suffix
    for backend in backends():
        if suffix in backend.suffixes:
            return backend
    known = ", ".join(s for b in backends() for s in b.suffixes)
    raise UserError(f"{path}: no runtime for {quote(suffix)} files; known: {known}")


def agent_adapters() -> dict[str, str]:
    """runtime -> "module:Class" of the agent's adapter for it (the first backend of the runtime that has one)."""
    adapters: dict[str, str] = {}
    for backend in backends():
        if backend.agent:
            adapters.setdefault(backend.runtime, backend.agent)
    return adapters


def load_runner(path: str | Path, threads: int = 0):
    """A runner for the file, in the runtime its suffix names: a float32 NCHW batch -> logits."""
    return for_file(path).runner(Path(path), threads)


def artifact_bytes(path: str | Path) -> int:
    """Size on disk, counting an OpenVINO IR's .bin and an ONNX file's external data (the agent's own count)."""
    from targets.agent.host import model_bytes

    return model_bytes(str(path))


def modules(*kinds: str) -> tuple[str, ...]:
    """Every backend's modules behind `kinds` (Backend.modules): the code a stage reaches through the registry,
    for its cache key (Stage.scripts)."""
    return tuple(dict.fromkeys(m for backend in backends() for m in backend.modules(*kinds)))
