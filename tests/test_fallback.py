"""The INT8 accuracy fallback's budget (backends/fallback.py), judged with its interval (issue 41)."""
from __future__ import annotations

import logging

import numpy as np

from backends.fallback import images_for, with_fallback


def _run(images: int, flipped: int, caplog) -> dict:
    """fp32 right on every image; INT8 wrong on `flipped` of them until layer "a" is kept in float."""
    labels = np.arange(images) % 10
    wrong = labels.copy()
    wrong[:flipped] = (wrong[:flipped] + 1) % 10

    def predictions(excluded: list[str]) -> np.ndarray:
        return labels if "a" in excluded else wrong

    caplog.set_level(logging.INFO, logger="backends.fallback")
    return with_fallback("toy INT8", labels, labels, 1.0, 4, 2, predictions,
                         lambda: [{"node": "a", "relative_mse": 2.0}, {"node": "b", "relative_mse": 1.0}],
                         lambda node: f"layer {node}").as_dict()


def test_one_image_of_a_small_split_is_no_real_loss_and_is_said_to_be_coarser_than_the_budget(caplog):
    result = _run(60, 1, caplog)  # 1.67 points, more than max_drop 1.0, but one image
    assert result["met"] and result["excluded"] == [] and len(result["steps"]) == 1
    step = result["steps"][0]
    assert step["drop"] == 1.667 and step["delta_interval"][1] > 0 and not step["over"]
    assert images_for(1.0) == 101
    assert any("one of 60 validation images is 1.67 top-1 points, more than quantize.max_drop = 1" in m
               and "give at least 101" in m for m in caplog.messages)


def test_a_real_loss_over_the_budget_keeps_layers_in_float_and_names_them(caplog):
    result = _run(1000, 20, caplog)  # 2 points, real on 1000 images
    assert [s["over"] for s in result["steps"]] == [True, False] and result["met"]
    assert result["excluded"] == ["a"] and result["excluded_names"] == ["layer a"] and result["layers"] == 2
    assert not any("validation images is" in m for m in caplog.messages)


def test_a_sigterm_during_a_step_stops_the_loop_before_the_next_step(caplog):
    """Issue 41 §6: the CLI's SIGTERM handler (Ctrl-C's path: partial work stays resumable) is reached between
    fallback steps; no further layer is quantized once it is sent."""
    import os
    import signal

    import pytest

    from pipeline.cli import _terminate

    labels = np.arange(1000) % 10
    wrong = (labels + 1) % 10
    calls = []

    def predictions(excluded: list[str]) -> np.ndarray:
        calls.append(list(excluded))
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the step's (native) work runs
        return wrong

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with pytest.raises(KeyboardInterrupt):
            with_fallback("toy INT8", labels, labels, 1.0, 4, 2, predictions,
                          lambda: [{"node": "a", "relative_mse": 1.0}, {"node": "b", "relative_mse": 0.5}])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert calls == [[]]


def test_a_stand_in_judges_the_steps_and_the_file_is_written_once(caplog):
    """ExecuTorch's path: the steps on a cheap stand-in (the fake-quantized graph), the file once, at the end."""
    labels = np.arange(1000) % 10
    wrong = (labels + 1) % 10
    written = []

    def stand_in(excluded: list[str]) -> np.ndarray:
        return labels if "a" in excluded else wrong

    def final(excluded: list[str]) -> np.ndarray:
        written.append(list(excluded))
        return stand_in(excluded)

    result = with_fallback("toy INT8", labels, labels, 1.0, 4, 2, stand_in,
                           lambda: [{"node": "a", "relative_mse": 2.0}, {"node": "b", "relative_mse": 1.0}],
                           final=final).as_dict()
    assert written == [["a"]] and result["met"] and result["stopped"] == "within budget"
    assert [(s["excluded"], s["judged"], s["over"]) for s in result["steps"]] == [
        ([], "stand-in", True), (["a"], "stand-in", False), (["a"], "file", False)]


def test_a_file_over_budget_where_its_stand_in_was_not_goes_on_writing_each_step(caplog):
    labels = np.arange(1000) % 10
    wrong = (labels + 1) % 10
    written = []

    def final(excluded: list[str]) -> np.ndarray:  # the file needs "a" and "b" in float; its stand-in none
        written.append(list(excluded))
        return labels if {"a", "b"} <= set(excluded) else wrong

    result = with_fallback("toy INT8", labels, labels, 1.0, 4, 2, lambda excluded: labels,
                           lambda: [{"node": "a", "relative_mse": 2.0}, {"node": "b", "relative_mse": 1.0}],
                           final=final).as_dict()
    assert written == [[], ["a"], ["a", "b"]] and result["met"]
    assert [s["judged"] for s in result["steps"]] == ["stand-in", "file", "file", "file"]


def test_the_loop_starts_no_step_after_max_seconds_and_says_so(caplog):
    labels = np.arange(1000) % 10
    wrong = (labels + 1) % 10
    calls = []

    def predictions(excluded: list[str]) -> np.ndarray:
        calls.append(list(excluded))
        return wrong

    caplog.set_level(logging.WARNING, logger="backends.fallback")
    result = with_fallback("toy INT8", labels, labels, 1.0, 4, 2, predictions,
                           lambda: [{"node": "a", "relative_mse": 1.0}, {"node": "b", "relative_mse": 0.5}],
                           max_seconds=0.0).as_dict()
    assert calls == [[]] and not result["met"] and result["stopped"] == "max_fallback_seconds"
    assert result["sensitivity"] == []  # no ranking either
    assert any("stopped after 0 s (quantize.max_fallback_seconds = 0)" in m for m in caplog.messages)
