"""The "ship this" rule on crafted tables, and the deploy folder read the way an app reads it."""
from __future__ import annotations

import json
import logging
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import artifact_folder, cli_args, read_report, tiny_overrides
from pipeline.cli import main
from pipeline.ship import choose, difference_interval
from targets.numerics import dynamic_int8, floating, static_int8
from test_report import render

LAPTOP = {"runtime": "openvino", "precision": "int8"}
NUMERICS = {"fp32": floating("fp32"), "int8 (NNCF)": static_int8(), "int8 static QDQ": static_int8(),
            "int8 dynamic": dynamic_int8()}  # the records the quantize stage writes beside these labels


def _evaluation(*artifacts: tuple[str, str, float, float, int], images: int = 10_000) -> dict:
    """(name, precision, top-1 %, agreement with fp32, bytes) per artifact; torch fp32 at 88.14%."""
    rows = [{"artifact": "torch_fp32", "runtime": "torch", "precision": "fp32", "numerics": floating("fp32"),
             "top1": 88.14, "agreement": 1.0, "bytes": 600_000, "evaluation": "measured"}]
    rows += [{"artifact": a, "runtime": "openvino", "precision": p, "numerics": NUMERICS[p], "top1": t, "agreement": g,
              "bytes": b, "evaluation": "measured"} for a, p, t, g, b in artifacts]
    return {"images": images, "artifacts": rows}


def _timed(artifact: str, p90: float, latency_ok: bool = True, memory_ok: bool = True) -> dict:
    return {"target": "x86-laptop", "artifact": artifact, "label": "proxy", "latency_ms": {"p50": p90 * 0.9,
            "p90": p90}, "budget": {"latency_ok": latency_ok, "memory_ok": memory_ok}}


FP32 = ("openvino", "fp32", 88.14, 1.0, 600_000)
INT8 = ("openvino_int8", "int8 (NNCF)", 88.02, 0.995, 200_000)


def test_float_ships_when_int8_is_slower_even_where_int8_is_preferred():
    """The report this issue was filed on: INT8 p90 2.07 ms vs fp32 1.27 ms; the profile prefers int8."""
    choice = choose("x86-laptop", LAPTOP, [_timed("openvino", 1.27), _timed("openvino_int8", 2.07)],
                    _evaluation(FP32, INT8), max_drop=1.0)
    assert choice["artifact"] == "openvino"
    assert "`openvino_int8` runs at 0.61x its speed, so float ships" in choice["why"]


def test_android_phone_ships_the_fastest_not_the_preferred_int8():
    """The second case the issue was filed on: static INT8 at 0.64x fp32's speed must not ship; dynamic INT8,
    as fast as fp32 and smaller, does."""
    phone = {"runtime": "onnxruntime", "precision": "int8"}
    evaluation = _evaluation(("onnx", "fp32", 88.14, 1.0, 600_000), ("onnx_int8_static", "int8 static QDQ", 88.07,
                                                                     0.996, 200_000),
                             ("onnx_int8_dynamic", "int8 dynamic", 88.08, 0.997, 210_000))
    for row in evaluation["artifacts"][1:]:
        row["runtime"] = "onnxruntime"
    rows = [_timed("onnx", 0.185), _timed("onnx_int8_static", 0.29), _timed("onnx_int8_dynamic", 0.18)]
    choice = choose("android-phone", phone, rows, evaluation, max_drop=1.0)
    assert choice["artifact"] == "onnx_int8_dynamic" and "smaller file wins" in choice["why"]
    rows[2] = _timed("onnx_int8_dynamic", 0.25)
    choice = choose("android-phone", phone, rows, evaluation, max_drop=1.0)
    assert choice["artifact"] == "onnx"
    assert "`onnx_int8_static` runs at 0.64x its speed, so float ships" in choice["why"]


def test_equally_fast_artifacts_ship_the_smaller_file():
    choice = choose("x86-laptop", LAPTOP, [_timed("openvino", 1.00), _timed("openvino_int8", 1.03)],
                    _evaluation(FP32, INT8), max_drop=1.0)
    assert choice["artifact"] == "openvino_int8" and "smaller file wins" in choice["why"]


def test_an_artifact_over_the_accuracy_or_a_budget_does_not_ship():
    lossy = ("openvino_int8", "int8 (NNCF)", 85.0, 0.95, 200_000)
    choice = choose("x86-laptop", LAPTOP, [_timed("openvino", 1.27), _timed("openvino_int8", 0.5)],
                    _evaluation(FP32, lossy), max_drop=1.0)
    assert choice["artifact"] == "openvino" and "loses 3.14 points, over max_drop 1" in choice["why"]
    over = choose("x86-laptop", LAPTOP, [_timed("openvino", 1.27, latency_ok=False), _timed("openvino_int8", 2.0)],
                  _evaluation(FP32, INT8), max_drop=1.0)
    assert over["artifact"] == "openvino_int8"
    nothing_fits = choose("x86-laptop", LAPTOP, [_timed("openvino", 9.0, False), _timed("openvino_int8", 8.0, False)],
                          _evaluation(FP32, INT8), max_drop=1.0)
    assert nothing_fits["artifact"] == "openvino_int8" and "that step is skipped" in nothing_fits["why"]


def test_with_nothing_timed_the_smallest_file_within_the_accuracy_budget_ships():
    rows = [{"target": "x86-laptop", "artifact": a, "label": "needs-device"} for a in ("openvino", "openvino_int8")]
    choice = choose("x86-laptop", LAPTOP, rows, _evaluation(FP32, INT8), max_drop=1.0)
    assert choice["artifact"] == "openvino_int8" and choice["latency_ms"] is None
    assert "nothing was timed" in choice["why"] and choice["label"] == "needs-device"


def test_accuracy_differences_within_noise_are_said_to_be():
    assert difference_interval(88.02, 88.14, agreement=0.995, images=10_000)[0] < 0 < \
        difference_interval(88.02, 88.14, agreement=0.995, images=10_000)[1]
    low, high = difference_interval(85.0, 88.14, agreement=0.95, images=10_000)
    assert high < 0 and low < -3.14 < high  # 3 points over 10,000 images is no noise
    choice = choose("x86-laptop", LAPTOP, [_timed("openvino", 1.0), _timed("openvino_int8", 1.0)],
                    _evaluation(FP32, INT8), max_drop=1.0)
    assert choice["within_noise"] and choice["delta_top1"] == pytest.approx(-0.12)


def test_the_deploy_folder_alone_classifies_test_images_as_evaluated(trained_run):
    """Like an app: the model file, labels.txt and preprocess.json only, on raw test pictures (uint8)."""
    import onnxruntime as ort
    import openvino as ov

    report = read_report(trained_run)
    deploy = trained_run / "runs" / "default" / "deploy"
    assert set(report["ship"]) == set(report["latency"]["targets"]) and set(report["deploy"]) <= set(report["ship"])
    pictures = np.load(artifact_folder(trained_run, "data") / "data.npz")
    images, labels = pictures["x_test"], pictures["y_test"]
    for target, choice in report["ship"].items():
        folder = deploy / target
        assert {"labels.txt", "preprocess.json", "MODEL_CARD.md"} <= {p.name for p in folder.iterdir()}
        names = (folder / "labels.txt").read_text().splitlines()
        spec = json.loads((folder / "preprocess.json").read_text())
        card = (folder / "MODEL_CARD.md").read_text()
        assert choice["artifact"] and f"{choice['top1']:.2f}%" in card and "test split" in card
        if choice["runtime"] == "coreml":
            import coremltools as ct

            package = ct.models.MLModel(str(next(folder.glob("*.mlpackage"))), skip_model_load=True)
            assert json.loads(package.user_defined_metadata["labels"]) == names and spec["input_name"] == "image"
            continue
        c = np.asarray(spec["mean"], np.float32).reshape(1, -1, 1, 1)
        s = np.asarray(spec["std"], np.float32).reshape(1, -1, 1, 1)
        x = ((images.astype(np.float32) / 255 - c) / s).astype(np.float32)
        if choice["runtime"] == "onnxruntime":
            session = ort.InferenceSession(str(next(folder.glob("*.onnx"))))
            logits = session.run([spec["output_name"]], {spec["input_name"]: x})[0]
            embedded = session.get_modelmeta().custom_metadata_map
        elif choice["runtime"] in ("litert", "executorch"):  # no metadata in the file: labels.txt beside it
            from targets.runtimes import load_runner

            logits = load_runner(next(p for p in folder.iterdir() if p.suffix in (".tflite", ".pte")))(x)
            embedded = {"labels": json.dumps(names), "preprocess": json.dumps(spec)}
        else:
            model = ov.Core().read_model(str(next(folder.glob("*.xml"))))
            embedded = {k: model.get_rt_info(["manifold_edge", k]).astype(str) for k in ("labels", "preprocess")}
            logits = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
        assert json.loads(embedded["labels"]) == names and json.loads(embedded["preprocess"]) == spec
        predicted = [names[i] for i in logits.argmax(1)]
        top1 = 100 * np.mean([p == names[y] for p, y in zip(predicted, labels)])
        assert top1 == pytest.approx(choice["top1"], abs=0.01), target


def test_the_first_screen_is_the_ship_table(trained_run, tmp_path):
    dom, _, shot = render(trained_run / "runs" / "default" / "report.html", tmp_path, height=800)
    headings = re.findall(r"<h2[^>]*>(.*?)</h2>", dom)
    assert headings[0] == "Ship"
    table = re.search(r"<h2[^>]*>Ship</h2>.*?<table>(.*?)</table>", dom, re.S).group(1)
    for target in read_report(trained_run)["ship"]:
        assert f"deploy/{target}/" in table
    assert shot.stat().st_size > 10_000


def test_out_refuses_a_file_a_foreign_folder_and_a_read_only_place(tmp_path, capsys):
    """Each is one line and exit 2 before anything runs, and nothing there is touched."""
    afile, foreign, readonly = tmp_path / "model.onnx", tmp_path / "photos", tmp_path / "ro"
    afile.write_text("mine")
    foreign.mkdir()
    (foreign / "cat.jpg").write_text("mine")
    readonly.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)],
                             capture_output=True).returncode == 0
    try:
        cases = [(afile, "is a file"), (foreign, "holds files manifold-edge did not write")]
        cases += [(readonly / "deploy", "cannot write there")] if mounted else []
        for out, message in cases:
            assert main([*cli_args(tmp_path, "run"), "--out", str(out)]) == 2
            err = capsys.readouterr().err
            assert message in err and err.count("\n") == 1 and "Traceback" not in err
    finally:
        if mounted:
            subprocess.run(["umount", str(readonly)], capture_output=True)
    assert afile.read_text() == "mine" and [p.name for p in foreign.iterdir()] == ["cat.jpg"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_the_python_api_runs_a_dict_config_and_returns_the_report_and_deploy_folders(tmp_path, caplog):
    from pipeline import run

    config = {"export": {"coreml": {"enabled": False}, "openvino": False},
              "quantize": {"coreml": {"enabled": False}, "openvino": False}}
    mine = logging.getLogger("stages")
    mine.addHandler(caplog.handler)  # quiet: nothing on the terminal, but the records reach the caller's handlers
    try:
        report = run(config, tiny_overrides(tmp_path), out=tmp_path / "app-models", quiet=True)
    finally:
        mine.removeHandler(caplog.handler)
    assert any(m.startswith("teacher convstem_vit_small (scratch): val top-1") for m in caplog.messages)
    assert report["ship"]["android-phone"]["runtime"] == "onnxruntime"
    phone = Path(report["deploy"]["android-phone"])
    assert phone.parent == tmp_path / "app-models" and next(phone.glob("*.onnx")).is_file()
    iphone = Path(report["deploy"]["iphone"])  # no Core ML export in this run: the folder says so
    assert "no coreml artifact in this run" in (iphone / "README.md").read_text()
    assert json.loads((tmp_path / "runs" / "default" / "report.json").read_text())["deploy"] == report["deploy"]
