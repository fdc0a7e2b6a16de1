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


def test_the_main_process_goes_on_while_a_busy_worker_has_not_read_a_call_larger_than_the_pipe(monkeypatch, tmp_path):
    """The worker reads its call after its imports (torch's, 1.4 s in the export stage); a call of the stage's
    images fills the pipe's buffer: sent by a thread, it holds no backend of this process back."""
    flag = tmp_path / "a ran"
    monkeypatch.setenv("FORMATS_TOY_FLAG", str(flag))
    monkeypatch.setitem(backends.REGISTRY, "b", "formats_toy_late:B")
    args = {"fail": (), "flag": str(flag), "payload": bytes(4 << 20)}
    done = formats.run(ORDER, toy.build((), str(flag)), toy.call, toy.build, args, 2)
    assert done[1][0]["b"]["first_backend_ran_before_the_worker_read_its_call"]
