"""Data sources on real files: IDX parsing, the download path (local HTTP server), ImageFolder, digits."""
from __future__ import annotations

import gzip
import http.server
import json
import threading
from functools import partial

import numpy as np
import pytest
from PIL import Image

from pipeline.core.errors import UserError
from stages.data import (
    FASHION_FILES,
    DataConfig,
    fashion_mnist_dir,
    read_idx,
    split,
    to_nchw,
)
from stages.imagefolder import imagefolder_layout, load_imagefolder


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion(folder, n=20):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in FASHION_FILES.items():
        shape = (n, 28, 28) if key.endswith("images") else (n,)
        _write_idx(folder / name, rng.integers(0, 10 if "labels" in key else 256, shape))


def test_read_idx_roundtrip_and_truncation(tmp_path):
    images = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    _write_idx(tmp_path / "a.gz", images)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), images)
    raw = gzip.open(tmp_path / "a.gz").read()
    (tmp_path / "b").write_bytes(raw[:-3])
    with pytest.raises(UserError, match="truncated"):
        read_idx(tmp_path / "b")


def test_configured_path_wins_and_a_bad_one_is_named(tmp_path):
    _fake_fashion(tmp_path / "fm")
    assert fashion_mnist_dir(DataConfig(path=str(tmp_path / "fm"))) == tmp_path / "fm"
    with pytest.raises(UserError, match="data.path = .* does not hold the four Fashion-MNIST IDX files"):
        fashion_mnist_dir(DataConfig(path=str(tmp_path / "empty")))


def test_download_from_a_mirror_into_the_cache(tmp_path, monkeypatch):
    import stages.data

    monkeypatch.setattr(stages.data, "DEBIAN_FASHION_DIR", tmp_path / "no-debian-copy")
    _fake_fashion(tmp_path / "mirror")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "mirror"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = DataConfig(url=f"http://127.0.0.1:{server.server_address[1]}/", cache_dir=str(tmp_path / "cache"))
        folder = fashion_mnist_dir(cfg)
    finally:
        server.shutdown()
    assert folder == tmp_path / "cache" / "fashion-mnist"
    assert read_idx(folder / FASHION_FILES["train_images"]).shape == (20, 28, 28)
    # offline (nothing listens there) with no local copy: the error names both ways to get the data
    cfg = DataConfig(url="http://127.0.0.1:9/", cache_dir=str(tmp_path / "other"))
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist.*data.path"):
        fashion_mnist_dir(cfg)


def test_imagefolder_reads_class_folders(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    (train_x, train_y), test, classes, _ = load_imagefolder(str(tmp_path), False, channels=3, size=8)
    assert classes == ["cat", "dog"] and test is None
    assert train_x.shape == (6, 8, 8, 3) and train_y.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(UserError, match="one folder per class"):
        load_imagefolder(str(tmp_path / "cat"), False, channels=1, size=32)
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(UserError, match=r"data.path: cannot read image .*dog/broken.png"):
        load_imagefolder(str(tmp_path), False, channels=3, size=8)


def test_split_is_deterministic_disjoint_and_subsettable():
    images = np.arange(100, dtype=np.uint8).reshape(100, 1, 1)
    labels = np.arange(100)
    cfg = DataConfig(dataset="digits", val_fraction=0.2, test_fraction=0.1)
    a, b = split((images, labels), None, cfg, seed=1), split((images, labels), None, cfg, seed=1)
    assert all(np.array_equal(a[k][1], b[k][1]) for k in a)
    sizes = {k: len(v[1]) for k, v in a.items()}
    assert sizes == {"train": 72, "val": 18, "test": 10}
    assert len(set(np.concatenate([v[1] for v in a.values()]))) == 100
    assert not np.array_equal(split((images, labels), None, cfg, seed=2)["train"][1], a["train"][1])
    small = split((images, labels), None, DataConfig(dataset="digits", subset=40, val_fraction=0.25), seed=1)
    assert len(small["train"][1]) == 30 and len(small["val"][1]) == 10


def test_to_nchw_converts_channels_and_size():
    gray = np.full((2, 8, 8), 200, np.uint8)
    assert to_nchw(gray, 3, 16).shape == (2, 3, 16, 16)
    rgb = np.zeros((1, 4, 4, 3), np.uint8)
    rgb[..., 0] = 90
    out = to_nchw(rgb, 1, 4)
    assert out.shape == (1, 1, 4, 4) and out.max() == 30


def _folders(root, layout: dict[str, int]) -> None:
    """split/class -> number of 4x4 PNGs."""
    for where, n in layout.items():
        (root / where).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((4, 4), 40 * i, np.uint8)).save(root / where / f"{i}.png")


@pytest.mark.parametrize("layout, fragment", [
    ({"train/cat": 2, "train/dog": 2, "test/cat": 2}, "missing from test/: dog"),
    ({"train/cat": 2, "train/dog": 2, "test/cat": 2, "test/dog": 2, "test/eel": 1}, "only in test/: eel"),
    ({"train/cat": 2, "train/dog": 2, "train/eel": 0, "test/cat": 2, "test/dog": 2, "test/eel": 0},
     "class folder(s) eel in"),
    ({"train/cat": 2, "train/dog": 2, "test/cat": 2, "test/dog": 0}, "class folder(s) dog in"),
])
def test_class_folders_that_differ_between_splits_or_hold_nothing_are_one_line_up_front(tmp_path, layout, fragment):
    _folders(tmp_path, layout)
    with pytest.raises(UserError) as info:
        imagefolder_layout(str(tmp_path), False)
    assert fragment in str(info.value) and "\n" not in str(info.value) and len(str(info.value)) < 300
    assert "data.allow_class_mismatch = true" in str(info.value)


def test_allowed_class_mismatches_are_notes_in_the_log_and_the_report(tmp_path, capsys):
    """With data.allow_class_mismatch: an empty training class and a test-only class are left out, a class
    missing from test/ is trained; each is a note in the log, meta.json and report.md; hidden files counted."""
    from pipeline.cli import main

    _folders(tmp_path / "images", {"train/cat": 3, "train/dog": 3, "train/eel": 3, "train/fox": 0,
                                   "test/cat": 2, "test/dog": 2, "test/gnu": 2})
    (tmp_path / "images" / "train" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07")
    runs = tmp_path / "runs"
    args = ["run", "--until", "data", "--set", f"run.output_dir='{runs}'", "--set", "data.dataset='imagefolder'",
            "--set", f"data.path='{tmp_path / 'images'}'", "--set", "data.img_size=4"]
    assert main(args) == 2 and "data.allow_class_mismatch" in capsys.readouterr().err
    assert main([*args, "--set", "data.allow_class_mismatch=true"]) == 0
    err = capsys.readouterr().err
    meta = json.loads(next(runs.glob(".cache/data-*/meta.json")).read_text())
    assert meta["classes"] == ["cat", "dog", "eel"] and meta["sizes"]["test"] == 4
    notes = meta["notes"]
    assert [n for n in notes if "fox" in n and "hold no images" in n] and [n for n in notes if "gnu" in n]
    assert [n for n in notes if "missing from test/: eel" in n] and [n for n in notes if "skipped 1 hidden" in n]
    for note in notes:
        assert note[:60] in " ".join(err.split())
    report = (runs / "default" / "report.md").read_text()
    assert "## Data" in report and "only in test/: gnu" in report


def test_macos_metadata_is_skipped_and_a_decompression_bomb_is_named(tmp_path, monkeypatch):
    _folders(tmp_path, {"cat": 2, "dog": 2})
    (tmp_path / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # not an image
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (train_x, _), _, classes, notes = load_imagefolder(str(tmp_path), False, channels=1, size=4)
    assert len(train_x) == 4 and classes == ["cat", "dog"] and notes == [
        "skipped 2 hidden file(s) in the class folders (macOS ._* and .DS_Store among them)"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 20000 x 20000 PNG, scaled down
    Image.new("L", (100, 100)).save(tmp_path / "dog" / "huge.png")  # 10,000 pixels: over twice the limit
    with pytest.raises(UserError, match=r"dog/huge.png has more pixels than Pillow reads safely"):
        load_imagefolder(str(tmp_path), False, channels=1, size=4)
