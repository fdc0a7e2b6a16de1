"""preprocess.json, MODEL_CARD.md and the metadata written into each file (pipeline/app_files.py): the inputs and
outputs as each runtime loads them, and a .tflite that MediaPipe's ImageClassifier takes and classifies with."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import read_report
from pipeline.app_files import mediapipe_python, write_app_files
from pipeline.deploy import model_files

SIZE, CLASSES = 16, ["zero", "one", "two, or more"]  # a comma: labels go into the file as they are
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]  # one value for every channel: all MediaPipe applies


def needs_mediapipe() -> Path:
    python = mediapipe_python()
    if python is None:
        if os.environ.get("CI"):
            pytest.fail("no MediaPipe environment: `make mediapipe` makes it")
        pytest.skip("no MediaPipe environment (make mediapipe)")
    return python


def run_in_mediapipe(code: str, *args: str) -> dict:
    """Run `code` in the MediaPipe environment; its last line of output, as JSON."""
    done = subprocess.run([str(needs_mediapipe()), "-I", "-c", code, *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


CLASSIFY = """
import json, sys
import mediapipe as mp
from mediapipe.tasks.python import vision
from mediapipe.tasks.python.core.base_options import BaseOptions
try:
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=sys.argv[1]), max_results=-1)
    with vision.ImageClassifier.create_from_options(options) as classifier:
        found = classifier.classify(mp.Image.create_from_file(sys.argv[2])).classifications[0].categories
    print(json.dumps({c.category_name: c.score for c in found}))
except Exception as exc:
    print(json.dumps({"error": str(exc)}))
"""
READ = """
import json, sys
from mediapipe.tasks.python.metadata.metadata import MetadataDisplayer
shown = MetadataDisplayer.with_model_file(sys.argv[1])
print(json.dumps({"metadata": json.loads(shown.get_metadata_json()),
                  "labels": shown.get_associated_file_buffer("labels.txt").decode().splitlines()}))
"""


def report_for(classes: list[str], channels: int, mean: list[float], std: list[float], target: dict) -> dict:
    """The parts of report.json app_files reads, for a model made here (its numbers are placeholders)."""
    model = {"model": "tiny", "params": 1, "top1": 50.0}
    return {"stages": {"data": {"summary": {"img_size": SIZE, "channels": channels, "mean": mean, "std": std,
                                            "classes": classes}},
                       "distill": {"summary": {"kd": "soft", "manifold": False}}},
            "run": {"versions": {"ai-edge-litert": metadata.version("ai-edge-litert"), "manifold-edge": "0.1.0"},
                    "name": "test", "config_hash": "0" * 64, "seed": 0},
            "evaluation": {"split": "test", "images": 1, "teacher": model, "student": model},
            "config": {"export": {"coreml": {"license": "Apache-2.0"}}},
            "latency": {"targets": {"phone": target}, "rows": []}}


def litert_choice(artifact: str = "litert") -> dict:
    return {"target": "phone", "artifact": artifact, "runtime": "litert", "precision": "fp32", "top1": 50.0,
            "delta_top1": 0.0, "delta_interval": [-1.0, 1.0], "within_noise": True, "evaluation": "measured",
            "label": "proxy", "latency_ms": None, "why": "the only file"}


@pytest.fixture(scope="module")
def tflites(tmp_path_factory) -> dict[str, Path]:
    """Two .tflite files of one small CNN made with litert-torch: `nhwc` takes an RGB image channels last
    (to_channel_last_io), `nchw` a grayscale tensor channels first, as the export stage writes it."""
    import litert_torch

    folder = tmp_path_factory.mktemp("tflite")
    torch.manual_seed(0)
    paths = {}
    for name, channels in (("nhwc", 3), ("nchw", 1)):
        model = torch.nn.Sequential(torch.nn.Conv2d(channels, 8, 3, stride=2), torch.nn.ReLU(),
                                    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3)).eval()
        sample = torch.rand(1, channels, SIZE, SIZE)
        if name == "nhwc":
            model, sample = litert_torch.to_channel_last_io(model, args=[0]).eval(), sample.permute(0, 2, 3, 1)
        paths[name] = folder / f"{name}.tflite"
        litert_torch.convert(model, (sample,)).export(str(paths[name]))
    return paths


def deploy(source: Path, folder: Path, report: dict, choice: dict) -> tuple[Path, dict, str]:
    folder.mkdir()
    shutil.copy2(source, folder / "model.tflite")
    write_app_files(report, choice, folder, ["model.tflite"])
    return folder / "model.tflite", json.loads((folder / "preprocess.json").read_text()), \
        (folder / "MODEL_CARD.md").read_text()


def litert_logits(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.set_tensor(source["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(target["index"])[0]


def test_mediapipe_image_classifier_takes_the_deployed_tflite(tflites, tmp_path):
    """The proof that an app's MediaPipe takes our .tflite: the metadata written at deploy (labels, RGB image
    input, normalisation) is all ImageClassifier needs, and its scores are the logits LiteRT gives on the input
    made as preprocess.json says."""
    needs_mediapipe()
    report = report_for(CLASSES, 3, MEAN, STD, {"device": "phone"})
    path, spec, card = deploy(tflites["nhwc"], tmp_path / "deploy", report, litert_choice())
    assert spec["layout"] == "NHWC" and spec["shape"] == [1, SIZE, SIZE, 3] and spec["dtype"] == "float32"
    assert spec["mean"] == MEAN and spec["formula"].startswith("x = (pixel / 255 - mean[c]) / std[c]")
    assert f"LiteRT {metadata.version('ai-edge-litert')}" in card and "XNNPACK delegate" in card
    assert "ImageClassifier takes it" in card and "an image input with its colour space and normalisation" in card

    pixels = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "picture.png")
    scores = run_in_mediapipe(CLASSIFY, str(path), str(tmp_path / "picture.png"))
    x = ((pixels / 255 - np.array(spec["mean"])) / np.array(spec["std"]))[None].astype(np.float32)
    logits = litert_logits(path, x)
    assert list(scores) == [CLASSES[i] for i in np.argsort(-logits)]  # MediaPipe names them by the labels
    assert np.allclose([scores[c] for c in CLASSES], logits, atol=1e-4)

    per_channel = report_for(CLASSES, 3, [0.5, 0.4, 0.3], [0.25, 0.2, 0.3], {"device": "phone"})
    path, _, card = deploy(tflites["nhwc"], tmp_path / "per-channel", per_channel, litert_choice())
    assert "cannot take it: it applies one mean and one std to every channel" in card
    assert "Per-channel image normalization" in run_in_mediapipe(CLASSIFY, str(path), str(tmp_path / "picture.png")
                                                                 )["error"]


def test_a_channels_first_tflite_gets_its_labels_and_says_what_blocks_mediapipe(tflites, tmp_path):
    """The export stage's .tflite takes a channels-first grayscale tensor: MediaPipe refuses it (as the card says),
    so its metadata describes the input in words, not as an image, and still carries the labels."""
    needs_mediapipe()
    report = report_for(CLASSES, 1, [0.5], [0.25], {"device": "phone"})
    path, spec, card = deploy(tflites["nchw"], tmp_path / "deploy", report, litert_choice())
    assert spec["layout"] == "NCHW" and spec["shape"] == [1, 1, SIZE, SIZE]
    assert f"cannot take it: its input is float32 NCHW [1, 1, {SIZE}, {SIZE}]" in card

    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(tmp_path / "picture.png")
    refused = run_in_mediapipe(CLASSIFY, str(path), str(tmp_path / "picture.png"))
    assert "Expected ImageProperties" in refused["error"]  # the metadata says tensor; as an image: "depth = 3 or 4"
    written = run_in_mediapipe(READ, str(path))
    assert written["labels"] == CLASSES
    tensor = written["metadata"]["subgraph_metadata"][0]["input_tensor_metadata"][0]
    assert "image_properties" not in json.dumps(tensor) and "NCHW" in tensor["description"]
    x = np.random.default_rng(1).normal(size=(1, 1, SIZE, SIZE)).astype(np.float32)
    assert np.array_equal(litert_logits(path, x), litert_logits(tflites["nchw"], x))  # the same model inside


def test_without_the_mediapipe_environment_the_card_says_the_tflite_has_no_metadata(tflites, tmp_path, monkeypatch):
    monkeypatch.setenv("MANIFOLD_EDGE_MEDIAPIPE_PYTHON", str(tmp_path / "missing" / "python"))
    report = report_for(CLASSES, 1, [0.5], [0.25], {"device": "phone"})
    path, _, card = deploy(tflites["nchw"], tmp_path / "deploy", report, litert_choice())
    assert "TFLite metadata: none (no MediaPipe environment here" in card
    assert path.read_bytes() == tflites["nchw"].read_bytes()


def runtime_io(runtime: str, path: Path) -> tuple[list, list]:
    """(name, shape, dtype) of the inputs and outputs as the runtime itself loads the file."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path))
        kind = {"tensor(float)": "float32"}
        return ([(i.name, i.shape, kind[i.type]) for i in session.get_inputs()],
                [(o.name, o.shape, kind[o.type]) for o in session.get_outputs()])
    if runtime == "openvino":
        import openvino as ov

        model = ov.Core().compile_model(str(path), "CPU")
        return ([(p.get_any_name(), [d.get_length() if d.is_static else None for d in p.get_partial_shape()],
                  p.get_element_type().to_dtype().name) for p in ports] for ports in (model.inputs, model.outputs))
    if runtime == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path))
        return ([(d["name"], d["shape"].tolist(), np.dtype(d["dtype"]).name) for d in details]
                for details in (interpreter.get_input_details(), interpreter.get_output_details()))
    from targets.executorch_runner import ExecuTorchRunner

    runner = ExecuTorchRunner(path)
    images = np.zeros((runner.max_batch, *runner.image_shape), np.float32)
    return [("input 0", [runner.max_batch, *runner.image_shape], "float32")], \
        [("output 0", list(runner(images).shape), "float32")]


def test_every_artifact_of_a_run_gets_its_own_inputs_outputs_and_card(trained_run, tmp_path):
    """Each export and quantize artifact of the shared run, deployed for a target of its runtime: preprocess.json
    lists the inputs and outputs the runtime loads (Core ML: the package's image input and class outputs, with no
    mean/std to apply), and the card names the runtime's version from report.json, the backend and the OS."""
    report = read_report(trained_run)
    targets = {"onnxruntime": "android-phone", "executorch": "android-phone", "litert": "android-phone",
               "openvino": "x86-laptop", "coreml": "apple-watch"}
    seen = set()
    for stage in ("export", "quantize"):
        for artifact, record in report["stages"][stage]["summary"]["artifacts"].items():
            runtime = record["runtime"]
            out = tmp_path / artifact
            out.mkdir()
            files = []
            for source in model_files(report, artifact):
                (shutil.copytree if source.is_dir() else shutil.copy2)(source, out / source.name)
                files.append(source.name)
            choice = {**litert_choice(artifact), "target": targets[runtime], "runtime": runtime,
                      "precision": record["precision"]}
            write_app_files(report, choice, out, files)
            spec = json.loads((out / "preprocess.json").read_text())
            card = (out / "MODEL_CARD.md").read_text()
            assert (out / "labels.txt").read_text().splitlines() == report["stages"]["data"]["summary"]["classes"]
            version = report["run"]["versions"][{"coreml": "coremltools", "litert": "ai-edge-litert"}.get(
                runtime, runtime)]
            assert version and version in card.splitlines()[2], (artifact, card)
            if runtime == "coreml":
                assert spec["inputs"] == [{"name": "image", "type": "image", "color": "GRAYSCALE", "width": 32,
                                           "height": 32}]
                assert [o["name"] for o in spec["outputs"]] == ["classLabel", "classLabel_probs"]
                assert "mean" not in spec and spec["formula"].startswith("none: pass pixels 0-255")
                assert "compute units: CPU_ONLY" in card and "Minimum OS: watchOS 10 (" in card
            else:
                inputs, outputs = runtime_io(runtime, out / record["file"])
                assert [(i["name"], i["shape"], i["dtype"]) for i in spec["inputs"]] == inputs, artifact
                assert [(o["name"], o["shape"], o["dtype"]) for o in spec["outputs"]] == outputs, artifact
                assert spec["mean"] == report["stages"]["data"]["summary"]["mean"] and spec["layout"] == "NCHW"
                needs = {"executorch": "XNNPACK backend linked", "litert": "XNNPACK delegate",
                         "openvino": "CPU plugin", "onnxruntime": "CPUExecutionProvider"}[runtime]
                assert needs in card and "Minimum OS: not stated" in card
            if record.get("mobile"):
                assert f"{record['mobile']['file']} is the same model for ONNX Runtime Mobile" in card
            if record["numerics"]["scheme"] in ("static", "dynamic"):  # INT8 ops as read back, the rest float
                assert all(f"{op} x{n}" in card for op, n in record["op_types"].items()), card
                assert ("attention matmuls in float" in card) == bool(record.get("float_attention_matmuls"))
            else:
                assert "mixed precision" not in card
            seen.add(runtime)
    assert seen == set(targets)
