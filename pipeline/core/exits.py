"""How the processes of a multi-process run report their end, so the user hears about it once.

When one process fails, torchrun's agent stops the others (SIGTERM), and their exit codes then say
nothing about the cause. Under `distributed.launch` each process leaves its exit code and message in
a folder instead of printing them; the launcher prints the first failure (by time) and returns its code.
No torch here: the CLI imports this at start-up.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

FOLDER_ENV = "MANIFOLD_EDGE_EXITS"
INTERRUPTED = 130
INTERRUPTED_MESSAGE = ("interrupted: rerun the same command; completed stages are reused (a training stage resumes "
                       "from its last completed epoch)")


class StageInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM inside a stage: which one, and whether its rerun resumes from a checkpoint."""

    def __init__(self, stage: str, resumes: bool):
        super().__init__(stage)
        self.stage, self.resumes = stage, resumes


def interrupted_message(exc: KeyboardInterrupt) -> str:
    """What a rerun does after this interruption: only a training stage resumes; any other starts over."""
    if not isinstance(exc, StageInterrupted):
        return INTERRUPTED_MESSAGE
    then = "resumes from its last completed epoch" if exc.resumes else "starts over"
    return f"interrupted during {exc.stage}: rerun the same command; completed stages are reused and {exc.stage} {then}"


def record(code: int, message: str) -> bool:
    """Leave this process's exit code and message for the launcher; False when not launched by it."""
    folder = os.environ.get(FOLDER_ENV)
    if not folder:
        return False
    rank = int(os.environ.get("RANK", "0"))
    entry = {"rank": rank, "code": code, "message": message, "time": time.time()}
    tmp = Path(folder) / f".{rank}.tmp"
    tmp.write_text(json.dumps(entry))
    tmp.rename(Path(folder) / f"{rank}.json")
    return True


def recorded_ranks(folder: Path) -> set[int]:
    """The ranks that left an exit record (a process killed outright leaves none)."""
    return {int(path.stem) for path in Path(folder).glob("*.json") if path.stem.isdigit()}


def first_failure(folder: Path) -> dict | None:
    """The earliest recorded failure; an interruption only when nothing else failed (the launcher's SIGTERM
    to the other processes is a consequence, not a cause)."""
    entries = []
    for path in Path(folder).glob("*.json"):
        try:
            entries.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    failures = sorted((e for e in entries if e["code"]), key=lambda e: (e["code"] == INTERRUPTED, e["time"]))
    return failures[0] if failures else None
