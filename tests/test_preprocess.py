"""preprocess: median denoising, crop to object, auto size, bad files reported (never a crash)."""

from __future__ import annotations

import json
import zlib

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cache import read_arrays, read_index
from pipeline.cli import app
from pipeline.runner import StagePaths
from stages import preprocess
from tests.tiny_images import ROOT, digit_like, make_params, write_competition  # noqa: F401 (fixture)


def smooth_image(side: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side]
    return (128 + 60 * np.sin(xx / 7.0) * np.cos(yy / 9.0)).astype(np.uint8)[:, :, None]


def test_median_removes_salt_and_pepper(make_params):
    p = make_params("preprocess.median_ksize=3", "preprocess.size=48").preprocess
    clean = smooth_image()
    noisy = clean.copy()
    mask = np.random.default_rng(0).random(clean.shape) < 0.05
    noisy[mask] = np.where(np.random.default_rng(1).random(mask.sum()) < 0.5, 0, 255)
    out = preprocess.process(noisy, p, 1, (48, 48))
    error_before = np.abs(noisy.astype(int) - clean).mean()
    error_after = np.abs(out.astype(int) - clean).mean()
    assert error_after < error_before / 5
    assert (out == 0).sum() + (out == 255).sum() < mask.sum() / 20  # the impulses are gone


def test_crop_finds_known_object(make_params):
    c = make_params("preprocess.crop.enabled=true", "preprocess.crop.margin=0").preprocess.crop
    image = np.zeros((100, 120, 3), np.uint8)
    cv2.rectangle(image, (70, 20), (100, 50), (200, 180, 50), -1)  # x 70..100, y 20..50
    image[90, 5] = 255  # a speck: under min_area, ignored
    top, bottom, left, right = preprocess.object_box(image, c)
    assert abs(top - 20) <= 2 and abs(bottom - 51) <= 2 and abs(left - 70) <= 2 and abs(right - 101) <= 2


@pytest.mark.parametrize("image", [np.zeros((50, 50, 1), np.uint8), np.full((50, 50, 3), 77, np.uint8),
                                   np.zeros((1, 1, 1), np.uint8), np.full((3, 200, 1), 9, np.uint8)])
def test_crop_falls_back_to_whole_image(make_params, image):
    p = make_params("preprocess.crop.enabled=true", "preprocess.median_ksize=0", "preprocess.size=16").preprocess
    assert preprocess.object_box(image, p.crop) is None
    assert preprocess.process(image, p, image.shape[2], (16, 16)).shape == (16, 16, image.shape[2])


def test_auto_size_follows_data_within_range():
    assert preprocess.auto_size([28] * 10, (64, 224)) == 64  # small digits are not blown up to 224
    assert preprocess.auto_size([90, 100, 110], (64, 224)) == 128
    assert preprocess.auto_size([1000, 800], (64, 224)) == 224


def png16(side: int = 20) -> bytes:
    ok, data = cv2.imencode(".png", (np.arange(side * side, dtype=np.uint16).reshape(side, side) * 150))
    return data.tobytes()


def test_12_bit_data_in_16_bit_png_is_not_black(tmp_path):
    from pipeline.images import read_image

    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096))  # 12-bit range
    image = read_image(path)
    assert image.dtype == np.uint8 and image.max() == 255 and image.shape == (64, 64, 1)


def huge_png(w: int = 5000, h: int = 4000) -> bytes:
    """A valid PNG header claiming w x h pixels with a tiny (wrong) body: only the header is read."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


def bad_competition(root):
    good = cv2.imencode(".png", digit_like(1))[1].tobytes()
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(digit_like(2), cv2.COLOR_GRAY2BGR))[1].tobytes()
    train = {
        "ok1": (digit_like(0), "a"),
        "ok2": (digit_like(3), "b"),
        "empty": (b"", "a"),
        "wrong_ext.png": (jpeg, "b"),  # a JPEG named .png: decoded by content
        "deep16": (png16(), "a"),
        "rgba": (np.dstack([digit_like(4), digit_like(6), digit_like(7), np.full((28, 28), 128, np.uint8)]), "b"),  # colour + alpha
        "one_pixel": (np.full((1, 1), 200, np.uint8), "a"),
        "truncated": (good[: len(good) // 2], "b"),
        "text.png": (b"this is not an image\n", "a"),
        "huge": (huge_png(), "b"),
    }
    return write_competition(root, train, {"t1": digit_like(5)})


def test_bad_files_reported_not_crashing(make_params, tmp_path):
    root = bad_competition(tmp_path / "data")
    params = make_params("preprocess.max_pixels=1000000", "preprocess.size=32")
    out = tmp_path / "out"
    out.mkdir()
    summary = preprocess.run(params, StagePaths(out=out, inputs={"data": root}))
    report = json.loads((out / "report.json").read_text())
    failed = {f["id"]: f["reason"] for f in report["failures"]}
    assert set(failed) == {"empty", "truncated", "text.png", "huge"}
    assert "0 bytes" in failed["empty"] and "too large" in failed["huge"]
    index = read_index(out)
    assert set(index.id) == {"ok1", "ok2", "wrong_ext.png", "deep16", "rgba", "one_pixel", "t1"}
    arrays = read_arrays(out)
    assert arrays["train"].shape[1:] == (32, 32, 3) and arrays["train"].dtype == np.uint8  # rgba kept as rgb
    assert summary["skipped"] == 4 and report["size"] == [32, 32]


@pytest.mark.slow
def test_preprocess_and_dedup_through_cli(make_params, tmp_path):
    root = tmp_path / "data"
    train = {f"tr{i}": (digit_like(i), "ab"[i % 2]) for i in range(12)}
    write_competition(root, train, {"leak": digit_like(4), "new": digit_like(99)})
    runner = CliRunner()
    common = ["-p", "params.yaml", "-w", str(tmp_path / "art"), "-S", f"data.root={root}", "-S", "preprocess.workers=1"]
    for command in ("preprocess", "dedup"):
        result = runner.invoke(app, [command, *common])
        assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "art" / "dedup" / "report.json").read_text())
    assert [leak["test_id"] for leak in report["train_test_leaks"]] == ["leak"]
    assert (tmp_path / "art" / "dedup" / "contact_sheet.png").stat().st_size > 0
    assert json.loads((tmp_path / "art" / "preprocess" / "report.json").read_text())["size"] == [64, 64]  # auto


def test_worker_pool_after_opencv_threads_does_not_hang(tmp_path):
    """A second stage in one process (pipeline run) forks the pool after OpenCV's threads ran."""
    import subprocess
    import sys

    root = write_competition(tmp_path / "data", {f"a{i}": (digit_like(i), "ab"[i % 2]) for i in range(6)}, {"t": digit_like(9)})
    script = f"""
import cv2, numpy as np
from pathlib import Path
from pipeline.params import load_params
from pipeline.runner import StagePaths
from stages import preprocess
for _ in range(5):
    cv2.GaussianBlur(cv2.resize(np.zeros((1500, 1500, 3), np.uint8), (900, 900)), (0, 0), 3)
params = load_params(Path("params.yaml"), ["data.root={root}", "preprocess.workers=2"])[0]
out = Path(r"{tmp_path / 'out'}")
out.mkdir()
print(preprocess.run(params, StagePaths(out=out, inputs={{"data": Path(r"{root}")}}))["train_images"])
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "6"
