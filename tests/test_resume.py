"""An interrupted distillation resumes from its last epoch checkpoint and ends with the same weights."""
from __future__ import annotations

import os
import signal

import pytest
import torch

from conftest import INTERRUPTED, distilled_weights, folder_with_a_broken_image
from test_reliability import start, wait_for

pytestmark = pytest.mark.slow


def test_killed_distill_resumes_to_identical_weights(tmp_path, clean_run):
    """Killed right after its first checkpoint, rerun: it resumes, and ends with the uninterrupted run's weights."""
    proc = start(tmp_path, *INTERRUPTED)
    checkpoint = wait_for("distill-*.partial/checkpoint.pt", tmp_path / "runs" / ".cache", proc)
    os.kill(proc.pid, signal.SIGKILL)  # a hard stop: no handler runs, like a power cut
    proc.wait()
    assert torch.load(checkpoint, weights_only=True)["epoch"] < 3

    resumed = start(tmp_path, *INTERRUPTED)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert "resuming after epoch" in output
    assert "teacher: reused" in output
    a, b = distilled_weights(clean_run.folder), distilled_weights(tmp_path)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_write_cut_short_by_a_kill_never_enters_an_artifact(tmp_path):
    """A `.metrics.jsonl.XXXX.tmp` left by a kill at the moment of a metrics write is removed at commit."""
    from pipeline.store import ArtifactStore

    store = ArtifactStore(tmp_path)
    work = store.begin("distill", "k" * 64)
    (work / "model.pt").write_bytes(b"weights")
    (work / ".metrics.jsonl.a1b2c3.tmp").write_text('{"epoch": 1')
    final = store.commit("distill", "k" * 64, {"summary": {}})
    assert sorted(store.manifest("distill", "k" * 64)["files"]) == ["model.pt"]
    assert not (final / ".metrics.jsonl.a1b2c3.tmp").exists()
    assert store.check("distill", "k" * 64)[0] == "cached"


def test_a_failed_stage_leaves_no_empty_work_folder_and_no_lock_files(tmp_path, capsys):
    """A user error inside a stage's run (an image that cannot be read) ends the run with no empty work
    folder and no lock file behind."""
    from pipeline.cli import main

    images = folder_with_a_broken_image(tmp_path, per_class=3)
    runs = tmp_path / "runs"
    code = main(["run", "--until", "data", "--set", f"run.output_dir='{runs}'", "--set", "data.dataset='imagefolder'",
                 "--set", f"data.path='{images}'", "--set", "data.img_size=8"])
    assert code == 2 and "cannot read image" in capsys.readouterr().err
    assert not list(runs.rglob("*.partial")) and not list(runs.rglob("*.lock")) and not list(runs.rglob(".lock"))
    assert not list(runs.rglob("config.json")) and not list(runs.rglob(".locks"))  # a run that never finished


def test_only_a_training_checkpoint_is_announced_as_resumed(tmp_path):
    """A killed quantize leaves its preprocessed model behind: that is not a checkpoint to resume from."""
    from pipeline.graph import stage_class
    from pipeline.store import ArtifactStore

    store = ArtifactStore(tmp_path)
    for stage in ("quantize", "distill"):
        work = store.begin(stage, "k" * 64)
        for name in stage_class(stage).scratch:
            (work / name).write_bytes(b"left by a kill")
    assert store.check("quantize", "k" * 64, stage_class("quantize").resumes)[1] == \
        "an earlier run of it did not finish"
    assert "the next run resumes it" in store.check("distill", "k" * 64, stage_class("distill").resumes)[1]
