"""File locks (fcntl.flock, released by the OS when a process dies, even by kill -9).

A run folder has one owner at a time: a second `run` of the same run name refuses at once. A stage's
artifact is built by one process at a time: a run that needs an artifact another run (another run
name, same shared cache) is building waits for it, then reuses it. The owner of a run folder records
what it is building (stage, cache key, epoch e of E) in .progress.json beside the folder's lock, for
`status`; a record whose pid does not hold the lock (left by a kill -9) is ignored.
"""
from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.fileio import read_json, write_json

PROGRESS = ".progress.json"


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _lock(path: Path, blocking: bool, on_busy=None) -> int:
    """An fd holding the flock on the file now at `path`. The holder removes the file when it lets go
    (so no lock files are left behind), so a lock won on a file that is no longer at `path` is retried.
    Without `blocking`, a busy lock raises BlockingIOError after on_busy(fd) has been called."""
    while True:
        fd = _open(path)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_busy:
                    on_busy(fd)
                    on_busy = None  # once, however many lock files we wait on
                if not blocking:
                    raise
                fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:  # removed by the holder we waited for: lock the next file
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _unlock(path: Path, fd: int) -> None:
    """Remove the lock file while still holding it, then release it."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.close(fd)


def _sign(fd: int) -> None:
    """Write the holder ("pid N, started TIME") into the lock file it holds, for `holder` and the refusal."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)


def holder(path: Path) -> str | None:
    """Who holds the lock at `path` now ("pid N, started TIME"), or None when nobody does. The lock is tested,
    not the file: one left by a kill -9 is free (the OS released its flock). A shared probe: it never creates
    the file, and a run that takes the lock meanwhile only waits (or is refused) for that instant."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file: nobody holds it
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        return None
    finally:
        os.close(fd)  # releases the probe's lock


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold run_dir/.lock, or refuse with the holder's pid and start time."""
    path = Path(run_dir) / ".lock"

    def refuse(fd: int) -> None:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        raise UserError(f"{run_dir} is in use by {holder}: wait for that run to finish, or give this one "
                        "another run.name")

    fd = _lock(path, blocking=False, on_busy=refuse)
    _sign(fd)
    try:
        yield
    finally:
        _unlock(path, fd)


def record_progress(run_dir: Path, **fields) -> None:
    """What this process, the holder of run_dir's lock, is building now (stage, key, unit, done, total)."""
    write_json(Path(run_dir) / PROGRESS, {"pid": os.getpid(), **fields})


def clear_progress(run_dir: Path) -> None:
    """Nothing is being built now (its stage is done, or the run ended): the record goes."""
    (Path(run_dir) / PROGRESS).unlink(missing_ok=True)


def live_progress(run_dir: Path) -> dict | None:
    """The record of the process that holds run_dir's lock now; None when nobody holds it, or the record is
    missing, unreadable or another process's (a run killed before it could remove it)."""
    pid = re.match(r"pid (\d+)", holder(Path(run_dir) / ".lock") or "")
    if not pid:
        return None
    try:
        record = read_json(Path(run_dir) / PROGRESS)
    except (OSError, ValueError):  # not written yet, removed as the run ended, or damaged
        return None
    return record if isinstance(record, dict) and record.get("pid") == int(pid[1]) else None


@contextmanager
def wait_lock(path: Path, on_wait=None) -> Iterator[None]:
    """Hold the lock at path, waiting for another holder first (on_wait() is called once if so)."""
    fd = _lock(Path(path), blocking=True, on_busy=(lambda _fd: on_wait()) if on_wait else None)
    _sign(fd)
    try:
        yield
    finally:
        _unlock(Path(path), fd)
