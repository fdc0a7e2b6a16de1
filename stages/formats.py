"""The formats of the export and quantize stages, split over two processes where the host has two cores for them: a
backend that declares `own_process` (ExecuTorch, whose lowering is the longest work of both stages) runs in a
spawned worker while the others run here, each process at one torch thread. The records, notes and the first
error are taken in registry order, so the stage writes what one process writes (the same files: bench/
post_training.py compares them); log lines arrive as they happen. A backend that runs apart reads no record of
the backends before it (it may run first).
"""
from __future__ import annotations

import importlib
import logging
import multiprocessing
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.core.errors import UserError

log = logging.getLogger(__name__)

Call = Callable[[Any, Any], dict]  # (backend, job) -> its records


def processes(setting: int) -> int:
    """Processes for the formats: `setting`, or with 0 one per usable core, at most 2."""
    from targets.agent.host import usable_cores

    return setting or min(2, usable_cores())


def run(order: list, job, call: Call, build: Callable[..., Any], args: dict, setting: int
        ) -> list[tuple[dict, list[str]]]:
    """(records, notes) of each backend of `order`, in order: call(backend, job) here, and for those that declare
    `own_process`, when there are two processes, call(backend, build(**args)) in a worker (`build`, `call` and
    `args` picklable: the worker's job is built as the stage built `job`). A backend's notes are those it added
    to job.notes (the quantize stage's). The first error in registry order is raised once every started
    backend has ended; an interrupt here stops the worker."""
    apart = [b for b in order if b.own_process] if processes(setting) > 1 else []
    if not apart:
        return [_call(call, b, job) for b in order]
    import backends

    outcomes: dict[str, Any] = {}
    with _one_torch_thread(), _forwarded_logs() as queue:
        workers = {b.name: _Worker(queue, call, build, args, backends.REGISTRY[b.name]) for b in apart}
        try:
            for backend in order:
                if backend.name in workers:
                    continue
                try:
                    outcomes[backend.name] = _call(call, backend, job)
                except Exception as exc:  # the worker's backends still end: an earlier one may fail first
                    outcomes[backend.name] = exc
                    break
            for name, worker in workers.items():
                outcomes[name] = worker.result()
        finally:
            for worker in workers.values():
                worker.stop()
    done = []
    for backend in order:
        outcome = outcomes.get(backend.name)
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is not None:
            done.append(outcome)
    return done


def _call(call: Call, backend, job) -> tuple[dict, list[str]]:
    notes = getattr(job, "notes", None)
    before = len(notes) if notes is not None else 0
    records = call(backend, job)
    return records, list(notes[before:]) if notes is not None else []


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def _forwarded_logs() -> Iterator[Any]:
    """A queue the workers' project log records arrive on, each handled here by its own logger (so the run's
    console shows it as it shows this process's)."""
    queue = multiprocessing.get_context("spawn").Queue()

    def forward() -> None:
        while (record := queue.get()) is not None:
            logging.getLogger(record.name).handle(record)

    thread = threading.Thread(target=forward, name="worker logs", daemon=True)
    thread.start()
    try:
        yield queue
    finally:
        queue.put(None)
        thread.join()


class _Worker:
    """One backend's call in a spawned process; its result (records and notes, or its exception) comes back on a
    pipe."""

    def __init__(self, queue, call: Call, build: Callable[..., Any], args: dict, target: str):
        context = multiprocessing.get_context("spawn")
        self.reader, writer = context.Pipe(duplex=False)
        self.process = context.Process(target=_entry, args=(writer, queue, call, build, args, target),
                                       name=f"manifold-edge {target.partition(':')[0]}")
        self.process.start()
        writer.close()

    def result(self) -> tuple[dict, list[str]] | BaseException:
        try:
            outcome = self.reader.recv()
        except EOFError:
            self.process.join()
            return RuntimeError(f"the {self.process.name} process ended with exit code {self.process.exitcode} "
                                "and no result")
        self.process.join()
        return outcome

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()


def _entry(writer, queue, call: Call, build: Callable[..., Any], args: dict, target: str) -> None:
    """The worker: the project's log records to `queue`, one torch thread, then the call."""
    import logging.handlers

    import torch

    from pipeline.core.logs import PROJECT, quiet_third_party

    quiet_third_party()
    handler = logging.handlers.QueueHandler(queue)
    for name in PROJECT:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    torch.set_num_threads(1)
    module, _, attr = target.partition(":")
    try:
        backend = getattr(importlib.import_module(module), attr)
        outcome: Any = _call(call, backend, build(**args))
    except UserError as exc:  # one line for the user, as from this process
        outcome = UserError(str(exc))
    except Exception:
        outcome = RuntimeError(f"in the {module} process: {traceback.format_exc()}")
    writer.send(outcome)
    writer.close()
