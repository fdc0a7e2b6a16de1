"""The deploy folder's LiteRT parts: the .tflite's tensors as LiteRT's interpreter reads them, with the app-input
record the export wrote into the file (RGB pixels in, converted and normalised inside); and its TFLite metadata,
written by MediaPipe's writer in MediaPipe's own environment (backends/litert/mediapipe.py) where there is one."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from backends.litert.mediapipe import (
    MEDIAPIPE_PYTHON,
    in_mediapipe,
    mediapipe_python,
    mediapipe_verdict,
    tflite_metadata,
)

log = logging.getLogger(__name__)

PIXELS = "none: pass pixels 0-255 (the normalisation is inside the model)"
LOGITS = "logits, one per class in labels.txt order (apply softmax for probabilities)"


def describe_io(path: Path, record: dict, data: dict) -> dict:
    """Input and output details (name, shape, dtype; scale and zero point where a tensor is quantized), and
    `app_input`: the export's record of the pixels the file takes, where it has one."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from backends.litert.runner import app_input

    interpreter = Interpreter(model_path=str(path))

    def detail(d: dict) -> dict:
        entry = {"name": d["name"], "shape": d["shape"].tolist(), "dtype": np.dtype(d["dtype"]).name}
        q = d["quantization_parameters"]
        if len(q["scales"]):
            entry["quantization"] = {"scale": q["scales"].tolist(), "zero_point": q["zero_points"].tolist()}
        return entry

    found = {"inputs": [detail(d) for d in interpreter.get_input_details()],
             "outputs": [detail(d) for d in interpreter.get_output_details()]}
    pixels = app_input(path)
    return {**found, "app_input": pixels} if pixels else found


def pixel_preprocess(io: dict, data: dict) -> dict | None:
    """The export's .tflite (an app-input record in it): RGB pixels 0-255, channels last, whatever the data's
    channels (the model makes them grayscale itself); None for a .tflite of the normalised tensor."""
    if "app_input" not in io:
        return None
    first = io["inputs"][0]
    shape = first["shape"]
    return {"color": "RGB", "layout": "NHWC", "shape": shape, "dtype": first["dtype"],
            "expects": f"RGB pixels 0-255 as {first['dtype']}, channels last {shape}"
                       + (" (the model makes them grayscale: BT.601 luma, as PIL's convert(\"L\"))"
                          if data["channels"] == 1 else ""),
            "formula": PIXELS, "output": LOGITS}


def metadata_note(spec: dict) -> str:
    """The card's line: what the .tflite's metadata holds and whether MediaPipe's ImageClassifier takes it."""
    return f"TFLite metadata: {tflite_metadata(spec)}; {mediapipe_verdict(spec)}"


def embed_metadata(path: Path, meta: dict[str, str]) -> None:
    """TFLite metadata by MediaPipe's writer (labels, the input and its normalisation, the card as description),
    in the MediaPipe environment; without one the file ships as exported, with a warning (the card says so)."""
    if mediapipe_python() is None:
        log.warning(f"{path.name}: no TFLite metadata written (no MediaPipe environment: `make mediapipe`, or set "
                    f"{MEDIAPIPE_PYTHON})")
        return
    in_mediapipe("write_tflite_metadata", path=str(path), labels=json.loads(meta["labels"]),
                 spec=json.loads(meta["preprocess"]), card=meta["model_card"], name=path.stem)
