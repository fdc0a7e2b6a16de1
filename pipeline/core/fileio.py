"""Atomic writes: a file is either the old version or the complete new one, never half written."""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.core.errors import UserError

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def is_partial_write(path: Path) -> bool:
    """A temporary file of an atomic_write that a kill interrupted (`.NAME.XXXX.tmp`): never part of a result."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp_path) on a temporary file beside `path`, fsync it, then rename it into place."""
    path = Path(path)
    if os.environ.get("RANK", "0") != "0":  # multi-process: rank 0 alone writes (core/distributed.py)
        raise RuntimeError(f"rank {os.environ['RANK']} tried to write {path}: only rank 0 writes")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            write(Path(tmp))
        except Exception as exc:  # torch.save and numpy wrap ENOSPC in their own errors
            if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or disk_full(path.parent):
                raise UserError(f"disk full while writing {path}: free space in {path.parent} and rerun (the "
                                f"previous {path.name}, if any, is intact)") from None
            raise
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; give them the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def disk_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free == 0
    except OSError:
        return False


def out_of_space(exc: BaseException) -> bool:
    """An error caused by a full disk or quota, however a library wrapped it (its cause chain, or the
    (source, destination, reason) list of shutil.Error)."""
    seen = 0
    while exc is not None and seen < 20:
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def unwritable(folder: Path) -> str | None:
    """Why `folder` (or, when it does not exist yet, its nearest existing parent) cannot take new files:
    "is a file", the OS's reason, or None when a probe folder can be made there."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        return "is a file"
    parent = folder if folder.is_dir() else next((p for p in folder.parents if p.exists()), Path("."))
    if not parent.is_dir():
        return f"{parent} is a file"
    probe = parent / f".manifold-edge-probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        return f"cannot write there ({exc.strerror})"
    return None

