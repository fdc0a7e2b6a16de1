"""The emulated arm64 device (targets/arm64.py): its profiles, the agent's predict mode, the one-line errors, and,
where `make arm64` has built the root, the aarch64 runtimes under QEMU against their x86 builds in a real run."""
from __future__ import annotations

import base64
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from conftest import TRAINED, cli_args, read_report, tiny_overrides
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.core.numerics import FP32
from pipeline.report.arm64 import arm64_lines
from targets.agent import cli as agent_cli
from targets.arm64 import ROOT_ENV, Arm64Device, usable
from targets.devices import DeviceError
from targets.latency import LatencyConfig, Model, measure_target
from targets.profiles import TargetProfile, builtin_profiles

ROOTED = pytest.mark.skipif(not usable(), reason="no arm64 root to run in (build it as root with `make arm64`)")


def test_an_emulated_target_names_its_core(capsys, monkeypatch):
    assert TargetProfile(runtime="onnxruntime", connection="arm64-emulated", cpu="max,sme=off").cpu == "max,sme=off"
    for fields, message in (({"connection": "arm64-emulated"}, "needs it"),
                            ({"connection": "arm64-emulated", "cpu": "cortex-a55"}, "no core 'cortex-a55'"),
                            ({"connection": "arm64-emulated", "cpu": "max"}, "use 'max,sme=off'"),
                            ({"cpu": "cortex-a76"}, "set both or neither")):
        with pytest.raises(ValidationError, match=message):
            TargetProfile(runtime="onnxruntime", **fields)
    profiles = builtin_profiles()
    for twin, original, core in (("android-phone-arm64", "android-phone", "cortex-a76"),
                                 ("wearos-watch-arm64", "wearos-watch", "cortex-a53")):
        assert profiles[twin].cpu == core and profiles[twin].connection == "arm64-emulated"
        assert profiles[twin].all_runtimes == profiles[original].all_runtimes
        assert profiles[twin].threads == profiles[original].threads
    assert main(["targets"]) == 0
    assert "not timed: emulated cortex-a53 (accuracy only)" in capsys.readouterr().out


def test_a_missing_root_is_one_line_saying_how_to_build_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "no-root"))
    assert main(cli_args(tmp_path, "run", "evaluate.arm64='on'")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no emulated arm64 root at" in err and "make arm64" in err, err
    assert not (tmp_path / "runs" / ".cache").exists() or not any((tmp_path / "runs" / ".cache").iterdir())
    assert load_config(None, tiny_overrides(tmp_path, "evaluate.arm64='auto'")).evaluate.arm64 == "off"
    device = Arm64Device(builtin_profiles()["android-phone-arm64"], "android-phone-arm64")
    with pytest.raises(DeviceError, match="make arm64") as caught:
        device.run_agent([tmp_path / "model.onnx"], ["--runtime", "onnxruntime", "--predict", "x.npz"], 10)
    assert caught.value.kind == "unreachable"
    assert main(cli_args(tmp_path, "run", "evaluate.arm64='on'", "evaluate.arm64_targets=['android-phone']")) == 2
    assert "'android-phone': its connection is not 'arm64-emulated'" in capsys.readouterr().err


def test_an_emulated_target_is_never_timed(tmp_path):
    """In benchmark.targets it gets an error row, never a latency, and never a proxy timing of this host."""
    model = tmp_path / "model.onnx"
    onnx.save(dense_model(batch=None), model)
    profile = builtin_profiles()["android-phone-arm64"]
    (row,) = measure_target([Model("onnx", model, "onnxruntime", "fp32", FP32)], "android-phone-arm64", profile,
                            LatencyConfig())
    assert row["label"] == "error" and "latency_ms" not in row and "accuracy only, never latency" in row["error"]


def dense_model(batch: int | None) -> onnx.ModelProto:
    """x [batch, 1, 4, 4] -> flatten -> x W + b, 10 logits, with fixed random weights."""
    rng = np.random.default_rng(1)
    weights = [numpy_helper.from_array(rng.normal(size=(16, 10)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.normal(size=10).astype(np.float32), "b"),
               numpy_helper.from_array(np.array([-1, 16], np.int64), "shape")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["logits"])]
    n = batch or "n"
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, 1, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [n, 10])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run_agent(argv: list[str], capsys) -> tuple[int, dict]:
    code = agent_cli.main(argv)
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_the_agent_predicts_logits_and_argmax(tmp_path, capsys):
    """Predict mode on this host: a free batch dimension (batched) and a fixed one (image by image) give the
    logits ONNX Runtime gives directly; a wrong input shape and a Core ML file are refused by name."""
    images = np.random.default_rng(0).normal(size=(70, 1, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "images.npz", images=images)
    paths = []
    for name, batch in (("free.onnx", None), ("fixed.onnx", 1)):
        onnx.save(dense_model(batch), tmp_path / name)
        paths.append(str(tmp_path / name))
    expected = ort.InferenceSession(paths[0]).run(None, {"x": images})[0]
    code, out = run_agent([*paths, "--runtime", "onnxruntime", "--predict", str(tmp_path / "images.npz")], capsys)
    assert code == 0 and out["ok"] and out["host"]["cpu_features"] is None  # x86: no Arm hwcaps
    for result in out["results"]:
        record = result["logits"]
        logits = np.frombuffer(base64.b64decode(record["base64"]), record["dtype"]).reshape(record["shape"])
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5)
        assert result["argmax"] == expected.argmax(1).tolist() and result["images"] == 70
    np.savez(tmp_path / "wrong.npz", images=images.reshape(70, 1, 2, 8))
    code, out = run_agent([paths[0], "--runtime", "onnxruntime", "--predict", str(tmp_path / "wrong.npz")], capsys)
    assert code == 3 and out["kind"] == "bad_input" and "the model takes [1, 4, 4]" in out["error"]
    code, out = run_agent([paths[0], "--runtime", "coreml", "--predict", str(tmp_path / "images.npz")], capsys)
    assert code == 3 and out["model"] == "free.onnx" and "Core ML" in out["error"]


@pytest.fixture(scope="module")
def emulated_run(trained_run, tmp_path_factory) -> dict:
    """A copy of the shared trained run, rerun with evaluate.arm64 on (only evaluate and the report rerun)."""
    folder = tmp_path_factory.mktemp("arm64")
    shutil.copytree(trained_run, folder, dirs_exist_ok=True)
    assert main(cli_args(folder, "run", *TRAINED, "quantize.calibration_images=100000", "run.threads=1",
                         "evaluate.arm64='on'", "evaluate.arm64_images=150")) == 0
    return read_report(folder) | {"markdown": (folder / "runs" / "default" / "report.md").read_text()}


@ROOTED
def test_fp32_files_compute_on_the_emulated_cores_what_they_compute_on_x86(emulated_run):
    rows = emulated_run["evaluation"]["arm64"]["rows"]
    for target in ("android-phone-arm64", "wearos-watch-arm64"):
        for artifact in ("onnx", "litert", "executorch"):
            fp32 = next(r for r in rows if r["target"] == target and r["artifact"] == artifact)
            assert fp32["images"] == 150 and fp32["vs_x86"]["argmax_differ"] == 0, fp32
            assert fp32["vs_x86"]["max_abs_diff"] <= 1e-5, fp32


@ROOTED
def test_int8_agreement_on_each_core_is_reported(emulated_run):
    arm64 = emulated_run["evaluation"]["arm64"]
    rows = {(r["target"], r["artifact"]): r for r in arm64["rows"]}
    features = {r["cpu"]: r["cpu_features"] for r in arm64["rows"] if "cpu_features" in r}
    assert "asimddp" in features["cortex-a76"] and "asimddp" not in features["cortex-a53"]  # QEMU_CPU took
    for target in ("android-phone-arm64", "wearos-watch-arm64"):
        for artifact in ("onnx_int8_static", "onnx_int8_dynamic", "litert_int8", "litert_int8_dynamic",
                         "executorch_int8"):
            r = rows[(target, artifact)]
            lo, hi = r["arm64_top1_interval"]
            assert lo <= r["arm64_top1"] <= hi and 0 < r["agreement"] <= 100, r
            assert r["runtime"] != "litert" or r["xnnpack_partitions"] >= 1, r  # the phone's kernels, not LiteRT's
    assert not [r for r in arm64["rows"] if "error" in r]
    markdown = emulated_run["markdown"]
    assert "## Accuracy on emulated arm64 cores" in markdown and "says nothing about latency" in markdown
    assert "| wearos-watch-arm64 | cortex-a53 | onnx_int8_static | onnxruntime |" in markdown
    assert "\n".join(arm64_lines(arm64)) in markdown
