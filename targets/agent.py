"""The benchmark agent: one self-contained script, run on the device itself (this host, an ssh board,
an Android phone under Termux, a Mac), that measures one or more model files, of one runtime or of
several, and prints one JSON object.

It needs only the Python standard library, numpy and the models' runtimes, so it can be copied
anywhere with scp or adb push. Usage:

    python agent.py MODEL [MODEL...] --runtime RUNTIME[,RUNTIME...] [--threads N] [--runs N]
                    [--max-seconds S] [--warmup N] [--block K] [--min-runs N] [--rel-interval F]
                    [--throughput-batch B] [--input-size H] [--execution-provider P]
                    [--graph-optimization-level L] [--openvino-precision P] [--compute-units U]
                    [--profile] [--raw]
    python agent.py MODEL [MODEL...] --runtime RUNTIME[,RUNTIME...] --predict IMAGES.npz [--threads N]

RUNTIME is onnxruntime, openvino, coreml, executorch or litert: one for every model, or one per model in
order, comma-separated (`a.onnx b.xml c.tflite --runtime onnxruntime,openvino,litert`). The runtime-specific
flags apply to that runtime's models (--execution-provider and --graph-optimization-level to ONNX Runtime,
--openvino-precision to OpenVINO, --compute-units to Core ML); --threads to all; --profile to the runtimes
with a per-layer profiler (ONNX Runtime, OpenVINO, ExecuTorch).

Measured: every runtime is imported first (the memory each import adds is recorded), then per model,
load/compile time and warm-up (and the memory the model adds to the process); then all models, whatever
their runtime, are timed interleaved at batch 1:
round-robin, `--block` runs of each model per turn, until the 95% interval of every model's median
(order statistics, distribution-free) is within `--rel-interval` of that median (when given; checked
from `--min-runs` on), or `--runs` runs per model, or `--max-seconds` per model (all models together:
max_seconds x models), whichever comes first (timing.stopped says which). Each run records wall time
and the process's CPU time (all threads); the host's load average is read before and after. Per model:
p50/p90/p99/mean/std/min/max ms with the median's interval, CPU ms, throughput at `--throughput-batch`,
model size on disk, the other models it was interleaved with; with --profile, a per-layer profile (ONNX
Runtime's profiling JSON, OpenVINO's per-layer counters, ExecuTorch's ETDump); with --raw, every run's
wall and CPU ms.
One model prints its result object (as before); several print {"ok": true, "results": [...]}, and
both carry "schedule" (the model index of each timed block, in order).
With --predict (accuracy, nothing timed): every model runs on the float32 array `images` of IMAGES.npz (read
with allow_pickle=False; a batch of the models' input), and the result holds, per model, each image's argmax
and its logits (float32 little-endian, base64), for LiteRT how many XNNPACK partitions took the graph, plus the
machine and, on Arm, the CPU features the kernel reports (the auxiliary vector: it needs no /proc). Core ML
files, which take pixels, are refused.
On failure it prints {"ok": false, "kind": ..., "error": ...} (with "model": the file name, when the failure
is one model's: a runtime missing for it, a file its runtime cannot load or run) and exits 3.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from statistics import NormalDist

PROFILE_RUNS = 50
CONFIDENCE = 0.95  # of the median's interval
EXACT_RANKS = 5000  # up to this many runs the interval's ranks are exact binomial; above, the normal approximation
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
    """kind and message for the caller; model: the file name of the model it failed on, where it is one."""

    def __init__(self, kind: str, message: str, model: str | None = None):
        super().__init__(message)
        self.kind, self.model = kind, model


def file_name(path: str) -> str:
    return os.path.basename(path.rstrip("/"))


@contextlib.contextmanager
def blame(path: str) -> Iterator[None]:
    """An error inside names the model at path (so a caller can time the other models without it)."""
    try:
        yield
    except AgentError as exc:
        raise AgentError(exc.kind, str(exc), file_name(path)) from None
    except Exception as exc:  # the runtime failed on this model (loading it, or its warm-up runs)
        raise AgentError("runtime_error", f"{type(exc).__name__}: {exc}", file_name(path)) from None


def status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (Linux/Android), e.g. VmHWM or VmRSS, in MB; None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Peak resident memory of this process so far. Linux/Android: VmHWM, because ru_maxrss keeps the
    parent's high-water mark across fork+exec; macOS: ru_maxrss (bytes there)."""
    peak = status_mb("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def sidecar(path: str) -> str:
    """The file beside a model that its runtime reads too (it may not exist): an OpenVINO IR's weights,
    foo.xml -> foo.bin; an ONNX file's external data, foo.onnx -> foo.onnx.data."""
    return path[:-4] + ".bin" if path.endswith(".xml") else path + ".data"


def model_bytes(path: str) -> int:
    """Size on disk: a folder's files (a Core ML .mlpackage), or the file and its sidecar."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    extra = sidecar(path)
    return os.path.getsize(path) + (os.path.getsize(extra) if os.path.isfile(extra) else 0)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Hardware", "Processor")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


SIMD = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
        "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "asimd", "asimddp", "i8mm", "sve", "bf16")


def cpuinfo_flags() -> set[str] | None:
    """Every CPU flag /proc/cpuinfo lists (x86 `flags`, Arm `Features`); None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            return {flag for line in f if line.startswith(("flags", "Features"))
                    for flag in line.split(":", 1)[1].split()}
    except OSError:
        return None


def cpu_flags() -> list[str]:
    """The SIMD flags of /proc/cpuinfo that matter for these kernels (empty where it cannot be read)."""
    flags = cpuinfo_flags() or set()
    return [f for f in SIMD if f in flags]


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
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))  # what the plugin applied
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


class LiteRT:
    """A .tflite file in LiteRT's interpreter, which applies the XNNPACK delegate to float and INT8 graphs by
    default (the kernels of an Android phone's CPU)."""

    name = "litert"

    def __init__(self, path: str, threads: int):
        _runtime("ai_edge_litert")
        from importlib.metadata import version

        from ai_edge_litert.interpreter import Interpreter

        self.version = version("ai-edge-litert")
        try:
            self.interpreter = Interpreter(model_path=path, num_threads=threads or None)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError, UnicodeDecodeError) as exc:
            raise AgentError("bad_model", f"LiteRT cannot load {os.path.basename(path)}: "
                                          f"{str(exc).splitlines()[0]}") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]["index"]

    def input_shape(self, batch: int, size: int | None) -> list[int]:
        return _shape([int(d) for d in self.input["shape"]], batch, size)

    def __call__(self, x):
        """One invoke per image: converted models keep batch 1 as a constant in their reshapes, and XNNPACK
        cannot resize them (throughput is then back-to-back batch-1 calls)."""
        out = []
        for image in x:
            self.interpreter.set_tensor(self.input["index"], image[None])
            self.interpreter.invoke()
            out.append(self.interpreter.get_tensor(self.output))
        return out

    def layers(self) -> dict:
        raise AgentError("unsupported", "LiteRT's Python interpreter has no per-op profiler: use benchmark_model "
                                        "--enable_op_profiling=true on the device")


class ExecuTorch:
    """A .pte program in ExecuTorch's runtime (Python bindings; they need torch, so this runs on hosts and
    boards, while a phone uses ExecuTorch's own executor_runner). Its XNNPACK delegate runs on one process-wide
    threadpool, sized here before the first program loads (resizing it under a loaded program corrupts the heap
    in ExecuTorch 1.5.1); every model of one agent call shares the call's thread count."""

    name = "executorch"

    def __init__(self, path: str, threads: int, profile: bool = False):
        _runtime("executorch")
        import warnings
        from importlib.metadata import version

        import torch
        with warnings.catch_warnings():  # the pybindings warn that they are experimental
            warnings.simplefilter("ignore")
            from executorch.extension.pybindings import portable_lib
            from executorch.runtime import Runtime

        with open(path, "rb") as f:
            head = f.read(8)
        if not is_executorch_program(head):  # the runtime aborts logging these
            raise AgentError("bad_model", f"ExecuTorch cannot load {os.path.basename(path)}: not an ExecuTorch "
                                          "program (no 'ET..' file identifier at byte 4)")
        if threads and threads != portable_lib._threadpool_get_thread_count():
            portable_lib._unsafe_reset_threadpool(threads)
        self.threads = portable_lib._threadpool_get_thread_count()
        self.version, self._torch = version("executorch"), torch
        try:
            self.program = Runtime.get().load_program(path, enable_etdump=profile)
            self.method = self.program.load_method("forward")
        except (ValueError, RuntimeError) as exc:
            raise AgentError("bad_model", f"ExecuTorch cannot load {os.path.basename(path)}: "
                                          f"{str(exc).splitlines()[0]}") from None
        self.sizes = list(self.method.metadata.input_tensor_meta(0).sizes())

    def input_shape(self, batch: int, size: int | None) -> list[int]:
        return _shape([1, *self.sizes[1:]], batch, size)

    def __call__(self, x):
        return self.method.execute([self._torch.from_numpy(x)])[0]

    def layers(self, runs: int = 1) -> dict:
        """Per-op times of the last `runs` executions from the program's ETDump (loaded with profile=True)."""
        return etdump_layers(self.program, runs)


def is_executorch_program(head: bytes) -> bool:
    """A .pte starts with a 4-byte offset and the flatbuffer file identifier ("ET12" in 1.5), in ASCII."""
    return len(head) >= 8 and head[4:6] == b"ET" and head[4:8].isascii()


def _xnnpack_precision(kernel: str) -> str:
    """int8 | convert | float from an XNNPACK operator name, e.g. "Fully Connected (NC, QS8) GEMM #1"."""
    if kernel.startswith("Convert"):
        return "convert"
    return "int8" if any(t in kernel for t in ("QS8", "QU8", "QC8", "QD8", "QP8")) else "float"


def etdump_layers(program, runs: int) -> dict:
    """Per-op times from an ExecuTorch program's ETDump (the pip wheel's runtime records it; ticks are
    nanoseconds on Linux): XNNPACK's own per-operator events inside each delegate call (microsecond
    resolution) and the portable kernels' calls, averaged over the last `runs` executions. run_ms is
    Method::execute's mean, which also holds the delegate-call overhead the layers leave out."""
    import contextlib
    import io
    import warnings

    from executorch.devtools.etdump.serialize import deserialize_from_etdump_flatcc

    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stderr(io.StringIO()):
        dump, debug = os.path.join(folder, "run.etdp"), os.path.join(folder, "debug.bin")
        program.write_etdump_result_to_file(dump, debug)
        with open(dump, "rb") as f, warnings.catch_warnings():  # it calls importlib.resources.read_binary
            warnings.simplefilter("ignore")
            blocks = [block for block in deserialize_from_etdump_flatcc(f.read()).run_data
                      if any(e.profile_event and e.profile_event.name == "Method::execute" for e in block.events)]
    nodes: dict[str, dict] = {}
    totals = []
    for block in blocks[-runs:]:
        for event in (e.profile_event for e in block.events if e.profile_event):
            ns = event.end_time - event.start_time
            if event.name == "Method::execute":
                totals.append(ns / 1e6)
                continue
            if event.name and event.name.startswith("native_call_"):
                op = event.name.removeprefix("native_call_").removesuffix("_out").removesuffix(".out")
                key, entry = f"{op} @{event.instruction_id}", {"op_type": op, "kernel": "portable",
                                                               "precision": "convert" if "quantize" in op else "float"}
            elif event.delegate_debug_id_str:
                kernel = event.delegate_debug_id_str
                key = f"xnnpack @{event.instruction_id}: {kernel}"
                entry = {"op_type": kernel.rsplit(" #", 1)[0], "kernel": "xnnpack",
                         "precision": _xnnpack_precision(kernel)}
            else:  # OPERATOR_CALL / DELEGATE_CALL wrap the events above
                continue
            nodes.setdefault(key, {"name": key, "us": 0.0, **entry})["us"] += ns / 1000
    count = len(totals) or 1
    return summarise(list(nodes.values()), count, sum(totals) / count if totals else None)


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


MOBILE = {"litert": LiteRT, "executorch": ExecuTorch}
RUNTIMES = ("onnxruntime", "openvino", "coreml", *MOBILE)
PROFILED = ("onnxruntime", "openvino", "executorch")  # the runtimes whose Python API gives a per-layer profile
# What to import for a runtime before the memory baseline, where it is not the runtime's name (ExecuTorch's
# Python runtime brings torch).
RUNTIME_MODULES = {"litert": "ai_edge_litert.interpreter", "executorch": "executorch.runtime"}


def load(args, profile_dir: str | None = None, profile: bool = False):
    if args.runtime == "onnxruntime":
        return OnnxRuntime(args.model, args.threads, profile_dir, args.execution_provider,
                           args.graph_optimization_level)
    if args.runtime == "openvino":
        return OpenVino(args.model, args.threads, args.openvino_precision, profile)
    if args.runtime == "executorch":
        return ExecuTorch(args.model, args.threads, profile)
    if args.runtime in MOBILE:
        return MOBILE[args.runtime](args.model, args.threads)
    return CoreML(args.model, args.threads, args.compute_units)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = (len(ordered) - 1) * q
    low = int(index)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


def median_ranks(n: int, confidence: float = CONFIDENCE) -> tuple[int, int] | None:
    """1-based ranks (l, n + 1 - l) of the order statistics that bracket the median with at least
    `confidence`, whatever the distribution: l is the largest rank with P(B <= l - 1) <= (1 - confidence) / 2
    for B ~ Binomial(n, 1/2). Exact up to EXACT_RANKS runs, the normal approximation above.
    None when n is too small for any pair (n < 6 at 95%)."""
    tail = (1 - confidence) / 2
    if n > EXACT_RANKS:
        z = NormalDist().inv_cdf(1 - tail)
        low = int(math.floor(n / 2 + 0.5 - z * math.sqrt(n) / 2))
        return (low, n + 1 - low) if low >= 1 else None
    log_all = math.lgamma(n + 1) + n * math.log(0.5)
    cdf, low = 0.0, 0
    while low < n // 2:
        pmf = math.exp(log_all - math.lgamma(low + 1) - math.lgamma(n - low + 1))  # P(B = low)
        if cdf + pmf > tail:
            break
        cdf += pmf
        low += 1
    return (low, n + 1 - low) if low >= 1 else None


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> list[float] | None:
    """The order-statistics interval of the median of values, or None for too few values."""
    ranks = median_ranks(len(values), confidence)
    if ranks is None:
        return None
    ordered = sorted(values)
    return [ordered[ranks[0] - 1], ordered[ranks[1] - 1]]


def half_width(values: list[float]) -> float | None:
    """The larger side of the median's interval as a fraction of the median (None: no interval yet)."""
    interval = median_interval(values)
    median = percentile(values, 0.5)
    if interval is None or median <= 0:
        return None
    return max(median - interval[0], interval[1] - median) / median


def summary(values: list[float]) -> dict:
    return {"p50": percentile(values, 0.5), "p90": percentile(values, 0.9), "p99": percentile(values, 0.99),
            "mean": statistics.fmean(values), "std": statistics.pstdev(values), "min": min(values),
            "max": max(values), "p50_interval": median_interval(values), "confidence": CONFIDENCE,
            "half_width": half_width(values)}


def interleave(calls: list, runs: int, min_runs: int, block: int, seconds: float, rel: float,
               clock=time.perf_counter, cpu_clock=time.process_time) -> dict:
    """Time zero-argument calls round-robin, `block` runs of each per turn, so that every model sees the
    same host conditions. Stops after a whole round once every call's median interval is within `rel` of
    its median (rel > 0; checked from min_runs runs on, then at every ~10% more runs), at `runs` runs per call, or
    after `seconds` x len(calls) seconds (at least one round). Wall and CPU ms per run; the schedule is the
    call index of each block in order."""
    wall: list[list[float]] = [[] for _ in calls]
    cpu: list[list[float]] = [[] for _ in calls]
    schedule: list[int] = []
    min_runs = min(min_runs, runs)
    deadline = clock() + seconds * len(calls)
    next_check = min_runs
    while True:
        size = min(block, runs - len(wall[0]))
        for i, call in enumerate(calls):
            schedule.append(i)
            for _ in range(size):
                c0, t0 = cpu_clock(), clock()
                call()
                t1, c1 = clock(), cpu_clock()
                wall[i].append((t1 - t0) * 1000)
                cpu[i].append((c1 - c0) * 1000)
        done = len(wall[0])
        if done >= runs:
            stopped = "runs"
            break
        if rel > 0 and done >= next_check:
            widths = [half_width(w) for w in wall]
            if all(w is not None and w <= rel for w in widths):
                stopped = "interval"
                break
            next_check = max(done + 1, int(done * 1.1))
        if clock() >= deadline:
            stopped = "max_seconds"
            break
    return {"wall_ms": wall, "cpu_ms": cpu, "schedule": schedule, "block": block, "stopped": stopped}


def host_load() -> list[float] | None:
    """1, 5 and 15-minute load averages (runnable threads), None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS has one, else every core."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_info(before: list[float] | None, after: list[float] | None, threads: int) -> dict:
    """The host's load around the timing, and whether the threads asked for exceed the free cores
    (usable cores minus the 1-minute load before timing); threads 0 (the runtime's default) counts as all cores."""
    cores = usable_cores()
    info = {"cores": cores, "before": before, "after": after, "threads": threads or cores}
    if before is not None:
        info["free_cores"] = round(max(cores - before[0], 0.0), 2)
        info["oversubscribed"] = info["threads"] > info["free_cores"]
    return info


def thread_count() -> int | None:
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux/Android: writing 5 to clear_refs), so each model's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def window_start() -> float:
    """Start a memory window: reset the peak where the OS allows it and return the RSS now (else the peak)."""
    before = status_mb("VmRSS") if reset_peak_rss() else None
    return rss_mb() if before is None else before


def import_runtimes(paths: list[str], runtimes: list[str]) -> dict[str, float]:
    """Import every runtime before any model loads, so that a model's memory is its own; the MB each
    import added. A runtime that is missing is blamed on its first model. Core ML's coremltools is
    imported with its model (and counted in it)."""
    added = {}
    for path, runtime in zip(paths, runtimes):
        if runtime == "coreml" or runtime in added:
            continue
        before = window_start()
        with blame(path):
            _runtime(RUNTIME_MODULES.get(runtime, runtime))
        added[runtime] = max(rss_mb() - before, 0.0)
    return added


def measure(args) -> tuple[list[dict], list[int]]:
    """Load every model (its own memory window), time them interleaved, then per model throughput and
    the optional profile. Returns one result per model and the block schedule."""
    import numpy as np

    for path in args.model:
        if not os.path.exists(path):
            raise AgentError("bad_model", f"{path}: no such file on the device", file_name(path))
    baseline = rss_mb()
    runtime_mb = import_runtimes(args.model, args.runtimes)
    load_before = host_load()
    base_threads = thread_count()
    models = []
    for path, runtime in zip(args.model, args.runtimes):
        model_args = argparse.Namespace(**{**vars(args), "model": path, "runtime": runtime})
        before = window_start()
        threads_before = thread_count()
        start = time.perf_counter()
        with blame(path):
            runner = load(model_args)
            load_ms = (time.perf_counter() - start) * 1000
            shape = runner.input_shape(1, args.input_size)
            rng = np.random.default_rng(0)
            x = rng.uniform(0, 1, shape).astype(np.float32)
            if runtime == "coreml":
                x *= 255
            for _ in range(args.warmup):
                runner(x)
        added = max(rss_mb() - before, 0.0)
        threads = None if base_threads is None else base_threads + thread_count() - threads_before
        models.append({"args": model_args, "runner": runner, "x": x, "rng": rng, "shape": shape,
                       "load_ms": load_ms, "rss": added, "threads": threads})
    timing = interleave([(lambda m=m: m["runner"](m["x"])) for m in models], args.runs, args.min_runs,
                        args.block, args.max_seconds, args.rel_interval)
    host_load_info = load_info(load_before, host_load(), args.threads)
    host = {"system": platform.system(), "machine": platform.machine(), "cpu": cpu_name(),
            "cores": usable_cores(), "python": platform.python_version()}
    names = [file_name(m["args"].model) for m in models]
    results = []
    for i, m in enumerate(models):
        wall, cpu = timing["wall_ms"][i], timing["cpu_ms"][i]
        runner = m["runner"]
        result = {
            "ok": True, "runtime": runner.name, "runtime_version": runner.version,
            "model": names[i], "model_bytes": model_bytes(m["args"].model),
            "input_shape": m["shape"], "threads": args.threads, "load_ms": m["load_ms"], "warmup_runs": args.warmup,
            "runs": len(wall), "latency_ms": summary(wall),
            "cpu_ms": {k: v for k, v in summary(cpu).items() if k in ("p50", "mean", "p50_interval")},
            "timing": {"interleaved_with": [n for j, n in enumerate(names) if j != i], "block": timing["block"],
                       "stopped": timing["stopped"], "rel_interval": args.rel_interval, "min_runs": args.min_runs},
        }
        result["throughput"] = throughput(runner, m["args"], m["rng"]) if args.throughput_batch > 1 else \
            {"batch": 1, "images_per_s": 1000 / result["latency_ms"]["mean"]}
        result["process_threads"] = m["threads"]
        result["runtime_threads"] = getattr(runner, "threads", None)  # as the runtime reports it, where it does
        result["model_rss_mb"] = m["rss"]
        # what a process running only this model would peak at: the interpreter, its runtime and the model
        result["peak_rss_mb"] = baseline + runtime_mb.get(runner.name, 0.0) + m["rss"]
        result["host"] = host
        result["host_load"] = host_load_info
        result["warnings"] = warnings(result)
        if args.raw:
            result["samples"] = {"wall_ms": wall, "cpu_ms": cpu}
        if args.profile and runner.name in PROFILED:
            result["profile"] = profile_layers(m["args"], m["x"])
        results.append(result)
    return results, timing["schedule"]


def warnings(result: dict) -> list[str]:
    out = []
    load, width = result["host_load"], result["latency_ms"]["half_width"]
    if load.get("oversubscribed"):
        out.append(f"{load['threads']} thread(s) but only {load['free_cores']:g} of {load['cores']} cores free "
                   f"(1-minute load {load['before'][0]:g} before timing): the timings share the CPU with other work")
    if result["timing"]["rel_interval"] > 0 and (width is None or width > result["timing"]["rel_interval"]):
        shown = "no interval (too few runs)" if width is None else f"+-{100 * width:.1f}%"
        out.append(f"the median's 95% interval is {shown}, wider than +-{100 * result['timing']['rel_interval']:g}%"
                   f" (timing stopped at {result['timing']['stopped'].replace('_', ' ')})")
    return out


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
    if args.runtime == "executorch":  # its ETDump holds every run: the mean of the last PROFILE_RUNS
        for _ in range(PROFILE_RUNS):
            runner(x)
        return runner.layers(PROFILE_RUNS)
    layer_sums = []
    best = None
    for _ in range(PROFILE_RUNS):  # keep the run closest to the median, not an outlier
        runner(x)
        layers = runner.layers()
        layer_sums.append((layers["layers_ms"], layers))
    layer_sums.sort(key=lambda item: item[0])
    best = layer_sums[len(layer_sums) // 2][1]
    return best


PREDICT_BATCH = 64  # images per call where the model's batch dimension is free (else one at a time)
# Linux arm64 hwcap bits (AT_HWCAP, AT_HWCAP2) of the features that pick INT8 and float kernels.
ARM_HWCAP = {"asimd": 1, "asimdhp": 10, "asimddp": 20, "sve": 22, "asimdfhm": 23}
ARM_HWCAP2 = {"sve2": 1, "i8mm": 13, "bf16": 14, "sme": 23}


def arm_features() -> list[str] | None:
    """The kernel's hwcaps (getauxval) by name on an aarch64 Linux; None elsewhere."""
    if platform.machine() != "aarch64" or not sys.platform.startswith("linux"):
        return None
    import ctypes

    getauxval = ctypes.CDLL(None).getauxval
    getauxval.restype = ctypes.c_ulong
    caps, caps2 = getauxval(16), getauxval(26)  # AT_HWCAP, AT_HWCAP2
    return [name for name, bit in ARM_HWCAP.items() if caps >> bit & 1] + \
        [name for name, bit in ARM_HWCAP2.items() if caps2 >> bit & 1]


def read_images(path: str):
    """The float32 4-d `images` array of an .npz file."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as f:
            images = f["images"]
    except (OSError, ValueError, KeyError) as exc:
        raise AgentError("bad_input", f"--predict {path}: not an .npz file with an `images` array ({exc})") from None
    if images.dtype != np.float32 or images.ndim != 4:
        raise AgentError("bad_input", f"--predict {path}: images must be a float32 batch of 3-d inputs, not "
                                      f"{images.dtype} {list(images.shape)}")
    return images


def logits(runner, images):
    """The model's first output for every image, as float32 N x classes: images go in whole batches where the
    model's batch dimension is free, else one at a time."""
    import numpy as np

    shape = runner.input_shape(1, None)
    if shape[1:] != list(images.shape[1:]):
        raise AgentError("bad_input", f"the images are {list(images.shape[1:])} but the model takes {shape[1:]}")
    free = runner.name == "onnxruntime" and not isinstance(runner.input.shape[0], int)
    step = PREDICT_BATCH if free else 1
    out = []
    for i in range(0, len(images), step):
        x = np.ascontiguousarray(images[i:i + step])
        y = runner(x)
        if runner.name == "litert":
            y = np.concatenate(y)
        elif runner.name == "executorch":
            y = y.numpy()
        else:  # ONNX Runtime's list of outputs, OpenVINO's results by output index
            y = y[0]
        out.append(np.asarray(y, dtype=np.float32).reshape(len(x), -1))
    return np.concatenate(out)


def encode(logits) -> dict:
    """An array of logits as JSON: float32 little-endian, base64."""
    import base64

    return {"dtype": "<f4", "shape": list(logits.shape),
            "base64": base64.b64encode(logits.astype("<f4").tobytes()).decode("ascii")}


def predict(args) -> dict:
    """Every model's argmax and logits on the images of args.predict."""
    images = read_images(args.predict)
    results = []
    for path, runtime in zip(args.model, args.runtimes):
        if runtime == "coreml":
            raise AgentError("bad_model", "--predict takes tensors, and Core ML files take pixels: leave them out",
                             file_name(path))
        with blame(path):
            if not os.path.exists(path):
                raise AgentError("bad_model", f"{path}: no such file on the device")
            runner = load(argparse.Namespace(**{**vars(args), "model": path, "runtime": runtime}))
            out = logits(runner, images)
        result = {"model": file_name(path), "runtime": runner.name, "runtime_version": runner.version,
                  "images": len(out), "argmax": out.argmax(1).tolist(), "logits": encode(out)}
        if runner.name == "litert":  # XNNPACK took the graph (the phone's kernels) or not (LiteRT's own)
            result["xnnpack_partitions"] = sum(op["op_name"] == "DELEGATE"
                                               for op in runner.interpreter._get_ops_details())
        results.append(result)
    host = {"system": platform.system(), "machine": platform.machine(), "python": platform.python_version(),
            "cpu_features": arm_features()}
    return {"ok": True, "results": results, "host": host}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="measure model files on this device, timed interleaved; prints JSON")
    p.add_argument("model", nargs="+", help="one or more model files, timed interleaved")
    p.add_argument("--runtime", required=True, metavar="RUNTIME[,RUNTIME...]",
                   help=f"the models' runtime ({', '.join(RUNTIMES)}): one for all, or one per model in order, "
                        "comma-separated")
    p.add_argument("--threads", type=int, default=0, help="0 = the runtime's default")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=200, help="at most this many timed runs per model")
    p.add_argument("--max-seconds", type=float, default=5.0, help="timing budget per model (all together: x models)")
    p.add_argument("--block", type=int, default=5, help="runs of one model per round-robin turn")
    p.add_argument("--min-runs", type=int, default=20, help="runs per model before the stopping rule is checked")
    p.add_argument("--rel-interval", type=float, default=0.0,
                   help="stop once every median's 95%% interval is within this fraction of the median "
                        "(0: no early stop, time --runs or --max-seconds)")
    p.add_argument("--throughput-batch", type=int, default=8)
    p.add_argument("--input-size", type=int, default=None, help="H = W for models with dynamic sizes")
    p.add_argument("--openvino-precision", default="f32", choices=("f32", "bf16", "f16", "default"))
    p.add_argument("--execution-provider", default="CPUExecutionProvider", help="ONNX Runtime execution provider")
    p.add_argument("--graph-optimization-level", default="all", choices=tuple(ORT_OPTIMIZATION),
                   help="ONNX Runtime graph optimisation level")
    p.add_argument("--compute-units", default="ALL", choices=("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL"))
    p.add_argument("--profile", action="store_true",
                   help=f"add a per-layer profile (to the models of {', '.join(PROFILED)})")
    p.add_argument("--raw", action="store_true", help="add every run's wall and CPU ms")
    p.add_argument("--predict", metavar="IMAGES.npz", default=None,
                   help="time nothing: print each model's argmax and logits on the float32 `images` array of "
                        "this .npz file (a batch of the models' input)")
    args = p.parse_args(argv)
    runtimes = args.runtime.split(",")
    if unknown := [r for r in runtimes if r not in RUNTIMES]:
        p.error(f"--runtime: unknown runtime {', '.join(unknown)} (choose from {', '.join(RUNTIMES)})")
    if len(runtimes) not in (1, len(args.model)):
        p.error(f"--runtime: {len(runtimes)} runtimes for {len(args.model)} models: give one for all, or one per model")
    args.runtimes = runtimes * len(args.model) if len(runtimes) == 1 else runtimes
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        if args.predict:
            print(json.dumps(predict(args)))
            return 0
        results, schedule = measure(args)
    except AgentError as exc:
        failure = {"ok": False, "kind": exc.kind, "error": str(exc)}
        if exc.model:
            failure["model"] = exc.model
        print(json.dumps(failure))
        return 3
    except Exception as exc:  # the runtime failed mid-run: report it as data, the caller decides
        print(json.dumps({"ok": False, "kind": "runtime_error", "error": f"{type(exc).__name__}: {exc}"}))
        return 3
    if len(results) == 1:
        print(json.dumps({**results[0], "schedule": schedule}))
    else:
        print(json.dumps({"ok": True, "results": results, "schedule": schedule}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
