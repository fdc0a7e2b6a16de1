"""The "ship this" rule on crafted tables, and the deploy folder read the way an app reads it."""
from __future__ import annotations

import json
import logging
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import artifact_folder, cli_args, read_report, tiny_overrides
from pipeline.cli import main
from pipeline.core.intervals import difference_interval
from pipeline.core.numerics import dynamic_int8, floating, static_int8
from pipeline.ship import Candidate, Evaluation, LatencyRow, choose, choose_all, choose_records
from test_report import render

LAPTOP = {"runtime": "openvino", "precision": "int8"}
NUMERICS = {"fp32": floating("fp32"), "int8 (NNCF)": static_int8(), "int8 static QDQ": static_int8(),
            "int8 dynamic": dynamic_int8()}  # the records the quantize stage writes beside these labels


def _evaluation_record(*artifacts: tuple[str, str, float, float, int], images: int = 10_000) -> dict:
    """report.json's evaluation: (name, precision, top-1 %, agreement with fp32, bytes) per artifact; torch fp32 at
    88.14%."""
    rows = [{"artifact": "torch_fp32", "runtime": "torch", "precision": "fp32", "numerics": floating("fp32"),
             "top1": 88.14, "agreement": 1.0, "bytes": 600_000, "evaluation": "measured"}]
    rows += [{"artifact": a, "runtime": "openvino", "precision": p, "numerics": NUMERICS[p], "top1": t, "agreement": g,
              "bytes": b, "evaluation": "measured"} for a, p, t, g, b in artifacts]
    return {"images": images, "artifacts": rows}


def _evaluation(*artifacts: tuple[str, str, float, float, int], images: int = 10_000) -> Evaluation:
    return Evaluation.from_dict(_evaluation_record(*artifacts, images=images))


def _timed_record(artifact: str, p50: float, latency_ok: bool = True, memory_ok: bool = True, spread: float = 0.02,
                  runtime: str = "openvino", target: str = "x86-laptop") -> dict:
    """A proxy row of report.json's latency.rows with its median's 95% interval (p50 +- spread)."""
    return {"target": target, "artifact": artifact, "runtime": runtime, "label": "proxy",
            "latency_ms": {"p50": p50, "p90": p50 * 1.2, "p50_interval": [p50 * (1 - spread), p50 * (1 + spread)]},
            "budget": {"latency_ok": latency_ok, "memory_ok": memory_ok}}


def _timed(*args, **kwargs) -> LatencyRow:
    return LatencyRow.from_dict(_timed_record(*args, **kwargs))


def _untimed(target: str, *artifacts: str) -> list[LatencyRow]:
    return [LatencyRow.from_dict({"target": target, "artifact": a, "label": "needs-device"}) for a in artifacts]


FP32 = ("openvino", "fp32", 88.14, 1.0, 600_000)
INT8 = ("openvino_int8", "int8 (NNCF)", 88.02, 0.995, 200_000)
LOSSY_INT8 = ("openvino_int8", "int8 (NNCF)", 87.40, 0.97, 200_000)  # 0.74 points: within max_drop, a real loss


def test_float_ships_when_int8_is_slower_even_where_int8_is_preferred():
    """The report this issue was filed on: INT8 2.07 ms vs fp32 1.27 ms; the profile prefers int8."""
    choice = choose("x86-laptop", LAPTOP, [_timed("openvino", 1.27), _timed("openvino_int8", 2.07)],
                    _evaluation(FP32, INT8), max_drop=1.0)
    assert choice["artifact"] == "openvino"
    assert "`openvino_int8` is slower: openvino is 1.63x as fast (interval 1.57-1.70x), so float ships" in \
        choice["why"]


def test_overlapping_intervals_tie_and_the_stated_order_breaks_the_tie():
    """5% apart but the intervals overlap: a tie. prefer=accuracy keeps the files without a real loss and within
    0.1 points of the most accurate, then the smaller; prefer=size takes the smaller file."""
    rows = [_timed("openvino", 1.00, spread=0.04), _timed("openvino_int8", 1.05, spread=0.04)]
    close = ("openvino_int8", "int8 (NNCF)", 88.08, 0.997, 200_000)  # 0.06 points below fp32: as accurate
    lossless = choose("x86-laptop", LAPTOP, rows, _evaluation(FP32, close), max_drop=1.0)
    assert lossless["artifact"] == "openvino_int8" and "ties within noise with openvino" in lossless["why"]
    assert choose("x86-laptop", LAPTOP, rows, _evaluation(FP32, INT8), max_drop=1.0)["artifact"] == "openvino"
    lossy = choose("x86-laptop", LAPTOP, rows, _evaluation(FP32, LOSSY_INT8), max_drop=1.0)
    assert lossy["artifact"] == "openvino" and "no real accuracy loss, then top-1 within 0.1" in lossy["why"]
    assert choose("x86-laptop", LAPTOP, rows, _evaluation(FP32, LOSSY_INT8), 1.0, prefer="size")["artifact"] == \
        "openvino_int8"
    apart = [_timed("openvino", 1.00, spread=0.01), _timed("openvino_int8", 1.04, spread=0.01)]  # < 5%: still a tie
    assert choose("x86-laptop", LAPTOP, apart, _evaluation(FP32, LOSSY_INT8), 1.0, prefer="size")["artifact"] == \
        "openvino_int8"


def test_an_artifact_over_the_accuracy_or_a_budget_does_not_ship():
    lossy = ("openvino_int8", "int8 (NNCF)", 85.0, 0.95, 200_000)
    choice = choose("x86-laptop", LAPTOP, [_timed("openvino", 1.27), _timed("openvino_int8", 0.5)],
                    _evaluation(FP32, lossy), max_drop=1.0)
    assert choice["artifact"] == "openvino" and "`openvino_int8` loses 3.14 top-1 points (95% interval of the " \
        "change -3.57 to -2.71), over max_drop 1" in choice["why"]
    over = choose("x86-laptop", LAPTOP, [_timed("openvino", 1.27, latency_ok=False), _timed("openvino_int8", 2.0)],
                  _evaluation(FP32, INT8), max_drop=1.0)
    assert over["artifact"] == "openvino_int8"
    nothing_fits = choose("x86-laptop", LAPTOP, [_timed("openvino", 9.0, False), _timed("openvino_int8", 8.0, False)],
                          _evaluation(FP32, INT8), max_drop=1.0)
    assert nothing_fits["artifact"] == "openvino_int8" and "that step is skipped" in nothing_fits["why"]
    assert not nothing_fits["why"].startswith("fastest within the budgets")


def test_a_file_marked_ship_false_never_ships():
    rows = [_timed("openvino", 1.27), _timed("openvino_int8", 0.5)]
    choice = choose("x86-laptop", LAPTOP, rows, _evaluation(FP32, INT8), max_drop=1.0,
                    unshippable={"openvino_int8": "not faster than fp32 on this host"})
    assert choice["artifact"] == "openvino" and "`openvino_int8` is marked ship: false" in choice["why"]


def _report(quantized: dict, *targets: str) -> dict:
    """A report.json with the FP32 and INT8 files timed (INT8 2.5x as fast) on `targets`, and the quantize
    stage's record of openvino_int8."""
    rows = [_timed_record(a, p50, target=t) for t in targets for a, p50 in (("openvino", 1.27), ("openvino_int8", 0.5))]
    return {"config": {"quantize": {"max_drop": 1.0}}, "evaluation": _evaluation_record(FP32, INT8),
            "latency": {"rows": rows, "targets": {t: {**LAPTOP, "runtimes": []} for t in targets}},
            "stages": {"quantize": {"summary": {"artifacts": {"openvino_int8": quantized}}}}}


def test_no_target_ships_a_file_marked_ship_false_or_left_over_its_budget():
    """Issue 41: x86-laptop shipped `openvino_int8` marked ship: false, and android-phone an ExecuTorch file the
    fallback had flagged over max_drop. Neither may ship to any target, overall or for its SDK."""
    targets = ("x86-laptop", "another-laptop")
    assert {a["artifact"] for a in choose_all(_report({"ship": True}, *targets)).values()} == {"openvino_int8"}
    flagged = {"fallback": {"met": False, "max_drop": 1.0, "steps": [{"drop": 1.67}]}}
    for record, said in (({"ship": False}, "marked ship: false"), (flagged, "over the accuracy budget on validation")):
        for answer in choose_all(_report(record, *targets)).values():
            assert answer["artifact"] == "openvino" and answer["by_runtime"]["openvino"]["artifact"] == "openvino"
            assert said in answer["why"]


def test_the_budget_is_judged_with_its_interval():
    """Issue 41: on a small test split one image is more than max_drop. 1.67 points on 60 images (one image of
    60, its interval -4.9 to +1.6) is no real loss and ships; the same drop on 10,000 images is real and does not."""
    one_image = ("openvino_int8", "int8 (NNCF)", 88.14 - 1.67, 1 - 1 / 60, 200_000)
    rows = [_timed("openvino", 1.27), _timed("openvino_int8", 0.5)]
    small = choose("x86-laptop", LAPTOP, rows, _evaluation(FP32, one_image, images=60), max_drop=1.0)
    assert small["artifact"] == "openvino_int8"
    large = choose("x86-laptop", LAPTOP, rows, _evaluation(FP32, one_image, images=10_000), max_drop=1.0)
    assert large["artifact"] == "openvino" and "over max_drop 1" in large["why"]


def test_a_runtime_with_no_file_in_the_accuracy_budget_ships_nothing():
    lossy = ("openvino_int8", "int8 (NNCF)", 85.0, 0.95, 200_000)
    only_int8 = choose("x86-laptop", LAPTOP, [_timed("openvino_int8", 0.5)], _evaluation(lossy), max_drop=1.0)
    assert only_int8["artifact"] is None and "over max_drop 1" in only_int8["why"]


def test_report_json_records_enter_the_rule_as_typed_rows():
    """choose_records (report.json's dicts, as choose_all reads them) answers as choose does on the rows from_dict
    makes of them, and the answer's latency is the record's own numbers and lists."""
    records = [_timed_record("openvino", 1.27), _timed_record("openvino_int8", 2.07, latency_ok=False)]
    answer = choose_records("x86-laptop", LAPTOP, records, _evaluation_record(FP32, INT8), max_drop=1.0)
    typed = [_timed("openvino", 1.27), _timed("openvino_int8", 2.07, latency_ok=False)]
    assert answer == choose("x86-laptop", LAPTOP, typed, _evaluation(FP32, INT8), max_drop=1.0)
    assert answer["latency_ms"] == {k: records[0]["latency_ms"][k] for k in ("p50", "p90", "p50_interval")}
    assert typed[1].timed and not typed[1].latency_ok and typed[1].memory_ok and typed[1].predicted is None
    fp32 = _evaluation(FP32).artifacts[1]
    assert (fp32.artifact, fp32.bytes, fp32.scored, fp32.reason) == ("openvino", 600_000, True, None)
    assert not _untimed("x86-laptop", "openvino")[0].timed


WATCH = {"runtime": "coreml", "precision": "int8", "memory_budget_mb": 30}


def _coreml(*artifacts: tuple[str, float, float, int]) -> Evaluation:
    evaluation = _evaluation(*[(a, "fp32", t, g, b) for a, t, g, b in artifacts])
    torch_fp32, *packages = evaluation.artifacts
    return replace(evaluation, artifacts=(torch_fp32, *(replace(a, runtime="coreml", evaluation="simulated")
                                                        for a in packages)))


def test_untimed_targets_keep_accuracy_over_size_and_check_memory():
    """The iPhone / Apple Watch case: a 4-bit palette losing 0.5 points (a real loss) must not ship over a lossless
    INT8 package just because it is smaller; a package over the memory budget (file + activations) is dropped."""
    evaluation = _coreml(("coreml_fp16", 88.14, 1.0, 24_000_000), ("coreml_int8", 88.12, 0.998, 12_000_000),
                         ("coreml_palettize4", 87.64, 0.985, 6_000_000))
    rows = _untimed("apple-watch", "coreml_fp16", "coreml_int8", "coreml_palettize4")
    choice = choose("apple-watch", WATCH, rows, evaluation, max_drop=1.0, activation_mb=4.0)
    assert choice["artifact"] == "coreml_int8" and choice["memory_mb_estimate"] == pytest.approx(14.0)
    assert "nothing was timed" in choice["why"] and "memory estimated at 14.0 MB" in choice["why"]
    assert choice["separated"] and choice["overall"] == "coreml"  # the only runtime: no tie to break
    assert choose("apple-watch", WATCH, rows, evaluation, 1.0, prefer="size", activation_mb=4.0)["artifact"] == \
        "coreml_palettize4"
    tight = choose("apple-watch", {**WATCH, "memory_budget_mb": 10}, rows, evaluation, 1.0, activation_mb=4.0)
    assert tight["artifact"] == "coreml_palettize4"  # the only one under 10 MB with its activations


PHONE = {"runtime": "onnxruntime", "runtimes": ["executorch", "litert"], "precision": "int8"}


def _phone_evaluation() -> Evaluation:
    files = {"onnx_fp32": ("onnxruntime", "fp32", 88.14, 1.0, 700_000),
             "executorch_fp32": ("executorch", "fp32", 88.14, 1.0, 650_000),
             "litert_fp32": ("litert", "fp32", 88.14, 1.0, 690_000),
             "litert_int8": ("litert", "int8 static QDQ", 88.10, 0.996, 200_000)}
    evaluation = _evaluation()
    return replace(evaluation, artifacts=(*evaluation.artifacts, *(Candidate.from_dict(
        {"artifact": a, "runtime": r, "precision": p, "numerics": NUMERICS.get(p, floating(p)), "top1": t,
         "agreement": g, "bytes": b, "evaluation": "measured"}) for a, (r, p, t, g, b) in files.items())))


def _phone_rows(timings: dict[str, float], spread: float = 0.02) -> list[LatencyRow]:
    runtime = {"onnx_fp32": "onnxruntime", "executorch_fp32": "executorch", "litert_fp32": "litert",
               "litert_int8": "litert"}
    return [_timed(a, t, spread=spread, runtime=runtime[a], target="android-phone") for a, t in timings.items()]


def test_each_sdk_gets_its_own_answer_and_the_overall_pick_only_where_timings_separate_it():
    evaluation = _phone_evaluation()
    separated = choose("android-phone", PHONE, _phone_rows({"onnx_fp32": 0.20, "executorch_fp32": 0.12,
                                                            "litert_fp32": 0.10, "litert_int8": 0.16}),
                       evaluation, max_drop=1.0)
    assert {r: c["artifact"] for r, c in separated["by_runtime"].items()} == \
        {"onnxruntime": "onnx_fp32", "executorch": "executorch_fp32", "litert": "litert_fp32"}
    assert separated["overall"] == "litert" and separated["separated"]
    assert "faster than ONNX Runtime's `onnx_fp32`" in separated["overall_why"]
    tied = choose("android-phone", PHONE, _phone_rows({"onnx_fp32": 0.101, "executorch_fp32": 0.100,
                                                       "litert_fp32": 0.102, "litert_int8": 0.30}, spread=0.05),
                  evaluation, max_drop=1.0)
    assert not tied["separated"] and tied["overall"] == "executorch"  # no real loss in any, then the smallest file
    assert "no single fastest runtime" in tied["overall_why"]


def test_the_answers_are_the_same_on_reruns_whose_timings_move_within_noise():
    """Three reruns of crafted timings that move inside each other's intervals, rows and files in other orders:
    the same answer for every SDK and the same overall pick each time."""
    evaluation = _phone_evaluation()
    answers = []
    for shift, order in ((1.00, 1), (1.03, -1), (0.98, 1)):
        timings = {"onnx_fp32": 0.119 * shift, "executorch_fp32": 0.117 / shift, "litert_fp32": 0.097 * shift,
                   "litert_int8": 0.099 / shift}
        rows = _phone_rows(timings, spread=0.04)[::order]
        shuffled = replace(evaluation, artifacts=evaluation.artifacts[::order])
        answer = choose("android-phone", PHONE, rows, shuffled, max_drop=1.0)
        answers.append((answer["overall"], answer["separated"],
                        {r: c["artifact"] for r, c in answer["by_runtime"].items()}))
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][0] == "litert" and answers[0][2]["litert"] == "litert_int8"  # int8 ties fp32, lossless, smaller


def test_with_nothing_timed_the_stated_order_picks_within_the_accuracy_budget():
    rows = _untimed("x86-laptop", "openvino", "openvino_int8")
    assert choose("x86-laptop", LAPTOP, rows, _evaluation(FP32, INT8), max_drop=1.0)["artifact"] == "openvino"
    choice = choose("x86-laptop", LAPTOP, rows, _evaluation(FP32, INT8), max_drop=1.0, prefer="size")
    assert choice["artifact"] == "openvino_int8" and choice["latency_ms"] is None
    assert "nothing was timed" in choice["why"] and choice["label"] == "needs-device"


def test_accuracy_differences_within_noise_are_said_to_be():
    assert difference_interval(88.02, 88.14, agreement=0.995, images=10_000)[0] < 0 < \
        difference_interval(88.02, 88.14, agreement=0.995, images=10_000)[1]
    low, high = difference_interval(85.0, 88.14, agreement=0.95, images=10_000)
    assert high < 0 and low < -3.14 < high  # 3 points over 10,000 images is no noise
    choice = choose("x86-laptop", LAPTOP, [_timed("openvino", 1.0), _timed("openvino_int8", 1.0)],
                    _evaluation(FP32, INT8), max_drop=1.0, prefer="size")
    assert choice["artifact"] == "openvino_int8" and choice["within_noise"]
    assert choice["delta_top1"] == pytest.approx(-0.12)


def _litert_on_pixels(path: Path, spec: dict, images: np.ndarray) -> np.ndarray:
    """The .tflite as an Android app feeds it: RGB pixels 0-255, channels last (the model converts and normalises)."""
    from ai_edge_litert.interpreter import Interpreter

    assert "mean" not in spec and spec["layout"] == "NHWC" and spec["color"] == "RGB"
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    index = {d["name"]: d["index"] for d in [*interpreter.get_input_details(), *interpreter.get_output_details()]}
    logits = []
    for picture in np.broadcast_to(images, (len(images), 3, *images.shape[2:])).transpose(0, 2, 3, 1):
        interpreter.set_tensor(index[spec["input_name"]], picture[None].astype(np.float32))
        interpreter.invoke()
        logits.append(interpreter.get_tensor(index[spec["output_name"]])[0].copy())
    return np.array(logits)


def test_the_deploy_folder_alone_classifies_test_images_as_evaluated(trained_run):
    """Like an app: the model file, labels.txt and preprocess.json only, on raw test pictures (uint8)."""
    import onnxruntime as ort
    import openvino as ov

    report = read_report(trained_run)
    deploy = trained_run / "runs" / "default" / "deploy"
    assert set(report["ship"]) == set(report["latency"]["targets"]) and set(report["deploy"]) <= set(report["ship"])
    pictures = np.load(artifact_folder(trained_run, "data") / "data.npz")
    images, labels = pictures["x_test"], pictures["y_test"]
    answers = [(target, runtime, choice) for target, answer in report["ship"].items()
               for runtime, choice in answer["by_runtime"].items() if choice.get("artifact")]
    assert {"onnxruntime", "executorch", "litert", "openvino", "coreml"} <= {runtime for _, runtime, _ in answers}
    for target, answer in report["ship"].items():
        overall = (deploy / target / "README.md").read_text().splitlines()[2]
        assert overall.startswith(f"**Overall pick: `{answer['runtime']}/{answer['artifact']}`**")
        assert json.loads((deploy / target / "ship.json").read_text()) == answer
    for target, runtime, choice in answers:
        folder = deploy / target / runtime
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
        if choice["runtime"] == "litert":
            logits, embedded = _litert_on_pixels(next(folder.glob("*.tflite")), spec, images), {
                "labels": json.dumps(names), "preprocess": json.dumps(spec)}  # its TFLite metadata: test_app_files
        else:
            c = np.asarray(spec["mean"], np.float32).reshape(1, -1, 1, 1)
            s = np.asarray(spec["std"], np.float32).reshape(1, -1, 1, 1)
            x = ((images.astype(np.float32) / 255 - c) / s).astype(np.float32)
            if choice["runtime"] == "onnxruntime":
                session = ort.InferenceSession(str(next(folder.glob("*.onnx"))))
                logits = session.run([spec["output_name"]], {spec["input_name"]: x})[0]
                embedded = session.get_modelmeta().custom_metadata_map
            elif choice["runtime"] == "executorch":  # no metadata in a .pte: labels.txt beside it
                from backends import load_runner

                logits = load_runner(next(folder.glob("*.pte")))(x)
                embedded = {"labels": json.dumps(names), "preprocess": json.dumps(spec)}
            else:
                model = ov.Core().read_model(str(next(folder.glob("*.xml"))))
                embedded = {k: model.get_rt_info(["manifold_edge", k]).astype(str) for k in ("labels", "preprocess")}
                logits = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
        assert json.loads(embedded["labels"]) == names and json.loads(embedded["preprocess"]) == spec
        predicted = [names[i] for i in logits.argmax(1)]
        top1 = 100 * np.mean([p == names[y] for p, y in zip(predicted, labels)])
        assert top1 == pytest.approx(choice["top1"], abs=0.01), (target, runtime)


def test_untimed_core_ml_answers_carry_a_memory_estimate_from_the_onnx_graph(trained_run, tmp_path):
    """The estimate is read from the run's own fp32 ONNX graph: at least the input and the logits, and the
    Core ML answer (not timed off macOS) states it against the budget; a file that is not ONNX gives none."""
    from pipeline.activations import activation_mb, fp32_onnx

    report = read_report(trained_run)
    estimate = activation_mb(fp32_onnx(report))
    data = report["stages"]["data"]["summary"]
    assert estimate is not None and estimate > 2 * 4 * data["channels"] * data["img_size"] ** 2 / 1e6
    watch = report["ship"]["apple-watch"]["by_runtime"]["coreml"]
    assert watch["memory_mb_estimate"] == pytest.approx(watch["bytes"] / 1e6 + estimate / 2, abs=0.01)
    assert f"memory estimated at {watch['memory_mb_estimate']:.1f} MB" in watch["why"]
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert activation_mb(tmp_path / "junk.onnx") is None and activation_mb(None) is None


def test_the_first_screen_is_the_ship_table(trained_run, tmp_path):
    dom, _, shot = render(trained_run / "runs" / "default" / "report.html", tmp_path, height=800)
    headings = re.findall(r"<h2[^>]*>(.*?)</h2>", dom)
    assert headings[0] == "Ship"
    matrix, detail = re.search(r"<h2[^>]*>Ship</h2>.*?<table>(.*?)</table>.*?<table>(.*?)</table>", dom,
                               re.S).groups()
    for target, answer in read_report(trained_run)["ship"].items():
        row = re.search(rf"<td>{re.escape(target)}</td>(.*?)</tr>", matrix, re.S).group(1)
        for choice in answer["by_runtime"].values():
            assert choice["artifact"] is None or f"<code>{choice['artifact']}</code>" in row
        if answer["artifact"]:  # the overall pick, bold, and its folder in the detailed table
            assert f"<strong><code>{answer['artifact']}</code></strong>" in row
            assert f"deploy/{target}/{answer['runtime']}/" in detail
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
    assert report["ship"]["android-phone"]["by_runtime"]["onnxruntime"]["artifact"].startswith("onnx")
    phone = Path(report["deploy"]["android-phone"])
    assert phone.parent == tmp_path / "app-models" and next((phone / "onnxruntime").glob("*.onnx")).is_file()
    iphone = Path(report["deploy"]["iphone"])  # no Core ML export in this run: the folder says so
    assert "no coreml artifact in this run" in (iphone / "README.md").read_text()
    assert not (iphone / "coreml").exists()
    assert json.loads((tmp_path / "runs" / "default" / "report.json").read_text())["deploy"] == report["deploy"]
