"""The public on-device measurements (targets/predict/measurements.py): reading perf.yaml files out of a
qai-hub-models wheel, and the committed table built from the real one."""
from __future__ import annotations

import csv
import zipfile

from targets.predict.measurements import FIELDS, OUT, main, read_wheel

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
