"""The formats of the export and quantize stages, split over two processes where the host has two cores for them: a
backend that declares `own_process` (ExecuTorch, whose lowering is the longest work of both stages) runs in a
worker process while this one runs the others from the front of the registry order; once the worker is done with
its own, it takes the others from the back (those that declare `independent`: they read no other backend's record
of the stage), so that the two processes end together whichever format is slow on this model and host. Each
process runs at one torch thread. The records, notes and the first error are taken in registry order, so the stage
writes what one process writes (the same files: docs/benchmarks.md); log lines arrive as they happen. The worker is
spawned once and serves both stages of a run (its imports, torch's and ExecuTorch's 7 s, are paid once); it ends
with this process, or when interrupted.
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
    """(records, notes) of each backend of `order`, in order: call(backend, job) here, and in the worker, when there
    are two processes, call(backend, build(**args)) for the backends that declare `own_process`, then for those it
    takes from the back of the others (`build`, `call` and `args` picklable: the worker's job is built as the stage
    built `job`). A backend's notes are those it added to job.notes (the quantize stage's). Each process takes no
    backend after its first error; the first error in registry order is raised once every started backend has
    ended; an interrupt here stops the worker."""
    pinned = [b for b in order if b.own_process] if processes(setting) > 1 else []
    if not pinned:
        return [_call(call, b, job) for b in order]
    import backends

    rest = [b for b in order if not b.own_process]  # this process takes from the front, the worker from the back
    outcomes: dict[str, Any] = {}
    lock = threading.Lock()

    def movable(backend) -> bool:
        return backend.name in backends.REGISTRY and backend.independent

    def apart() -> None:
        """The worker's share, one backend at a time."""
        queue = list(pinned)
        while True:
            with lock:
                if not queue and rest and movable(rest[-1]):
                    queue.append(rest.pop())
                if not queue:
                    return
                backend = queue.pop(0)
            try:  # sent from this thread: a call larger than the pipe's buffer (the stage's images) waits until
                # the worker reads it, after its imports (torch's 1.4 s), and holds no backend of this process back
                worker.submit(backends.REGISTRY[backend.name], call, build, args)
                outcome = worker.result()
            except Exception as exc:  # not sent (e.g. unpicklable)
                outcome = exc
            outcomes[backend.name] = outcome
            if isinstance(outcome, BaseException):
                return

    with _one_torch_thread():
        worker = _worker()
        driver = threading.Thread(target=apart, name="manifold-edge formats apart", daemon=True)
        driver.start()
        try:
            while True:
                with lock:
                    backend = rest.pop(0) if rest else None
                if backend is None:
                    break
                try:
                    outcomes[backend.name] = _call(call, backend, job)
                except Exception as exc:  # the worker's backend still ends: an earlier one may fail first
                    outcomes[backend.name] = exc
                    with lock:
                        rest.clear()
                    break
            driver.join()
        except BaseException:  # an interrupt: the worker's call is abandoned with it
            with lock:
                rest.clear()
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


_workers: list[_Worker] = []  # this process's worker, once spawned


def _worker() -> _Worker:
    if not _workers or not _workers[0].process.is_alive():
        _workers[:] = [_Worker()]
    return _workers[0]


class _Worker:
    """A spawned process serving backends' calls, one at a time. Its project log records and each call's
    outcome (records and notes, or the exception) come back on a pipe, read by a thread here that hands every
    record to its own logger (the run's console shows it as it shows this process's)."""

    def __init__(self):
        context = multiprocessing.get_context("spawn")
        self.connection, theirs = context.Pipe()
        self.process = context.Process(target=_serve, args=(theirs,), daemon=True, name="manifold-edge formats")
        self.process.start()
        theirs.close()
        self.outcomes: queues.Queue = queues.Queue()
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

    def submit(self, target: str, call: Call, build: Callable[..., Any], args: dict) -> None:
        """call(the backend at registry `target`, build(**args)) in the worker."""
        self.connection.send((target, call, build, args))

    def result(self) -> tuple[dict, list[str]] | BaseException:
        return self.outcomes.get()

    def stop(self) -> None:
        self.process.terminate()
        self.process.join()
        if self in _workers:
            _workers.remove(self)


class _PipeHandler(logging.handlers.QueueHandler):
    """The worker's project log records, made picklable, sent on its pipe."""

    def __init__(self, connection):
        super().__init__(None)
        self.connection, self.lock_send = connection, threading.Lock()

    def enqueue(self, record: logging.LogRecord) -> None:
        with self.lock_send:
            self.connection.send(("log", record))


def _serve(connection) -> None:
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
    while True:
        try:
            target, call, build, args = connection.recv()
        except EOFError:
            return
        module, _, attr = target.partition(":")
        try:
            outcome: Any = _call(call, getattr(importlib.import_module(module), attr), build(**args))
        except UserError as exc:  # one line for the user, as from this process
            outcome = UserError(str(exc))
        except Exception:
            outcome = RuntimeError(f"in the {module} process: {traceback.format_exc()}")
        connection.send(("done", outcome))
