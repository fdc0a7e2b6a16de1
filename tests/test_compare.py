"""`compare` on crafted report.json folders (no pipeline run): a run stopped after data, every config difference,
the shipped file per target, timed and predicted latency rows with their intervals, --json and --out."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.compare import SCHEMA, compare, render_markdown
from pipeline.graph import STAGES
from pipeline.ship import difference_interval


def write_run(runs: Path, name: str, *, until: str = "benchmark", student: float = 88.0, tflite: bytes = b"tflite",
              p50: float = 0.2, benchmark_runs: int = 20) -> Path:
    """runs/<name>/report.json as `run --until UNTIL` writes it, and the quantize artifact's cache manifest."""
    config = {"run": {"name": name, "seed": 0}, "benchmark": {"runs": benchmark_runs}}
    done = list(STAGES)[: list(STAGES).index(until) + 1]
    stages = {s: {"key": f"{s}-{benchmark_runs if s == 'benchmark' else student}", "artifact": f"runs/.cache/{s}-x",
                  "summary": {}} for s in done}
    report = {"run": {"name": name, "config_hash": hashlib.sha256(json.dumps(config, sort_keys=True).encode())
                      .hexdigest(), "wall_s": 10.0},
              "config": config, "stages": stages, "evaluation": None, "latency": None, "ship": {}}
    if "quantize" in stages:
        stages["quantize"]["artifact"] = f"runs/.cache/quantize-{name}"
        stages["quantize"]["summary"] = {"artifacts": {"litert_int8": {"file": "model_int8.tflite"}}}
        cache = runs / ".cache" / f"quantize-{name}"
        cache.mkdir(parents=True)
        (cache / "manifest.json").write_text(json.dumps({"files": {"model_int8.tflite": {
            "sha256": hashlib.sha256(tflite).hexdigest(), "bytes": 1000}}}))
    if "evaluate" in stages:
        report["evaluation"] = {"images": 10000, "teacher": {"top1": 90.0}, "student": {"top1": student},
                                "artifacts": [{"artifact": "litert_int8", "top1": student - 0.5}]}
    if "benchmark" in stages:
        latency = {"p50": p50, "p90": 2 * p50, "p50_interval": [0.95 * p50, 1.05 * p50]}
        report["latency"] = {
            "rows": [{"target": "android-phone", "artifact": "litert_int8", "label": "proxy", "latency_ms": latency},
                     {"target": "iphone", "artifact": "coreml", "label": "needs-device", "latency_ms": None}],
            "predicted": [{"target": "galaxy-s24-npu", "artifact": "litert_int8", "label": "predicted",
                           "latency_ms": {"p50": 0.3, "p90": 1.3, "p50_interval": [0.08, 1.3]}}]}
        choice = {"artifact": "litert_int8", "runtime": "litert", "bytes": 1000}
        report["ship"] = {"android-phone": {**choice, "by_runtime": {"litert": choice}}}
    (runs / name).mkdir(parents=True)
    (runs / name / "report.json").write_text(json.dumps(report))
    return runs / name


def test_a_run_stopped_after_data_says_so_and_every_changed_field_shows(tmp_path):
    a, b = write_run(tmp_path, "default"), write_run(tmp_path, "quick", until="data")
    result = compare(str(a), str(b))
    assert result["b"]["stopped_after"] == "data" and result["a"]["stopped_after"] is None
    assert result["accuracy"] is None and result["shipped"] is None and result["latency"] is None
    assert result["config"]["changes"] == [{"key": "run.name", "a": "default", "b": "quick"}]  # why the hashes differ
    text = render_markdown(result)
    assert "stopped after data: no accuracy, latency or shipped files" in text
    assert text.count("not compared: B stopped after data") == 3 and "none" not in text
    assert "same cache key (the same artifact): data" in text


def test_hashes_that_differ_with_no_field_changed_are_explained(tmp_path):
    a, b = write_run(tmp_path, "default"), write_run(tmp_path / "other", "default")
    report = json.loads((b / "report.json").read_text())
    report["run"]["config_hash"] = "0" * 64  # as a version hashing other fields recorded it
    (b / "report.json").write_text(json.dumps(report))
    config = compare(str(a), str(b))["config"]
    assert not config["changes"] and not config["hashes_equal"]
    assert "B recorded a hash that its config does not give" in config["note"]


def test_the_shipped_file_per_target_by_its_hash(tmp_path):
    a = write_run(tmp_path, "default")
    same = write_run(tmp_path, "same")
    rebuilt = write_run(tmp_path, "rebuilt", tflite=b"other bytes, same size")
    rows = {name: compare(str(a), str(run))["shipped"] for name, run in (("same", same), ("rebuilt", rebuilt))}
    assert [r["file"] for r in rows["same"]] == ["same file"]
    assert [r["file"] for r in rows["rebuilt"]] == ["changed"]
    row = rows["rebuilt"][0]
    assert (row["target"], row["runtime"], row["overall"]) == ("android-phone", "litert", ["A", "B"])
    assert row["a"]["file"] == "model_int8.tflite" and row["a"]["bytes"] == 1000
    assert row["a"]["sha256"] != row["b"]["sha256"]
    elsewhere = tmp_path / "moved"  # a run folder away from its cache: name and size, no hash
    elsewhere.mkdir()
    (tmp_path / "same").rename(elsewhere / "same")
    assert compare(str(a), str(elsewhere / "same"))["shipped"][0]["file"].startswith("same name and size (no hash")


def test_timed_and_predicted_latency_rows_with_their_intervals(tmp_path):
    a, b = write_run(tmp_path, "default"), write_run(tmp_path, "slower", p50=0.3, benchmark_runs=30)
    rows = {r["label"]: r for r in compare(str(a), str(b))["latency"]}
    assert set(rows) == {"proxy", "predicted"}  # the untimed needs-device row is left out
    timed = rows["proxy"]
    assert timed["speedup"] == pytest.approx(0.2 / 0.3, abs=1e-3) and timed["verdict"] == "slower"
    assert timed["interval"] == [round(0.19 / 0.315, 3), round(0.21 / 0.285, 3)]
    assert "0.67x as fast (interval 0.60-0.74x)" in timed["text"]
    assert rows["predicted"]["interval"] is None and "no interval" in rows["predicted"]["text"]


def test_accuracy_difference_with_its_interval(tmp_path):
    a, b = write_run(tmp_path, "default"), write_run(tmp_path, "better", student=89.0)
    accuracy = compare(str(a), str(b))["accuracy"]
    student = next(r for r in accuracy["rows"] if r["model"] == "student")
    assert student["delta"] == 1.0
    assert student["interval"] == list(difference_interval(89.0, 88.0, 1 - 0.23, 10000))  # 12 + 11 points wrong
    assert student["interval"][0] < 1.0 < student["interval"][1]
    same = compare(str(a), str(write_run(tmp_path, "again")))["accuracy"]  # one cached evaluate artifact
    assert same["same_artifact"] and all(r["interval"] is None for r in same["rows"])


def test_cli_json_markdown_and_out(tmp_path, capsys):
    a, b = str(write_run(tmp_path, "default")), str(write_run(tmp_path, "quick", until="data"))
    assert main(["compare", a, b, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)  # one JSON document, nothing else
    assert printed["schema"] == SCHEMA and printed["b"]["stopped_after"] == "data"
    out = tmp_path / "out"
    assert main(["compare", a, b, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == render_markdown(compare(a, b)).strip()  # not a terminal: the markdown as is
    assert (out / "compare.md").read_text() == render_markdown(compare(a, b))
    assert "<table" not in (out / "compare.html").read_text() and "stopped after data" in (out / "compare.html"
                                                                                             ).read_text()
    assert captured.err.count("wrote") == 2


def test_cli_out_file_is_deprecated_but_works(tmp_path, capsys):
    a, b = str(write_run(tmp_path, "default")), str(write_run(tmp_path, "again"))
    assert main(["compare", a, b, "--out", str(tmp_path / "cmp.html")]) == 0
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if "deprecated" in line]) == 1
    assert "<table>" in (tmp_path / "cmp.html").read_text()
    (tmp_path / "afile").write_text("")
    assert main(["compare", a, b, "--out", str(tmp_path / "afile")]) == 2
    assert "--out" in capsys.readouterr().err
