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
