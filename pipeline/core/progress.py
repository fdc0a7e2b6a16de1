"""Progress on the terminal (rich): one line per stage, bars for epochs and batches, and the stages' log
records (pipeline/core/logs.py) in between."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from pipeline.core.logs import to_console


class Bar:
    def __init__(self, progress: RichProgress, task_id: int):
        self._progress, self._id = progress, task_id

    def advance(self, steps: int = 1, info: str | None = None) -> None:
        fields = {} if info is None else {"info": info}
        self._progress.update(self._id, advance=steps, **fields)


class Progress:
    """Bars go to stderr (or `file`); `log` lines (the engine's) and, while entered, the stages' log records
    stay in the scrollback (and in CI logs)."""

    def __init__(self, console: Console | None = None, quiet: bool = False, file: TextIO | None = None):
        self.console = console or Console(file=file, stderr=True, highlight=False, quiet=quiet)
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
    def bar(self, description: str, total: int) -> Iterator[Bar]:
        task_id = self._rich.add_task(description, total=total, info="")
        try:
            yield Bar(self._rich, task_id)
        finally:
            self._rich.remove_task(task_id)
