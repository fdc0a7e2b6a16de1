"""Nothing read back from the artifact cache or a run folder runs code or half-applies: a training checkpoint is
loaded weights-only and checked whole before any of it is used (a damaged one is deleted with one warning and
the stage starts over), manifests and state.json are validated, and `status` and `report` say what they found
(damaged, running, a run that did not finish) in one line."""
from __future__ import annotations

import json
import logging
import os
import pathlib
import pickle
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import tiny_config, tiny_overrides
from pipeline.cli import main
from pipeline.core.errors import UserError
from pipeline.core.lock import run_lock
from pipeline.core.progress import Progress
from pipeline.graph import Pipeline
from pipeline.store import MANIFEST, ArtifactStore
from stages.batches import Batches
from stages.checkpoints import CHECKPOINT
from stages.recipe import TrainConfig
from stages.training import fit

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("pipeline", "stages", "targets", "bench", "tests")


# --- no unsafe loader anywhere -------------------------------------------------------------------------------

def _torch_load_calls(text: str) -> list[str]:
    """The arguments of every call of torch's load in `text` (parentheses matched, across lines)."""
    calls = []
    for match in re.finditer(r"torch\.load" + r"\(", text):
        depth, end = 1, match.end()
        while depth and end < len(text):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        calls.append(text[match.end():end - 1])
    return calls


def test_no_loader_in_the_project_can_build_objects_from_a_file():
    """Every torch.load is weights-only; nothing unpickles or lets numpy unpickle (the patterns are spelled in
    pieces so that this file does not match itself)."""
    forbidden = ["weights_only=" + "False", "pickle." + "load", "Unpickler" + "(", "allow_pickle=" + "True"]
    found = []
    for folder in SCANNED:
        for file in sorted((ROOT / folder).rglob("*.py")):
            text = file.read_text()
            where = file.relative_to(ROOT)
            found += [f"{where}: {pattern}" for pattern in forbidden if pattern in text]
            found += [f"{where}: a torch load of {call.strip()[:60]!r} is not weights_only=True"
                      for call in _torch_load_calls(text) if "weights_only=True" not in call]
    assert not found, found


# --- the training checkpoint ---------------------------------------------------------------------------------

class Hostile:
    """Unpickled by a full load, this would create `marker` (harmless; any other call would run the same way)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def _data() -> Batches:
    images = torch.randint(0, 256, (24, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return Batches(images, torch.arange(24) % 3, torch.full((1, 1, 1, 1), 0.5), torch.full((1, 1, 1, 1), 0.25))


class Killed(Exception):
    pass


def _fit(workdir: Path, kill_at_step: int | None = None) -> tuple[nn.Module, list[dict]]:
    """A 2-epoch fit (3 steps an epoch) of a linear model on 24 4x4 images: the stages' own loop, well under a
    second; with `kill_at_step`, it stops there as if killed."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    steps = []

    def step(forward, x, y, sampling):
        steps.append(1)
        if len(steps) == kill_at_step:
            raise Killed
        return F.cross_entropy(forward(x), y), {}

    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.01)
    rows = fit(model, step, _data(), _data(), cfg, 0, False, workdir, "cpu", 0, Progress(quiet=True), "teacher")
    return model, rows


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[dict, list[dict], dict]:
    """A fit undisturbed from scratch: its weights, its metric rows and its last checkpoint (weights-only)."""
    folder = tmp_path_factory.mktemp("clean")
    model, rows = _fit(folder)
    return model.state_dict(), rows, torch.load(folder / CHECKPOINT, weights_only=True)


def _assert_started_over(workdir: Path, clean, caplog) -> None:
    """The damaged checkpoint was named in one warning and trained over: the same weights as a clean fit."""
    weights, rows, _ = clean
    with caplog.at_level(logging.WARNING, logger="stages.training"):
        model, got = _fit(workdir)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "is damaged" in warnings[0] and "starting over" in warnings[0], warnings
    assert [r["loss"] for r in got] == [r["loss"] for r in rows]
    assert all(torch.equal(model.state_dict()[k], weights[k]) for k in weights)
    assert torch.load(workdir / CHECKPOINT, weights_only=True)["epoch"] == 2  # the new one, of this fit


def test_the_training_checkpoint_loads_weights_only(clean):
    """Model, optimiser and schedule state, generator and RNG states, rows: all plain data."""
    _, rows, state = clean
    assert state["epoch"] == 2 and state["world_size"] == 1 and state["rows"] == rows
    assert set(state["rng"]) == {"order", "augmentation", "sampling"} and len(state["torch_rng"]) == 1


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_a_hostile_checkpoint_runs_nothing_and_the_stage_starts_over(tmp_path, clean, caplog, how):
    marker = tmp_path / "marker"
    _, _, good = clean
    payload = {**good, "model": Hostile(marker)}
    checkpoint = tmp_path / CHECKPOINT
    if how == "torch.save":
        torch.save(payload, checkpoint)
    else:
        checkpoint.write_bytes(pickle.dumps(payload, protocol=2))
    _assert_started_over(tmp_path, clean, caplog)
    assert not marker.exists()


def _misfit(state: dict, change: str) -> dict | list:
    state = {**state}
    if change == "not a dict":
        return [state]
    if change == "no model":
        del state["model"]
    elif change == "epoch a string":
        state["epoch"] = "2"
    elif change == "model shape":
        state["model"] = {**state["model"], "1.weight": torch.zeros(4, 16)}
    elif change == "model keys":
        state["model"] = {"weight": torch.zeros(3, 16)}
    elif change == "optimizer moments":
        moments = state["optimizer"]["state"]
        state["optimizer"] = {**state["optimizer"], "state": {**moments, 0: {**moments[0], "exp_avg": torch.zeros(7)}}}
    elif change == "optimizer groups":
        state["optimizer"] = {**state["optimizer"], "param_groups": []}
    elif change == "schedule keys":
        state["schedule"] = {**state["schedule"], "optimizer": None}
    elif change == "generator state":
        state["rng"] = {**state["rng"], "order": torch.zeros(3, dtype=torch.uint8)}
    elif change == "epoch past the end":
        state["epoch"] = 9
    return state


@pytest.mark.parametrize("change", ["not a dict", "no model", "epoch a string", "model shape", "model keys",
                                    "optimizer moments", "optimizer groups", "schedule keys", "generator state",
                                    "epoch past the end"])
def test_a_checkpoint_of_the_wrong_shape_is_damaged_and_nothing_of_it_is_applied(tmp_path, clean, caplog, change):
    """Checked whole before anything is loaded: a model half-loaded from it would not train to the clean weights."""
    torch.save(_misfit(clean[2], change), tmp_path / CHECKPOINT)
    _assert_started_over(tmp_path, clean, caplog)


def test_a_truncated_checkpoint_is_damaged(tmp_path, clean, caplog):
    whole = tmp_path / "whole"
    whole.mkdir()
    torch.save(clean[2], whole / CHECKPOINT)
    data = (whole / CHECKPOINT).read_bytes()
    (tmp_path / CHECKPOINT).write_bytes(data[: len(data) // 2])
    _assert_started_over(tmp_path, clean, caplog)


def test_a_good_checkpoint_still_resumes(tmp_path, clean, caplog):
    """Killed in epoch 2: the rerun resumes after epoch 1, with no warning, to the clean fit's weights."""
    with pytest.raises(Killed):
        _fit(tmp_path, kill_at_step=5)
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["epoch"] == 1
    with caplog.at_level(logging.INFO, logger="stages.training"):
        model, rows = _fit(tmp_path)
    messages = [r.getMessage() for r in caplog.records]
    assert any("resuming after epoch 1/2" in m for m in messages), messages
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r["loss"], r["val_top1"]) for r in rows] == [(r["loss"], r["val_top1"]) for r in clean[1]]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in clean[0].items())


def test_status_names_a_damaged_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path)
    pipeline = Pipeline(cfg)
    key = next(s.key for s in pipeline.plan() if s.name == "teacher")
    work = pipeline.store.begin("teacher", key)
    torch.save({"model": Hostile(tmp_path / "marker")}, work / CHECKPOINT)
    teacher = next(s for s in pipeline.status() if s.name == "teacher")
    assert teacher.state == "damaged" and "checkpoint.pt is damaged" in teacher.reason, teacher
    assert "starts the stage over" in teacher.reason and not (tmp_path / "marker").exists()
    torch.save({"model": {}}, work / CHECKPOINT)  # loads, but is no training state
    teacher = next(s for s in pipeline.status() if s.name == "teacher")
    assert teacher.state == "damaged" and "no 'optimizer'" in teacher.reason, teacher


# --- manifests and saved models --------------------------------------------------------------------------------

@pytest.mark.parametrize("manifest", [[], {"files": []}, {"files": {"../../etc/passwd": {"sha256": "0", "bytes": 1}}},
                                      {"files": {"/etc/passwd": {"sha256": "0", "bytes": 1}}},
                                      {"files": {"model.pt": "x"}}, {"files": {}, "summary": []}])
def test_a_manifest_of_the_wrong_shape_is_damaged_and_never_reads_outside(tmp_path, manifest):
    store = ArtifactStore(tmp_path)
    store.path("teacher", "k" * 64).mkdir()
    (store.path("teacher", "k" * 64) / MANIFEST).write_text(json.dumps(manifest))
    state, reason = store.check("teacher", "k" * 64)
    assert state == "damaged" and "unreadable manifest" in reason


def test_a_file_of_an_artifact_that_links_outside_is_damaged(tmp_path):
    store = ArtifactStore(tmp_path / "cache")
    (tmp_path / "secret").write_text("x")
    work = store.begin("teacher", "k" * 64)
    (work / "model.pt").write_text("x")
    final = store.commit("teacher", "k" * 64, {"summary": {}, "wall_s": 1.0})
    (final / "model.pt").unlink()
    (final / "model.pt").symlink_to(tmp_path / "secret")
    assert store.check("teacher", "k" * 64) == ("damaged", "model.pt links outside the artifact")


def test_a_saved_model_cannot_name_a_download_or_a_checkpoint_to_load(tmp_path):
    from stages.models import FORMAT, load_model

    marker = tmp_path / "marker"
    torch.save({"model": Hostile(marker)}, tmp_path / "hostile.pth")
    record = {"format": FORMAT, "model": "hf-hub:someone/model", "kwargs": {}, "state_dict": {}}
    torch.save(record, tmp_path / "model.pt")
    with pytest.raises(UserError, match="is damaged"):
        load_model(tmp_path / "model.pt")
    kwargs = {"embed_dim": 8, "depth": 1, "num_heads": 1, "img_size": 16, "num_classes": 3}
    import timm

    weights = timm.create_model("vit_tiny_patch16_224", **kwargs).state_dict()
    kwargs.update(checkpoint_path=str(tmp_path / "hostile.pth"), pretrained=True)
    torch.save({**record, "model": "vit_tiny_patch16_224", "kwargs": kwargs, "state_dict": weights},
               tmp_path / "model.pt")
    model, _ = load_model(tmp_path / "model.pt")
    assert all(torch.equal(model.state_dict()[k], weights[k]) for k in weights) and not marker.exists()


# --- status during a run, and after a kill -9 --------------------------------------------------------------------

HOLD = ("import sys; from pipeline.core.lock import wait_lock\n"
        "with wait_lock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.readline()")


def test_status_says_running_while_another_process_builds_the_stage_and_not_after_a_kill(tmp_path):
    cfg = tiny_config(tmp_path)
    pipeline = Pipeline(cfg)
    key = next(s.key for s in pipeline.plan() if s.name == "distill")
    lock = pipeline.store.lock_path("distill", key)
    pipeline.store.begin("distill", key)  # the work folder a running stage has
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        states = {s.name: s for s in pipeline.status()}
        assert states["distill"].state == "running"
        assert states["distill"].reason.startswith(f"running (pid {holder.pid}, started "), states["distill"]
        assert states["teacher"].state == "missing"
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # like kill -9 of a run: the lock file stays, its flock does not
        holder.wait()
    assert lock.is_file() and f"pid {holder.pid}" in lock.read_text()
    distill = next(s for s in pipeline.status() if s.name == "distill")
    assert distill.state == "missing" and distill.reason == "an earlier run of it did not finish"


HOLD_RUN = ("import json, sys; from pipeline.core.lock import record_progress, run_lock\n"
            "with run_lock(sys.argv[1]):\n    record_progress(sys.argv[1], **json.loads(sys.argv[2]))\n"
            "    print('held', flush=True); sys.stdin.readline()")


def test_status_shows_the_stage_and_epoch_the_live_run_of_the_folder_builds_and_not_after_a_kill(tmp_path):
    pipeline = Pipeline(tiny_config(tmp_path))
    key = next(s.key for s in pipeline.plan() if s.name == "distill")
    pipeline.store.begin("distill", key)  # an earlier, unfinished run of it: what status said before
    record = {"stage": "distill", "key": key, "unit": "epoch", "done": 2, "total": 4}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_RUN, str(pipeline.run_dir), json.dumps(record)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        distill = next(s for s in pipeline.status() if s.name == "distill")
        assert (distill.state, distill.reason) == (
            "running", f"running (pid {holder.pid}, stage distill, epoch 3/4): a `run` is building it now")
        other = next(s for s in Pipeline(tiny_config(tmp_path, "distill.epochs=2")).status() if s.name == "distill")
        assert other.state == "running" and f"pid {holder.pid}, stage distill, epoch 3/4) with other settings" \
            in other.reason and f"(key {key[:12]})" in other.reason, other.reason
        assert next(s for s in pipeline.status() if s.name == "teacher").state == "missing"
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # the record stays behind, its pid holds no lock
        holder.wait()
    assert (pipeline.run_dir / ".progress.json").is_file()
    distill = next(s for s in pipeline.status() if s.name == "distill")
    assert (distill.state, distill.reason) == ("missing", "an earlier run of it did not finish")


def test_a_run_records_each_stage_and_epoch_it_builds_then_removes_the_record(tmp_path, monkeypatch):
    import pipeline.graph
    from pipeline.api import run

    records, record_progress = [], pipeline.graph.record_progress

    def spy(run_dir, **fields):
        record_progress(run_dir, **fields)
        records.append(json.loads((run_dir / ".progress.json").read_text()))

    monkeypatch.setattr(pipeline.graph, "record_progress", spy)
    run(None, tiny_overrides(tmp_path, "teacher.epochs=2", dataset="digits"), until="teacher", quiet=True)
    teacher = [(r["pid"], r.get("unit"), r.get("done"), r.get("total")) for r in records if r["stage"] == "teacher"]
    pid = os.getpid()
    assert teacher == [(pid, None, None, None), (pid, "epoch", 0, 2), (pid, "epoch", 1, 2), (pid, "epoch", 2, 2)]
    assert [r["stage"] for r in records][0] == "data"
    assert not (tmp_path / "runs" / "default" / ".progress.json").exists()


# --- `report` on a run that did not finish ------------------------------------------------------------------------

def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_report_on_a_killed_run_says_which_stages_finished_and_how_to_finish_it(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "default"
    run_dir.mkdir(parents=True)
    (run_dir / "state.json").write_text(json.dumps({"teacher": {"key": "b"}, "data": {"key": "a"}}))
    (run_dir / "config.json").write_text("{}")
    assert main(["report", str(run_dir)]) == 2
    line = _one_error_line(capsys)
    assert "the run did not finish" in line and "stages done: data, teacher" in line, line
    assert "rerun the same `manifold-edge run` command" in line, line
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "state.json"]  # no lock left behind


@pytest.mark.parametrize("text", ['{"data": {"ke', "\xff\xfe", "[]"])
def test_report_names_a_damaged_state_json_of_a_killed_run(tmp_path, capsys, text):
    run_dir = tmp_path / "default"
    run_dir.mkdir()
    (run_dir / "state.json").write_bytes(text.encode("latin-1"))
    assert main(["report", str(run_dir)]) == 2
    line = _one_error_line(capsys)
    why = "not a record of stages" if text == "[]" else "not JSON"
    assert f"{run_dir / 'state.json'} is damaged ({why}): rerun the same `manifold-edge run` command" in line, line


def test_report_on_a_run_in_progress_names_its_process(tmp_path, capsys):
    run_dir = tmp_path / "default"
    run_dir.mkdir()
    (run_dir / "state.json").write_text(json.dumps({"data": {"key": "a"}}))
    with run_lock(run_dir):  # another open file of the lock: flock tells them apart, even in one process
        assert main(["report", str(run_dir)]) == 2
    line = _one_error_line(capsys)
    assert f"a run is in progress (pid {os.getpid()}, started " in line, line
