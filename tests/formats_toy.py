"""Toy formats for tests/test_formats.py: importable by name, so a spawned worker finds them."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from pipeline.core.errors import UserError

log = logging.getLogger("backends.toy")


@dataclass
class Toy:
    name: str
    own_process: bool = False


@dataclass
class Job:
    fail: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)


A, B, C = Toy("a"), Toy("b", own_process=True), Toy("c")


def build(fail: tuple[str, ...]) -> Job:
    return Job(fail)


def call(backend: Toy, job: Job) -> dict:
    log.info(f"{backend.name} in {os.getpid()}")
    if backend.name in job.fail:
        raise UserError(f"{backend.name} failed")
    job.notes.append(f"note {backend.name}")
    return {backend.name: {"pid": os.getpid()}}
