"""Target profiles, the benchmark stage, `manifold-edge bench` / `targets` (the INT8 diagnosis: test_diagnosis)."""
from __future__ import annotations

import json

import pytest

from conftest import artifact_folder, read_report
from pipeline.cli import main
from pipeline.config import load_config
from targets.profiles import builtin_profiles


def test_builtin_profiles_cover_phones_and_watches():
    profiles = builtin_profiles()
    kinds = {(p.device, p.runtime) for p in profiles.values()}
    assert {("phone", "onnxruntime"), ("phone", "coreml"), ("watch", "onnxruntime"), ("watch", "coreml")} <= kinds
    watch = profiles["wearos-watch"]
    assert watch.threads in (1, 2) and watch.latency_budget_ms > 0 and watch.memory_budget_mb > 0


@pytest.mark.parametrize("override, expected", [
    ("benchmark.targets=['andriod-phone']", "did you mean 'android-phone'"),
    ("targets.pi.runtime='tflite'", "targets.pi.runtime"),
    ("targets.pi.threads=0", "targets.pi.threads"),
    ("targets.pi.host='x;reboot'", "targets.pi.host"),
    ("targets.pi.thread=2", "did you mean 'threads'"),
])
def test_bad_target_profiles_are_one_line_errors(tmp_path, capsys, override, expected):
    config = tmp_path / "pipeline.toml"
    config.write_text("[targets.pi]\nruntime = 'onnxruntime'\n")
    assert main(["status", str(config), "--set", override]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_ssh_target_needs_a_host(tmp_path, capsys):
    config = tmp_path / "pipeline.toml"
    config.write_text("[targets.pi]\nruntime = 'onnxruntime'\nconnection = 'ssh'\n")
    assert main(["targets", "--config", str(config)]) == 2
    assert "targets.pi: a target with connection = 'ssh' needs host" in capsys.readouterr().err


def test_targets_command_lists_builtin_and_user_profiles(tmp_path, capsys):
    config = tmp_path / "pipeline.toml"
    config.write_text("[targets.my-board]\nruntime = 'openvino'\nthreads = 3\ndescription = 'lab NUC'\n")
    assert main(["targets", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    for name in ("android-phone", "apple-watch", "my-board", "lab NUC"):
        assert name in out


def test_pipeline_benchmark_stage_fills_the_latency_table(trained_run):
    report = read_report(trained_run)
    rows = report["latency"]["rows"]
    artifacts = {r["artifact"] for r in rows}
    assert {"onnx", "onnx_int8_static", "openvino", "openvino_int8"} <= artifacts
    timed = [r for r in rows if "latency_ms" in r]
    assert timed and all(r["label"] in ("proxy", "measured") for r in timed)
    for r in timed:
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert r["threads"] == report["latency"]["targets"][r["target"]]["threads"]
        assert r["model_bytes"] > 0 and r["load_ms"] > 0
    watch = [r for r in timed if r["target"] == "wearos-watch"]
    assert watch and all(r["threads"] == 1 for r in watch)
    coreml = [r for r in rows if r["runtime"] == "coreml"]
    assert coreml and all(r["label"] == "needs-device" and "macOS" in r["error"] for r in coreml)
    assert any("diagnosis" in r for r in timed)
    md = (trained_run / "runs" / "default" / "report.md").read_text()
    assert "## Latency per target (batch 1)" in md and "Why is INT8" in md and "needs-device" in md


def test_bench_command_profiles_user_files(trained_run, tmp_path, capsys):
    export, quantize = artifact_folder(trained_run, "export"), artifact_folder(trained_run, "quantize")
    out = tmp_path / "bench.json"
    assert main(["bench", str(export / "model.onnx"), str(quantize / "model_int8_static.onnx"),
                 "--target", "wearos-watch", "--set", "benchmark.runs=20", "--set", "benchmark.max_seconds=0.5",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["precision"] for r in rows] == ["float", "int8"]
    assert "diagnosis" in rows[1] and rows[1]["diagnosis"]["baseline"] == "model.onnx"
    for r in rows:
        layers = r["profile"]
        assert layers["by_op_type"] and 0 < layers["layers_ms"] <= 1.05 * layers["run_ms"]
    printed = capsys.readouterr().out
    assert "wearos-watch" in printed and "per-layer" in printed


@pytest.mark.parametrize("make, expected", [
    (lambda d: d / "missing.onnx", "no such model file"),
    (lambda d: (d / "notes.txt").write_text("hi") and d / "notes.txt", "not a model file"),
    (lambda d: (d / "broken.onnx").write_bytes(b"not onnx") and d / "broken.onnx", "broken.onnx"),
])
def test_bench_rejects_non_models_in_one_line(tmp_path, capsys, make, expected):
    path = make(tmp_path)
    assert main(["bench", str(path), "--target", "android-phone"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_bench_refuses_a_target_of_another_runtime(tmp_path, capsys):
    model = tmp_path / "model.xml"
    model.write_text("<net/>")
    assert main(["bench", str(model), "--target", "iphone"]) == 2
    assert "runs coreml, but the model(s) need openvino" in capsys.readouterr().err


def test_benchmark_settings_are_part_of_the_cache_key(tmp_path):
    from pipeline.graph import Pipeline

    keys = lambda *o: {s.name: s.key for s in Pipeline(load_config(None, list(o))).plan()}  # noqa: E731
    base, more_runs, replaced = keys(), keys("benchmark.runs=50"), keys("targets.wearos-watch.runtime="
                                                                             "'onnxruntime'")
    assert base["benchmark"] != more_runs["benchmark"] and base["evaluate"] == more_runs["evaluate"]
    assert base["benchmark"] != replaced["benchmark"]


@pytest.mark.parametrize("file, runtime", [("model.onnx", "onnxruntime"), ("openvino_model.xml", "openvino")])
def test_profile_threads_reach_the_runtime(trained_run, tmp_path, file, runtime):
    """The runtime's worker threads grow with the profile's thread count (counted in /proc/self/task)."""
    model = artifact_folder(trained_run, "export") / file
    overrides = ["benchmark.runs=5", "benchmark.profile_layers=false"]
    for name, threads in (("one", 1), ("two", 2)):
        overrides += [f"targets.{name}.runtime='{runtime}'", f"targets.{name}.threads={threads}"]
    out = tmp_path / "threads.json"
    assert main(["bench", str(model), "--target", "one", "--target", "two", "--json", str(out),
                 *[a for o in overrides for a in ("--set", o)]]) == 0
    one, two = json.loads(out.read_text())["rows"]
    assert (one["threads"], two["threads"]) == (1, 2)
    assert two["process_threads"] == one["process_threads"] + 1
