"""MediaPipe and the .tflite: the TFLite metadata writer (labels, input, card into the file) and what MediaPipe's
ImageClassifier takes.

The writer runs in MediaPipe's own environment (`make mediapipe`: MediaPipe 0.10.21 needs numpy 1.x; the
releases since ship without the module the writer imports), called through a subprocess that loads this file
alone, by path: so it imports nothing but the standard library at its top, and none of the project's modules.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

MEDIAPIPE_PYTHON = "MANIFOLD_EDGE_MEDIAPIPE_PYTHON"  # the MediaPipe environment's python, if not .venv/mediapipe
# The input MediaPipe's ImageClassifier takes (mediapipe/tasks/cc/vision/utils/image_tensor_specs.cc)
MEDIAPIPE_INPUT = "one 1 x height x width x 3 input (RGB, channels last), uint8 or float32"


def mediapipe_python() -> Path | None:
    """The MediaPipe environment's python: $MANIFOLD_EDGE_MEDIAPIPE_PYTHON, else .venv/mediapipe in the
    checkout (`make mediapipe`); None when there is none."""
    path = Path(os.environ.get(MEDIAPIPE_PYTHON) or Path(__file__).resolve().parents[2] / ".venv" / "mediapipe" / "bin"
                / "python")
    return path if path.is_file() else None


def in_mediapipe(function: str, **kwargs):
    """Call `function` of this file in the MediaPipe environment (isolated: only this file is loaded there, by
    path) with JSON arguments on stdin; returns its JSON result."""
    python = mediapipe_python()
    code = ("import importlib.util, json, sys; spec = importlib.util.spec_from_file_location('litert_mediapipe', "
            "sys.argv[1]); module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
            "print(json.dumps(getattr(module, sys.argv[2])(**json.load(sys.stdin))))")
    done = subprocess.run([str(python), "-I", "-c", code, __file__, function], input=json.dumps(kwargs),
                          capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(f"{function} failed in the MediaPipe environment ({python}): "
                           + "\n".join(done.stderr.strip().splitlines()[-5:]))
    return json.loads(done.stdout.strip().splitlines()[-1])


def pixel_input(spec: dict) -> bool:
    """Whether the .tflite takes what MediaPipe's ImageClassifier feeds (MEDIAPIPE_INPUT) as pixels 0-255, the
    normalisation inside (the export's files); `spec`: its preprocess.json."""
    shape = spec["shape"]
    return "mean" not in spec and spec["layout"] == "NHWC" and len(shape) == 4 and shape[0] == 1 and shape[3] == 3 \
        and spec["dtype"] in ("uint8", "float32")


def mediapipe_verdict(spec: dict) -> str:
    """Whether MediaPipe's ImageClassifier can take the .tflite, from its input."""
    if pixel_input(spec):
        return "MediaPipe's ImageClassifier takes it"
    return (f"MediaPipe's ImageClassifier cannot take it: its input is a normalised {spec['dtype']} {spec['layout']} "
            f"{spec['shape']} tensor, and MediaPipe feeds {MEDIAPIPE_INPUT}")


def tflite_metadata(spec: dict) -> str:
    """What write_tflite_metadata writes into the .tflite with this preprocess spec, in words (here: where there
    is no MediaPipe environment, nothing)."""
    if mediapipe_python() is None:
        return f"none (no MediaPipe environment here: `make mediapipe`, or set {MEDIAPIPE_PYTHON})"
    what = "an RGB image input of pixels 0-255 (mean 0, std 1: the normalisation is inside the model)" \
        if pixel_input(spec) else f"the input described in words (a normalised {spec['layout']} tensor, not an image)"
    return f"labels, {what}, and this card (MediaPipe's metadata writer)"


def write_tflite_metadata(path: str, labels: list[str], spec: dict, card: str, name: str) -> None:
    """Runs in the MediaPipe environment: MediaPipe's metadata writer puts into the .tflite the model's name and
    card, its input (for a pixel input: an RGB image with mean 0 and std 1, so MediaPipe feeds pixels 0-255; else
    a normalised tensor described in words, not an image) and the classification output with its labels."""
    from mediapipe.tasks.metadata.metadata_schema_py_generated import ColorSpaceType
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer

    writer = metadata_writer.MetadataWriter.create(bytearray(Path(path).read_bytes()))
    writer.add_general_info(name, card)
    if pixel_input(spec):
        writer.add_image_input([0.0], [1.0], ColorSpaceType.RGB, description=f"{spec['expects']}; "
                                                                             f"{spec['formula']}")
    else:
        writer.add_feature_input(spec["input_name"], f"{spec['dtype']} {spec['layout']} {spec['shape']}, "
                                                     f"{spec['color']}: {spec['formula']}, mean {spec['mean']}, "
                                                     f"std {spec['std']}")
    writer.add_classification_output(metadata_writer.Labels().add(labels),
                                     description="a logit per class in labels order (no softmax)")
    model, _ = writer.populate()
    tmp = Path(path).with_name("tmp-" + Path(path).name)
    tmp.write_bytes(model)
    tmp.replace(path)
