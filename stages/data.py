"""Data stage: load a dataset, make the deterministic train/val/test split, store it as uint8 arrays.

Sources: Fashion-MNIST IDX files (configured path, the Debian package's folder, a download cache,
then the official mirror), scikit-learn's digits, or an ImageFolder tree of class folders (read by
stages/imagefolder.py).
"""
from __future__ import annotations

import gzip
import logging
import os
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline.core.errors import UserError, clip, quote
from pipeline.core.fileio import atomic_write, write_json
from pipeline.core.section import Section, not_in_key
from pipeline.core.stage import Stage, StageContext
from stages.imagefolder import Split, check_images, imagefolder_layout, load_imagefolder

log = logging.getLogger(__name__)

FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


class DataConfig(Section):
    dataset: Literal["fashion-mnist", "digits", "imagefolder"] = Field(
        "fashion-mnist", description="digits: scikit-learn's 8x8 digits; imagefolder: one folder per class "
                                     "under path (with path/train/ and path/test/, those are the splits)")
    path: str | None = Field(None, description="IDX folder (fashion-mnist) or class folders (imagefolder)")
    url: str = not_in_key("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                          "mirror to download fashion-mnist from when no local copy exists")
    cache_dir: str = not_in_key("~/.cache/manifold-edge/datasets", "where downloads are kept")
    img_size: int = Field(32, ge=4, le=1024, description="images are resized to img_size x img_size")
    channels: Literal[1, 3] = Field(1, description="1 (grayscale) or 3 (RGB): images are converted")
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="share of the training split held out")
    test_fraction: float = Field(0.2, gt=0, lt=0.5,
                                 description="test share, for datasets without an official test split")
    subset: int = Field(0, ge=0, description="use at most this many images of the training data, "
                                             "val included (0 = all)")
    test_subset: int = Field(0, ge=0, description="use at most this many test images (0 = all)")
    mean: list[float] | None = Field(None, description="per-channel mean; default: from the train split")
    std: list[float] | None = Field(None, description="per-channel std; default: from the train split")
    augment_shift: int = Field(2, ge=0, le=16, description="random translation in pixels (training)")
    augment_flip: bool = Field(True, description="random horizontal flip (training)")
    allow_class_mismatch: bool = Field(False, description="imagefolder: let train/ and test/ hold different "
                                       "class folders, or empty ones, with a warning and a report note instead "
                                       "of an error (empty training classes and classes only in test/ are left "
                                       "out; a class missing from test/ is trained but not tested)")

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.channels:
                raise ValueError(f"data.{name} needs {self.channels} value(s), one per channel; got {value}")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"data.std must be positive; got {self.std}")
        if self.dataset == "imagefolder" and not self.path:
            raise ValueError("data.path is required for dataset = 'imagefolder' (a folder of class folders)")
        return self


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file: a big-endian header giving the dimensions, then uint8 data."""
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # a cut-off or damaged download
        raise UserError(f"{path}: damaged gzip file ({exc}): replace it with a complete copy") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path}: not a uint8 IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(int)
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UserError(f"{path}: truncated IDX file ({data.size} bytes of data for shape {tuple(dims)})")
    return data.reshape(dims)


def idx_shape(path: Path) -> tuple[int, ...]:
    """The shape an IDX file's header gives, checked against the file's length without reading its data: a .gz
    file's length is in its gzip trailer (decompressed in full only when the trailer disagrees, to tell a
    truncated download from a file gzipped in several members). UserError naming the file and what is wrong."""
    name = clip(repr(str(path)), 160)
    try:
        with (gzip.open(path) if path.suffix == ".gz" else open(path, "rb")) as fh:
            head = fh.read(4)
            if len(head) < 4 or head[:3] != b"\x00\x00\x08":
                raise UserError(f"{name}: not a uint8 IDX file (it starts {head!r}): replace it with the "
                                "dataset's file")
            dims = fh.read(4 * head[3])
    except (EOFError, OSError, zlib.error) as exc:
        raise UserError(f"{name}: damaged gzip file ({' '.join(str(exc).split())[:100]}): replace it with a "
                        "complete copy") from None
    if len(dims) < 4 * head[3]:
        raise UserError(f"{name}: truncated IDX file (it ends inside its header): replace it with a complete copy")
    shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
    expected = 4 + len(dims) + int(np.prod(shape, dtype=np.int64))
    if path.suffix != ".gz":
        size = path.stat().st_size
    else:
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            size = int.from_bytes(fh.read(4), "little")  # ISIZE: the length modulo 2**32
        if size != expected % 2**32:
            try:
                with gzip.open(path) as fh:
                    size = sum(len(block) for block in iter(lambda: fh.read(1 << 22), b""))
            except (EOFError, OSError, zlib.error):
                size = -1  # cut off inside the compressed stream
    if size != expected:
        got = "cut off inside its compressed data" if size < 0 else f"{size - 4 - len(dims):,} bytes of data"
        raise UserError(f"{name}: truncated IDX file ({got}; its header gives shape {shape}, "
                        f"{expected - 4 - len(dims):,} bytes): replace it with a complete copy")
    return shape


def check_fashion_mnist(folder: Path, field: str) -> None:
    """The four IDX files: each as long as its header says, and as many labels as images in each split; a
    UserError starts with `field`."""
    try:
        shapes = {key: idx_shape(folder / name) for key, name in FASHION_FILES.items()}
    except UserError as exc:
        raise UserError(f"{field}: {exc}") from None
    for split_name in ("train", "test"):
        images, labels = shapes[f"{split_name}_images"], shapes[f"{split_name}_labels"]
        if len(images) != 3 or len(labels) != 1 or images[0] != labels[0]:
            image_file, label_file = FASHION_FILES[f"{split_name}_images"], FASHION_FILES[f"{split_name}_labels"]
            raise UserError(f"{field}: {clip(repr(str(folder)), 160)}: {image_file} has shape {images} and "
                            f"{label_file} {labels}: expected N x H x W images and N labels; replace them with the "
                            "dataset's files")


def local_fashion_mnist(cfg: DataConfig) -> Path | None:
    """The folder the data stage will read Fashion-MNIST from without downloading, or None (it downloads)."""
    if cfg.path:
        return fashion_mnist_dir(cfg)
    cache = Path(cfg.cache_dir).expanduser() / "fashion-mnist"
    return next((f for f in (DEBIAN_FASHION_DIR, cache) if all((f / n).is_file() for n in FASHION_FILES.values())),
                None)


def fashion_mnist_dir(cfg: DataConfig) -> Path:
    """data.path when set; else the Debian package's folder, the download cache, then the mirror."""
    def complete(folder: Path) -> bool:
        return all((folder / name).is_file() for name in FASHION_FILES.values())

    if cfg.path:
        folder = Path(cfg.path).expanduser()
        if not complete(folder):
            raise UserError(f"data.path = {quote(cfg.path)} does not hold the four Fashion-MNIST IDX files "
                            f"({', '.join(FASHION_FILES.values())})")
        return folder
    cache = Path(cfg.cache_dir).expanduser() / "fashion-mnist"
    for folder in (DEBIAN_FASHION_DIR, cache):
        if complete(folder):
            return folder
    for name in FASHION_FILES.values():
        if (cache / name).is_file():
            continue
        url = cfg.url.rstrip("/") + "/" + name
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                payload = response.read()
        except (urllib.error.URLError, OSError) as exc:
            raise UserError(f"Fashion-MNIST not found locally and the download of {url} failed ({exc}). "
                            "Install it with `apt-get install dataset-fashion-mnist`, or set data.path "
                            "to a folder with the four IDX .gz files") from None
        atomic_write(cache / name, lambda tmp, data=payload: tmp.write_bytes(data))
    return cache


def load_fashion_mnist(cfg: DataConfig) -> tuple[Split, Split | None, list[str]]:
    folder = fashion_mnist_dir(cfg)
    arrays = {key: read_idx(folder / name) for key, name in FASHION_FILES.items()}
    train = (arrays["train_images"], arrays["train_labels"].astype(np.int64))
    test = (arrays["test_images"], arrays["test_labels"].astype(np.int64))
    return train, test, FASHION_CLASSES


def load_digits() -> tuple[Split, Split | None, list[str]]:
    from sklearn.datasets import load_digits as sk_digits

    digits = sk_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    return (images, digits.target.astype(np.int64)), None, [str(i) for i in range(10)]


def class_count(cfg: DataConfig) -> int:
    """How many classes the data stage will find (the models' num_classes), known before it runs."""
    if cfg.dataset == "imagefolder":
        return len(imagefolder_layout(cfg.path, cfg.allow_class_mismatch)[2])
    return len(FASHION_CLASSES)


def to_nchw(images: np.ndarray, channels: int, size: int) -> np.ndarray:
    """uint8 N x H x W (x C) -> uint8 N x C x size x size, converting channels and resizing."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.require(images, requirements=["C", "W"]))  # copies only a read-only array
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if x.shape[1] != channels:
        x = x.float().mean(1, keepdim=True) if channels == 1 else x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).contiguous().numpy()


def validation_count(images: int, fraction: float) -> int:
    """How many of the training images the validation split takes (at least one)."""
    return max(1, round(images * fraction))


def split(train: Split, test: Split | None, cfg: DataConfig, seed: int) -> dict[str, Split]:
    rng = np.random.default_rng(seed)
    images, labels = train
    order = rng.permutation(len(labels))
    if test is None:
        n_test = max(1, round(len(order) * cfg.test_fraction))
        test = (images[order[:n_test]], labels[order[:n_test]])
        order = order[n_test:]
    if cfg.subset:
        order = order[: cfg.subset]
    n_val = validation_count(len(order), cfg.val_fraction)
    val_idx, train_idx = order[:n_val], order[n_val:]
    test_images, test_labels = test
    if cfg.test_subset and cfg.test_subset < len(test_labels):
        keep = np.sort(rng.permutation(len(test_labels))[: cfg.test_subset])
        test_images, test_labels = test_images[keep], test_labels[keep]
    return {"train": (images[train_idx], labels[train_idx]), "val": (images[val_idx], labels[val_idx]),
            "test": (test_images, test_labels)}


class DataStage(Stage):
    name = "data"
    sections = ("data",)

    @classmethod
    def check(cls, cfg, world_size: int) -> None:
        subset = cfg.data.subset
        if subset and subset - validation_count(subset, cfg.data.val_fraction) < 1:
            raise UserError(f"data.subset = {subset} leaves no training images once the validation split "
                            f"(data.val_fraction = {cfg.data.val_fraction:g}, at least 1 image) is taken: use "
                            "data.subset >= 2, or 0 for all images")
        if cfg.data.dataset == "imagefolder":
            imagefolder_layout(cfg.data.path, cfg.data.allow_class_mismatch)
        elif cfg.data.dataset == "fashion-mnist" and cfg.data.path:
            fashion_mnist_dir(cfg.data)  # with data.path set: only checks the four files are there

    @classmethod
    def check_files(cls, cfg) -> None:
        if cfg.data.dataset == "imagefolder":
            check_images(cfg.data.path, cfg.data.allow_class_mismatch)
        elif cfg.data.dataset == "fashion-mnist":
            folder = local_fashion_mnist(cfg.data)
            if folder is not None:  # else the stage downloads it (and read_idx checks what arrives)
                check_fashion_mnist(folder, "data.path" if cfg.data.path else "data (the local Fashion-MNIST copy)")

    def run(self, ctx: StageContext) -> dict:
        cfg: DataConfig = ctx.config["data"]
        notes = []
        if cfg.dataset == "fashion-mnist":
            train, test, classes = load_fashion_mnist(cfg)
        elif cfg.dataset == "digits":
            train, test, classes = load_digits()
        else:
            train, test, classes, notes = load_imagefolder(cfg.path, cfg.allow_class_mismatch, cfg.channels,
                                                           cfg.img_size)
        for note in notes:
            log.warning(f"note: {note}")
        splits = split(train, test, cfg, ctx.seed)
        arrays = {}
        for name, (images, labels) in splits.items():
            arrays[f"x_{name}"] = to_nchw(images, cfg.channels, cfg.img_size)
            arrays[f"y_{name}"] = labels
        train_float = arrays["x_train"].astype(np.float32) / 255
        mean = cfg.mean or train_float.mean(axis=(0, 2, 3)).round(4).tolist()
        std = cfg.std or train_float.std(axis=(0, 2, 3)).round(4).tolist()
        def save(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

        atomic_write(ctx.out / "data.npz", save)
        meta = {"dataset": cfg.dataset, "classes": classes, "num_classes": len(classes),
                "channels": cfg.channels, "img_size": cfg.img_size, "mean": mean, "std": std,
                "sizes": {name: int(len(labels)) for name, (_, labels) in splits.items()},
                **({"notes": notes} if notes else {})}
        write_json(ctx.out / "meta.json", meta)
        log.info(f"{cfg.dataset}: " + ", ".join(f"{k} {v}" for k, v in meta["sizes"].items())
                 + f" images, {len(classes)} classes, {cfg.channels}x{cfg.img_size}x{cfg.img_size}")
        return meta
