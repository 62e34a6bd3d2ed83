"""One augmentation recipe, two engines: op by op, the device path (stages/train/gpu_augment.py) moves
the same statistics as the albumentations pipeline built from the same params (stages/augment.py).

Each case turns one op on (probability 1) and the rest off, augments the same images with both engines
and compares a statistic the op is meant to move (mean brightness, object position, object size,
erased area, sharpness, colourfulness), averaged over the samples, within a tolerance.
"""

import numpy as np
import pytest
import torch

from pipeline.params import load_params
from stages.augment import apply, build, gpu_recipe
from stages.train.gpu_augment import augment, missing_ops

N, SIDE = 192, 32
OFF = {"hflip": 0.0, "vflip": 0.0, "crop": 0.0, "affine": 0.0, "rotation": 0.0, "gamma": 0.0, "blur": 0.0, "color_jitter": 0.0,
       "erasing": 0.0, "shift": 0.0, "scale": 0.0, "rotate": 0.0, "shear": 0.0, "brightness": 0.0, "contrast": 0.0,
       "saturation": 0.0, "hue": 0.0}


def images() -> np.ndarray:
    """Coloured blobs of random size and colour at random places on a dark textured background."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    out = np.empty((N, SIDE, SIDE, 3), np.uint8)
    for i in range(N):
        cy, cx, r = rng.uniform(11, 21), rng.uniform(11, 21), rng.uniform(4, 7)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        colour = rng.uniform(80, 230, 3)
        out[i] = np.clip(20 + rng.normal(0, 4, (SIDE, SIDE, 1)) + blob * colour, 0, 255).astype(np.uint8)
    return out


def both_engines(**on) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    params, _ = load_params("params.yaml", ["data.root=/nonexistent"])
    p = params.augment.model_copy(update={**OFF, **on})
    x = images()
    transform = build(p, SIDE, SIDE)
    transform.set_random_seed(0)
    cpu = np.stack([apply(transform, im.copy()) for im in x]).astype(np.float64)
    g = torch.Generator().manual_seed(0)
    device = augment(torch.from_numpy(x).permute(0, 3, 1, 2).float(), gpu_recipe(p), g).permute(0, 2, 3, 1).numpy().astype(np.float64)
    return x.astype(np.float64), cpu, device


def mass(x: np.ndarray) -> np.ndarray:
    return np.clip(x.mean(3) - 25, 0, None)  # the blob, without the background


def centroid(x: np.ndarray) -> np.ndarray:
    m = mass(x)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    total = m.sum((1, 2)) + 1e-9
    return np.stack([(m * yy).sum((1, 2)) / total, (m * xx).sum((1, 2)) / total], 1)


def spread(x: np.ndarray) -> np.ndarray:
    m = mass(x)
    c = centroid(x)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    d2 = (yy[None] - c[:, 0, None, None]) ** 2 + (xx[None] - c[:, 1, None, None]) ** 2
    return np.sqrt((m * d2).sum((1, 2)) / (m.sum((1, 2)) + 1e-9))


def sharpness(x: np.ndarray) -> np.ndarray:
    return np.abs(np.diff(x, axis=2)).mean((1, 2, 3)) + np.abs(np.diff(x, axis=1)).mean((1, 2, 3))


def colourfulness(x: np.ndarray) -> np.ndarray:
    return x.std(3).mean((1, 2))


CASES = {
    # op params: (statistic of (original, augmented) per image, its spread over the images counts too)
    "brightness": ({"color_jitter": 1.0, "brightness": 0.3}, lambda a, b: b.mean((1, 2, 3)) / a.mean((1, 2, 3))),
    "contrast": ({"color_jitter": 1.0, "contrast": 0.4}, lambda a, b: b.std((1, 2, 3)) / a.std((1, 2, 3))),
    "gamma": ({"gamma": 1.0, "gamma_limit": (60, 140)}, lambda a, b: b.mean((1, 2, 3)) / a.mean((1, 2, 3))),
    "shift": ({"affine": 1.0, "shift": 0.15}, lambda a, b: np.abs(centroid(b) - centroid(a)).mean(1)),
    "scale": ({"affine": 1.0, "scale": 0.3}, lambda a, b: spread(b) / spread(a)),
    "shear": ({"affine": 1.0, "shear": 20.0}, lambda a, b: np.abs(spread(b) / spread(a) - 1)),
    "rotation": ({"rotation": 1.0, "rotation_limit": 90}, lambda a, b: np.linalg.norm(centroid(b) - 15.5, axis=1)),
    "crop": ({"crop": 1.0, "crop_scale": (0.3, 1.0)}, lambda a, b: spread(b) / spread(a)),
    "hflip": ({"hflip": 1.0}, lambda a, b: centroid(b)[:, 1] + centroid(a)[:, 1]),
    "blur": ({"blur": 1.0, "blur_limit": (3, 7)}, lambda a, b: sharpness(b) / sharpness(a)),
    "saturation": ({"color_jitter": 1.0, "saturation": 0.5}, lambda a, b: colourfulness(b) / colourfulness(a)),
    "hue": ({"color_jitter": 1.0, "hue": 0.1}, lambda a, b: np.abs(b - a).mean((1, 2, 3))),
    "erased area": ({"erasing": 1.0, "erasing_holes": 3, "erasing_size": (0.1, 0.3)},
                    lambda a, b: ((b.sum(3) == 0) & (a.sum(3) > 0)).mean((1, 2))),
}


@pytest.mark.parametrize("op", list(CASES))
def test_both_engines_move_the_same_statistic(op):
    on, statistic = CASES[op]
    original, cpu, device = both_engines(**on)
    s_cpu, s_dev = statistic(original, cpu), statistic(original, device)
    moved = np.abs(statistic(original, original) - s_cpu).mean()
    assert moved > 0.01, f"{op}: the albumentations op did not move its statistic; the case tests nothing"
    for name, a, b in (("mean", s_cpu.mean(), s_dev.mean()), ("spread", s_cpu.std(), s_dev.std())):
        scale = max(abs(a), abs(b), np.abs(s_cpu - s_cpu.mean()).mean(), 1e-3)
        assert abs(a - b) <= 0.15 * scale + 0.02, f"{op}: {name} over images {a:.4f} (albumentations) vs {b:.4f} (device)"


def test_the_shipped_recipe_runs_whole_on_the_device():
    params, _ = load_params("params.yaml", ["data.root=/nonexistent"])
    assert missing_ops(gpu_recipe(params.augment)) == []
    assert missing_ops({"hflip": 0.5}) and missing_ops(None)  # an older augment output: auto takes the albumentations path
