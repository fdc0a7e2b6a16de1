"""--predict: accuracy, nothing timed. Every model runs on the float32 `images` of an .npz file, and the result
holds each image's argmax and logits (float32 little-endian, base64) per model, plus the machine and, on Arm,
the CPU features the kernel reports (the auxiliary vector: it needs no /proc)."""
from __future__ import annotations

import argparse
import os
import platform

from targets.agent import host
from targets.agent.adapter import Adapter, adapter, load
from targets.agent.errors import AgentError, blame, file_name

PREDICT_BATCH = 64  # images per call where the model's batch dimension is free (else one at a time)


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


def logits(runner: Adapter, images):
    """The model's first output for every image, as float32 N x classes: images go in whole batches where the
    model's batch dimension is free, else one at a time."""
    import numpy as np

    shape = runner.input_shape(1, None)
    if shape[1:] != list(images.shape[1:]):
        raise AgentError("bad_input", f"the images are {list(images.shape[1:])} but the model takes {shape[1:]}")
    step = PREDICT_BATCH if runner.free_batch() else 1
    out = []
    for i in range(0, len(images), step):
        x = np.ascontiguousarray(images[i:i + step])
        y = runner.output(runner(x))
        out.append(np.asarray(y, dtype=np.float32).reshape(len(x), -1))
    return np.concatenate(out)


def encode(logits) -> dict:
    """An array of logits as JSON: float32 little-endian, base64."""
    import base64

    return {"dtype": "<f4", "shape": list(logits.shape),
            "base64": base64.b64encode(logits.astype("<f4").tobytes()).decode("ascii")}


def predict(args: argparse.Namespace) -> dict:
    """Every model's argmax and logits on the images of args.predict. Models that take pixels are refused."""
    images = read_images(args.predict)
    results = []
    for path, runtime in zip(args.model, args.runtimes):
        if adapter(runtime).pixels:
            raise AgentError("bad_model", f"--predict takes tensors, and {adapter(runtime).title} files take pixels: "
                                          "leave them out", file_name(path))
        with blame(path):
            if not os.path.exists(path):
                raise AgentError("bad_model", f"{path}: no such file on the device")
            runner = load(argparse.Namespace(**{**vars(args), "model": path, "runtime": runtime}))
            out = logits(runner, images)
        result = {"model": file_name(path), "runtime": runner.name, "runtime_version": runner.version,
                  "images": len(out), "argmax": out.argmax(1).tolist(), "logits": encode(out), **runner.details()}
        results.append(result)
    machine = {"system": platform.system(), "machine": platform.machine(), "python": platform.python_version(),
               "cpu_features": host.arm_features()}
    return {"ok": True, "results": results, "host": machine}
