"""Record the real per-layer profiles that tests/test_diagnosis.py reads.

    .venv/bin/python tests/data/profiles/record.py [--threads 1]

Builds the student convstem_vit_tiny at 1x28x28 with 4-px patches (the default student's layers, 50 tokens;
untrained weights: kernels and timings do not depend on the weights), exports it to ONNX and OpenVINO with the
pipeline's own export functions,
quantizes it (ORT static QDQ with every MatMul/Gemm/Conv quantized, attention matmuls included, and
dynamic, called directly with fixed settings so the files do not follow the pipeline's quantize options;
OpenVINO INT8 with NNCF's transformer scheme),
then profiles each file with the agent's runtime classes and stores what the runtime reported,
trimmed to what the agent reads: ORT's profiling events (per-node kernel times and model runs;
args op_name and provider) and OpenVINO's per-layer counters of the median run (node, layer type,
exec_type, microseconds, status). Also the p50 of plain (unprofiled) runs.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from backends.onnx.agent import OnnxRuntime  # noqa: E402
from backends.onnx.export import export_onnx  # noqa: E402
from backends.openvino.agent import OpenVino  # noqa: E402
from backends.openvino.export import export_openvino  # noqa: E402
from stages.models import create_model  # noqa: E402
from targets.agent.host import cpu_name, int8_instructions  # noqa: E402
from targets.agent.stats import percentile  # noqa: E402

HERE = Path(__file__).resolve().parent
RUNS = 50


def p50(runner, x, seconds: float = 2.0) -> float:
    for _ in range(20):
        runner(x)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 20:
        t0 = time.perf_counter()
        runner(x)
        times.append((time.perf_counter() - t0) * 1000)
    return percentile(times, 0.5)


def ort_events(path: Path, threads: int, x) -> list[dict]:
    with tempfile.TemporaryDirectory() as folder:
        runner = OnnxRuntime(str(path), threads, folder)
        for _ in range(RUNS):
            runner(x)
        events = json.load(open(runner.session.end_profiling()))
    kept, nodes = [], {}
    for e in events:  # one event per node, its durations summed over the runs (the agent sums them too)
        if e.get("cat") == "Session" and e.get("name") == "model_run":
            kept.append({"cat": "Session", "name": "model_run", "dur": e["dur"]})
        elif e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            args = e.get("args", {})
            node = nodes.setdefault(e["name"], {"cat": "Node", "name": e["name"], "dur": 0, "args": {
                "op_name": args.get("op_name"), "provider": args.get("provider")}})
            node["dur"] += e["dur"]
    return kept + list(nodes.values())


def ov_counters(path: Path, threads: int, x) -> dict:
    runner = OpenVino(str(path), threads, "f32", profile=True)
    for _ in range(5):
        runner(x)
    runs = []
    for _ in range(RUNS):
        runner(x)
        infos = runner.request.get_profiling_info()
        layers = [{"node_name": i.node_name, "node_type": i.node_type, "exec_type": i.exec_type,
                   "real_time_us": i.real_time.total_seconds() * 1e6, "status": i.status.name} for i in infos
                  if i.status.name == "EXECUTED"]  # the agent skips the others (optimised out, not run)
        runs.append((sum(lay["real_time_us"] for lay in layers), layers, runner.request.latency))
    runs.sort(key=lambda r: r[0])
    _, layers, latency = runs[len(runs) // 2]
    return {"latency_ms": latency, "layers": layers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    model, _ = create_model("student", "convstem_vit_tiny", {"patch_size": 4},
                            {"in_chans": 1, "num_classes": 10, "img_size": 28})
    model.eval()
    shape = (1, 28, 28)
    rng = np.random.default_rng(0)
    calibration = rng.uniform(-1, 1, (64, *shape)).astype(np.float32)
    x = rng.uniform(0, 1, (1, *shape)).astype(np.float32)
    host = {"machine": platform.machine(), "cpu": cpu_name(), **int8_instructions(),
            "onnxruntime": __import__("onnxruntime").__version__,
            "openvino": __import__("openvino").get_version(), "threads": args.threads}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        export_onnx(model, "convstem_vit_tiny", shape, work / "model.onnx", 20)
        import onnxruntime.quantization as q

        q.shape_inference.quant_pre_process(str(work / "model.onnx"), str(work / "pre.onnx"))

        class Reader(q.CalibrationDataReader):
            def __init__(self):
                self.batches = iter({"input": calibration[i:i + 32]} for i in range(0, len(calibration), 32))

            def get_next(self):
                return next(self.batches, None)

        q.quantize_static(str(work / "pre.onnx"), str(work / "static.onnx"), Reader(),
                          quant_format=q.QuantFormat.QDQ, op_types_to_quantize=["MatMul", "Gemm", "Conv"],
                          per_channel=True, activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                          calibrate_method=q.CalibrationMethod.MinMax)
        q.quantize_dynamic(str(work / "model.onnx"), str(work / "dynamic.onnx"),
                           op_types_to_quantize=["MatMul", "Gemm", "Conv"], weight_type=q.QuantType.QInt8)
        export_openvino(work / "model.onnx", work / "openvino_model.xml", False)
        import nncf
        import openvino as ov

        core = ov.Core()
        quantized = nncf.quantize(core.read_model(str(work / "openvino_model.xml")),
                                  nncf.Dataset([c[None] for c in calibration]),
                                  model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
        ov.save_model(quantized, str(work / "openvino_int8.xml"), compress_to_fp16=False)
        for name, file in (("ort_fp32", "model.onnx"), ("ort_int8_static", "static.onnx"),
                           ("ort_int8_dynamic", "dynamic.onnx")):
            runner = OnnxRuntime(str(work / file), args.threads)
            record = {"runtime": "onnxruntime", "host": host, "p50_ms": p50(runner, x),
                      "events": ort_events(work / file, args.threads, x)}
            (HERE / f"{name}.json").write_text(json.dumps(record, separators=(",", ":")) + "\n")
        for name, file in (("ov_fp32", "openvino_model.xml"), ("ov_int8", "openvino_int8.xml")):
            runner = OpenVino(str(work / file), args.threads, "f32")
            record = {"runtime": "openvino", "host": host, "p50_ms": p50(runner, x),
                      **ov_counters(work / file, args.threads, x)}
            (HERE / f"{name}.json").write_text(json.dumps(record, separators=(",", ":")) + "\n")
    for f in sorted(HERE.glob("*.json")):
        print(f.name, f.stat().st_size, json.loads(f.read_text())["p50_ms"])


if __name__ == "__main__":
    main()
