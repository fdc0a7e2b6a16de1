"""End to end on a Fashion-MNIST subset with tiny models: outputs, cache reuse and invalidation."""
from __future__ import annotations

import json

import pytest

from conftest import artifact_folder, cli_args, read_report, tiny_config
from pipeline.cli import main
from pipeline.core.numerics import Numerics
from pipeline.graph import STAGES, Pipeline, stage_class

# The cache tests need stages, not every runtime: ONNX Runtime only, no benchmark.
LEAN = ("benchmark.enabled=false", "export.coreml.enabled=false", "quantize.coreml.enabled=false",
        "export.openvino=false", "quantize.openvino=false")


def _states(tmp_path, *extra):
    return {s.name: s for s in Pipeline(tiny_config(tmp_path, *extra)).status()}


@pytest.mark.slow
def test_tiny_run_writes_report_and_reuses_cache(tmp_path, capsys, monkeypatch):
    assert main(cli_args(tmp_path, "run")) == 0
    report = read_report(tmp_path)
    evaluation = report["evaluation"]
    assert evaluation["images"] == 200
    for role in ("teacher", "student"):
        assert 0 <= evaluation[role]["top1"] <= evaluation[role]["top5"] <= 100
        assert evaluation[role]["flops"] > 0 and evaluation[role]["params"] > 0
    assert evaluation["teacher"]["params"] > evaluation["student"]["params"]
    numerics = {row["artifact"]: row["numerics"] for row in evaluation["artifacts"]}
    assert numerics["coreml"] == {"weights": "fp16", "activations": "fp16", "scheme": "float"}
    assert numerics["onnx_int8_static"] == {"weights": "int8", "activations": "int8", "scheme": "static"}
    assert numerics["coreml_palettize4"] == {"weights": "palette4", "activations": "fp16", "scheme": "weights-only"}
    quantized = {name for name, n in numerics.items() if Numerics(**n).quantized}
    assert quantized == {name for name in numerics if "int8" in name or "palettize" in name}
    terms = report["curves"]["distill"][0]
    assert {"loss", "ce", "kd", "intra", "inter", "random", "val_top1"} <= set(terms)
    assert abs(terms["loss"] - sum(terms[k] for k in ("ce", "kd", "intra", "inter", "random"))) < 1e-4
    assert not any(stage["cached"] for stage in report["stages"].values())
    run_dir = tmp_path / "runs" / "default"
    assert json.loads((run_dir / "config.json").read_text())["distill"]["k"] == 32
    assert "| student |" in (run_dir / "report.md").read_text()
    assert all(s.state == "cached" for s in _states(tmp_path).values())

    capsys.readouterr()
    outputs = _files(run_dir / "deploy", run_dir / "plots")
    for name in STAGES:  # a cached stage passed its config check when it was built: not checked again
        monkeypatch.setattr(stage_class(name), "check", classmethod(lambda cls, *a: pytest.fail(f"{cls} checked")))
    assert main(cli_args(tmp_path, "run")) == 0
    assert all(stage["cached"] for stage in read_report(tmp_path)["stages"].values())
    assert capsys.readouterr().err.count("reused, cached") == len(STAGES)
    assert _files(run_dir / "deploy", run_dir / "plots") == outputs  # made of the same report: kept, not rewritten

    card, plot = next((run_dir / "deploy").rglob("MODEL_CARD.md")), next((run_dir / "plots").glob("*.png"))
    before = card.read_bytes(), plot.read_bytes()
    card.write_text("edited"), plot.unlink()
    assert main(cli_args(tmp_path, "run")) == 0  # not as written: the deploy folders and plots are written again
    assert (card.read_bytes(), plot.read_bytes()) == before


def _files(*folders) -> dict:
    """Every file under `folders`: (inode, mtime) by path."""
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for folder in folders for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_config_change_invalidates_only_downstream_and_says_why(tmp_path):
    assert main(cli_args(tmp_path, "run", *LEAN)) == 0
    states = _states(tmp_path, *LEAN, "distill.w_intra=0.0")
    assert states["data"].state == "cached" and states["teacher"].state == "cached"
    assert states["distill"].state == "stale"
    assert "distill.w_intra: 4.0 -> 0.0" in states["distill"].reason
    assert states["evaluate"].state == "stale" and "input 'distill' changed" in states["evaluate"].reason

    assert main(cli_args(tmp_path, "run", *LEAN, "distill.w_intra=0.0")) == 0
    stages = read_report(tmp_path)["stages"]
    assert stages["teacher"]["cached"] and not stages["distill"]["cached"]
    assert "intra" not in stages["distill"]["summary"] and "intra" not in read_report(tmp_path)["curves"]["distill"][0]


def test_damaged_artifact_is_never_reused(tmp_path):
    assert main(cli_args(tmp_path, "run") + ["--until", "teacher"]) == 0
    teacher_dir = artifact_folder(tmp_path, "teacher")
    model = teacher_dir / "model.pt"
    model.write_bytes(model.read_bytes()[:-10] + b"0123456789")
    states = _states(tmp_path)
    assert states["teacher"].state == "damaged" and "model.pt" in states["teacher"].reason
    assert main(cli_args(tmp_path, "run") + ["--until", "teacher"]) == 0
    assert not read_report(tmp_path)["stages"]["teacher"]["cached"]
    assert _states(tmp_path)["teacher"].state == "cached"


@pytest.mark.slow
def test_force_reruns_the_stage_and_everything_after(tmp_path):
    assert main(cli_args(tmp_path, "run", *LEAN)) == 0
    assert main(cli_args(tmp_path, "run", *LEAN) + ["--force", "distill"]) == 0
    stages = read_report(tmp_path)["stages"]
    assert stages["data"]["cached"] and stages["teacher"]["cached"]
    assert not stages["distill"]["cached"] and not stages["evaluate"]["cached"]


def test_root_cause_names_the_innermost_error_and_the_type_of_a_bare_value():
    from pipeline.core.errors import root_cause

    try:
        try:
            {}[2]
        except KeyError as inner:
            raise RuntimeError("lowering failed\nwith details") from inner
    except RuntimeError as outer:
        assert root_cause(outer) == "KeyError: 2"
    assert root_cause(ValueError("Conv2d needs 4 dimensions\nmore")) == "Conv2d needs 4 dimensions"
    assert root_cause(RuntimeError()) == "RuntimeError"
