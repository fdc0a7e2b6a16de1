"""LiteRT (.tflite) files run by ai-edge-litert's Interpreter on this CPU, with the XNNPACK delegate that
LiteRT applies by default (the CPU path phones take).

XNNPACK in use: the interpreter replaces the ops the delegate takes by DELEGATE nodes, and
`xnnpack_partitions` counts them after allocation (1: the whole graph in one XNNPACK subgraph; 0: not in
use; more: ops XNNPACK has no kernel for split the graph and run on LiteRT's built-in kernels).

Threads: `num_threads` of the interpreter, which the default XNNPACK delegate takes over; threads = 0 leaves
it unset, which ai-edge-litert 2.3.0's Python wrapper turns into 1 thread.

App input: the export stage's files take what an Android app has, RGB pixels 0-255 channels last (float32
[1, H, W, 3]), and convert and normalise inside (backends/litert/export.py). The export writes that input's
record (the data's channels, mean and std) into the file's metadata under APP_INPUT; the runner reads it there
and turns the pipeline's normalised NCHW batches into those pixels, so its callers feed what every other runner
takes. A file without the record is fed as it is.

Corrupt files: the native loader verifies the flatbuffer before building the graph (random bytes, truncated
files and 300 randomly tampered copies of an exported student raised Python errors, none crashed the
process), so a bad file is one UserError line, without a validation pass of our own.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from backends.base import require
from pipeline.core.errors import UserError

APP_INPUT = "manifold_edge.app_input"  # the file's metadata entry (flatbuffer Model.metadata) with app_input()'s record


def app_input(path: Path) -> dict | None:
    """The app-input record the export wrote into the file ({"layout": "NHWC", "color": "RGB", "pixel_range":
    [0, 255], "channels", "mean", "std"}); None for a file without one."""
    require("ai_edge_litert", "litert")
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == APP_INPUT:
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    return None


def to_pixels(x: np.ndarray, record: dict) -> np.ndarray:
    """Normalised NCHW images -> the app input of `record`: pixels = (x * std + mean) * 255, a grayscale channel
    repeated as R = G = B (the model's luma weights sum to 1), channels last."""
    shape = (1, -1, 1, 1)
    pixels = (x * np.reshape(record["std"], shape) + np.reshape(record["mean"], shape)) * 255
    return np.ascontiguousarray(np.broadcast_to(pixels, (len(x), 3, *x.shape[2:])).transpose(0, 2, 3, 1),
                                dtype=np.float32)


class LiteRTRunner:
    """A fixed-batch .tflite (our exports take one image) run chunk by chunk: resizing the input does not
    work for them, since their reshapes carry the batch as a constant. Takes normalised NCHW images, as every
    runner does (feed() makes the file's input from them)."""

    runtime = "litert"
    evaluation = "measured"

    def __init__(self, path: Path, threads: int = 0):
        require("ai_edge_litert", "litert")
        from ai_edge_litert.interpreter import Interpreter

        path = Path(path)
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
            self.interpreter.allocate_tensors()
        except Exception as exc:  # ValueError, RuntimeError, even UnicodeDecodeError, by what the file breaks
            detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise UserError(f"litert cannot load {path.name}: {detail}") from None
        (source,), (target,) = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        self.input, self.output, self.batch = source["index"], target["index"], int(source["shape"][0])
        self.xnnpack_partitions = sum(op["op_name"] == "DELEGATE" for op in self.interpreter._get_ops_details())
        self.app_input = app_input(path)

    def feed(self, x: np.ndarray) -> np.ndarray:
        """The file's input for normalised NCHW images: app pixels where the file has the app-input record."""
        return x if self.app_input is None else to_pixels(x, self.app_input)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = self.feed(x)
        n, pad = len(x), -len(x) % self.batch
        if pad:
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
        logits = []
        for i in range(0, len(x), self.batch):
            self.interpreter.set_tensor(self.input, x[i:i + self.batch])
            self.interpreter.invoke()
            logits.append(self.interpreter.get_tensor(self.output))
        return np.concatenate(logits)[:n]


def profile_layers(path: Path, x: np.ndarray, threads: int = 0) -> dict | None:
    """Always None: ai-edge-litert 2.3.0 exposes no per-op profiler to Python (the Interpreter wraps no
    profiler, and experimental_force_delegate_node_profiling only feeds C++ profilers such as
    benchmark_model's --enable_op_profiling); no per-layer numbers rather than made-up ones."""
    return None
