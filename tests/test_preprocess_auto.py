"""preprocess auto decisions: the median filter only on impulse noise, the crop only for small objects
in wide empty or noisy margins, measured on real pixels (scikit-image photos, scikit-learn digits)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from pipeline.runner import StagePaths
from stages import preprocess
from tests.tiny_images import make_params, write_competition  # noqa: F401 (fixture)


def to_uint8(image) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    image = (255 * (image - image.min()) / max(1e-9, float(np.ptp(image)))).astype(np.uint8)
    return image[:, :, None] if image.ndim == 2 else image[:, :, :3]


def photo_patches(n: int = 24, side: int = 64) -> list[np.ndarray]:
    """Patches of scikit-image's bundled photos (textures and scenes that fill the frame)."""
    from skimage import data

    rng = np.random.default_rng(0)
    photos = [to_uint8(getattr(data, name)()) for name in ("astronaut", "brick", "grass", "gravel", "coffee", "camera", "chelsea", "rocket")]
    out = []
    for k in range(n):
        photo = photos[k % len(photos)]
        y, x = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        out.append(np.ascontiguousarray(photo[y : y + side, x : x + side]))
    return out


def digits(n: int = preprocess.PROBE_IMAGES) -> list[np.ndarray]:
    """scikit-learn's 8x8 handwritten digits at their native size (1-pixel strokes), as many as the probe samples."""
    from sklearn.datasets import load_digits

    return [np.round(image * 255 / 16).astype(np.uint8)[:, :, None] for image in load_digits().images[:n]]


def salt_and_pepper(image: np.ndarray, density: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = image.copy()
    mask = rng.random(image.shape[:2]) < density
    noisy[mask] = np.where(rng.random(int(mask.sum())) < 0.5, 0, 255).astype(np.uint8)[:, None]
    return noisy


def on_canvas(obj: np.ndarray, seed: int, side: int = 96, noise: float = 0.0) -> np.ndarray:
    """A gray object (a third of the side) at a random place on an empty canvas, optionally noisy."""
    rng = np.random.default_rng(seed)
    small = side // 3
    gray = cv2.cvtColor(obj, cv2.COLOR_RGB2GRAY) if obj.shape[2] == 3 else obj[:, :, 0]
    canvas = np.zeros((side, side, 1), np.uint8)
    y, x = rng.integers(0, side - small, 2)
    canvas[y : y + small, x : x + small, 0] = cv2.resize(gray, (small, small), interpolation=cv2.INTER_LINEAR)
    return salt_and_pepper(canvas, noise, seed) if noise else canvas


def decide(images: list[np.ndarray], p) -> tuple[int, bool]:
    median, _ = preprocess.decide_median(p, [preprocess.impulse_share(im) for im in images])
    crop, _ = preprocess.decide_crop(p, [preprocess.box_area(im, p.crop) for im in images])
    return median, crop


@pytest.mark.parametrize("source", [photo_patches, digits])
def test_clean_images_get_no_median_and_no_crop(make_params, source):
    assert decide(source(), make_params().preprocess) == (0, False)


@pytest.mark.parametrize("density", [0.01, 0.05])
def test_salt_and_pepper_turns_the_median_on(make_params, density):
    noisy = [salt_and_pepper(im, density, k) for k, im in enumerate(photo_patches())]
    median, crop = decide(noisy, make_params().preprocess)
    assert median == preprocess.AUTO_MEDIAN_KSIZE and crop is False  # photos still fill the frame


def test_salt_and_pepper_digits_turn_the_median_on(make_params):
    """64 pixels an image: a few impulses each, so the decision needs the probe's full sample (128)."""
    noisy = [salt_and_pepper(im, 0.05, k) for k, im in enumerate(digits())]
    assert decide(noisy, make_params().preprocess)[0] == preprocess.AUTO_MEDIAN_KSIZE


@pytest.mark.parametrize("noise", [0.0, 0.05])
@pytest.mark.parametrize("source", [photo_patches, digits])
def test_small_objects_in_wide_margins_are_cropped(make_params, source, noise):
    canvases = [on_canvas(im, k, noise=noise) for k, im in enumerate(source())]
    median, crop = decide(canvases, make_params().preprocess)
    assert crop is True
    assert median == (preprocess.AUTO_MEDIAN_KSIZE if noise else 0)


def test_crop_box_ignores_salt_and_pepper(make_params):
    """The edge map is median-filtered even when the cached pixels are not: noise makes no box."""
    p = make_params("preprocess.median_ksize=0", "preprocess.crop.enabled=true", "preprocess.crop.margin=0").preprocess
    canvas = np.zeros((96, 96, 1), np.uint8)
    canvas[30:62, 40:72] = 200
    top, bottom, left, right = preprocess.object_box(salt_and_pepper(canvas, 0.05, 0), p.crop)
    assert abs(top - 30) <= 3 and abs(bottom - 62) <= 3 and abs(left - 40) <= 3 and abs(right - 72) <= 3


def test_explicit_settings_are_used_as_given(make_params):
    canvases = [on_canvas(im, k, noise=0.05) for k, im in enumerate(digits())]
    assert decide(canvases, make_params("preprocess.median_ksize=0", "preprocess.crop.enabled=false").preprocess) == (0, False)
    assert decide(photo_patches(), make_params("preprocess.median_ksize=5", "preprocess.crop.enabled=true").preprocess) == (5, True)
    assert preprocess.decide_median(make_params("preprocess.median_ksize=3").preprocess, []) == (3, "params")


def test_run_reports_the_decisions(make_params, tmp_path):
    train = {f"n{k}": (on_canvas(im, k, noise=0.05), str(k % 2)) for k, im in enumerate(digits(12))}
    root = write_competition(tmp_path / "data", train, {"t0": on_canvas(digits(1)[0], 99, noise=0.05)})
    out = tmp_path / "out"
    out.mkdir()
    summary = preprocess.run(make_params("preprocess.size=32", root=root), StagePaths(out=out, inputs={"data": root}))
    report = json.loads((out / "report.json").read_text())
    assert report["median_ksize"] == 3 and report["median_from"].startswith("auto: impulse noise")
    assert report["crop"] is True and report["crop_from"].startswith("auto: object box median")
    assert report["impulse_share"]["images"] == 12 and report["impulse_share"]["median"] > preprocess.IMPULSE_SHARE
    assert report["object_box_area"]["median"] < preprocess.CROP_MEDIAN_AREA
    assert summary["median_ksize"] == 3 and "auto" in summary["median_from"] and summary["crop"] is True
