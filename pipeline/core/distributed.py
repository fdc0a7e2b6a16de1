"""Data-parallel training on PyTorch's own engine: torchrun launches the processes, torch.distributed
(gloo on CPU, NCCL on CUDA) connects them, DDP all-reduces the gradients.

`run.nproc = N` relaunches `manifold-edge run` under torchrun's launcher on this machine; a user's own
`torchrun --nnodes ... -m pipeline run` works the same way. Rank 0 alone writes; see pipeline/graph.py.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core import exits
from pipeline.core.errors import UserError

if TYPE_CHECKING:
    import torch

# A rank waits this long for rank 0 (e.g. while it builds the data stage) before giving up.
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place, from the variables torchrun sets (a single process without them)."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def under_launcher() -> bool:
    return "WORLD_SIZE" in os.environ


def active() -> bool:
    """A process group of more than one process is up (none can be before torch.distributed is imported: the
    engine's commands that run no stage never import torch)."""
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def joined() -> World:
    """This process's place in the running process group (a single process when none is up)."""
    return world() if active() else World()


LAUNCHER_ENV = "MANIFOLD_EDGE_LAUNCHER_PID"  # set by launch(): the process whose death ends every rank


def follow_launcher() -> None:
    """In a rank started by launch(): a daemon thread that kills this process when the launcher is gone
    (killed with -9, its terminal closed). torchrun starts ranks in their own sessions, so a signal to the
    user's process group never reaches them; without this they would run on and hold the run's lock."""
    launcher = os.environ.get(LAUNCHER_ENV)
    if not launcher or os.getppid() != int(launcher):
        return

    def watch() -> None:
        while os.getppid() == int(launcher):
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="launcher-watchdog", daemon=True).start()


def start(device: str) -> World:
    """Join the process group when launched with more than one process; pin this rank's GPU."""
    import torch
    import torch.distributed as dist

    here = world()
    if here.size > 1:
        follow_launcher()
    if here.size > 1 and not dist.is_initialized():
        if device == "cuda":
            if here.local_rank >= torch.cuda.device_count():
                raise UserError(f"run.nproc: this machine runs more processes than its {torch.cuda.device_count()} "
                                "GPU(s); use one process per GPU (nproc or torchrun --nproc-per-node)")
            torch.cuda.set_device(here.local_rank)
        dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=TIMEOUT)
    return here


def stop() -> None:
    """Leave the process group: rank 0 goes on alone with the single-process stages."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def from_main(value: Any) -> Any:
    """Rank 0's value on every rank (the value itself in a single process)."""
    if not active():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every rank's value, in rank order, on every rank."""
    if not active():
        return [value]
    import torch.distributed as dist

    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks, on the tensor's device (the tensor itself in a single process)."""
    if not active():
        return tensor
    import torch.distributed as dist

    summed = tensor.to("cuda" if dist.get_backend() == "nccl" else "cpu")  # NCCL reduces CUDA tensors only
    dist.all_reduce(summed)
    return summed.to(tensor.device)


def launch(nproc: int, argv: list[str], threads: int) -> tuple[int, str | None]:
    """Run `python -m pipeline ARGV` in nproc processes under torchrun's launcher: the exit code, and the
    message of the first process that failed (see pipeline/core/exits.py)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    for name in [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed.elastic")]:
        logging.getLogger(name).setLevel(logging.CRITICAL)  # the processes' own messages say what happened
    threads = os.environ.get("OMP_NUM_THREADS") or str(threads or max(1, (os.cpu_count() or 1) // nproc))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2)
    with tempfile.TemporaryDirectory(prefix="manifold-edge-exits-") as folder, \
            _environment(OMP_NUM_THREADS=threads, **{exits.FOLDER_ENV: folder, LAUNCHER_ENV: str(os.getpid())}):
        try:
            elastic_launch(config, sys.executable)("-m", "pipeline", *argv)
        except ChildFailedError as exc:
            silent = {rank: f for rank, f in exc.failures.items() if rank not in exits.recorded_ranks(Path(folder))}
            first = exits.first_failure(Path(folder))
            if silent:  # a process killed outright: the others' errors (a lost connection) are its consequence
                rank, failure = min(silent.items(), key=lambda item: item[1].timestamp)
                how = f"signal {-failure.exitcode}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
                return 1, (f"rank {rank} of {nproc} died ({how}) before it could say why; the run stopped: rerun "
                           "the same command to resume")
            if first:
                return first["code"], first["message"]
            return 1, f"internal error: the {nproc} processes failed without a recorded cause"
        except SignalException:  # Ctrl-C or SIGTERM: the launcher stopped the processes
            return exits.INTERRUPTED, exits.INTERRUPTED_MESSAGE
    return 0, None


@contextmanager
def _environment(**values: str):
    """Set environment variables for the processes started inside the block; restore them after."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
