"""Progress on the terminal (rich): one line per stage, bars for epochs and batches, and the stages' log
records (pipeline/core/logs.py) in between."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from pipeline.core.logs import to_console

Watcher = Callable[[str, int, int], None]  # (unit, done, total) of a bar that counts a unit


class Bar:
    def __init__(self, progress: RichProgress, task_id: int, on_advance: Callable[[int], None] | None = None):
        self._progress, self._id, self._on_advance = progress, task_id, on_advance
        self.done = 0

    def advance(self, steps: int = 1, info: str | None = None) -> None:
        fields = {} if info is None else {"info": info}
        self._progress.update(self._id, advance=steps, **fields)
        self.done += steps
        if steps and self._on_advance:
            self._on_advance(self.done)


class Progress:
    """Bars go to stderr (or `file`); `log` lines (the engine's) and, while entered, the stages' log records
    stay in the scrollback (and in CI logs)."""

    def __init__(self, console: Console | None = None, quiet: bool = False, file: TextIO | None = None):
        self.console = console or Console(file=file, stderr=True, highlight=False, quiet=quiet)
        self._watcher: Watcher | None = None
        self._rich = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                  console=self.console)

    def __enter__(self) -> Progress:
        self._exit = ExitStack()
        self._exit.enter_context(to_console(self.console))
        self._rich.start()
        return self

    def __exit__(self, *exc) -> None:
        self._rich.stop()
        self._exit.close()

    def log(self, message: str) -> None:
        self.console.print(message, soft_wrap=True)  # a log line is one line, also in files and CI logs

    @contextmanager
    def bar(self, description: str, total: int, unit: str | None = None) -> Iterator[Bar]:
        """A bar of `total` steps; one that counts a `unit` (a stage's epochs, artifacts) tells the watcher."""
        task_id = self._rich.add_task(description, total=total, info="")
        watcher = self._watcher if unit else None
        if watcher:
            watcher(unit, 0, total)
        try:
            yield Bar(self._rich, task_id, (lambda done: watcher(unit, done, total)) if watcher else None)
        finally:
            self._rich.remove_task(task_id)

    @contextmanager
    def watching(self, watcher: Watcher) -> Iterator[None]:
        """Call watcher(unit, done, total) as the bars that count a unit start and advance."""
        self._watcher = watcher
        try:
            yield
        finally:
            self._watcher = None
