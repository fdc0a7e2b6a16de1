"""The agent's ExecuTorch adapter (targets/agent/adapter.py), the .pte file check and the ETDump reader. Shipped
inside the agent's zipapp: standard library, numpy, executorch and torch (imported when a model loads) and
targets.agent only."""
from __future__ import annotations

import argparse
import contextlib
import os
import tempfile

from targets.agent.adapter import Adapter, fixed_shape
from targets.agent.errors import AgentError, require
from targets.agent.layers import PROFILE_RUNS, PROFILE_WARMUP, summarise


@contextlib.contextmanager
def stand_in(*packages: str):
    """Import submodules of `packages` without running those packages' __init__: each package not imported yet
    is stood in for by an empty module with its path while the block runs, then the stand-ins and every module
    imported under them are forgotten, so a later `import` of the package runs it in full. What the block bound
    keeps working (its functions hold their modules' globals)."""
    import importlib.util
    import sys
    import types

    stubs = {}
    for name in packages:
        if name not in sys.modules:
            stub, spec = types.ModuleType(name), importlib.util.find_spec(name)
            stub.__spec__, stub.__path__ = spec, list(spec.submodule_search_locations)  # resources read the spec
            sys.modules[name] = stubs[name] = stub
    try:
        yield
    finally:
        for name in [m for m in sys.modules if any(m == s or m.startswith(s + ".") for s in stubs)]:
            del sys.modules[name]
        for name, stub in stubs.items():
            parent, _, child = name.rpartition(".")
            if getattr(sys.modules.get(parent), child, None) is stub:
                delattr(sys.modules[parent], child)


def runtime():
    """ExecuTorch's pybindings and its Runtime, imported without executorch.exir's package code where nothing has
    imported it yet: the pybindings import executorch.exir._warnings for one warning class, and that ran exir's
    __init__ (the edge dialect's op tables and the export passes: 5 s of each agent process's 7 s of imports on a
    2-core host, ExecuTorch 1.5.1)."""
    import warnings

    require("executorch")
    with stand_in("executorch.exir"), warnings.catch_warnings():  # the pybindings warn that they are experimental
        warnings.simplefilter("ignore")
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime
    return portable_lib, Runtime


def read_etdump(data: bytes):
    """An ETDump file's contents as ExecuTorch's dataclasses, read without the package code of executorch.devtools
    (its Inspector), executorch.exir and exir._serialize where nothing has imported them yet: the reader needs two
    of exir's standard-library-only helpers (a dataclass<->JSON codec and the flatc call), and those packages'
    __init__ took 5.1 s of each agent process that profiled a .pte (ExecuTorch 1.5.1, a 2-core host); 0.05 s
    without them. It reads its schema through the stood-in package, so it runs inside the block."""
    with stand_in("executorch.devtools", "executorch.exir", "executorch.exir._serialize"):
        from executorch.devtools.etdump.serialize import deserialize_from_etdump_flatcc

        return deserialize_from_etdump_flatcc(data)


class ExecuTorch(Adapter):
    """A .pte program in ExecuTorch's runtime (Python bindings; they need torch, so this runs on hosts and
    boards, while a phone uses ExecuTorch's own executor_runner). Its XNNPACK delegate runs on one process-wide
    threadpool, sized here before the first program loads (resizing it under a loaded program corrupts the heap
    in ExecuTorch 1.5.1); every model of one agent call shares the call's thread count."""

    name = "executorch"
    title = "ExecuTorch"
    module = "executorch.runtime"  # it brings torch
    profiled = True

    @classmethod
    def import_runtime(cls) -> None:
        runtime()

    def __init__(self, path: str, threads: int, profile: bool = False):
        from importlib.metadata import version

        import torch

        portable_lib, Runtime = runtime()
        with open(path, "rb") as f:
            head = f.read(8)
        if not is_executorch_program(head):  # the runtime aborts logging these
            raise AgentError("bad_model", f"ExecuTorch cannot load {os.path.basename(path)}: not an ExecuTorch "
                                          "program (no 'ET..' file identifier at byte 4)")
        if threads and threads != portable_lib._threadpool_get_thread_count():
            portable_lib._unsafe_reset_threadpool(threads)
        self.threads = portable_lib._threadpool_get_thread_count()
        self.version, self._torch = version("executorch"), torch
        try:
            self.program = Runtime.get().load_program(path, enable_etdump=profile)
            self.method = self.program.load_method("forward")
        except (ValueError, RuntimeError) as exc:
            raise AgentError("bad_model", f"ExecuTorch cannot load {os.path.basename(path)}: "
                                          f"{str(exc).splitlines()[0]}") from None
        self.sizes = list(self.method.metadata.input_tensor_meta(0).sizes())

    @classmethod
    def load(cls, args: argparse.Namespace, profile_dir: str | None = None) -> ExecuTorch:
        return cls(args.model, args.threads, profile_dir is not None)

    def input_shape(self, batch: int, size: int | None) -> list[int]:
        """At most the batch the program is planned for (its input's first size; 1 where the batch is fixed)."""
        return fixed_shape([1, *self.sizes[1:]], min(batch, self.sizes[0]), size)

    def __call__(self, x):
        return self.method.execute([self._torch.from_numpy(x)])[0]

    def output(self, y):
        return y.numpy()

    def profile(self, x) -> dict:
        """Its ETDump holds every run: the mean of the last PROFILE_RUNS."""
        for _ in range(PROFILE_WARMUP + PROFILE_RUNS):
            self(x)
        return self.layers(PROFILE_RUNS)

    def layers(self, runs: int = 1) -> dict:
        """Per-op times of the last `runs` executions from the program's ETDump (loaded with profile=True)."""
        return etdump_layers(self.program, runs)


def is_executorch_program(head: bytes) -> bool:
    """A .pte starts with a 4-byte offset and the flatbuffer file identifier ("ET12" in 1.5), in ASCII."""
    return len(head) >= 8 and head[4:6] == b"ET" and head[4:8].isascii()


def _xnnpack_precision(kernel: str) -> str:
    """int8 | convert | float from an XNNPACK operator name, e.g. "Fully Connected (NC, QS8) GEMM #1"."""
    if kernel.startswith("Convert"):
        return "convert"
    return "int8" if any(t in kernel for t in ("QS8", "QU8", "QC8", "QD8", "QP8")) else "float"


def etdump_layers(program, runs: int) -> dict:
    """Per-op times from an ExecuTorch program's ETDump (the pip wheel's runtime records it; ticks are
    nanoseconds on Linux): XNNPACK's own per-operator events inside each delegate call (microsecond
    resolution) and the portable kernels' calls, averaged over the last `runs` executions. run_ms is
    Method::execute's mean, which also holds the delegate-call overhead the layers leave out."""
    import io
    import warnings

    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stderr(io.StringIO()):
        dump, debug = os.path.join(folder, "run.etdp"), os.path.join(folder, "debug.bin")
        program.write_etdump_result_to_file(dump, debug)
        with open(dump, "rb") as f, warnings.catch_warnings():  # it calls importlib.resources.read_binary
            warnings.simplefilter("ignore")
            blocks = [block for block in read_etdump(f.read()).run_data
                      if any(e.profile_event and e.profile_event.name == "Method::execute" for e in block.events)]
    nodes: dict[str, dict] = {}
    totals = []
    for block in blocks[-runs:]:
        for event in (e.profile_event for e in block.events if e.profile_event):
            ns = event.end_time - event.start_time
            if event.name == "Method::execute":
                totals.append(ns / 1e6)
                continue
            if event.name and event.name.startswith("native_call_"):
                op = event.name.removeprefix("native_call_").removesuffix("_out").removesuffix(".out")
                key, entry = f"{op} @{event.instruction_id}", {"op_type": op, "kernel": "portable",
                                                               "precision": "convert" if "quantize" in op else "float"}
            elif event.delegate_debug_id_str:
                kernel = event.delegate_debug_id_str
                key = f"xnnpack @{event.instruction_id}: {kernel}"
                entry = {"op_type": kernel.rsplit(" #", 1)[0], "kernel": "xnnpack",
                         "precision": _xnnpack_precision(kernel)}
            else:  # OPERATOR_CALL / DELEGATE_CALL wrap the events above
                continue
            nodes.setdefault(key, {"name": key, "us": 0.0, **entry})["us"] += ns / 1000
    count = len(totals) or 1
    return summarise(list(nodes.values()), count, sum(totals) / count if totals else None)
