"""The benchmark agent: one self-contained script, run on the device itself (this host, an ssh board,
an Android phone under Termux, a Mac), that measures one model file and prints one JSON object.

It needs only the Python standard library, numpy and the model's runtime, so it can be copied
anywhere with scp or adb push. Usage:

    python agent.py MODEL --runtime onnxruntime|openvino|coreml [--threads N] [--runs N]
                    [--max-seconds S] [--warmup N] [--throughput-batch B] [--input-size H]
                    [--compute-units ALL] [--profile]

Measured: load/compile time, warm-up, then batch-1 latency over `--runs` runs or `--max-seconds`
(whichever ends first): p50/p90/p99/mean/std/min/max in ms; throughput at `--throughput-batch`;
peak RSS of this process and how much the model added to it (session, weights, buffers;
the runtime library is imported before the baseline); model size on disk; with --profile,
a per-layer profile (ONNX Runtime's profiling JSON, OpenVINO's per-layer counters).
On failure it prints {"ok": false, "kind": ..., "error": ...} and exits 3.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

PROFILE_RUNS = 50
# What each runtime's profile calls an INT8 compute kernel, a conversion (quantize, dequantize, layout
# reorder, type convert) and, by elimination, a float kernel. All matched in lower case.
# ONNX Runtime: the node's op type (contrib ops included) as its profiling JSON names it.
ORT_INT8_OPS = {"qlinearmatmul", "qlinearconv", "qgemm", "matmulinteger", "matmulintegertofloat", "convinteger",
                "dynamicquantizematmul", "qattention", "qlinearsoftmax", "qlinearadd", "qlinearmul",
                "qlinearsigmoid", "qlinearleakyrelu", "qlinearconcat", "qlinearwhere", "qlinearaveragepool",
                "qlinearglobalaveragepool", "qlinearreducemean", "qembedlayernormalization", "dynamicquantizelstm"}
ORT_INT8_PREFIXES = ("qlinear", "qordered")  # QLinear* / QOrdered* kernels not listed above
ORT_CONVERT_OPS = {"quantizelinear", "dequantizelinear", "dynamicquantizelinear", "cast", "reorderinput",
                   "reorderoutput"}
# OpenVINO CPU: layer types that only convert, and the precision tokens of exec_type, which names the
# kernel and its runtime precision ("jit_gemm_i8", "brgemm_avx512_amx_I8", "ref_any_I8", "jit_avx512_FP32").
OV_CONVERT_TYPES = {"fakequantize", "reorder", "convert", "quantize", "dequantize"}
OV_INT8_PRECISIONS = {"i8", "u8", "int8", "uint8", "i4", "u4"}
OV_FLOAT_PRECISIONS = {"f32", "fp32", "bf16", "f16", "fp16"}


class AgentError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def rss_mb() -> float:
    """Peak resident memory of this process so far. Linux/Android: VmHWM, because ru_maxrss keeps the
    parent's high-water mark across fork+exec; macOS: ru_maxrss (bytes there)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def model_bytes(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    extra = [path[:-4] + ".bin"] if path.endswith(".xml") else [path + ".data"]
    return os.path.getsize(path) + sum(os.path.getsize(p) for p in extra if os.path.isfile(p))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Hardware", "Processor")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _runtime(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise AgentError("runtime_missing", f"the {module} Python package is not installed on this device "
                                            f"({sys.executable}); pip install {module}") from None


def _shape(dims, batch: int, size: int | None) -> list[int]:
    shape = [d if isinstance(d, int) and d > 0 else 0 for d in dims]
    shape[0] = batch
    if size:
        shape[-2:] = [size, size]
    if 0 in shape:
        raise AgentError("bad_model", f"the model input has unknown dimensions {list(dims)}: pass --input-size")
    return shape


ORT_OPTIMIZATION = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                    "all": "ORT_ENABLE_ALL"}


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, path: str, threads: int, profile_dir: str | None = None,
                 provider: str = "CPUExecutionProvider", optimization: str = "all"):
        ort = _runtime("onnxruntime")
        self.version = ort.__version__
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_OPTIMIZATION[optimization])
        options.log_severity_level = 3
        if profile_dir:
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(profile_dir, "ort")
        if provider not in ort.get_available_providers():
            raise AgentError("runtime_missing", f"this onnxruntime build ({sys.executable}) has no {provider} "
                                                f"(it has {', '.join(ort.get_available_providers())}): install "
                                                "a build with it, or set the target's execution_provider = "
                                                "'CPUExecutionProvider'")
        providers = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
        self.provider, self.optimization = provider, optimization
        try:
            self.session = ort.InferenceSession(path, options, providers=providers)
        except Exception as exc:  # InvalidGraph, Fail, NoSuchFile...
            raise AgentError("bad_model", f"ONNX Runtime cannot load {os.path.basename(path)}: {exc}") from None
        self.input = self.session.get_inputs()[0]

    def input_shape(self, batch: int, size: int | None) -> list[int]:
        return _shape(self.input.shape, batch, size)

    def __call__(self, x):
        return self.session.run(None, {self.input.name: x})

    def layers(self) -> dict:
        """Per-node kernel times from the profiling JSON, per run."""
        events = json.load(open(self.session.end_profiling()))
        runs = [e["dur"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
        nodes = {}
        for e in events:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                name = e["name"][: -len("_kernel_time")]
                op = e.get("args", {}).get("op_name", "?")
                entry = nodes.setdefault(name, {"name": name, "op_type": op, "us": 0.0})
                entry["us"] += e["dur"]
        n = max(len(runs), 1)
        for entry in nodes.values():
            entry["precision"] = onnx_precision(entry["op_type"])
        return summarise(list(nodes.values()), n, sum(runs) / n / 1000 if runs else None)


def onnx_precision(op_type: str) -> str:
    """int8 | convert | float for an ONNX Runtime node op type (QLinearMatMul, MatMulInteger, QGemm...)."""
    op = op_type.lower()
    if op in ORT_CONVERT_OPS:
        return "convert"
    if op in ORT_INT8_OPS or op.startswith(ORT_INT8_PREFIXES) or "integer" in op:
        return "int8"
    return "float"


def openvino_precision(layer_type: str, exec_type: str) -> str:
    """int8 | convert | float for an OpenVINO CPU layer: the layer type says conversion (FakeQuantize,
    Reorder, Convert); else exec_type's precision token (any case) says INT8 or float; a
    "...Quantized..." layer type with no precision token in exec_type counts as INT8."""
    layer = layer_type.lower()
    if layer in OV_CONVERT_TYPES:
        return "convert"
    tokens = set(exec_type.lower().replace("-", "_").split("_"))
    if tokens & OV_INT8_PRECISIONS:
        return "int8"
    if tokens & OV_FLOAT_PRECISIONS:
        return "float"
    return "int8" if "quantized" in layer else "float"


class OpenVino:
    name = "openvino"

    def __init__(self, path: str, threads: int, precision: str, profile: bool = False):
        ov = _runtime("openvino")
        self.version = ov.get_version()
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if precision != "default":
            config["INFERENCE_PRECISION_HINT"] = precision
        if profile:
            config["PERF_COUNT"] = True
        try:
            core = ov.Core()
            self.model = core.read_model(path)
            self.compiled = core.compile_model(self.model, "CPU", config)
        except Exception as exc:
            raise AgentError("bad_model", f"OpenVINO cannot load {os.path.basename(path)}: {exc}") from None
        self.request = self.compiled.create_infer_request()
        self.runs = 0

    def input_shape(self, batch: int, size: int | None) -> list[int]:
        dims = [d.get_length() if d.is_static else 0 for d in self.model.inputs[0].get_partial_shape()]
        return _shape(dims, batch, size)

    def __call__(self, x):
        self.runs += 1
        return self.request.infer([x])

    def layers(self) -> dict:
        """Per-layer counters of the last inference (OpenVINO keeps one run's counters per request)."""
        nodes = []
        for info in self.request.get_profiling_info():
            us = info.real_time.total_seconds() * 1e6
            if info.status.name != "EXECUTED" or us <= 0:
                continue
            nodes.append({"name": info.node_name, "op_type": info.node_type, "us": us,
                          "precision": openvino_precision(info.node_type, info.exec_type), "kernel": info.exec_type})
        return summarise(nodes, 1, self.request.latency)


class CoreML:
    name = "coreml"

    def __init__(self, path: str, threads: int, compute_units: str):
        if sys.platform != "darwin":
            raise AgentError("needs_macos", "Core ML predictions need macOS (Core ML.framework); "
                                            "this device runs " + platform.system())
        ct = _runtime("coremltools")
        self.version = ct.__version__
        try:
            self.model = ct.models.MLModel(path, compute_units=ct.ComputeUnit[compute_units])
        except Exception as exc:
            raise AgentError("bad_model", f"Core ML cannot load {os.path.basename(path)}: {exc}") from None
        spec = self.model.get_spec()
        self.input = spec.description.input[0]

    def input_shape(self, batch: int, size: int | None) -> list[int]:
        if self.input.type.WhichOneof("Type") == "imageType":
            t = self.input.type.imageType
            channels = 1 if t.colorSpace == 10 else 3  # 10 = GRAYSCALE in the Core ML spec
            return [1, channels, t.height, t.width]
        return _shape(list(self.input.type.multiArrayType.shape), batch, size)

    def __call__(self, x):
        if self.input.type.WhichOneof("Type") == "imageType":
            from PIL import Image

            pixels = (x[0].clip(0, 255)).astype("uint8")
            image = Image.fromarray(pixels[0], "L") if pixels.shape[0] == 1 else \
                Image.fromarray(pixels.transpose(1, 2, 0), "RGB")
            return self.model.predict({self.input.name: image})
        return self.model.predict({self.input.name: x})

    def layers(self) -> dict:
        raise AgentError("unsupported", "per-layer profiles of Core ML need Xcode's Core ML Instruments")


def summarise(nodes: list[dict], runs: int, total_ms: float | None) -> dict:
    """Per-run times by layer and by op type, each with its share of the layers' sum."""
    layer_ms = sum(n["us"] for n in nodes) / runs / 1000
    for n in nodes:
        n["ms"] = n.pop("us") / runs / 1000
        n["share"] = n["ms"] / layer_ms if layer_ms else 0.0
    by_op: dict[str, dict] = {}
    for n in nodes:
        entry = by_op.setdefault((n["op_type"], n["precision"]),
                                 {"op_type": n["op_type"], "precision": n["precision"], "ms": 0.0, "count": 0,
                                  "kernels": {}})
        entry["ms"] += n["ms"]
        entry["count"] += 1
        kernel = n.get("kernel") or n["op_type"]
        entry["kernels"][kernel] = entry["kernels"].get(kernel, 0.0) + n["ms"]
    for entry in by_op.values():
        entry["share"] = entry["ms"] / layer_ms if layer_ms else 0.0
        entry["kernel"] = max(entry.pop("kernels").items(), key=lambda item: item[1])[0]  # the one taking most time
    precision = {}
    for n in nodes:
        precision[n["precision"]] = precision.get(n["precision"], 0.0) + n["share"]
    return {"layers_ms": layer_ms, "run_ms": total_ms, "runs": runs,
            "share_by_precision": precision,
            "by_op_type": sorted(by_op.values(), key=lambda e: -e["ms"]),
            "layers": sorted(nodes, key=lambda n: -n["ms"])}


def load(args, profile_dir: str | None = None, profile: bool = False):
    if args.runtime == "onnxruntime":
        return OnnxRuntime(args.model, args.threads, profile_dir, args.execution_provider,
                           args.graph_optimization_level)
    if args.runtime == "openvino":
        return OpenVino(args.model, args.threads, args.openvino_precision, profile)
    return CoreML(args.model, args.threads, args.compute_units)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = (len(ordered) - 1) * q
    low = int(index)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


def measure(args) -> dict:
    import numpy as np

    if not os.path.exists(args.model):
        raise AgentError("bad_model", f"{args.model}: no such file on the device")
    if args.runtime != "coreml":  # import the runtime first: model_rss_mb is what the model itself adds
        _runtime(args.runtime)
    baseline = rss_mb()
    start = time.perf_counter()
    runner = load(args)
    load_ms = (time.perf_counter() - start) * 1000
    shape = runner.input_shape(1, args.input_size)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, shape).astype(np.float32)
    if args.runtime == "coreml":
        x *= 255
    for _ in range(args.warmup):
        runner(x)
    times = []
    deadline = time.perf_counter() + args.max_seconds
    while len(times) < args.runs and (len(times) < 3 or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        runner(x)
        times.append((time.perf_counter() - t0) * 1000)
    result = {
        "ok": True, "runtime": runner.name, "runtime_version": runner.version,
        "model": os.path.basename(args.model.rstrip("/")), "model_bytes": model_bytes(args.model),
        "input_shape": shape, "threads": args.threads, "load_ms": load_ms, "warmup_runs": args.warmup,
        "runs": len(times),
        "latency_ms": {"p50": percentile(times, 0.5), "p90": percentile(times, 0.9),
                       "p99": percentile(times, 0.99), "mean": statistics.fmean(times),
                       "std": statistics.pstdev(times), "min": min(times), "max": max(times)},
    }
    result["throughput"] = throughput(runner, args, rng) if args.throughput_batch > 1 else \
        {"batch": 1, "images_per_s": 1000 / result["latency_ms"]["mean"]}
    result["process_threads"] = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None
    result["peak_rss_mb"] = rss_mb()
    result["model_rss_mb"] = max(result["peak_rss_mb"] - baseline, 0.0)
    result["host"] = {"system": platform.system(), "machine": platform.machine(), "cpu": cpu_name(),
                      "cores": os.cpu_count(), "python": platform.python_version()}
    if args.profile:
        result["profile"] = profile_layers(args, x)
    return result


def throughput(runner, args, rng) -> dict:
    import numpy as np

    shape = runner.input_shape(args.throughput_batch, args.input_size) if args.runtime != "coreml" else None
    if shape is None:  # Core ML models here take one image: throughput is back-to-back batch-1 calls
        return {"batch": 1, "images_per_s": None}
    try:
        x = rng.uniform(0, 1, shape).astype(np.float32)
        runner(x)
    except Exception as exc:  # a model exported with a fixed batch of 1
        return {"batch": args.throughput_batch, "images_per_s": None, "error": str(exc).splitlines()[0][:200]}
    count, start = 0, time.perf_counter()
    while count < 5 or (time.perf_counter() - start < min(args.max_seconds, 2.0) and count < 200):
        runner(x)
        count += 1
    return {"batch": args.throughput_batch, "images_per_s": count * args.throughput_batch /
            (time.perf_counter() - start)}


def profile_layers(args, x) -> dict:
    """A second, profiled session (profiling slows a run, so latency above is taken without it)."""
    if args.runtime == "onnxruntime":
        with tempfile.TemporaryDirectory() as folder:
            runner = load(args, profile_dir=folder)
            for _ in range(PROFILE_RUNS):
                runner(x)
            result = runner.layers()
            for path in glob.glob(os.path.join(folder, "*.json")):
                os.remove(path)
            return result
    runner = load(args, profile=True)
    for _ in range(5):
        runner(x)
    layer_sums = []
    best = None
    for _ in range(PROFILE_RUNS):  # keep the run closest to the median, not an outlier
        runner(x)
        layers = runner.layers()
        layer_sums.append((layers["layers_ms"], layers))
    layer_sums.sort(key=lambda item: item[0])
    best = layer_sums[len(layer_sums) // 2][1]
    return best


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="measure one model file on this device; prints JSON")
    p.add_argument("model")
    p.add_argument("--runtime", required=True, choices=("onnxruntime", "openvino", "coreml"))
    p.add_argument("--threads", type=int, default=0, help="0 = the runtime's default")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--max-seconds", type=float, default=5.0)
    p.add_argument("--throughput-batch", type=int, default=8)
    p.add_argument("--input-size", type=int, default=None, help="H = W for models with dynamic sizes")
    p.add_argument("--openvino-precision", default="f32", choices=("f32", "bf16", "f16", "default"))
    p.add_argument("--execution-provider", default="CPUExecutionProvider", help="ONNX Runtime execution provider")
    p.add_argument("--graph-optimization-level", default="all", choices=tuple(ORT_OPTIMIZATION),
                   help="ONNX Runtime graph optimisation level")
    p.add_argument("--compute-units", default="ALL", choices=("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL"))
    p.add_argument("--profile", action="store_true", help="add a per-layer profile")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        result = measure(args)
    except AgentError as exc:
        print(json.dumps({"ok": False, "kind": exc.kind, "error": str(exc)}))
        return 3
    except Exception as exc:  # the runtime failed mid-run: report it as data, the caller decides
        print(json.dumps({"ok": False, "kind": "runtime_error", "error": f"{type(exc).__name__}: {exc}"}))
        return 3
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
