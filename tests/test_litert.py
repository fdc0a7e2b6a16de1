"""LiteRT backend: export parity with torch, the app's pixel input (RGB 0-255 channels last, converted and
normalised inside), INT8 (dynamic range, full integer with the accuracy fallback), the XNNPACK runner, damaged
files. A tiny ViT trained here for a few seconds on sklearn's digits."""
from __future__ import annotations

import copy
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from backends.litert import export as litert
from backends.litert import quantize as litert_int8
from backends.litert.runner import LiteRTRunner
from conftest import model_with_an_unknown_op, sabotage_attention
from pipeline.core.errors import UserError

N_TRAIN = 1400
MAX_DROP = 1.0  # top-1 points; one of the 397 validation images is 0.25
MEAN, STD = [0.3], [0.4]  # digits()' normalisation


def tiny_vit() -> torch.nn.Module:
    import timm

    torch.manual_seed(0)  # the same initial weights whatever tests ran before (the sabotage test depends on them)
    return timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                             num_classes=10, in_chans=1)


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.nn.functional.interpolate(torch.tensor(data.images, dtype=torch.float32)[:, None] / 16, size=16,
                                             mode="bilinear")
    return ((images - MEAN[0]) / STD[0]).numpy(), data.target


def train(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, epochs: int = 20, batch: int = 64,
          lr: float = 5e-3) -> torch.nn.Module:
    """One thread: a tiny model trains faster so, and steadily on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * (len(x) // batch))
    try:
        for _ in range(epochs):
            order = torch.randperm(len(x))
            for i in range(0, len(x) - batch + 1, batch):
                idx = order[i:i + batch]
                loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                schedule.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    images, labels = digits()
    model = train(tiny_vit(), images[:N_TRAIN], labels[:N_TRAIN])
    folder = tmp_path_factory.mktemp("litert")
    record = litert.export(model, (1, 16, 16), folder / "model.tflite", MEAN, STD)
    return SimpleNamespace(model=model, path=folder / "model.tflite", record=record, train=images[:N_TRAIN],
                           val=images[N_TRAIN:], val_labels=labels[N_TRAIN:])


def test_export_matches_torch_and_runs_in_xnnpack(tiny):
    with torch.no_grad():
        reference = tiny.model(torch.from_numpy(tiny.val)).numpy()
    runner = LiteRTRunner(tiny.path)
    logits = runner(tiny.val)
    assert np.abs(logits - reference).max() < 1e-3
    assert (logits.argmax(1) == reference.argmax(1)).mean() == 1.0
    assert runner.xnnpack_partitions == 1, "XNNPACK should take the whole fp32 graph"
    assert tiny.record["input_shape"] == [1, 16, 16, 3] and runner.app_input == tiny.record["app_input"]
    assert tiny.record["app_input"] == {"layout": "NHWC", "color": "RGB", "pixel_range": [0, 255], "channels": 1,
                                        "mean": MEAN, "std": STD}
    assert tiny.record["op_types"]["FULLY_CONNECTED"] == 9  # qkv, proj, fc1, fc2 per block, and the head
    assert top1(tiny.path, tiny) > 70, \
        "the test model should have learnt the digits"


def run_pixels(path, pixels: np.ndarray) -> np.ndarray:
    """The interpreter on app pixels [1, H, W, 3] as they are, without the runner's conversion."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.set_tensor(source["index"], pixels.astype(np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(target["index"])


def test_the_file_takes_rgb_pixels_and_makes_them_grayscale_and_normalised_inside(tiny):
    """An RGB picture of 0-255 pixels, channels last, as an app has it: the file's logits are torch's on the
    picture made grayscale as PIL's convert("L") does and normalised with the data's mean and std."""
    rgb = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3)).astype(np.float32)
    gray = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    with torch.no_grad():
        reference = tiny.model(torch.from_numpy((gray[:, None] / 255 - MEAN[0]) / STD[0])).numpy()
    logits = np.concatenate([run_pixels(tiny.path, picture[None]) for picture in rgb])
    assert np.abs(logits - reference).max() < 1e-3


def test_rgb_data_is_normalised_per_channel_inside(tmp_path):
    """3-channel data: no grayscale step, and each channel's own mean and std inside the model."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    mean, std = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
    record = litert.export(model, (3, 8, 8), tmp_path / "rgb.tflite", mean, std)
    assert record["input_shape"] == [1, 8, 8, 3] and record["app_input"]["channels"] == 3
    rgb = np.random.default_rng(1).integers(0, 256, (1, 8, 8, 3)).astype(np.float32)
    x = ((rgb / 255 - np.array(mean)) / np.array(std)).transpose(0, 3, 1, 2).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    assert np.abs(run_pixels(tmp_path / "rgb.tflite", rgb) - reference).max() < 1e-4
    assert np.abs(LiteRTRunner(tmp_path / "rgb.tflite")(x) - reference).max() < 1e-4  # normalised in, as callers


def test_runner_batches_equal_per_image_calls(tiny):
    runner = LiteRTRunner(tiny.path)
    one_by_one = np.concatenate([runner(tiny.val[i:i + 1]) for i in range(37)])
    assert runner(tiny.val[:37]).shape == (37, 10)
    assert np.array_equal(runner(tiny.val[:37]), one_by_one)
    assert np.array_equal(runner(tiny.val[:1]), one_by_one[:1])
    assert np.allclose(LiteRTRunner(tiny.path, threads=2)(tiny.val[:37]), one_by_one, atol=1e-5)


def top1(path, tiny) -> float:
    return float(100 * (litert_int8.classes(path, tiny.val) == tiny.val_labels).mean())


def test_dynamic_range_int8_is_smaller_and_within_budget(tiny, tmp_path):
    record = litert_int8.quantize_dynamic(tiny.path, tmp_path / "dynamic.tflite")
    assert record["op_types"]["FULLY_CONNECTED"] == 9
    assert LiteRTRunner(tmp_path / "dynamic.tflite").app_input == tiny.record["app_input"]
    assert (tmp_path / "dynamic.tflite").stat().st_size < 0.7 * tiny.path.stat().st_size
    fp32 = top1(tiny.path, tiny)
    assert fp32 - top1(tmp_path / "dynamic.tflite", tiny) <= MAX_DROP


def test_full_integer_int8_is_smaller_within_budget_and_keeps_float_io(tiny, tmp_path):
    result = litert_int8.quantize_full_integer(tiny.path, tmp_path / "int8.tflite", tiny.train[:100], tiny.val,
                                               tiny.val_labels, MAX_DROP, 4)
    assert result["met"] and result["steps"][-1]["drop"] <= MAX_DROP
    assert result["fp32_top1"] == round(top1(tiny.path, tiny), 3) and result["images"] == len(tiny.val)
    assert sum(result["op_types"].values()) == 10 - len(result["excluded"])  # 9 FC and the patch embedding
    assert (tmp_path / "int8.tflite").stat().st_size < 0.7 * tiny.path.stat().st_size
    runner = LiteRTRunner(tmp_path / "int8.tflite")
    (source,), (target,) = runner.interpreter.get_input_details(), runner.interpreter.get_output_details()
    assert source["dtype"] == target["dtype"] == np.float32 and runner.app_input == tiny.record["app_input"]
    assert runner.xnnpack_partitions == 1, "FC/conv INT8 should not split the XNNPACK graph"


def test_calibration_is_deterministic(tiny, tmp_path):
    files = []
    for name in ("a.tflite", "b.tflite"):
        litert_int8.quantize_static(tiny.path, tmp_path / name, litert_int8.calibrate(tiny.path, tiny.train[:32]))
        files.append((tmp_path / name).read_bytes())
    assert files[0] == files[1]


def test_fallback_keeps_a_sabotaged_layer_in_float(tiny, tmp_path, caplog):
    """The loop must find the attention that sabotage_attention ruined and keep it in float."""
    model = sabotage_attention(copy.deepcopy(tiny.model))
    litert.export(model, (1, 16, 16), tmp_path / "sabotaged.tflite", MEAN, STD)
    caplog.set_level(logging.INFO, logger="backends.fallback")
    result = litert_int8.quantize_full_integer(tmp_path / "sabotaged.tflite", tmp_path / "int8.tflite",
                                               tiny.train[:100], tiny.val, tiny.val_labels, MAX_DROP, 4)
    first, last = result["steps"][0]["drop"], result["steps"][-1]["drop"]
    assert first > MAX_DROP, "the sabotage should have hurt INT8"
    assert result["met"] and last < first
    assert all("Block_0" in node and "Attention_attn" in node for node in result["excluded"])
    scores = [s["relative_mse"] for s in result["sensitivity"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 10  # 9 FC and the patch embedding
    logs = caplog.messages
    assert any("ranking layers" in line for line in logs) and any("Block_0" in line for line in logs)
    assert not (tmp_path / "int8_probe.tflite").exists()


@pytest.mark.parametrize("damage", ["random", "truncated", "header"])
def test_a_damaged_tflite_is_one_line(tiny, tmp_path, damage):
    data = tiny.path.read_bytes()
    bad = {"random": np.random.default_rng(0).bytes(len(data)), "truncated": data[: len(data) // 2],
           "header": data[:4] + b"XXXX" + data[8:]}[damage]
    (tmp_path / "model.tflite").write_bytes(bad)
    with pytest.raises(UserError, match=r"^litert cannot load model.tflite: ") as caught:
        LiteRTRunner(tmp_path / "model.tflite")
    assert "\n" not in str(caught.value)


def test_an_op_litert_cannot_lower_is_one_line_naming_it(tmp_path):
    with pytest.raises(UserError, match=r"^LiteRT conversion failed: .*litert_mystery") as caught:
        litert.export(model_with_an_unknown_op("manifold_edge_test::litert_mystery"), (1, 4, 4),
                      tmp_path / "odd.tflite")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "odd.tflite").exists()
