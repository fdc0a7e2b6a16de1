"""The formats of the export and quantize stages, split over two processes where the host has two cores for them: a
backend that declares `own_process` (ExecuTorch, whose lowering is the longest work of both stages) runs in a
worker process while the others run here, each process at one torch thread. The records, notes and the first
error are taken in registry order, so the stage writes what one process writes (the same files: docs/
benchmarks.md); log lines arrive as they happen. A backend that runs apart reads no record of the backends before
it (it may run first). The worker is spawned once and serves both stages of a run (its imports, torch's and
ExecuTorch's 7 s, are paid once); it ends with this process, or when interrupted.
"""
from __future__ import annotations

import importlib
import logging
import logging.handlers
import multiprocessing
import queue as queues
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.reduction import ForkingPickler
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
    with _one_torch_thread():
        workers = {b.name: _worker(backends.REGISTRY[b.name]) for b in apart}
        try:
            for worker in workers.values():
                worker.submit(call, build, args)
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
        except BaseException:  # an interrupt: the worker's call is abandoned with it
            for worker in workers.values():
                worker.stop()
            raise
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


_workers: dict[str, _Worker] = {}  # by registry target, for this process's life


def _worker(target: str) -> _Worker:
    worker = _workers.get(target)
    if worker is None or not worker.process.is_alive():
        worker = _workers[target] = _Worker(target)
    return worker


class _Worker:
    """A spawned process serving one backend's calls, one at a time. Its project log records and each call's
    outcome (records and notes, or the exception) come back on a pipe, read by a thread here that hands every
    record to its own logger (the run's console shows it as it shows this process's)."""

    def __init__(self, target: str):
        context = multiprocessing.get_context("spawn")
        self.connection, theirs = context.Pipe()
        self.process = context.Process(target=_serve, args=(theirs, target), daemon=True,
                                       name=f"manifold-edge {target.partition(':')[0]}")
        self.process.start()
        theirs.close()
        self.outcomes: queues.Queue = queues.Queue()
        self.sending: threading.Thread | None = None  # the call being sent
        threading.Thread(target=self._read, name=f"{self.process.name} reader", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                kind, payload = self.connection.recv()
            except (EOFError, OSError):
                self.outcomes.put(RuntimeError(f"the {self.process.name} process ended (exit code "
                                               f"{self.process.exitcode}) without a result"))
                return
            if kind == "log":
                logging.getLogger(payload.name).handle(payload)
            else:
                self.outcomes.put(payload)

    def submit(self, call: Call, build: Callable[..., Any], args: dict) -> None:
        """Pickled here (an error is this call's), sent by a thread: a payload larger than the pipe's buffer
        (the stage's images) would hold this process until the worker reads it, after its imports (1.4 s)."""
        payload = ForkingPickler.dumps((call, build, args))
        if self.sending is not None:
            self.sending.join()
        self.sending = threading.Thread(target=self.connection.send_bytes, args=(payload,),
                                        name=f"{self.process.name} sender", daemon=True)
        self.sending.start()

    def result(self) -> tuple[dict, list[str]] | BaseException:
        return self.outcomes.get()

    def stop(self) -> None:
        self.process.terminate()
        self.process.join()
        _workers.pop(next((t for t, w in _workers.items() if w is self), ""), None)


class _PipeHandler(logging.handlers.QueueHandler):
    """The worker's project log records, made picklable, sent on its pipe."""

    def __init__(self, connection):
        super().__init__(None)
        self.connection, self.lock_send = connection, threading.Lock()

    def enqueue(self, record: logging.LogRecord) -> None:
        with self.lock_send:
            self.connection.send(("log", record))


def _serve(connection, target: str) -> None:
    """The worker: the project's log records to the pipe, one torch thread, then each call it is sent until the
    pipe closes."""
    import torch

    from pipeline.core.logs import PROJECT, quiet_third_party

    quiet_third_party()
    handler = _PipeHandler(connection)
    for name in PROJECT:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    torch.set_num_threads(1)
    module, _, attr = target.partition(":")
    backend = getattr(importlib.import_module(module), attr)
    while True:
        try:
            call, build, args = connection.recv()
        except EOFError:
            return
        try:
            outcome: Any = _call(call, backend, build(**args))
        except UserError as exc:  # one line for the user, as from this process
            outcome = UserError(str(exc))
        except Exception:
            outcome = RuntimeError(f"in the {module} process: {traceback.format_exc()}")
        connection.send(("done", outcome))
