"""Latency predicted from public on-device measurements (targets/predict/): the tables read out of a
qai-hub-models wheel, graph features, held-out error and interval coverage, the widening for what the
features miss, profile checks, the place of predictions in the ship choice, and what a predicted row states:
the precision its file's numerics say, p90 as the interval's upper end, the held-out error of its own family
(or a new family's) beside the sibling device's, and the NPU-only coverage of the public table."""
from __future__ import annotations

import csv
import json
import zipfile

import numpy as np
import pytest

from conftest import artifact_folder
from pipeline.config import load_config
from pipeline.core.errors import UserError
from pipeline.core.numerics import FP32, Numerics, dynamic_int8, floating, static_int8
from pipeline.ship import choose_records
from stages.benchmark import model_family
from targets.latency import Model
from targets.predict.features import features
from targets.predict.measurements import FIELDS, OUT, main, read_wheel
from targets.predict.predictor import (
    FEATURES_FILE,
    LEVEL,
    MIN_MODELS,
    accuracy_context,
    chosen,
    datasets,
    details,
    evaluate,
    hold_out,
    predict,
    public_coverage,
)
from targets.predict.rows import predicted_rows
from targets.predict.zoo import STUDENT_FAMILY, ZOO, family_of
from targets.profiles import TargetProfile

PERF = """precisions:
  float:
    components:
      ViT:
        performance_metrics:
          Samsung Galaxy S24:
            tflite:
              estimated_peak_memory_range_mb: {max: 30, min: 0}
              inference_time_milliseconds: 1.5
              job_id: jabc
              job_status: Passed
              layer_counts: {npu: 500, total: 520, cpu: 20}
              primary_compute_unit: NPU
            qnn_dlc:
              inference_time_milliseconds: 9.9
              job_id: jfailed
              job_status: Failed
  w8a8:
    components:
      ViT:
        performance_metrics:
          Samsung Galaxy S24:
            onnx:
              inference_time_milliseconds: 0.7
              job_id: jq
              job_status: Passed
              layer_counts: {npu: 400, total: 400}
              primary_compute_unit: NPU
            genie:
              llm_metrics: {tokens_per_second: 20}
              job_status: Passed
"""


def test_perf_yaml_rows_come_out_of_the_wheel(tmp_path):
    wheel = tmp_path / "qai_hub_models-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("qai_hub_models/models/vit/perf.yaml", PERF)
        archive.writestr("qai_hub_models/models/vit/info.yaml", "name: ViT\n")
    rows = read_wheel(wheel)
    assert [(r["precision"], r["runtime"], r["inference_ms"], r["job_id"]) for r in rows] == [
        ("w8a8", "onnx", 0.7, "jq"), ("float", "tflite", 1.5, "jabc")]  # failed and LLM jobs left out
    assert rows[1]["layers_cpu"] == 20 and rows[1]["peak_mb_max"] == 30 and rows[0]["layers_gpu"] == 0
    assert {r["source"] for r in rows} == {"qai_hub_models-9.9.9"} and {r["model"] for r in rows} == {"vit"}
    out = tmp_path / "table.csv"
    assert main(["--wheel", str(wheel), "--out", str(out)]) == 0
    with open(out) as f:
        assert list(csv.DictReader(f)) == [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows]


def test_the_committed_table_is_the_package_s_measurements():
    with open(OUT) as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == FIELDS
        rows = list(reader)
    assert len(rows) > 15_000 and len({r["device"] for r in rows}) >= 20
    assert all(float(r["inference_ms"]) > 0 and r["job_id"] and r["source"] == "qai_hub_models-0.65.0" for r in rows)
    models = {r["model"] for r in rows}
    assert {"vit", "swin_tiny", "levit", "mobile_vit", "efficientvit_b2_cls", "mobilenet_v3_small"} <= models
    keys = [(r["model"], r["component"], r["precision"], r["device"], r["runtime"]) for r in rows]
    assert len(set(keys)) == len(keys)


def _graph_with(extra_op: bool):
    """A small ONNX graph with one op of each class (and, if asked, an op no class covers)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = lambda name, *shape: numpy_helper.from_array(np.ones(shape, np.float32), name)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "wc"], ["c"], pads=[1, 1, 1, 1]),                 # 8x3x3x3 on 3x16x16
             helper.make_node("Conv", ["c", "wd"], ["d"], pads=[1, 1, 1, 1], group=8),        # depthwise 8x1x3x3
             helper.make_node("Reshape", ["d", "shape"], ["t"]),                              # 1 x 64 tokens x 32
             helper.make_node("MatMul", ["t", "wl"], ["q"]),                                  # linear 32 -> 32
             helper.make_node("Transpose", ["q"], ["k"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "k"], ["s"]),                                   # attention 64x32x64
             helper.make_node("Softmax", ["s"], ["p"], axis=-1),
             helper.make_node("Add", ["p", "p"], ["y"])]
    if extra_op:
        nodes.append(helper.make_node("Mystery", ["y"], ["z"], domain="com.example"))
    out = "z" if extra_op else "y"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                              [w("wc", 8, 3, 3, 3), w("wd", 8, 1, 3, 3), w("wl", 32, 32),
                               numpy_helper.from_array(np.array([1, 64, 32], np.int64), "shape")])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.example", 1)] if extra_op else [])
    return onnx.helper.make_model(graph, opset_imports=opsets, ir_version=8)


def test_features_count_each_op_class_from_the_graph(tmp_path):
    import onnx

    path = tmp_path / "g.onnx"
    onnx.save(_graph_with(extra_op=True), path)
    f = features(path)
    assert f["conv_gflops"] == pytest.approx(2 * 16 * 16 * 27 * 8 / 1e9, rel=1e-5)
    assert f["dwconv_gflops"] == pytest.approx(2 * 16 * 16 * 9 * 8 / 1e9, rel=1e-5)
    assert f["linear_gflops"] == pytest.approx(2 * 64 * 32 * 32 / 1e9, rel=1e-5)
    assert f["attention_gflops"] == pytest.approx(2 * 64 * 32 * 64 / 1e9) and f["tokens"] == 64
    assert f["softmax_melems"] == pytest.approx(64 * 64 / 1e6) and f["resolution"] == 16
    assert f["param_mb"] == pytest.approx((8 * 27 + 8 * 9 + 32 * 32 + 3) * 4 / 1e6)
    assert f["uncovered"] == {"com.example::Mystery": 1} and f["nodes"] == 9


def test_a_graph_with_an_op_the_features_miss_gets_a_wider_interval_and_says_why(tmp_path):
    import onnx

    for extra in (False, True):
        onnx.save(_graph_with(extra), tmp_path / f"{extra}.onnx")
    plain, odd = (predict(features(tmp_path / f"{e}.onnx"), "Samsung Galaxy S24", "tflite", "float")
                  for e in (False, True))
    width = lambda p: np.log(p["interval_ms"][1] / p["interval_ms"][0])  # noqa: E731
    assert width(odd) > width(plain) * 1.4
    assert not any("Mystery" in w for w in plain["widened"])
    assert any("com.example::Mystery x1" in w and "do not cover" in w for w in odd["widened"])
    assert any("below the smallest public model" in w for w in plain["widened"])  # 0.1 MFLOPs: extrapolated
    assert len(plain["nearest"]) == 3 and all(n["job_id"] and n["measured_ms"] > 0 for n in plain["nearest"])


def test_every_training_point_traces_to_a_public_job_and_a_model_built_here():
    with open(FEATURES_FILE) as f:
        built = {r["model"]: r for r in csv.DictReader(f)}
    assert set(built) <= set(ZOO) and len(built) >= 38
    assert all(float(r["total_gflops"]) > 0 and r["builder"] == ZOO[m][1] for m, r in built.items())
    with open(OUT) as f:
        jobs = {(r["model"], r["device"], r["runtime"], r["precision"]): r for r in csv.DictReader(f)}
    for key, data in datasets().items():
        assert len(data.models) >= MIN_MODELS and len(data.jobs) == len(data.models)
        for model, ms, job in zip(data.models, data.ms, data.jobs):
            row = jobs[(model, *key)]
            assert row["job_id"] == job and float(row["inference_ms"]) == ms and model in built


def test_held_out_models_land_in_the_stated_interval_at_its_nominal_rate():
    """Leave-one-family-out on the two devices with the most data: the interval, set from the other families'
    errors, holds the held-out measurement at least LEVEL - 10 points of the time; the shipped predictor.json
    (its per-family and sibling-device errors included) is what the shipped tables give."""
    shipped = chosen()
    inside = total = 0
    for key, data in datasets().items():
        if key[0] not in ("Samsung Galaxy S24", "Snapdragon X Elite CRD") or key[2] != "float":
            continue
        stats = shipped["datasets"][" | ".join(key)]
        result = evaluate(hold_out(data, shipped["kind"]), shipped["band_stretch"], stats["coverage_factor"])
        assert result == {k: stats[k] for k in result}
        assert details(key, datasets(), shipped["kind"]) == {"by_family": stats["by_family"],
                                                              "sibling": stats["sibling"]}
        inside += result["coverage"] * result["models"]
        total += result["models"]
    assert total > 100 and inside / total >= LEVEL - 0.10


NUMERICS = """metrics:
- benchmark_value: 81.1
  device_metric:
    Samsung Galaxy S25:
      w8a8:
        tflite: {partial_metric: 77.8}
        onnx: {}
  metric_name: Top-1 Accuracy
  num_partial_samples: 1000
  partial_torch_metric: 80.6
"""


def test_device_vs_torch_accuracy_comes_out_of_the_wheel_and_gives_context(tmp_path):
    wheel = tmp_path / "qai_hub_models-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("qai_hub_models/models/vit/numerics.yaml", NUMERICS)
    assert read_wheel(wheel, "numerics.yaml") == [
        {"model": "vit", "metric": "Top-1 Accuracy", "precision": "w8a8", "device": "Samsung Galaxy S25",
         "runtime": "tflite", "device_value": 77.8, "torch_value": 80.6, "samples": 1000,
         "source": "qai_hub_models-9.9.9"}]
    context = accuracy_context("tflite", "w8a8")  # from the committed numerics.csv
    assert context["models"] >= 10 and context["range"][0] <= context["median_drop"] <= context["range"][1]


@pytest.mark.parametrize("table, fragment", [
    ("public_device='Galaxy S24'", "public_device 'Galaxy S24' has no public measurements (did you mean "
                                   "'Samsung Galaxy S24'?)"),
    ("connection='predicted'", "connection = 'predicted' needs public_device"),
    ("public_device='Samsung Galaxy S24'\nruntime='openvino'", "public_device needs runtime = 'litert'"),
    ("public_device='Snapdragon X Elite CRD'\npublic_runtime='tflite'\nruntime='litert'",
     "Snapdragon X Elite CRD has no public tflite measurements"),
])
def test_a_public_device_the_predictor_cannot_serve_is_one_line_naming_the_field(tmp_path, table, fragment):
    toml = tmp_path / "p.toml"
    toml.write_text(f"[benchmark]\ntargets = ['npu']\n[targets.npu]\nruntime = 'onnxruntime'\n{table}\n")
    if "runtime='" in table:
        toml.write_text(toml.read_text().replace("runtime = 'onnxruntime'\n", ""))
    with pytest.raises(UserError) as info:
        load_config(toml)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_measured_beats_predicted_beats_proxy_in_the_ship_choice():
    """The same two artifacts timed three ways on one target: the best kind of evidence decides, alone."""
    evaluation = {"images": 10_000, "artifacts": [
        {"artifact": "torch_fp32", "runtime": "torch", "precision": "fp32", "numerics": floating("fp32"),
         "top1": 88.0, "agreement": 1.0, "bytes": 600_000, "evaluation": "measured"},
        *({"artifact": a, "runtime": "litert", "precision": p, "numerics": n, "top1": 87.9, "agreement": 0.99,
           "bytes": b, "evaluation": "measured"} for a, p, n, b in (("litert", "fp32", floating("fp32"), 600_000),
                                                                    ("litert_int8", "int8 static", static_int8(),
                                                                     200_000)))]}

    def row(artifact, label, ms):
        r = {"target": "npu", "artifact": artifact, "label": label, "latency_ms": {"p50": ms, "p90": ms},
             "budget": {"latency_ok": True, "memory_ok": True}}
        if label == "predicted":
            r["predicted"] = {"device": "Samsung Galaxy S24", "runtime": "tflite", "precision": "float",
                              "models": 32, "interval_ms": [ms / 2, ms * 2]}
        return r
    target = {"runtime": "litert", "precision": "int8"}
    proxy = [row("litert", "proxy", 0.1), row("litert_int8", "proxy", 0.3)]    # fp32 fastest on the host
    predicted = [row("litert", "predicted", 0.4), row("litert_int8", "predicted", 0.2)]  # int8 on the NPU
    measured = [row("litert", "measured", 1.0), row("litert_int8", "measured", 2.0)]
    assert choose_records("npu", target, proxy, evaluation, 1.0)["artifact"] == "litert"
    choice = choose_records("npu", target, proxy + predicted, evaluation, 1.0)
    assert choice["artifact"] == "litert_int8" and choice["label"] == "predicted"
    assert "predicted for Samsung Galaxy S24" in choice["why"] and "not measured" in choice["why"]
    choice = choose_records("npu", target, proxy + predicted + measured, evaluation, 1.0)
    assert choice["artifact"] == "litert" and choice["label"] == "measured" and "predicted" not in choice["why"]


def test_a_run_shows_predicted_rows_for_the_named_devices_and_never_as_measured(trained_run):
    """The default targets include two NPU targets: predicted, with intervals, not timed, and their ship
    choice says its latency was predicted."""
    report = json.loads((trained_run / "runs" / "default" / "report.json").read_text())
    latency = report["latency"]
    named = {"galaxy-s24-npu-tflite", "snapdragon-x-elite-npu"}
    assert not [r for r in latency["rows"] if r["target"] in named]  # not timed on this host
    predicted = [r for r in latency["predicted"] if "predicted" in r]
    assert {r["target"] for r in predicted} == named
    assert {r["artifact"] for r in predicted} >= {"litert", "litert_int8", "onnx", "onnx_int8_static"}
    for r in predicted:
        p = r["predicted"]
        assert r["label"] == "predicted" and p["interval_ms"][0] < p["p50_ms"] < p["interval_ms"][1]
        assert len(p["nearest"]) == 3 and p["models"] >= MIN_MODELS and r["accuracy_context"]["models"] > 0
    skipped = [r for r in latency["predicted"] if "predicted" not in r]
    assert skipped and all("not predicted" in r["error"] for r in skipped)  # dynamic INT8: no NPU counterpart
    assert all(Numerics.of(r).scheme == "dynamic" and "dynamic INT8" in r["error"] for r in skipped)
    for r in predicted:  # the precision predicted is the artifact's numerics; the error is the student's family's
        assert r["predicted"]["precision"] == ("w8a8" if Numerics.of(r) == Numerics(**static_int8()) else "float")
        assert r["predicted"]["held_out_error"]["basis"] == "own family held out"
        assert r["predicted"]["held_out_error"]["family"] == STUDENT_FAMILY
        assert r["latency_ms"]["p90"] == r["predicted"]["interval_ms"][1] > r["latency_ms"]["p50"]
    from targets.predict.file_numerics import file_numerics

    read = 0  # what `manifold-edge bench` reads from a file is what the export and quantize stages recorded
    for stage in ("export", "quantize"):
        folder = artifact_folder(trained_run, stage)
        for a in json.loads((folder / f"{stage}.json").read_text())["artifacts"].values():
            if a["file"].endswith((".onnx", ".tflite")):
                assert file_numerics(folder / a["file"]) == Numerics.of(a), a["file"]
                read += 1
    assert read >= 6
    for name in named:
        assert report["ship"][name]["label"] == "predicted" and "not measured" in report["ship"][name]["why"]
        card = next((trained_run / "runs" / "default" / "deploy" / name).rglob("MODEL_CARD.md")).read_text()
        assert "predicted" in card and "interval" in card and "not measured" in card
    md = (trained_run / "runs" / "default" / "report.md").read_text()
    section = md.split("## Predicted latency on named devices")[1].split("\n## ")[0]
    assert "Samsung Galaxy S24 / tflite / w8a8" in section
    assert predicted[0]["predicted"]["nearest"][0]["model"] in section


def test_bench_predicts_any_onnx_file_on_a_named_device(tmp_path, capsys):
    import onnx

    from pipeline.cli import main

    onnx.save(_graph_with(extra_op=False), tmp_path / "mine.onnx")
    assert main(["bench", str(tmp_path / "mine.onnx"), "--target", "galaxy-s24-npu-qnn", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows["rows"] == [] and len(rows["predicted"]) == 1
    p = rows["predicted"][0]["predicted"]
    assert (p["device"], p["runtime"], p["precision"]) == ("Samsung Galaxy S24", "qnn_dlc", "float")
    assert main(["bench", str(tmp_path / "mine.onnx"), "--target", "galaxy-s24-npu-qnn"]) == 0
    assert "galaxy-s24-npu-qnn\tmine.onnx\tpredicted NPU p50" in capsys.readouterr().out


def test_only_static_int8_has_an_npu_counterpart():
    """AI Hub measures float and w8a8 models: dynamic INT8, palettes and weight-only INT8 are not predicted, and
    fp16 runs as float there."""
    from pipeline.core.numerics import Numerics, dynamic_int8, weights_only
    from targets.predict.rows import public_precision

    assert public_precision(Numerics(**static_int8())) == "w8a8"
    assert public_precision(Numerics(**floating("fp16"))) == public_precision(Numerics(**floating("fp32"))) == "float"
    for other in (dynamic_int8(), weights_only("palette4", "fp16"), weights_only("int8", "fp32")):
        assert public_precision(Numerics(**other)) is None


def _numerics_variants(folder):
    """The test graph as fp32, static INT8 (QDQ) and dynamic INT8 ONNX files, made by ONNX Runtime's quantizer
    as the quantize stage does."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    class Images(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": np.random.default_rng(i).random((1, 3, 16, 16), np.float32)} for i in range(4)])

        def get_next(self):
            return next(self.batches, None)

    onnx.save(_graph_with(extra_op=False), folder / "mine.onnx")
    quantize_static(str(folder / "mine.onnx"), str(folder / "mine_int8.onnx"), Images(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    quantize_dynamic(str(folder / "mine.onnx"), str(folder / "mine_dynamic.onnx"), weight_type=QuantType.QInt8)
    return [folder / n for n in ("mine.onnx", "mine_int8.onnx", "mine_dynamic.onnx")]


def test_bench_predicts_each_file_at_the_precision_its_numerics_say(tmp_path, capsys):
    """Static INT8 is predicted as w8a8, dynamic INT8 is not predicted and says why, and no INT8 file is called
    fp32; the float graph the features come from must be among the files."""
    from pipeline.cli import main
    from targets.predict.file_numerics import file_numerics

    files = _numerics_variants(tmp_path)
    assert [file_numerics(f) for f in files] == [FP32, Numerics(**static_int8()), Numerics(**dynamic_int8())]
    assert main(["bench", *map(str, files), "--target", "galaxy-s24-npu-qnn", "--json"]) == 0
    rows = {r["artifact"]: r for r in json.loads(capsys.readouterr().out)["predicted"]}
    assert rows["mine.onnx"]["predicted"]["precision"] == "float" and rows["mine.onnx"]["precision"] == "fp32"
    static = rows["mine_int8.onnx"]
    assert static["predicted"]["precision"] == "w8a8" and static["precision"] == "int8 static"
    assert Numerics.of(static) == Numerics(**static_int8())
    dynamic = rows["mine_dynamic.onnx"]
    assert "predicted" not in dynamic and "latency_ms" not in dynamic and dynamic["precision"] == "int8 dynamic"
    assert "dynamic INT8" in dynamic["error"] and "not predicted" in dynamic["error"]
    assert main(["bench", *map(str, files), "--target", "galaxy-s24-npu-qnn"]) == 0
    assert "mine_dynamic.onnx\tpredicted: dynamic INT8" in capsys.readouterr().out
    assert main(["bench", str(files[1]), "--target", "galaxy-s24-npu-qnn"]) == 2
    assert "give the model's fp32 .onnx too" in capsys.readouterr().err


def _features_of_graph(tmp_path):
    import onnx

    onnx.save(_graph_with(extra_op=False), tmp_path / "g.onnx")
    return features(tmp_path / "g.onnx")


def _rows(tmp_path, public_device="Samsung Galaxy S24", runtime="onnxruntime", budget=10.0, architecture=None,
          extra=()):
    """The predicted rows of the test graph's fp32 ONNX (and `extra` models) on a predicted target."""
    import onnx

    onnx.save(_graph_with(extra_op=False), tmp_path / "g.onnx")
    profile = TargetProfile(runtime=runtime, public_device=public_device, connection="predicted",
                            latency_budget_ms=budget)
    models = [Model("onnx", tmp_path / "g.onnx", "onnxruntime", "fp32", FP32), *extra]
    return predicted_rows(models, "npu", profile, model_family(architecture) if architecture else None)


def test_a_predicted_p90_is_the_interval_s_upper_end_and_the_budget_reads_it(tmp_path):
    """The public table has one time per job: p90 is stated as the interval's upper end (not a copy of p50), the
    interval travels as p50_interval like a timed row's, and the p90 budget is checked against it."""
    (row,) = _rows(tmp_path)
    lat, p = row["latency_ms"], row["predicted"]
    assert lat["p50"] == p["p50_ms"] < lat["p90"] == p["interval_ms"][1]
    assert lat["p50_interval"] == p["interval_ms"] and "upper end" in lat["p90_basis"]
    (tight,) = _rows(tmp_path, budget=(lat["p50"] + lat["p90"]) / 2)  # p50 within it, the upper end not
    assert tight["latency_ms"] == lat and tight["budget"]["latency_ok"] is False
    assert row["budget"]["latency_ok"] is True


def test_the_error_stated_is_the_own_family_s_else_a_new_family_s_with_the_sibling_device_s_beside_it(tmp_path):
    """A ViT (the default student's family) is predicted with the ViT family's leave-one-model-out error, which
    is larger than the all-families figure; a model of unknown family gets the new-family error; both carry the
    error of fitting the device from its sibling, and the ViT interval holds the ViT models' held-out errors."""
    from stages.benchmark import predicted_row_text

    f = _features_of_graph(tmp_path)
    stats = chosen()["datasets"]["Samsung Galaxy S24 | tflite | float"]
    own = predict(f, "Samsung Galaxy S24", "tflite", "float", family="vit")
    new = predict(f, "Samsung Galaxy S24", "tflite", "float")
    assert own["held_out_error"] | {"basis": None} == {
        "basis": None, "family": "vit", "models": 2, "median_ape": stats["by_family"]["vit"]["median_ape"],
        "p90_ape": stats["by_family"]["vit"]["p90_ape"], "sibling_device": "Samsung Galaxy S25",
        "sibling_device_median_ape": stats["sibling"]["median_ape"],
        "sibling_device_p90_ape": stats["sibling"]["p90_ape"]}
    assert own["held_out_error"]["basis"] == "own family held out" and new["held_out_error"]["basis"] == "new family"
    assert (new["median_ape"], new["held_out_error"]["models"]) == (stats["median_ape"], stats["models"])
    assert own["median_ape"] > 2 * new["median_ape"]  # ViTs are predicted worse than the average family
    lo, hi = (np.log(v / own["p50_ms"]) for v in own["interval_ms"])
    assert lo <= stats["by_family"]["vit"]["log_err"][0] and stats["by_family"]["vit"]["log_err"][1] <= hi
    assert any("vit family's public models" in w for w in own["widened"])
    (row,) = _rows(tmp_path, runtime="litert", extra=[Model("litert", tmp_path / "g.tflite", "litert", "fp32", FP32)],
                   architecture="convstem_vit_tiny")
    text = predicted_row_text(row)
    assert "vit family, one model held out, 2 models" in text and "sibling Samsung Galaxy S25" in text


def test_a_timm_model_s_family_is_the_public_family_of_its_class():
    assert model_family("convstem_vit_tiny") == STUDENT_FAMILY == "vit"
    assert load_config(None, []).student.model == "convstem_vit_tiny"  # the default student
    timm_builders = {m: b.split(":")[1] for m, b in [(m, v[1]) for m, v in ZOO.items()] if b.startswith("timm:")}
    found = {m: family_of(name) for m, name in timm_builders.items()}
    assert all(family in (ZOO[m][0], None) for m, family in found.items())  # never another family's
    assert {m for m, family in found.items() if family is None} == {"efficientnet_lite4", "mobile_vit"}
    assert family_of("not_a_timm_model") is None and family_of(None) is None


def test_predictions_are_npu_only_and_every_row_says_what_the_public_table_covers(tmp_path, capsys):
    """The fit reads NPU jobs only; every predicted row, predicted or not, counts the table's NPU / GPU / CPU jobs
    for its device and runtime and says no phone CPU latency can be predicted; so does `manifold-edge targets`."""
    from pipeline.cli import main
    from stages.benchmark import predicted_row_text

    with open(OUT) as f:
        rows = list(csv.DictReader(f))
    unit = {(r["model"], r["device"], r["runtime"], r["precision"]): r["compute_unit"] for r in rows}
    assert {unit[(m, *key)] for key, d in datasets().items() for m in d.models} == {"NPU"}
    counts = {"NPU": 0, "GPU": 0, "CPU": 0}
    for r in rows:
        if (r["device"], r["runtime"]) == ("Samsung Galaxy S24", "tflite"):
            counts[r["compute_unit"]] += 1
    assert counts["CPU"] > 0 and public_coverage("Samsung Galaxy S24", "tflite")["jobs_by_compute_unit"] == counts
    dynamic = Model("litert_int8_dynamic", tmp_path / "d.tflite", "litert", "int8 dynamic", Numerics(**dynamic_int8()))
    for row in _rows(tmp_path, runtime="litert", extra=[dynamic]):
        assert row["public_coverage"]["jobs_by_compute_unit"] == counts and row["public_coverage"]["predicts"] == "NPU"
        assert f"{counts['NPU']} NPU, {counts['GPU']} GPU, {counts['CPU']} CPU jobs" in predicted_row_text(row)
        assert "no phone CPU latency can be predicted" in predicted_row_text(row)
    assert main(["targets"]) == 0
    assert "no phone CPU latency can be predicted" in capsys.readouterr().err


def test_a_precision_the_device_has_no_public_jobs_of_is_not_predicted_and_says_so(tmp_path):
    """Dragonwing Q-7790 has w8a8 jobs only: its float artifact is not predicted, with the reason."""
    extra = [Model("litert", tmp_path / "m.tflite", "litert", "fp32", FP32)]
    (row,) = _rows(tmp_path, public_device="Dragonwing Q-7790", runtime="litert", extra=extra)
    assert "predicted" not in row and "latency_ms" not in row
    assert "no public measurements of float models on Dragonwing Q-7790 with tflite (there are: w8a8)" in row["error"]
    assert row["error"].endswith("not predicted")
