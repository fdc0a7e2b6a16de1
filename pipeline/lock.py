"""File locks (fcntl.flock, released by the OS when a process dies, even by kill -9).

A run folder has one owner at a time: a second `run` of the same run name refuses at once. A stage's
artifact is built by one process at a time: a run that needs an artifact another run (another run
name, same shared cache) is building waits for it, then reuses it.
"""
from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import UserError


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold run_dir/.lock, or refuse with the holder's pid and start time."""
    path = Path(run_dir) / ".lock"
    fd = _open(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise UserError(f"{run_dir} is in use by {holder}: wait for that run to finish, or give this one "
                            "another run.name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextmanager
def wait_lock(path: Path, on_wait=None) -> Iterator[None]:
    """Hold the lock at path, waiting for another holder first (on_wait() is called once if so)."""
    fd = _open(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
