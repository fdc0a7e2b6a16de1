"""Library output into the run's log: while a run's stages execute, file descriptors 1 and 2 point at the log
file, so what the libraries write there (native lines from C++ code, Python prints, warnings, their own
logging handlers and progress bars, child processes) is kept in the log and not shown, and our own console
writes to copies of the terminal's descriptors."""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass
class Streams:
    """Where our own lines go while library output is captured: the terminal's stdout and stderr."""
    out: TextIO
    err: TextIO


def _on_descriptors() -> bool:
    """sys.stdout and sys.stderr are fds 1 and 2 (not pytest's capsys or a notebook's streams)."""
    try:
        return sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2
    except (AttributeError, ValueError, OSError):
        return False


@contextmanager
def library_output_to(log: Path | None, title: str = "") -> Iterator[Streams]:
    """Point fds 1 and 2 at `log` (appended, after a line with the time and `title`) for the duration, and
    yield streams on the terminal's stdout and stderr for our own lines; everything is restored on the way
    out, an error or Ctrl-C included. With `log` None (`run --verbose`) the libraries' output is shown, all of
    it on stderr: stdout keeps our results only. Where sys.stdout/sys.stderr are not fds 1 and 2 nothing is
    redirected and the streams are sys.stdout and sys.stderr."""
    if not _on_descriptors():
        yield Streams(sys.stdout, sys.stderr)
        return
    with ExitStack() as stack:
        target = 2
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            file = stack.enter_context(open(log, "ab"))
            file.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {title} (pid {os.getpid()})\n".encode())
            file.flush()
            target = file.fileno()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        saved = [os.dup(1), os.dup(2)]
        streams = Streams(*(open(fd, "w", buffering=1, encoding=s.encoding, errors=s.errors)
                            for fd, s in zip(saved, (sys.stdout, sys.stderr))))
        try:
            os.dup2(target, 1)
            os.dup2(target, 2)  # without a log: dup2(2, 2), stderr stays
            yield streams
        finally:
            for stream in (sys.stdout, sys.stderr):  # what a library left in Python's buffers belongs there too
                with suppress(OSError, ValueError):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            streams.out.close()
            streams.err.close()
