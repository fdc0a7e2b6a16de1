"""The formats split over two processes (stages/formats.py): the same records, notes and first error as in one
process, in registry order, and the worker's log lines on this process's loggers."""
from __future__ import annotations

import logging
import os

import formats_toy as toy
import pytest

import backends
from pipeline.core.errors import UserError
from stages import formats

ORDER = [toy.A, toy.B, toy.C]


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(backends.REGISTRY, "b", "formats_toy:B")


@pytest.mark.parametrize("setting", [1, 2])
def test_records_and_notes_come_in_registry_order_with_the_own_process_backend_apart(registered, setting, caplog):
    caplog.set_level(logging.INFO, logger="backends.toy")
    done = formats.run(ORDER, toy.build(()), toy.call, toy.build, {"fail": ()}, setting)
    assert [list(records) for records, _ in done] == [["a"], ["b"], ["c"]]
    assert [notes for _, notes in done] == [["note a"], ["note b"], ["note c"]]
    pids = {name: record["pid"] for records, _ in done for name, record in records.items()}
    assert pids["a"] == pids["c"] == os.getpid() and (pids["b"] != os.getpid()) == (setting == 2)
    assert f"b in {pids['b']}" in caplog.messages  # the worker's line, handled by this process's logger


@pytest.mark.parametrize("fail, first", [(("b", "c"), "b failed"), (("a", "b"), "a failed"), (("c",), "c failed")])
def test_the_first_error_in_registry_order_is_raised(registered, fail, first):
    with pytest.raises(UserError, match=f"^{first}$"):
        formats.run(ORDER, toy.build(fail), toy.call, toy.build, {"fail": fail}, 2)


def test_one_worker_serves_every_call_of_a_process(registered):
    """Spawned once: the export and quantize stages of a run share its imports."""
    first, second = (formats.run(ORDER, toy.build(()), toy.call, toy.build, {"fail": ()}, 2)[1][0]["b"]["pid"]
                     for _ in range(2))
    assert first == second != os.getpid()


WAITING_WORKER = """import os, time
from pathlib import Path
flag, deadline = Path(os.environ["FORMATS_TOY_FLAG"]), time.time() + 30
while not flag.exists() and time.time() < deadline:
    time.sleep(0.01)
os.environ["FORMATS_TOY_SEEN"] = str(flag.exists())
"""


def test_the_main_process_goes_on_while_a_starting_worker_has_not_read_a_call_larger_than_the_pipe(
        registered, monkeypatch, tmp_path):
    """The worker reads its first call after its imports (torch's, 1.4 s in the export stage); a call of the stage's
    images fills the pipe's buffer: sent by a thread, it holds no backend of this process back. Here the new
    worker's start waits (a sitecustomize, at most 30 s) for the file that a, run here, leaves."""
    for worker in list(formats._workers):
        worker.stop()
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(WAITING_WORKER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FORMATS_TOY_FLAG", str(tmp_path / "a ran"))
    args = {"fail": (), "folder": str(tmp_path), "payload": bytes(4 << 20)}
    try:
        done = formats.run(ORDER, toy.build((), str(tmp_path)), toy.call, toy.build, args, 2)
    finally:
        for worker in list(formats._workers):
            worker.stop()
    assert done[1][0]["b"]["worker_start_saw_a"] == "True"


@pytest.mark.parametrize("last, moves", [(toy.C, True), (toy.C_READS_A, False)], ids=["independent", "not independent"])
def test_a_worker_done_with_its_own_backend_takes_the_last_one_left_if_independent(
        registered, monkeypatch, tmp_path, last, moves):
    """a (here) waits for c: the worker, done with b, takes c from the back of the order, the same records
    come out in registry order; a c not declared independent (it may read an earlier backend's record) stays here
    (a waits 2 s for it)."""
    monkeypatch.setitem(backends.REGISTRY, "c", "formats_toy:C")
    args = {"fail": (), "folder": str(tmp_path), "patience": 2.0 if not moves else 60.0}
    done = formats.run([toy.A, toy.B, last], toy.build(**args), toy.call, toy.build, args, 2)
    assert [list(records) for records, _ in done] == [["a"], ["b"], ["c"]]
    assert [notes for _, notes in done] == [["note a"], ["note b"], ["note c"]]
    pids = {name: record["pid"] for records, _ in done for name, record in records.items()}
    assert pids["a"] == os.getpid() != pids["b"]
    assert (pids["c"] == pids["b"]) == moves and (pids["c"] == os.getpid()) != moves
