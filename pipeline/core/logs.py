"""Logging: the project's records on the run's console, and third-party noise once.

Stage and target code logs through `logging.getLogger(__name__)` (plain text, no markup); while a run shows
progress, `ConsoleHandler` prints those records on its rich console, a stage's lines indented under the
engine's, warnings yellow and errors red. A library that logs the same kind of warning many times
(coremltools' eight "Failed to load _ML...Proxy" lines on Linux, its version notices) shows each kind once
per process."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.text import Text

NOISY = ("coremltools", "torch.utils.cpp_extension", "nncf")  # loggers that repeat one warning
PROJECT = ("backends", "stages", "targets")  # the loggers of the code that a run's stages execute
STYLES = {logging.WARNING: "yellow", logging.ERROR: "bold red", logging.CRITICAL: "bold red"}


class ConsoleHandler(logging.Handler):
    """One record, one line on a rich console (never wrapped: logs are read in files and CI too). Not rich's
    RichHandler: it lays each record out as a table at the console's width, which splits long lines."""

    def __init__(self, console: Console):
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = Text("  " + self.format(record), style=STYLES.get(record.levelno, ""))
            self.console.print(text, soft_wrap=True)
        except Exception:
            self.handleError(record)


@contextmanager
def to_console(console: Console) -> Iterator[None]:
    """Show the project's INFO records and up on `console` for the duration, and only there: they do not
    propagate to the root logger meanwhile, where a library may have put its own handler (one that the
    Core ML / LiteRT imports install would print every line a second time, timestamped)."""
    handler = ConsoleHandler(console)
    loggers = [logging.getLogger(name) for name in PROJECT]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, (level, propagate) in zip(loggers, saved):
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


class OncePerKind(logging.Filter):
    """Passes the first record of each kind: the same logger, level and first three words of the message."""

    def __init__(self):
        super().__init__()
        self.seen: set[tuple[str, int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, " ".join(str(record.msg).split()[:3]))
        if kind in self.seen:
            return False
        self.seen.add(kind)
        return True


def quiet_third_party() -> None:
    """Install the filter on the noisy libraries' loggers (before they are imported: they log at import)."""
    for name in NOISY:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OncePerKind) for f in logger.filters):
            logger.addFilter(OncePerKind())


@contextmanager
def quiet(stdout: bool = False, logger: str | None = None) -> Iterator[None]:
    """Silence a converter's chatter around one call: its Python warnings, its tqdm bars and prints on stderr
    (and stdout when asked), and its logging below errors (every logger, or only `logger`). Lines that native
    code writes to the file descriptors themselves are not caught here."""
    target = logging.getLogger(logger) if logger else None
    previous = target.level if target else logging.root.manager.disable
    if target:
        target.setLevel(logging.ERROR)
    else:
        logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stderr(io.StringIO()), \
                contextlib.redirect_stdout(io.StringIO()) if stdout else contextlib.nullcontext(), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if target:
            target.setLevel(previous)
        else:
            logging.disable(previous)
