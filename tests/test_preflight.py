"""Inputs that used to fail only after `[1/7] data: running` (issue 34 §4) are checked before any stage: a teacher
checkpoint of another model, an overrides.num_classes the data contradicts, unreadable images of an image
folder, a truncated IDX file, run.device = 'cuda' without a GPU. Each is one `error:` line naming the field,
exit 2, no traceback, and nothing under run.output_dir (not even the folder)."""
from __future__ import annotations

import gzip
import io
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from conftest import TINY
from pipeline.api import prepare
from pipeline.cli import main
from pipeline.config import load_config
from stages.data import FASHION_FILES

TEACHER = {"embed_dim": 32, "depth": 2, "num_heads": 2}  # TINY's teacher, for checkpoints that fit it or not


def _args(tmp_path: Path, *overrides: str, dataset: str = "digits") -> list[str]:
    config = tmp_path / "pipeline.toml"
    config.write_text("")
    data = {"digits": ["data.dataset='digits'"],
            "imagefolder": ["data.dataset='imagefolder'", f"data.path='{tmp_path / 'images'}'", "data.img_size=16"],
            "fashion-mnist": [f"data.path='{tmp_path / 'fashion'}'"]}[dataset]
    items = [f"run.output_dir='{tmp_path / 'runs'}'", "run.threads=2", *TINY, *data, *overrides]
    return ["run", "--config", str(config), *(a for item in items for a in ("--set", item))]


def _fails_before_anything(tmp_path: Path, capsys, args: list[str], fragment: str) -> str:
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert fragment in err, err
    assert "Traceback" not in captured.err + captured.out and "data: running" not in captured.err + captured.out
    assert not (tmp_path / "runs").exists(), sorted(str(p) for p in (tmp_path / "runs").rglob("*"))
    return err


# --- the teacher's checkpoint and the models' class count ------------------------------------------------------

def _checkpoint(tmp_path: Path, kind: str) -> Path:
    file = tmp_path / f"{kind}.pt"
    data = {"in_chans": 1, "num_classes": 10, "img_size": 32}
    if kind == "list":
        torch.save([1, 2, 3], file)
    elif kind == "text":
        file.write_text("not a checkpoint\n")
    else:
        name, kwargs = {
            "fits": ("convstem_vit_small", {**TEACHER, **data}),
            "architecture": ("vit_tiny_patch16_224", {**TEACHER, **data, "patch_size": 8}),
            "classes": ("convstem_vit_small", {**TEACHER, **data, "num_classes": 5}),
            "channels": ("convstem_vit_small", {**TEACHER, **data, "in_chans": 3}),
        }[kind]
        state = timm.create_model(name, **kwargs).state_dict()
        torch.save({"model": state, "epoch": 3} if kind == "fits" else state, file)
    return file


@pytest.mark.parametrize("kind, fragment", [
    ("architecture", "does not fit teacher.model: tensor 'patch_embed.proj.0.weight' (32, 1, 3, 3) is missing"),
    ("classes", "does not fit teacher.model: tensor 'head.weight' is (5, 32), the model needs (10, 32)"),
    ("channels", "tensor 'patch_embed.proj.0.weight' is (32, 3, 3, 3), the model needs (32, 1, 3, 3)"),
    ("list", "holds no state dict (a list)"),
    ("text", "is not a torch checkpoint (weights-only loading refused it: Unsupported operand 110)"),
])
def test_a_teacher_checkpoint_that_does_not_fit_stops_before_the_data_stage(tmp_path, capsys, kind, fragment):
    file = _checkpoint(tmp_path, kind)
    err = _fails_before_anything(tmp_path, capsys, _args(tmp_path, f"teacher.checkpoint='{file}'"), fragment)
    assert f"teacher.checkpoint = '{file}'" in err


def test_a_fitting_checkpoint_passes_the_preflight_which_writes_nothing(tmp_path):
    file = _checkpoint(tmp_path, "fits")
    cfg = load_config(None, [f"run.output_dir='{tmp_path / 'runs'}'", *TINY, "data.dataset='digits'",
                             f"teacher.checkpoint='{file}'"])
    prepare(cfg, None, None, None)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override, fragment", [
    ("teacher.overrides.num_classes=5", "teacher.overrides.num_classes = 5 contradicts the data (num_classes = 10)"),
    ("student.overrides.num_classes=5", "student.overrides.num_classes = 5 contradicts the data (num_classes = 10)"),
])
def test_a_class_count_the_data_contradicts_stops_before_the_data_stage(tmp_path, capsys, override, fragment):
    _fails_before_anything(tmp_path, capsys, _args(tmp_path, override), fragment)


def test_an_imagefolder_class_count_is_known_before_the_data_stage(tmp_path, capsys):
    _images(tmp_path)  # two classes
    _fails_before_anything(tmp_path, capsys, _args(tmp_path, "teacher.overrides.num_classes=10", dataset="imagefolder"),
                           "teacher.overrides.num_classes = 10 contradicts the data (num_classes = 2)")


# --- unreadable images -----------------------------------------------------------------------------------------

def _images(tmp_path: Path) -> Path:
    """images/train|test/cat|dog with three 8x8 PNGs each."""
    root = tmp_path / "images"
    for split in ("train", "test"):
        for label, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((8, 8), 60 * label + 20 * i, np.uint8)).save(root / split / name / f"{i}.png")
    return root


def _encoded(fmt: str, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def _bad_crc() -> bytes:
    png = bytearray(_encoded("PNG"))
    at = png.index(b"IDAT")
    length = struct.unpack(">I", png[at - 4:at])[0]
    png[at + 4 + length] ^= 0xFF  # the chunk's CRC
    return bytes(png)


def _write(path: Path, kind: str) -> None:
    if kind == "folder":
        path.mkdir()
    elif kind == "dangling link":
        path.symlink_to(path.parent / "nowhere.png")
    elif kind in ("bomb", "bomb warning"):  # over twice Image.MAX_IMAGE_PIXELS (1000 here), or over it
        Image.new("L", (100, 100) if kind == "bomb" else (40, 40)).save(path)
    else:
        path.write_bytes({
            "truncated png": _encoded("PNG")[:60],
            "png without its end": _encoded("PNG")[:-12],
            "truncated jpeg": _encoded("JPEG", 64)[:-200],
            "bad crc": _bad_crc(),
            "text": b"this is not an image\n",
            "empty": b"",
            "truncated gif": _encoded("GIF", 64)[:-30],
        }[kind])


@pytest.mark.parametrize("name, kind, fragment", [
    ("train/dog/bad.png", "truncated png", "cannot be read"),
    ("train/dog/bad.png", "png without its end", "cannot be read (truncated PNG file)"),
    ("train/dog/bad.jpg", "truncated jpeg", "cannot be read (image file is truncated"),
    ("train/dog/bad.png", "bad crc", "cannot be read (broken PNG file (bad header checksum in b'IDAT'))"),
    ("train/dog/bad.jpg", "text", "is not an image Pillow can read (21 bytes)"),
    ("test/cat/bad.png", "empty", "is empty (0 bytes)"),
    ("train/dog/bad.png", "bomb", "has more pixels than Pillow reads safely (1,000)"),
    ("train/dog/bad.png", "bomb warning", "has more pixels than Pillow reads safely (1,000)"),
    ("train/dog/x.png", "folder", "is a folder, not an image"),
    ("train/dog/bad.png", "dangling link", "cannot be read (No such file or directory)"),
    ("train/dog/bad.gif", "truncated gif", "cannot be read"),
    ("train/dog/line\nbreak.png", "truncated png", "line\\nbreak.png' cannot be read"),
])
def test_an_unreadable_image_stops_before_the_data_stage(tmp_path, capsys, monkeypatch, name, kind, fragment):
    _images(tmp_path)
    if kind.startswith("bomb"):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    _write(tmp_path / "images" / name, kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = _fails_before_anything(tmp_path, capsys, _args(tmp_path, dataset="imagefolder"), fragment)
    assert err.startswith("error: data.path: image ") and name.split("/")[-1].split("\n")[-1] in err
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_a_class_folder_with_a_line_break_in_its_name_is_one_line(tmp_path, capsys):
    root = _images(tmp_path)
    for split in ("train", "test"):
        (root / split / "dog").rename(root / split / "do\ng")
    _fails_before_anything(tmp_path, capsys, _args(tmp_path, dataset="imagefolder"),
                           "data.path: class folder 'do\\ng' in ")


@pytest.mark.parametrize("target", ["loop", "missing"])
def test_a_class_folder_link_that_leads_nowhere_is_one_line(tmp_path, capsys, target):
    """A link in place of a class folder that loops to itself or points at nothing (it was silently skipped)."""
    root = _images(tmp_path)
    (root / "train" / "loop").symlink_to(target)
    _fails_before_anything(tmp_path, capsys, _args(tmp_path, dataset="imagefolder"),
                           "train/loop is a link that leads nowhere (a loop or a missing target)")


def test_the_image_check_is_skipped_when_the_data_artifact_is_reused_and_redone_when_forced(tmp_path, capsys):
    """The check reads every image: it runs only when the data stage will (a stored dataset is not read again)."""
    _images(tmp_path)
    args = [*_args(tmp_path, dataset="imagefolder"), "--until", "data"]
    assert main(args) == 0
    _write(tmp_path / "images" / "train" / "dog" / "bad.png", "truncated png")
    capsys.readouterr()
    assert main(args) == 0 and "data: reused" in capsys.readouterr().err
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "runs").rglob("*"))
    assert main([*args, "--force", "data"]) == 2
    assert "bad.png cannot be read" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "runs").rglob("*")) == before


# --- Fashion-MNIST's IDX files -----------------------------------------------------------------------------------

def _fashion(tmp_path: Path, n: int = 20) -> Path:
    folder = tmp_path / "fashion"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for key, name in FASHION_FILES.items():
        array = rng.integers(0, 10 if "labels" in key else 256, (n, 28, 28) if key.endswith("images") else (n,))
        header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
        with gzip.open(folder / name, "wb") as fh:
            fh.write(header + array.astype(np.uint8).tobytes())
    return folder


@pytest.mark.parametrize("damage, fragment", [
    ("data cut", "train-images-idx3-ubyte.gz': truncated IDX file (15,000 bytes of data; its header gives shape "
                 "(20, 28, 28), 15,680 bytes)"),
    ("download cut", "t10k-images-idx3-ubyte.gz': truncated IDX file (cut off inside its compressed data"),
    ("header cut", "train-labels-idx1-ubyte.gz': truncated IDX file (it ends inside its header)"),
    ("labels", "train-images-idx3-ubyte.gz has shape (20, 28, 28) and train-labels-idx1-ubyte.gz (19,)"),
])
def test_a_truncated_idx_file_stops_before_the_data_stage(tmp_path, capsys, damage, fragment):
    folder = _fashion(tmp_path)
    if damage == "data cut":
        raw = gzip.decompress((folder / FASHION_FILES["train_images"]).read_bytes())
        (folder / FASHION_FILES["train_images"]).write_bytes(gzip.compress(raw[:16 + 15_000]))
    elif damage == "download cut":
        raw = (folder / FASHION_FILES["test_images"]).read_bytes()
        (folder / FASHION_FILES["test_images"]).write_bytes(raw[: len(raw) // 2])
    elif damage == "header cut":
        (folder / FASHION_FILES["train_labels"]).write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0])))
    else:
        labels = np.zeros(19, np.uint8)
        (folder / FASHION_FILES["train_labels"]).write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 19)
                                                                           + labels.tobytes()))
    err = _fails_before_anything(tmp_path, capsys, _args(tmp_path, dataset="fashion-mnist"), fragment)
    assert err.startswith(f"error: data.path: '{folder}")


# --- the device ------------------------------------------------------------------------------------------------

def test_cuda_without_a_gpu_stops_before_the_data_stage(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _fails_before_anything(tmp_path, capsys, _args(tmp_path, "run.device='cuda'"),
                           "run.device = 'cuda' but torch sees no CUDA GPU: use 'auto' or 'cpu'")
