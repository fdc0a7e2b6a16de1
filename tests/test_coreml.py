"""Core ML packages, checked as far as Linux allows: spec, op set, compressed weights, and accuracy
simulated from the package's own weights. Prediction through Core ML itself runs only on macOS."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import artifact_folder, read_report
from pipeline.config import load_config
from pipeline.errors import UserError
from stages.batches import load_dataset
from stages.export import export_coreml
from stages.models import load_model
from targets.coreml import IS_MACOS, CoreMLRunner, CoreMLSimulatedRunner, coremltools, inspect_package, read_weights


@pytest.fixture(scope="module")
def packages(trained_run):
    export, quantize = artifact_folder(trained_run, "export"), artifact_folder(trained_run, "quantize")
    return {"fp16": export / "model.mlpackage", "int8": quantize / "model_int8.mlpackage",
            "palettize6": quantize / "model_palettize6.mlpackage",
            "palettize4": quantize / "model_palettize4.mlpackage"}


def test_package_spec_metadata_and_op_set(trained_run, packages):
    coreml = json.loads((artifact_folder(trained_run, "export") / "export.json").read_text())["artifacts"]["coreml"]
    package = coreml["package"]
    assert package["target"] == "iOS17" and package["specification_version"] >= 8
    assert package["unsupported_ops"] == []
    assert package["op_counts"]["classify"] == 1  # class labels attached
    meta = package["metadata"]
    spec = json.loads(meta["manifold_edge.model"])
    assert spec["classes"][0] == "T-shirt/top" and meta["manifold_edge.precision"] == "fp16"
    assert meta["manifold_edge.artifact_key"]
    assert coreml["parity"]["evaluation"] == ("measured" if IS_MACOS else "simulated")
    assert coreml["parity"]["max_abs_diff"] < 0.05 and coreml["parity"]["argmax_agreement"] >= 0.99
    sizes = {name: inspect_package(path, "iOS17")["bytes"] for name, path in packages.items()}
    assert sizes["fp16"] > sizes["int8"] > sizes["palettize6"] > sizes["palettize4"]


def test_int8_weights_stay_within_half_a_quantization_step(packages):
    original, compressed = read_weights(packages["fp16"]), read_weights(packages["int8"])
    large = sum(w.size >= 2048 for w in original.values())  # the variants' weight_threshold
    assert large >= 4
    assert inspect_package(packages["int8"], "iOS17")["compressed_weights"] == {"int8 affine": large}
    checked = 0
    for name, w in original.items():
        if w.size < 2048:
            continue
        key = next(k for k in compressed if k.startswith(name.removesuffix("_to_fp16")))
        rows = w.reshape(w.shape[0], -1).astype(np.float64)
        step = np.abs(rows).max(axis=1, keepdims=True) / 127  # symmetric, per output channel
        error = np.abs(compressed[key].reshape(rows.shape) - rows)
        assert (error <= step / 2 * 1.01 + 1e-3).all(), name
        assert not np.array_equal(compressed[key], w)  # it really was quantized
        checked += 1
    assert checked == large


@pytest.mark.parametrize("variant, bits", [("palettize6", 6), ("palettize4", 4)])
def test_palettized_weights_take_the_nearest_palette_entry(packages, variant, bits):
    original, compressed = read_weights(packages["fp16"]), read_weights(packages[variant])
    large = sum(w.size >= 2048 for w in original.values())
    assert inspect_package(packages[variant], "iOS17")["compressed_weights"] == {f"{bits}-bit palette": large}
    for name, w in original.items():
        if w.size < 2048:
            continue
        key = next(k for k in compressed if k.startswith(name.removesuffix("_to_fp16")))
        palette = np.unique(compressed[key].astype(np.float64))  # np.unique on these float16 arrays repeated values
        assert len(palette) <= 2 ** bits
        flat = w.astype(np.float64).ravel()
        nearest = np.abs(flat[:, None] - palette[None, :]).min(axis=1)
        error = np.abs(flat - compressed[key].astype(np.float64).ravel())
        assert (error <= nearest + 2e-3 * np.abs(flat).max()).all(), name


def test_simulated_result_comes_from_the_packages_own_weights(trained_run, packages, tmp_path):
    """Change one weight inside model.mlpackage's weight file: the simulated logits must follow."""
    data = load_dataset(artifact_folder(trained_run, "data"))
    images, _ = data.val.head(64)
    tampered = tmp_path / "model.mlpackage"
    shutil.copytree(packages["fp16"], tampered)
    head = next(w for name, w in read_weights(tampered).items() if name.startswith("model_head_weight"))
    blob = next(tampered.rglob("weight.bin"))
    raw = blob.read_bytes()
    offset = raw.find(head.astype(np.float16).tobytes())
    assert offset > 0
    blob.write_bytes(raw[:offset] + np.float16(60.0).tobytes() + raw[offset + 2:])
    before = CoreMLSimulatedRunner(packages["fp16"])(images)
    after = CoreMLSimulatedRunner(tampered)(images)
    assert np.abs(after - before)[:, 0].max() > 1.0  # head row 0, column 0: class 0's logit moved
    np.testing.assert_allclose(np.delete(after, 0, axis=1), np.delete(before, 0, axis=1), atol=1e-6)


def test_op_set_check_flags_ops_newer_than_the_target(trained_run, tmp_path):
    """An iOS18 package fuses attention into scaled_dot_product_attention, which iOS17 lacks.
    (Converted with a tensor input and fp32 precision, the other two choices.)"""
    model, record = load_model(artifact_folder(trained_run, "distill") / "model.pt")
    meta = json.loads((artifact_folder(trained_run, "data") / "meta.json").read_text())
    cfg = load_config(None, ["export.coreml.target='iOS18'", "export.coreml.input='tensor'",
                             "export.coreml.precision='fp32'", "quantize.coreml.enabled=false"]).export.coreml
    package = tmp_path / "m18.mlpackage"
    export_coreml(model, record, meta, cfg, package, key="test")
    assert inspect_package(package, "iOS18")["unsupported_ops"] == []
    assert "scaled_dot_product_attention" in inspect_package(package, "iOS17")["unsupported_ops"]
    spec = coremltools().models.MLModel(str(package), skip_model_load=True).get_spec()
    assert spec.description.input[0].type.WhichOneof("Type") == "multiArrayType"
    images, _ = load_dataset(artifact_folder(trained_run, "data")).val.head(32)
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy()
    assert np.abs(CoreMLSimulatedRunner(package)(images) - reference).max() < 1e-3  # fp32: near exact


def test_coreml_config_errors():
    with pytest.raises(UserError, match="nbits: got 5, but input should be 1, 2, 3, 4, 6 or 8"):
        load_config(None, ["quantize.coreml.variants=[{name='p', kind='palettize', nbits=5}]"])
    with pytest.raises(UserError, match="per_block / per_grouped_channel need export.coreml.target iOS18"):
        load_config(None, ["quantize.coreml.variants=[{name='b', kind='linear', granularity='per_block'}]"])
    with pytest.raises(UserError, match="quantize.coreml.enabled needs export.coreml.enabled"):
        load_config(None, ["export.coreml.enabled=false"])


def test_report_labels_core_ml_rows(trained_run):
    rows = [r for r in read_report(trained_run)["evaluation"]["artifacts"] if r["runtime"] == "coreml"]
    assert len(rows) == 4 and {r["evaluation"] for r in rows} == {"measured" if IS_MACOS else "simulated"}
    assert all(abs(r["delta_top1"]) <= 5.0 for r in rows)
    if not IS_MACOS:
        assert "Core ML prediction needs macOS" in (trained_run / "runs" / "default" / "report.md").read_text()


@pytest.mark.skipif(not IS_MACOS, reason="Core ML prediction needs macOS (coremltools cannot predict on Linux)")
def test_core_ml_prediction_matches_the_simulation_on_macos(trained_run, packages):
    images, _ = load_dataset(artifact_folder(trained_run, "data")).val.head(32)
    measured = CoreMLRunner(packages["fp16"])(images)
    simulated = CoreMLSimulatedRunner(packages["fp16"])(images)
    assert (measured.argmax(1) == simulated.argmax(1)).mean() >= 0.95
