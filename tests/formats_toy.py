"""Toy formats for tests/test_formats.py: importable by name, so a spawned worker finds them."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.errors import UserError

log = logging.getLogger("backends.toy")


@dataclass
class Toy:
    name: str
    own_process: bool = False
    independent: bool = True


@dataclass
class Job:
    fail: tuple[str, ...] = ()
    folder: str = ""  # where each call leaves "NAME ran"; a's call then waits for "c ran" ...
    patience: float = 0.0  # ... at most this long
    notes: list[str] = field(default_factory=list)


A, B, C = Toy("a"), Toy("b", own_process=True), Toy("c")
C_READS_A = Toy("c", independent=False)


def build(fail: tuple[str, ...], folder: str = "", patience: float = 0.0, payload: bytes = b"") -> Job:
    return Job(fail, folder, patience)


def call(backend: Toy, job: Job) -> dict:
    log.info(f"{backend.name} in {os.getpid()}")
    if backend.name in job.fail:
        raise UserError(f"{backend.name} failed")
    if job.folder:
        Path(job.folder, f"{backend.name} ran").touch()
        deadline = time.monotonic() + (job.patience if backend.name == "a" else 0)
        while not Path(job.folder, "c ran").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    job.notes.append(f"note {backend.name}")
    return {backend.name: {"pid": os.getpid(), "worker_start_saw_a": os.environ.get("FORMATS_TOY_SEEN")}}
