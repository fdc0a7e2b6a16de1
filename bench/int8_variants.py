"""Which INT8 wins on this host: a DeiT-Tiny-sized student (timm deit_tiny_patch16_224, random init,
3x224x224) at 1 thread, every ONNX Runtime and OpenVINO variant the quantize stage can make timed
interleaved by CPU time (median and 95% interval per variant, and of its per-round speed-up over the
same runtime's fp32), with the logit error vs fp32 on random images. Writes JSON with the host's CPU
name and INT8 instructions.

    .venv/bin/python bench/int8_variants.py [--seconds 240] [--out bench/results/int8_variants.json]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402

from backends import artifact_bytes  # noqa: E402
from backends.onnx.agent import session_options  # noqa: E402
from backends.openvino.runner import OPENVINO_F32  # noqa: E402
from backends.timing import interleaved, speedup, summary  # noqa: E402
from pipeline.core.fileio import write_json  # noqa: E402
from stages.quantize import (  # noqa: E402
    QuantizeConfig,  # noqa: E402
    onnx_int8,
    openvino_int8,
)
from targets.agent.host import (  # noqa: E402
    cpu_flags,
    cpu_name,
    int8_instructions,  # noqa: E402
)


def make_variants(work: Path, calibration: np.ndarray) -> dict[str, dict]:
    import timm
    import torch

    from backends.onnx.export import export_onnx
    from backends.openvino.export import export_openvino

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, in_chans=3, img_size=224).eval()
    export_onnx(model, "deit_tiny", (3, 224, 224), work / "fp32.onnx", 20)
    export_openvino(work / "fp32.onnx", work / "fp32.xml", fp16=False)
    onnx_int8.preprocess(work / "fp32.onnx", work / "pre.onnx")
    base = QuantizeConfig(reduce_range="off")
    variants = {"ort_fp32": {"runtime": "onnxruntime", "file": "fp32.onnx", "what": "fp32"}}
    static = {
        "ort_static_qdq": ("static QDQ, all MatMuls (the pipeline before this change)",
                           {"static_attention_float": False}),
        "ort_static_attn_float": ("static QDQ, attention MatMuls + Softmax float", {}),
        "ort_static_attn_float_rr": ("static QDQ, attention float, reduce_range", {"reduce_range": "on"}),
    }
    for key, (what, update) in static.items():
        cfg = base.model_copy(update=update)
        onnx_int8.quantize_static(work / "pre.onnx", work / f"{key}.onnx", calibration, cfg, work / "cache.json")
        (work / "cache.json").unlink(missing_ok=True)
        variants[key] = {"runtime": "onnxruntime", "file": f"{key}.onnx", "what": what}
    for key, per_channel in (("ort_dynamic", False), ("ort_dynamic_per_channel", True)):
        onnx_int8.quantize_dynamic(work / "pre.onnx", work / f"{key}.onnx",
                                   base.model_copy(update={"dynamic_per_channel": per_channel}))
        variants[key] = {"runtime": "onnxruntime", "file": f"{key}.onnx",
                         "what": "dynamic, per-channel weights" if per_channel else "dynamic, per-tensor weights"}
    variants["ov_fp32"] = {"runtime": "openvino", "file": "fp32.xml", "what": "fp32 (f32 hint)"}
    openvino_int8.quantize(work / "fp32.xml", work / "ov_int8.xml", calibration, calibration[:8],
                           np.zeros(8, dtype=np.int64), base.model_copy(update={"max_drop": 100.0}))
    variants["ov_int8"] = {"runtime": "openvino", "file": "ov_int8.xml", "what": "INT8 (NNCF, transformer)"}
    openvino_int8.compress_weights(work / "fp32.xml", work / "ov_int8_weights.xml")
    variants["ov_int8_weights"] = {"runtime": "openvino", "file": "ov_int8_weights.xml", "what": "int8 weights"}
    return variants


def session(runtime: str, path: Path):
    if runtime == "onnxruntime":
        import onnxruntime as ort

        s = ort.InferenceSession(str(path), session_options(ort, 1), providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        return lambda x: s.run(None, {name: x})[0]
    import openvino as ov

    request = ov.Core().compile_model(str(path), "CPU", {**OPENVINO_F32, "INFERENCE_NUM_THREADS": 1,
                                                          "PERFORMANCE_HINT": "LATENCY",
                                                          "NUM_STREAMS": 1}).create_infer_request()
    return lambda x: request.infer([x])[0].copy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240.0, help="timing cap (interleaved rounds)")
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--out", default="bench/results/int8_variants.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    calibration = rng.normal(0, 1, (args.calibration, 3, 224, 224)).astype(np.float32)
    probe = rng.normal(0, 1, (16, 3, 224, 224)).astype(np.float32)
    x = probe[:1]
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        variants = make_variants(work, calibration)
        runs = {key: session(v["runtime"], work / v["file"]) for key, v in variants.items()}
        reference = {rt: np.concatenate([runs[f"{prefix}_fp32"](p[None]) for p in probe])
                     for rt, prefix in (("onnxruntime", "ort"), ("openvino", "ov"))}
        for key, v in variants.items():
            logits = np.concatenate([runs[key](p[None]) for p in probe])
            ref = reference[v["runtime"]]
            v["bytes"] = artifact_bytes(work / v["file"])
            v["relative_rmse"] = round(float(np.sqrt(((logits - ref) ** 2).mean() / ref.var())), 4)
            v["argmax_agreement"] = float((logits.argmax(1) == ref.argmax(1)).mean())
            if v["runtime"] == "onnxruntime":
                v["int8_op_types"] = onnx_int8.quantized_op_types(work / v["file"])
        samples = interleaved({key: (lambda f=f: f(x)) for key, f in runs.items()}, args.seconds, block=2,
                              min_rounds=15, rel=0.01)
    for key, v in variants.items():
        base = "ort_fp32" if v["runtime"] == "onnxruntime" else "ov_fp32"
        v["cpu_ms"] = summary(samples[key]["cpu"])
        v["wall_ms"] = summary(samples[key]["wall"])
        v["vs_fp32"] = speedup(samples[base]["cpu"], samples[key]["cpu"])
    import onnxruntime
    import openvino

    result = {"model": "deit_tiny_patch16_224 (random init), 1x3x224x224, 1 thread",
              "host": {"cpu": cpu_name(), "cores": os.cpu_count(), "load_avg": os.getloadavg(),
                       "simd_flags": cpu_flags(), **int8_instructions()},
              "versions": {"onnxruntime": onnxruntime.__version__, "openvino": openvino.get_version()},
              "timing": "interleaved rounds (2 calls per variant per round, order rotating), CPU time per call; "
                        "p50 with a 95% order-statistic interval; vs_fp32 = median per-round fp32/variant ratio",
              "error": "relative RMSE of the logits vs the same runtime's fp32 on 16 random images",
              "variants": variants}
    write_json(Path(args.out), result)
    print(f"{'variant':28} {'cpu ms p50':>10} {'interval':>17} {'vs fp32':>8} {'interval':>13} {'verdict':>20} "
          f"{'rel rmse':>8} {'MB':>6}")
    for key, v in variants.items():
        c, s = v["cpu_ms"], v["vs_fp32"]
        print(f"{key:28} {c['p50']:10.2f} {c['interval'][0]:8.2f}-{c['interval'][1]:<8.2f} {s['x']:8.2f} "
              f"{s['interval'][0]:6.2f}-{s['interval'][1]:<6.2f} {s['verdict']:>20} {v['relative_rmse']:8.4f} "
              f"{v['bytes'] / 1e6:6.1f}")
    print(f"host: {result['host']}")


if __name__ == "__main__":
    main()
