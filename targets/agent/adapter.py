"""The runtime adapters: one class per runtime (backends/<name>/agent.py) that loads a model file in its runtime,
runs a float32 batch and says its input shape (and, where the runtime's Python API can, profiles it per layer).
The agent finds a runtime's class through the registry, backends.agent_adapters(): runtime -> "module:Class",
imported on first use (in the shipped zipapp, backends/__init__.py is a stub holding that table alone)."""
from __future__ import annotations

import argparse
import importlib
from functools import cache
from typing import ClassVar

from targets.agent.errors import AgentError, require


class Adapter:
    """One model in its runtime. A subclass sets the class attributes, `load` and the calls below; the rest has
    defaults that fit a runtime without them."""

    name: ClassVar[str]  # the runtime, as --runtime names it
    title: ClassVar[str]  # the runtime as its users know it: "ONNX Runtime"
    module: ClassVar[str | None] = None  # imported before any model loads (None: imported with the model)
    profiled: ClassVar[bool] = False  # `profile` gives per-layer times (--profile)
    pixels: ClassVar[bool] = False  # it takes 0-255 pixels, one image per call, not float32 tensors
    version: str  # the runtime's version
    threads: int | None = None  # the threads the runtime applied, where it reports them

    @classmethod
    def import_runtime(cls) -> None:
        """Import `module` (the agent does before any model loads, so a model's memory is its own)."""
        require(cls.module)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this runtime's own command-line flags (none by default)."""

    @classmethod
    def load(cls, args: argparse.Namespace, profile_dir: str | None = None) -> Adapter:
        """The model at args.model with the call's settings; profile_dir given: a profiled instance, which may
        write its profile there (a temp folder, removed afterwards)."""
        raise NotImplementedError

    def input_shape(self, batch: int, size: int | None) -> list[int]:
        raise NotImplementedError

    def __call__(self, x):
        raise NotImplementedError

    def output(self, y):
        """The first output of a call, as an array of batch x ...."""
        return y[0]

    def free_batch(self) -> bool:
        """The model takes a batch of any size in one call."""
        return False

    def profile(self, x) -> dict:
        """Per-layer times on x (layers.summarise's shape), from an instance loaded with a profile_dir."""
        raise AgentError("unsupported", f"{self.name} has no per-layer profiler in its Python API")

    def details(self) -> dict:
        """What --predict adds to this model's result."""
        return {}


def fixed_shape(dims, batch: int, size: int | None) -> list[int]:
    """A model input's dims with the batch set and H = W = size (when given); unknown dims are an error."""
    shape = [d if isinstance(d, int) and d > 0 else 0 for d in dims]
    shape[0] = batch
    if size:
        shape[-2:] = [size, size]
    if 0 in shape:
        raise AgentError("bad_model", f"the model input has unknown dimensions {list(dims)}: pass --input-size")
    return shape


@cache
def adapters() -> dict[str, str]:
    """runtime -> "module:Class", in the registry's order."""
    from backends import agent_adapters

    return agent_adapters()


def runtimes() -> tuple[str, ...]:
    return tuple(adapters())


@cache
def adapter(runtime: str) -> type[Adapter]:
    module, _, name = adapters()[runtime].partition(":")
    return getattr(importlib.import_module(module), name)


def profiled() -> tuple[str, ...]:
    """The runtimes whose adapter gives a per-layer profile."""
    return tuple(r for r in runtimes() if adapter(r).profiled)


def load(args: argparse.Namespace, profile_dir: str | None = None) -> Adapter:
    """The model args.model in args.runtime."""
    return adapter(args.runtime).load(args, profile_dir)
