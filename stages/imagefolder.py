"""ImageFolder datasets (data.dataset = "imagefolder"): one folder of images per class under data.path, or
path/train/<class>/ and path/test/<class>/ as the splits.

imagefolder_layout finds and checks the class folders (every mismatch in one error, or notes with
data.allow_class_mismatch), check_images checks each image with Pillow before the pipeline runs, and
load_imagefolder reads them as uint8 arrays. They take data.path and the fields they need, not the
DataConfig: stages/data.py imports this module.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from pipeline.core.errors import UserError, clip, quote

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

# (images uint8 N x H x W [x C], labels int64) for a split
Split = tuple[np.ndarray, np.ndarray]


def class_folders(root: Path) -> set[str]:
    """The class folder names under `root` (hidden folders left out); a link that leads nowhere (a loop, a
    missing target) is an error, not a class silently left out."""
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    lost = next((p for p in entries if p.is_symlink() and not p.exists()), None)
    if lost is not None:
        raise UserError(f"data.path: {_quote_path(lost)} is a link that leads nowhere (a loop or a missing target): "
                        "point it at a class folder, or remove it")
    return {p.name for p in entries if p.is_dir()}


def image_files(folder: Path) -> list[Path]:
    """The images of one class folder, sorted (none for a missing folder); macOS metadata (`._*`,
    `.DS_Store`) and other hidden files left out."""
    if not folder.is_dir():
        return []
    return [folder / name for name in sorted(os.listdir(folder)) if _image_name(name)]


def has_images(folder: Path) -> bool:
    """Whether image_files(folder) would list any (names only: a folder of 60,000 images is listed once)."""
    return folder.is_dir() and any(_image_name(name) for name in os.listdir(folder))


def _image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def hidden_files(folders: list[Path]) -> int:
    """How many hidden files (macOS `._*` and `.DS_Store` among them) these folders hold."""
    return sum(1 for folder in folders if folder.is_dir() for name in os.listdir(folder)
               if name.startswith(".") and (folder / name).is_file())


def _read_folder(root: Path, classes: list[str], channels: int, size: int) -> Split:
    from PIL import Image

    images, labels = [], []
    for label, name in enumerate(classes):
        for file in image_files(root / name):
            try:
                with warnings.catch_warnings():  # Pillow's multi-line warning becomes our one-line error
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(file) as img:
                        img = img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
                        images.append(np.asarray(img, dtype=np.uint8))
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise _too_many_pixels(file) from None
            except OSError as exc:
                raise UserError(f"data.path: cannot read image {_quote_path(file)}: "
                                f"{clip(' '.join(str(exc).split()), 160)}") from None
            labels.append(label)
    if not images:
        raise UserError(f"data.path: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _too_many_pixels(file: Path) -> UserError:
    """The error for a decompression bomb: an image over Pillow's pixel limit (or in its warning range)."""
    from PIL import Image

    return UserError(f"data.path: image {_quote_path(file)} has more pixels than Pillow reads safely "
                     f"({Image.MAX_IMAGE_PIXELS:,}): shrink it or remove it")


def _quote_path(file: Path) -> str:
    """A path for a one-line message: as it is when printable, else quoted (a line break in a folder name)."""
    text = str(file)
    return clip(text if text.isprintable() else repr(text), 200)


def check_image(file: Path) -> None:
    """A UserError unless Pillow can read `file`, checked without decoding most images: the header and size
    (over Image.MAX_IMAGE_PIXELS is a decompression bomb), a PNG's chunks and their CRCs (verify()), a JPEG's
    end-of-image marker (decoded only when it is missing: trailing bytes after it are allowed), and other
    formats decoded. A PNG whose compressed data is damaged under a correct CRC passes here and fails when read."""
    from PIL import Image

    where = f"data.path: image {_quote_path(file)}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as img:
                if img.format == "PNG":
                    img.verify()
                elif img.format != "JPEG" or not _jpeg_ends(img.fp):
                    img.load()
    except IsADirectoryError:
        raise UserError(f"{where} is a folder, not an image: rename or remove it") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels(file) from None
    except Image.UnidentifiedImageError:
        size = file.stat().st_size
        what = "is empty (0 bytes)" if size == 0 else f"is not an image Pillow can read ({size:,} bytes)"
        raise UserError(f"{where} {what}: replace or remove it") from None
    except Exception as exc:  # Pillow's plugins raise OSError, SyntaxError, struct.error, ValueError...
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)  # without the path again
        reason = clip(" ".join(text.split()) or type(exc).__name__, 120)
        raise UserError(f"{where} cannot be read ({reason}): replace or remove it") from None


def _jpeg_ends(fp) -> bool:
    """Whether a JPEG file ends with its end-of-image marker (a truncated one does not)."""
    where = fp.tell()
    try:
        fp.seek(-2, os.SEEK_END)
        return fp.read(2) == b"\xff\xd9"
    finally:
        fp.seek(where)


def check_images(path: str, allow_class_mismatch: bool) -> int:
    """check_image for every image the data stage will read; returns how many there are."""
    train_root, has_splits, classes, _ = imagefolder_layout(path, allow_class_mismatch)
    roots = [train_root, Path(path).expanduser() / "test"] if has_splits else [train_root]
    count = 0
    for root in roots:
        for name in classes:
            for file in image_files(root / name):
                check_image(file)
                count += 1
    return count


MISMATCH_FIX = "or set data.allow_class_mismatch = true"


def _names(classes: list[str], shown: int = 5) -> str:
    """Class names for a message: the first few, and how many more."""
    more = f" and {len(classes) - shown} more" if len(classes) > shown else ""
    return ", ".join(c if len(c) <= 40 else c[:40] + "..." for c in classes[:shown]) + more


def imagefolder_layout(path: str, allow_class_mismatch: bool) -> tuple[Path, bool, list[str], list[str]]:
    """(the training root, whether path/train + path/test split it, the class names, notes), checked: class
    folders that differ between train/ and test/ or hold no images are one error, or with
    data.allow_class_mismatch notes (empty training classes and test-only classes left out)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"data.path = {quote(path)} is not a folder")
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    train_root = root / "train" if has_splits else root
    split_roots = [train_root, root / "test"] if has_splits else [train_root]
    classes = sorted(class_folders(train_root))
    for split_root in split_roots:
        broken = next((c for c in sorted(class_folders(split_root)) if c.splitlines() != [c]), None)
        if broken is not None:  # labels.txt holds one class name a line
            raise UserError(f"data.path: class folder {clip(repr(broken), 100)} in {_quote_path(split_root)} has a "
                            "line break in its name (labels.txt holds one class a line): rename it")
    problems = []
    for split_root in split_roots:
        empty = [c for c in classes if (split_root / c).is_dir() and not has_images(split_root / c)]
        if empty:
            where = f" in {split_root.name}/" if has_splits else ""
            problems.append(f"class folder(s) {_names(empty)}{where} hold no images")
            if split_root == train_root:
                classes = [c for c in classes if c not in empty]
    if has_splits:
        tested = class_folders(root / "test")
        missing, extra = sorted(set(classes) - tested), sorted(tested - set(class_folders(train_root)))
        if missing:
            problems.append(f"missing from test/: {_names(missing)}")
        if extra:
            problems.append(f"only in test/: {_names(extra)}")
    if problems and not allow_class_mismatch:
        rule = "train/ and test/ need the same class folders, each with images" if has_splits else \
            "every class folder needs images"
        raise UserError(f"data.path: {rule} ({'; '.join(problems)}): add images or remove the folder(s), "
                        f"{MISMATCH_FIX}")
    if len(classes) < 2:
        raise UserError(f"data.path = {quote(path)}: expected one folder per class (at least two) with images, "
                        f"found {len(classes)}")
    notes = [f"data.allow_class_mismatch: {p}" for p in problems]
    skipped = hidden_files([s / c for s in split_roots for c in classes])
    if skipped:
        notes.append(f"skipped {skipped} hidden file(s) in the class folders (macOS ._* and .DS_Store among them)")
    return train_root, has_splits, classes, notes


def load_imagefolder(path: str, allow_class_mismatch: bool, channels: int,
                     size: int) -> tuple[Split, Split | None, list[str], list[str]]:
    """`path/<class>/*.png`, or `path/train/<class>/` with `path/test/<class>/` as the test split, as images of
    `channels` x `size` x `size`; and notes."""
    train_root, has_splits, classes, notes = imagefolder_layout(path, allow_class_mismatch)
    train = _read_folder(train_root, classes, channels, size)
    test = _read_folder(Path(path).expanduser() / "test", classes, channels, size) if has_splits else None
    return train, test, classes, notes
