"""ExecuTorch's Python runtime for .pte programs (XNNPACK delegate, portable kernels for the rest).

Threads: the XNNPACK delegate runs on ExecuTorch's one process-wide threadpool (default: one thread per
processor), resized with the pybindings' `_unsafe_reset_threadpool`. Resizing while any XNNPACK program is
loaded corrupts the heap in ExecuTorch 1.5.1 (segfaults in pthreadpool, malloc aborts; also when every method
is reloaded after the resize), while resizing with none loaded was clean in 360 of 360 tries. So a runner
resizes the pool only when no other runner is alive, and refuses (UserError) a count other than the pool's
while one is; `threads=0` takes the pool as it is. One count per process: the benchmark agent's own process,
or one [evaluate] threads setting.

The native runtime logs through Python's sys.stderr: the runner captures those lines and puts the first one
in its errors. A file whose identifier bytes are not ASCII is refused before it reaches the runtime, whose
log of them aborts the process (ExecuTorch 1.5.1: pybind11 cannot decode the line).
"""
from __future__ import annotations

import contextlib
import gc
import io
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from backends.base import require
from pipeline.core.errors import UserError

_live: weakref.WeakSet = weakref.WeakSet()  # runners with a loaded program


def _use_threads(lib, threads: int) -> None:
    """Resize the pool to `threads` (0: leave it) if no runner is alive (see the module docstring)."""
    current = lib._threadpool_get_thread_count()
    if not threads or threads == current:
        return
    if _live:
        gc.collect()  # a runner in a reference cycle, already unreachable
    if _live:
        raise UserError(f"executorch runs every program on one process-wide threadpool, now {current} threads "
                        f"for {len(_live)} loaded program(s); {threads} threads need them closed first (resizing "
                        "under a loaded XNNPACK program crashes ExecuTorch 1.5.1)")
    with _native_log():  # "[threadpool.cpp:66] Resetting threadpool to 1 threads."
        lib._unsafe_reset_threadpool(threads)


@contextlib.contextmanager
def _native_log() -> Iterator[io.StringIO]:
    """The runtime's log lines ("[program.cpp:184] Verification failed; ...") while inside."""
    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        yield buffer


def _detail(log: io.StringIO, exc: BaseException) -> str:
    """The first native log line (the cause; later ones trace it up the stack) without its [file:line]
    prefix, and the exception's first line."""
    lines = [line.split("] ", 1)[-1].strip() for line in log.getvalue().splitlines() if line.strip()]
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{lines[0]} ({first})" if lines else first


def _check_identifier(path: Path) -> None:
    """Refuse a file without the .pte file identifier (backends.executorch.agent.is_executorch_program)."""
    from backends.executorch.agent import is_executorch_program

    try:
        head = Path(path).read_bytes()[:8]
    except OSError as exc:
        raise UserError(f"executorch cannot load {Path(path).name}: {exc.strerror}") from None
    if not is_executorch_program(head):
        raise UserError(f"executorch cannot load {Path(path).name}: not an ExecuTorch program (no 'ET..' file "
                        f"identifier at byte 4; truncated, damaged or another format)")


class ExecuTorchRunner:
    runtime = "executorch"
    evaluation = "measured"

    def __init__(self, path: Path, threads: int = 0, etdump: bool = False):
        require("executorch", "executorch")
        import torch

        from backends.executorch.agent import runtime

        portable_lib, Runtime = runtime()

        self._torch = torch
        _check_identifier(path)
        _use_threads(portable_lib, threads)
        self.threads = portable_lib._threadpool_get_thread_count()
        with _native_log() as log:
            try:
                self.program = Runtime.get().load_program(Path(path), enable_etdump=etdump)
                self.method = self.program.load_method("forward")
            except (RuntimeError, ValueError) as exc:
                raise UserError(f"executorch cannot load {Path(path).name}: {_detail(log, exc)}") from None
        _live.add(self)
        self.name = Path(path).name
        self.max_batch, *self.image_shape = self.method.metadata.input_tensor_meta(0).sizes()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits for a float32 NCHW batch, in chunks of at most the program's planned batch."""
        if list(x.shape[1:]) != self.image_shape:
            raise UserError(f"executorch cannot run {self.name}: it takes images of shape {tuple(self.image_shape)}, "
                            f"not {tuple(x.shape[1:])}")
        with _native_log() as log:
            try:
                return np.concatenate([self.method.execute([self._torch.from_numpy(
                    np.ascontiguousarray(x[i:i + self.max_batch], dtype=np.float32))])[0].numpy()
                    for i in range(0, len(x), self.max_batch)])
            except RuntimeError as exc:
                raise UserError(f"executorch cannot run {self.name}: {_detail(log, exc)}") from None


def profile_layers(path: Path, x: np.ndarray, threads: int = 0, runs: int = 20, warmup: int = 5) -> dict:
    """Per-op times from ETDump (backends.executorch.agent.etdump_layers), averaged over `runs` executions of
    `x`."""
    from backends.executorch.agent import etdump_layers

    runner = ExecuTorchRunner(path, threads, etdump=True)
    for _ in range(warmup + runs):
        runner(x)
    with _native_log():
        return etdump_layers(runner.program, runs)
