"""Target profiles, the benchmark stage, `manifold-edge bench` / `targets` (the INT8 diagnosis: test_diagnosis)."""
from __future__ import annotations

import json
import random
import sys

import pytest

from conftest import artifact_folder, read_report
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.core.numerics import FP32, floating, static_int8
from pipeline.device_commands import bench_tables
from pipeline.documents import BenchDocument
from pipeline.tables import tsv
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
    assert main(["status", "--config", str(config), "--set", override]) == 2
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


def test_targets_lists_every_runtime_a_target_times(tmp_path):
    """android-phone ships ExecuTorch or LiteRT as well as ONNX Runtime: all three are listed, the profile's order."""
    from pipeline.device_commands import targets_document, targets_tables

    profiles = targets_tables(targets_document(load_config(None)))[0]
    row = next(r for r in profiles.rows if r[0] == "android-phone")
    assert row[2] == "onnxruntime, executorch, litert"


def test_pipeline_benchmark_stage_fills_the_latency_table(trained_run):
    report = read_report(trained_run)
    rows = report["latency"]["rows"]
    artifacts = {r["artifact"] for r in rows}
    assert {"onnx", "onnx_int8_static", "openvino", "openvino_int8"} <= artifacts
    timed = [r for r in rows if "latency_ms" in r]
    assert timed and all(r["label"] in ("proxy", "measured") for r in timed)
    for r in timed:  # on this host (proxy), the profile's threads capped at the host's cores
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert r["threads_asked"] == report["latency"]["targets"][r["target"]]["threads"]
        assert r["threads"] == min(r["threads_asked"], r["host"]["cores"])
        assert r["model_bytes"] > 0 and r["load_ms"] > 0
    for target in ("android-phone", "wearos-watch"):  # ExecuTorch and LiteRT compete with ONNX Runtime there
        xnnpack = {r["artifact"]: r for r in timed
                   if r["target"] == target and r["runtime"] in ("executorch", "litert")}
        assert set(xnnpack) == {"executorch", "executorch_int8", "litert", "litert_int8", "litert_int8_dynamic"}
        assert all(r["label"] == "proxy" and r["kernels"].startswith("XNNPACK on ") for r in xnnpack.values())
        assert all(r["runtime_threads"] == r["threads"] for r in xnnpack.values() if r["runtime"] == "executorch")
        for r in xnnpack.values():  # ExecuTorch's per-op profile from its ETDump; LiteRT's Python has none
            kernels = {entry["kernel"] for entry in r.get("profile", {}).get("by_op_type", [])}
            assert kernels >= {"xnnpack", "portable"} if r["runtime"] == "executorch" else not kernels
    watch = [r for r in timed if r["target"] == "wearos-watch"]
    assert watch and all(r["threads"] == 1 for r in watch)
    coreml = [r for r in rows if r["runtime"] == "coreml"]
    assert coreml and all(r["label"] == "needs-device" and "macOS" in r["error"] for r in coreml)
    assert any("diagnosis" in r for r in timed)
    for r in timed:  # a target's artifacts, of all its runtimes, are timed in one agent call, interleaved
        same = {x["model"] for x in timed if x["target"] == r["target"] and x["model"] != r["model"]}
        assert set(r["timing"]["interleaved_with"]) == same and r["runs"] >= 6
        lo, hi = r["latency_ms"]["p50_interval"]
        assert lo <= r["latency_ms"]["p50"] <= hi and "before" in r["host_load"]
    compared = [r for r in timed if "comparison" in r]
    assert compared and all(r["comparison"]["verdict"] in ("faster", "slower", "equal within noise")
                            and r["comparison"]["interleaved"] for r in compared)
    md = (trained_run / "runs" / "default" / "report.md").read_text()
    assert "## Latency per target (batch 1)" in md and "Why is INT8" in md and "needs-device" in md
    assert "| proxy: XNNPACK on " in md and "## ONNX Runtime Mobile (.ort)" in md
    assert "p50 ms (95% interval)" in md and "Compressed vs float on the same target" in md


def test_bench_command_profiles_user_files(trained_run, capsys):
    export, quantize = artifact_folder(trained_run, "export"), artifact_folder(trained_run, "quantize")
    assert main(["bench", str(export / "model.onnx"), str(quantize / "model_int8_static.onnx"),
                 "--target", "wearos-watch", "--set", "benchmark.runs=20", "--set", "benchmark.max_seconds=0.5",
                 "--json"]) == 0
    doc = BenchDocument.model_validate_json(capsys.readouterr().out)
    rows = doc.rows
    assert [r["precision"] for r in rows] == ["float", "int8"]
    assert "diagnosis" in rows[1] and rows[1]["diagnosis"]["baseline"] == "model.onnx"
    for r in rows:
        layers = r["profile"]
        assert layers["by_op_type"] and 0 < layers["layers_ms"] <= 1.05 * layers["run_ms"]
    printed = tsv(bench_tables(doc))  # what the command prints without --json
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
    assert main(["bench", str(model), "--target", "android-phone"]) == 2
    assert "runs onnxruntime, executorch, litert, but the model(s) need openvino" in capsys.readouterr().err


def test_benchmark_settings_are_part_of_the_cache_key(tmp_path):
    from pipeline.graph import Pipeline

    keys = lambda *o: {s.name: s.key for s in Pipeline(load_config(None, list(o))).plan()}  # noqa: E731
    base, more_runs, replaced = keys(), keys("benchmark.runs=50"), keys("targets.wearos-watch.runtime="
                                                                             "'onnxruntime'")
    assert base["benchmark"] != more_runs["benchmark"] and base["evaluate"] == more_runs["evaluate"]
    assert base["benchmark"] != replaced["benchmark"]


@pytest.mark.parametrize("file, runtime", [("model.onnx", "onnxruntime"), ("openvino_model.xml", "openvino")])
def test_profile_threads_reach_the_runtime(trained_run, capsys, file, runtime):
    """The profile's thread count reaches the runtime: ORT's intra-op pool grows by exactly one thread (counted
    in /proc/self/task); OpenVINO's compiled model reports it (its TBB workers start lazily, so a count of
    them after a few runs of a tiny model is not a stable witness). ExecuTorch's threadpool: the stage test."""
    model = artifact_folder(trained_run, "export") / file
    overrides = ["benchmark.runs=5", "benchmark.profile_layers=false"]
    for name, threads in (("one", 1), ("two", 2)):
        overrides += [f"targets.{name}.runtime='{runtime}'", f"targets.{name}.threads={threads}"]
    assert main(["bench", str(model), "--target", "one", "--target", "two", "--json",
                 *[a for o in overrides for a in ("--set", o)]]) == 0
    one, two = json.loads(capsys.readouterr().out)["rows"]
    assert (one["threads"], two["threads"]) == (1, 2)
    if runtime == "onnxruntime":
        assert two["process_threads"] == one["process_threads"] + 1
    else:
        assert (one["runtime_threads"], two["runtime_threads"]) == (1, 2)


# --- noise-aware timing: the median's interval, interleaving, verdicts ---------------------------------------

def direct_ranks(n: int) -> tuple[int, int] | None:
    """The largest rank l with P(Binomial(n, 1/2) <= l - 1) <= 0.025 (= 1/40), in exact integers."""
    low, count, term, total = 0, 0, 1, 2 ** n  # count = 2^n P(B <= low - 1), term = C(n, low)
    while low < n // 2 and 40 * (count + term) <= total:
        count += term
        term = term * (n - low) // (low + 1)
        low += 1
    return (low, n + 1 - low) if low else None


@pytest.mark.parametrize("n", [1, 5, 6, 7, 10, 20, 33, 100, 257, 1000, 5000])
def test_median_interval_ranks_match_the_binomial(n):
    from targets.agent.stats import median_interval, median_ranks

    assert median_ranks(n) == direct_ranks(n)
    values = [float(v) for v in range(n)]
    random.Random(n).shuffle(values)
    ranks = direct_ranks(n)
    assert median_interval(values) == (None if ranks is None else [ranks[0] - 1.0, ranks[1] - 1.0])


def test_median_interval_normal_approximation_for_many_runs():
    from scipy.stats import binom

    from targets.agent.stats import median_ranks

    for n in (5001, 20_000, 1_000_000):
        low, high = median_ranks(n)
        exact = int(binom.ppf(0.025, n, 0.5))  # smallest k with P(B <= k) >= 0.025: rank l = k (or k + 1)
        assert abs(low - exact) <= 1 and high == n + 1 - low


class FakeClock:
    """perf_counter / process_time stand-ins: each model's call advances them by its own fixed amounts."""

    def __init__(self):
        self.wall = self.cpu = 0.0
        self.calls: list[str] = []

    def call(self, name: str, wall_ms: float, cpu_ms: float):
        def run():
            self.calls.append(name)
            self.wall += wall_ms / 1000
            self.cpu += cpu_ms / 1000
        return run


def test_interleave_alternates_models_and_stops_on_the_interval():
    from targets.agent.schedule import interleave

    clock = FakeClock()
    out = interleave([clock.call("a", 2.0, 1.5), clock.call("b", 3.0, 3.0)], runs=1000, min_runs=20, block=5,
                     seconds=1e6, rel=0.05, clock=lambda: clock.wall, cpu_clock=lambda: clock.cpu)
    assert out["stopped"] == "interval"  # constant times: a zero-width interval at the first check
    assert out["schedule"] == [0, 1] * 4 and clock.calls == (["a"] * 5 + ["b"] * 5) * 4
    assert [len(w) for w in out["wall_ms"]] == [20, 20] and [len(c) for c in out["cpu_ms"]] == [4, 4]  # per block
    assert out["wall_ms"][0][0] == pytest.approx(2.0) and out["cpu_ms"][1][0] == pytest.approx(3.0)


def test_interleave_stops_at_runs_or_time():
    from targets.agent.schedule import interleave

    clock = FakeClock()
    jitter = iter([1.0, 1.3, 0.8, 1.6] * 1000)
    calls = [lambda: setattr(clock, "wall", clock.wall + next(jitter) / 1000), clock.call("b", 1.0, 1.0)]
    out = interleave(calls, runs=42, min_runs=20, block=5, seconds=1e6, rel=0.001, clock=lambda: clock.wall,
                     cpu_clock=lambda: clock.cpu)
    assert out["stopped"] == "runs" and [len(w) for w in out["wall_ms"]] == [42, 42]  # the last block is cut
    out = interleave(calls, runs=1000, min_runs=20, block=5, seconds=0.001, rel=0.001, clock=lambda: clock.wall,
                     cpu_clock=lambda: clock.cpu)
    assert out["stopped"] == "max_seconds" and out["schedule"] == [0, 1]  # at least one whole round


def timed(artifact: str, p50: float, interval: list[float] | None, model: str | None = None) -> dict:
    return {"artifact": artifact, "model": model or artifact, "latency_ms": {"p50": p50, "p50_interval": interval},
            "cpu_ms": {"p50": p50}, "timing": {"interleaved_with": []}}


@pytest.mark.parametrize("candidate, verdict", [
    ((5.0, [4.8, 5.2]), "faster"),              # intervals apart, INT8 lower
    ((12.0, [11.5, 12.5]), "slower"),           # intervals apart, INT8 higher
    ((10.0, [9.8, 10.2]), "equal within noise"),
    ((9.3, [8.5, 9.9]), "equal within noise"),  # 1.08x by p50, but the intervals overlap
    ((9.0, None), "unknown"),                   # too few runs for an interval
])
def test_comparison_verdicts_follow_the_intervals(candidate, verdict):
    from targets.latency import compare_latency

    baseline = timed("onnx", 10.0, [9.7, 10.4])
    c = compare_latency(timed("onnx_int8", *candidate), baseline)
    assert c["verdict"] == verdict and c["speedup"] == round(10.0 / candidate[0], 3)
    if candidate[1]:
        assert c["interval"] == [round(9.7 / candidate[1][1], 3), round(10.4 / candidate[1][0], 3)]
        assert (c["interval"][0] <= 1 <= c["interval"][1]) == (verdict == "equal within noise")


def test_same_verdicts_on_two_runs_of_crafted_timings():
    """Timings drawn twice (different noise) from the same distributions give the same verdicts."""
    import numpy as np

    from targets.agent.stats import summary
    from targets.latency import compare_latency

    def verdicts(seed: int) -> dict:
        rng = np.random.default_rng(seed)
        rows = {}
        for name, ms in (("fp32", 10.0), ("int8_fast", 7.0), ("int8_same", 10.0), ("int8_slow", 13.0)):
            noise = rng.lognormal(0, 0.05, 300) + rng.exponential(0.3, 300) * (rng.random(300) < 0.1)
            rows[name] = {"artifact": name, "latency_ms": summary(list(ms * noise))}
        return {n: compare_latency(rows[n], rows["fp32"])["verdict"] for n in rows if n != "fp32"}

    first, second = verdicts(1), verdicts(2)
    assert first == second == {"int8_fast": "faster", "int8_same": "equal within noise", "int8_slow": "slower"}


def test_report_shows_intervals_and_no_speed_claim_within_noise():
    from pipeline.report.markdown import latency_lines
    from targets.latency import add_diagnoses

    def row(artifact, precision, numerics, p50, interval):
        return {**timed(artifact, p50, interval), "target": "watch", "runtime": "onnxruntime", "precision": precision,
                "numerics": numerics,
                "label": "proxy", "runs": 60, "throughput": {"batch": 1, "images_per_s": 100.0},
                "model_rss_mb": 5.0, "budget": {"latency_ms": 30, "memory_mb": 40, "latency_ok": True,
                                                 "memory_ok": True},
                "timing": {"interleaved_with": ["x"], "block": 5, "stopped": "interval", "rel_interval": 0.05},
                "host_load": {"cores": 2, "before": [2.5, 2, 2], "after": [2.7, 2, 2], "threads": 1, "free_cores": 0.0,
                         "oversubscribed": True}}

    rows = [row("onnx", "fp32", floating("fp32"), 10.0, [9.0, 11.0]),
            row("onnx_int8_static", "int8 static QDQ", static_int8(), 9.0, [8.5, 9.6])]
    rows[0]["latency_ms"].update(p90=11.0, p99=12.0, half_width=0.1)
    rows[1]["latency_ms"].update(p90=9.5, p99=10.0, half_width=0.067)
    add_diagnoses(rows)
    assert rows[1]["comparison"]["verdict"] == "equal within noise" and not rows[1]["diagnosis"]["faster"]
    md = "\n".join(latency_lines({"rows": rows, "targets": {}}, None, {}))
    assert "10.000 (9.000-11.000)" in md and "**equal within noise**: 1.11x" in md
    assert "faster than fp32" not in md and "INT8 is not faster here (equal within noise)" in md
    assert "**warning**: 1 thread(s) but 0 cores free" in md and "wider than the goal" in md


def write_chain(path, layers: int, width: int):
    """x (N, width) -> `layers` x (MatMul width x width, Relu): a float model of a chosen size."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes, last = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.normal(size=(width, width)) / width).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("MatMul", [last, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        last = f"r{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["N", width])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_one_agent_call_times_two_onnx_models_interleaved(tmp_path):
    """A real run: two ONNX models of one target in one agent process, round-robin, each row with the
    median's interval; a model ~100x heavier is 'slower' both times it is timed (logic, not speed)."""
    from stages.benchmark import BenchmarkConfig
    from targets.devices import make_device
    from targets.latency import Model, compare_latency, measure_target
    from targets.profiles import TargetProfile

    small, big = write_chain(tmp_path / "small.onnx", 1, 32), write_chain(tmp_path / "big.onnx", 12, 384)
    profile = TargetProfile(runtime="onnxruntime", threads=1, latency_budget_ms=1e3, memory_budget_mb=1e3)
    raw = make_device(profile, "host").run_agent(
        [small, big], ["--runtime", "onnxruntime", "--threads", "1", "--runs", "30", "--warmup", "2",
                       "--throughput-batch", "1", "--raw"], timeout=120)
    assert raw["ok"] and [r["model"] for r in raw["results"]] == ["small.onnx", "big.onnx"]
    assert raw["schedule"] == [0, 1] * 6  # 30 runs in blocks of 5 (the last cut to 0 is no block)
    for r in raw["results"]:
        assert r["runs"] == len(r["samples"]["wall_ms"]) == 5 * len(r["samples"]["cpu_ms"]) == 30  # CPU per block
        assert r["timing"]["stopped"] == "runs" and r["host_load"]["cores"] == r["host"]["cores"]
    settings = BenchmarkConfig(runs=200, max_seconds=1.0, warmup=2, throughput_batch=1, profile_layers=False)
    models = [Model("small", small, "onnxruntime", "fp32", FP32), Model("big", big, "onnxruntime", "fp32", FP32)]
    verdicts = []
    for _ in range(2):
        rows = measure_target(models, "host", profile, settings)
        for r in rows:
            lo, hi = r["latency_ms"]["p50_interval"]
            assert r["label"] == "proxy" and lo <= r["latency_ms"]["p50"] <= hi and r["cpu_ms"]["p50"] >= 0
            assert r["timing"]["interleaved_with"] == [m.path.name for m in models if m.key != r["artifact"]]
        verdicts.append(compare_latency(rows[1], rows[0])["verdict"])
    assert verdicts == ["slower", "slower"]


@pytest.fixture(scope="module")
def three_runtimes(tmp_path_factory):
    """One tiny float model as ONNX, OpenVINO IR and LiteRT .tflite files, and a file that is not a model."""
    import openvino as ov
    import torch

    from backends.litert import export as litert

    folder = tmp_path_factory.mktemp("runtimes")
    onnx_path = write_chain(folder / "chain.onnx", 2, 16)
    ov.save_model(ov.convert_model(str(onnx_path)), str(folder / "chain.xml"), compress_to_fp16=False)
    torch.manual_seed(0)
    litert.export(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 16), torch.nn.ReLU()), (1, 4, 4),
                  folder / "chain.tflite")
    (folder / "junk.onnx").write_text("not a model\n")
    return {"onnx": onnx_path, "openvino": folder / "chain.xml", "litert": folder / "chain.tflite",
            "junk": folder / "junk.onnx"}


def mixed_models(files: dict, *keys: str) -> list:
    from targets.latency import Model

    runtimes = {"onnx": "onnxruntime", "junk": "onnxruntime", "openvino": "openvino", "litert": "litert"}
    return [Model(k, files[k], runtimes[k], "fp32", FP32) for k in keys]


def test_one_agent_call_times_several_runtimes_interleaved(three_runtimes):
    """ONNX Runtime, OpenVINO and LiteRT files in one agent process, round-robin across runtimes; each runtime's
    own flags reach its models only, and --profile profiles the runtimes that have a profiler."""
    from stages.benchmark import BenchmarkConfig
    from targets.agent.cli import main
    from targets.devices import make_device
    from targets.latency import compare_latency, measure_target
    from targets.profiles import TargetProfile

    files = [three_runtimes[k] for k in ("onnx", "openvino", "litert")]
    names = [f.name for f in files]
    profile = TargetProfile(runtime="onnxruntime", runtimes=["openvino", "litert"], threads=1,
                            latency_budget_ms=1e3, memory_budget_mb=1e3)
    raw = make_device(profile, "host").run_agent(
        files, ["--runtime", "onnxruntime,openvino,litert", "--threads", "1", "--runs", "20", "--warmup", "2",
                "--throughput-batch", "1", "--openvino-precision", "f32", "--profile"], timeout=120)
    assert raw["schedule"] == [0, 1, 2] * 4
    assert [r["runtime"] for r in raw["results"]] == ["onnxruntime", "openvino", "litert"]
    for r, name in zip(raw["results"], names):
        assert r["model"] == name and r["runs"] == 20
        assert r["timing"]["interleaved_with"] == [n for n in names if n != name]
        assert ("profile" in r) == (r["runtime"] != "litert") and r["peak_rss_mb"] >= r["model_rss_mb"]
    for wrong in ("onnxruntime,openvino", "onnxruntime,tensorrt,litert"):  # neither one per model nor known
        with pytest.raises(SystemExit) as caught:
            main([*map(str, files), "--runtime", wrong])
        assert caught.value.code == 2
    settings = BenchmarkConfig(runs=30, max_seconds=0.5, warmup=2, throughput_batch=1, profile_layers=False)
    rows = measure_target(mixed_models(three_runtimes, "onnx", "openvino", "litert"), "host", profile, settings)
    for r in rows:
        assert r["label"] == "proxy" and r["timing"]["interleaved_with"] == [n for n in names if n != r["model"]]
    c = compare_latency(rows[1], rows[0])  # any two rows of a target: OpenVINO vs ONNX Runtime
    assert c["interleaved"] and c["verdict"] in ("faster", "slower", "equal within noise")
    lo, hi = c["interval"]
    assert (lo <= 1 <= hi) == (c["verdict"] == "equal within noise")
    assert not compare_latency(rows[1], {**rows[0], "target": "elsewhere"})["interleaved"]
    untimed = {"target": "host", "artifact": "coreml", "label": "needs-device"}
    for pair in ((untimed, rows[0]), (rows[0], untimed)):
        assert compare_latency(*pair) == {"baseline": pair[1]["artifact"], "speedup": None, "interleaved": False,
                                          "interval": None, "verdict": "unknown"}


def test_proxy_threads_are_capped_at_the_host_cores(three_runtimes):
    """A target asking for more threads than this host has is timed (proxy) at the host's usable cores, and the
    row says so; also when it stands in for an unreachable device."""
    from stages.benchmark import BenchmarkConfig
    from targets.agent.host import usable_cores
    from targets.latency import measure_target
    from targets.profiles import TargetProfile

    cores = usable_cores()
    settings = BenchmarkConfig(runs=10, max_seconds=0.2, warmup=1, throughput_batch=1, profile_layers=False)
    for connection in ("local", "adb"):  # an adb serial no device has: unreachable, timed on this host
        profile = TargetProfile(runtime="openvino", threads=cores + 2, connection=connection, serial="no-such-phone",
                                latency_budget_ms=1e3, memory_budget_mb=1e3)
        row, = measure_target(mixed_models(three_runtimes, "openvino"), "big", profile, settings)
        assert row["label"] == "proxy" and (row["threads_asked"], row["threads"]) == (cores + 2, cores)
        assert row["runtime_threads"] == cores  # what OpenVINO compiled with
        assert (f"target 'big' timed at {cores} thread(s): this host has {cores} usable cores; the profile asks "
                f"for {cores + 2}") in row["note"]
        assert ("measured on this host instead" in row["note"]) == (connection == "adb")


def test_a_model_failing_in_a_mixed_call_leaves_the_others_timed(three_runtimes):
    """The agent names the file ONNX Runtime cannot load: that row is the error, and the other runtimes' files
    are timed again in one call, still interleaved. A runtime missing on the device fails all of its models."""
    from stages.benchmark import BenchmarkConfig
    from targets.devices import DeviceError, make_device
    from targets.latency import Model, measure_target, run_group
    from targets.profiles import TargetProfile

    profile = TargetProfile(runtime="onnxruntime", runtimes=["openvino", "litert"], threads=1,
                            latency_budget_ms=1e3, memory_budget_mb=1e3)
    settings = BenchmarkConfig(runs=10, max_seconds=0.2, warmup=1, throughput_batch=1, profile_layers=False)
    rows = measure_target(mixed_models(three_runtimes, "onnx", "junk", "openvino", "litert"), "host", profile,
                          settings)
    by_key = {r["artifact"]: r for r in rows}
    assert [r["artifact"] for r in rows] == ["onnx", "junk", "openvino", "litert"]
    assert by_key["junk"]["label"] == "error" and by_key["junk"]["error_kind"] == "bad_model"
    assert "junk.onnx" in by_key["junk"]["error"]
    for key in ("onnx", "openvino", "litert"):
        others = {three_runtimes[k].name for k in ("onnx", "openvino", "litert") if k != key}
        assert by_key[key]["runs"] == 10 and set(by_key[key]["timing"]["interleaved_with"]) == others
    if sys.platform == "darwin":
        return
    folder = three_runtimes["onnx"].parent  # Core ML off macOS: the first .mlpackage fails the call for both
    models = [*mixed_models(three_runtimes, "onnx", "openvino"),
              *(Model(f"coreml_{i}", folder / f"m{i}.mlpackage", "coreml", "fp32", FP32) for i in (1, 2))]
    for m in models[2:]:
        m.path.mkdir(exist_ok=True)
    onnx, ov, coreml_1, coreml_2 = run_group(make_device(profile, "host"), models, profile, settings, 1)
    assert isinstance(coreml_1, DeviceError) and coreml_1.kind == "needs_macos" and coreml_1.model == "m1.mlpackage"
    assert coreml_2 is coreml_1  # its whole runtime is out of the retried call
    assert onnx["timing"]["interleaved_with"] == ["chain.xml"] and ov["timing"]["interleaved_with"] == ["chain.onnx"]


