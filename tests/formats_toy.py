"""Toy formats for tests/test_formats.py: importable by name, so a spawned worker finds them."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.errors import UserError

log = logging.getLogger("backends.toy")


@dataclass
class Toy:
    name: str
    own_process: bool = False
    record: dict = field(default_factory=dict)  # added to its call's record


@dataclass
class Job:
    fail: tuple[str, ...] = ()
    flag: str = ""  # a file the first backend creates
    notes: list[str] = field(default_factory=list)


A, B, C = Toy("a"), Toy("b", own_process=True), Toy("c")


def build(fail: tuple[str, ...], flag: str = "", payload: bytes = b"") -> Job:
    return Job(fail, flag)


def call(backend: Toy, job: Job) -> dict:
    log.info(f"{backend.name} in {os.getpid()}")
    if backend.name in job.fail:
        raise UserError(f"{backend.name} failed")
    if backend is A and job.flag:
        Path(job.flag).touch()
    job.notes.append(f"note {backend.name}")
    return {backend.name: {"pid": os.getpid(), **backend.record}}
