"""preprocess.json, MODEL_CARD.md and the metadata written into each file (pipeline/app_files.py): the inputs and
outputs as each runtime loads them, and the run's own .tflite taken and classified with by MediaPipe's
ImageClassifier."""
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

from backends.litert.mediapipe import mediapipe_python
from backends.litert.runner import LiteRTRunner
from conftest import artifact_folder, read_report
from pipeline.app_files import write_app_files
from pipeline.deploy import model_files
from stages.batches import load_dataset

SIZE, CLASSES = 16, ["zero", "one", "two, or more"]  # a comma: labels go into the file as they are
LITERT = ("litert", "litert_int8", "litert_int8_dynamic")


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
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


CLASSIFY = """
import json, sys
import numpy as np
import mediapipe as mp
from mediapipe.tasks.python import vision
from mediapipe.tasks.python.core.base_options import BaseOptions
models, pictures = json.loads(sys.argv[1]), np.load(sys.argv[2])
found = {}
try:
    for name, path in models.items():
        options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=path), max_results=-1)
        with vision.ImageClassifier.create_from_options(options) as classifier:
            found[name] = [{c.category_name: c.score for c in classifier.classify(mp.Image(
                image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(p))).classifications[0].categories}
                for p in pictures]
    print(json.dumps(found))
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


def classify(models: dict[str, Path], pictures: np.ndarray, folder: Path) -> dict:
    """MediaPipe's ImageClassifier on each model and each RGB picture (uint8 N x H x W x 3): per model, per picture,
    category name -> score; {"error": ...} when it refuses a model."""
    np.save(folder / "pictures.npy", pictures)
    return run_in_mediapipe(CLASSIFY, json.dumps({k: str(v) for k, v in models.items()}),
                            str(folder / "pictures.npy"))


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
def tensor_tflite(tmp_path_factory) -> Path:
    """A .tflite of a small CNN exported without the data's mean and std: it takes the model's own normalised
    grayscale tensor, channels first, not pixels."""
    from backends.litert import export as litert

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 3)).eval()
    path = tmp_path_factory.mktemp("tflite") / "tensor.tflite"
    litert.export(model, (1, SIZE, SIZE), path)
    return path


def deploy(source: Path, folder: Path, report: dict, choice: dict) -> tuple[Path, dict, str]:
    folder.mkdir()
    shutil.copy2(source, folder / source.name)
    write_app_files(report, choice, folder, [source.name])
    return folder / source.name, json.loads((folder / "preprocess.json").read_text()), \
        (folder / "MODEL_CARD.md").read_text()


def test_mediapipe_image_classifier_takes_the_runs_tflite_files(trained_run, tmp_path):
    """The proof that an app's MediaPipe takes our .tflite: the file the run shipped (deploy/<target>/litert/, its
    metadata written at deploy) and the run's other LiteRT files, deployed the same way, load in ImageClassifier.
    On the run's test pictures as an app has them (RGB, pixels 0-255) it names the top class as LiteRT's argmax
    on the pipeline's normalised images, with LiteRT's logits as scores, and its top-1 is the evaluate stage's."""
    needs_mediapipe()
    report = read_report(trained_run)
    classes = report["stages"]["data"]["summary"]["classes"]
    files = {answer["by_runtime"]["litert"]["artifact"]: trained_run / "runs" / "default" / "deploy" / target / "litert"
             for target, answer in report["ship"].items() if answer["by_runtime"].get("litert", {}).get("artifact")}
    assert files, "the run ships a .tflite"
    for artifact in LITERT:
        if artifact not in files:
            (source,) = model_files(report, artifact)
            deploy(source, tmp_path / artifact, report, {**litert_choice(artifact), "target": "android-phone"})
            files[artifact] = tmp_path / artifact
    models = {}
    for artifact, folder in files.items():
        spec, card = json.loads((folder / "preprocess.json").read_text()), (folder / "MODEL_CARD.md").read_text()
        assert spec["layout"] == "NHWC" and spec["shape"] == [1, 32, 32, 3] and spec["dtype"] == "float32"
        assert spec["color"] == "RGB" and "mean" not in spec and spec["formula"].startswith("none: pass pixels")
        assert "ImageClassifier takes it" in card and "an RGB image input of pixels 0-255" in card, card
        models[artifact] = folder / spec["file"]

    data = load_dataset(artifact_folder(trained_run, "data"))
    pictures = data.test.images.numpy().repeat(3, axis=1).transpose(0, 2, 3, 1)  # grayscale as R = G = B
    found = classify(models, pictures, tmp_path)
    assert "error" not in found, found
    labels = data.test.labels.numpy()
    images = np.concatenate([x.numpy() for x, _ in data.test.iterate(256)])
    top1 = {r["artifact"]: r["top1"] for r in report["evaluation"]["artifacts"]}
    for artifact, path in models.items():
        scores = np.array([[picture[c] for c in classes] for picture in found[artifact]])
        logits = LiteRTRunner(path)(images)
        # MediaPipe 0.10.21 runs its own TFLite, whose dynamic-range kernels differ from ai-edge-litert 2.3.0's
        # (up to 0.03 seen here; on the same pixels ai-edge-litert gives the runner's logits exactly)
        bound = 0.1 if artifact == "litert_int8_dynamic" else 1e-4
        assert np.abs(scores - logits).max() < bound, artifact
        # so the top class can differ only where LiteRT's two best logits are closer than twice that bound
        top_two = np.sort(logits, 1)[:, -2:]
        same = scores.argmax(1) == logits.argmax(1)
        assert (same | (top_two[:, 1] - top_two[:, 0] < 2 * bound)).all(), artifact
        flips = 100 * (~same).mean()
        assert abs(100 * (scores.argmax(1) == labels).mean() - top1[artifact]) <= flips + 1e-6, artifact


def test_a_tflite_of_a_normalised_tensor_gets_its_labels_and_says_what_blocks_mediapipe(tensor_tflite, tmp_path):
    """A .tflite that takes a normalised tensor (exported without the data's mean and std): MediaPipe refuses it
    (as the card says), so its metadata describes the input in words, not as an image, and still carries the
    labels."""
    needs_mediapipe()
    report = report_for(CLASSES, 1, [0.5], [0.25], {"device": "phone"})
    path, spec, card = deploy(tensor_tflite, tmp_path / "deploy", report, litert_choice())
    assert spec["layout"] == "NCHW" and spec["shape"] == [1, 1, SIZE, SIZE] and spec["mean"] == [0.5]
    assert f"cannot take it: its input is a normalised float32 NCHW [1, 1, {SIZE}, {SIZE}] tensor" in card

    refused = classify({"tensor": path}, np.zeros((1, SIZE, SIZE, 3), np.uint8), tmp_path)
    assert "Expected ImageProperties" in refused["error"]  # the metadata says tensor; as an image: "depth = 3 or 4"
    written = run_in_mediapipe(READ, str(path))
    assert written["labels"] == CLASSES
    tensor = written["metadata"]["subgraph_metadata"][0]["input_tensor_metadata"][0]
    assert "image_properties" not in json.dumps(tensor) and "NCHW" in tensor["description"]
    x = np.random.default_rng(1).normal(size=(1, 1, SIZE, SIZE)).astype(np.float32)
    assert np.array_equal(LiteRTRunner(path)(x), LiteRTRunner(tensor_tflite)(x))  # the same model inside


def test_without_the_mediapipe_environment_the_card_says_the_tflite_has_no_metadata(tensor_tflite, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setenv("MANIFOLD_EDGE_MEDIAPIPE_PYTHON", str(tmp_path / "missing" / "python"))
    report = report_for(CLASSES, 1, [0.5], [0.25], {"device": "phone"})
    path, _, card = deploy(tensor_tflite, tmp_path / "deploy", report, litert_choice())
    assert "TFLite metadata: none (no MediaPipe environment here" in card
    assert path.read_bytes() == tensor_tflite.read_bytes()


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
    from backends.executorch.runner import ExecuTorchRunner

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
                if runtime == "litert":  # app pixels in: RGB 0-255, channels last, normalised inside
                    assert spec["layout"] == "NHWC" and "mean" not in spec and spec["formula"].startswith(
                        "none: pass pixels 0-255")
                else:
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
