"""Device-side data path: the uint8 cache lives on the GPU and batches are augmented there in torch.

For small images the CPU loader (decode-free as it is) cannot feed a modern GPU: on an H100, timm's
train.py with 14 workers reached 12.8k img/s on resnet18 at 64 px while a GPU-resident loop reached
~40k. This path applies the augment recipe (augment/gpu_augment.json) with the meaning albumentations
gives each parameter (stages/augment.py builds the albumentations pipeline from the same params):

  random resized crop (area fraction, aspect ratio log-uniform), flips, affine (independent x/y scale,
  x/y translate, rotate, x/y shear) and free rotation in one grid_sample, gamma, Gaussian blur (odd
  kernel sizes, sigma), colour jitter (brightness, contrast, saturation, hue), coarse dropout (1..n holes).

tests/test_gpu_augment.py checks op by op that both engines move the same statistics. Everything is
batched with per-sample random draws and masks: no host sync, no Python loop over images. It also runs
on CPU (tests). Mixup/cutmix run after it, as in the CPU path.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# Every recipe key this path implements; a recipe lacking one (an older augment output) cannot be
# reproduced here, and train.gpu_augment: auto then takes the albumentations path.
OPS = {"hflip", "vflip", "crop", "crop_scale", "crop_ratio", "affine", "shift", "scale", "rotate", "shear", "rotation",
       "rotation_limit", "gamma", "gamma_limit", "blur", "blur_limit", "blur_sigma", "color_jitter", "brightness",
       "contrast", "saturation", "hue", "erasing", "erasing_size", "erasing_holes"}


def missing_ops(recipe: dict | None) -> list[str]:
    """Recipe keys this path would not apply (empty: it reproduces the albumentations recipe)."""
    return sorted(OPS) if recipe is None else sorted(OPS - set(recipe))


def fits(nbytes: int, free_bytes: int, fraction: float) -> bool:
    """auto: the device path when the training rows take at most `fraction` of the free device memory."""
    return nbytes <= fraction * free_bytes


def _uniform(n, lo, hi, g, device):
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def _chance(n, p, g, device):
    return torch.rand(n, generator=g, device=device) < p


def _crop(n, r, g, dev):
    """RandomResizedCrop as (x zoom, y zoom, x centre, y centre) in [-1, 1] coordinates."""
    one = torch.ones(n, device=dev)
    area = _uniform(n, *r["crop_scale"], g, dev)
    log_ratio = _uniform(n, *np.log(r["crop_ratio"]), g, dev)
    wide, high = (area * log_ratio.exp()).sqrt().clamp(max=1), (area / log_ratio.exp()).sqrt().clamp(max=1)
    on = _chance(n, r["crop"], g, dev)
    zx, zy = torch.where(on, wide, one), torch.where(on, high, one)
    return zx, zy, _uniform(n, -1, 1, g, dev) * (1 - zx), _uniform(n, -1, 1, g, dev) * (1 - zy)


def geometry(x: torch.Tensor, r: dict, g: torch.Generator) -> torch.Tensor:
    """Crop, flips, affine and rotation as one inverse affine per sample (output -> input pixel)."""
    n, dev = len(x), x.device
    one, zero = torch.ones(n, device=dev), torch.zeros(n, device=dev)
    zx, zy, cx, cy = _crop(n, r, g, dev)
    fx = torch.where(_chance(n, r["hflip"], g, dev), -one, one)
    fy = torch.where(_chance(n, r["vflip"], g, dev), -one, one)
    aff = _chance(n, r["affine"], g, dev)
    pick = lambda lo, hi: torch.where(aff, _uniform(n, lo, hi, g, dev), zero)  # noqa: E731
    sx, sy = 1 + pick(-r["scale"], r["scale"]), 1 + pick(-r["scale"], r["scale"])
    # albumentations turns the shift into whole pixels, truncating toward zero: so does this path
    h, w = x.shape[2:]
    tx = 2 * (pick(-r["shift"], r["shift"]) * w).trunc() / w
    ty = 2 * (pick(-r["shift"], r["shift"]) * h).trunc() / h
    shx, shy = pick(-r["shear"], r["shear"]).deg2rad().tan(), pick(-r["shear"], r["shear"]).deg2rad().tan()
    angle = pick(-r["rotate"], r["rotate"]) + torch.where(_chance(n, r["rotation"], g, dev),
                                                         _uniform(n, -r["rotation_limit"], r["rotation_limit"], g, dev), zero)
    a = angle.deg2rad()
    # forward map (input -> output): crop, flip, scale, shear, rotate, translate; theta is its inverse
    # composed by hand: input = Crop . Flip . S^-1 . Sh^-1 . R^-1 . (output - t)
    cos, sin = a.cos(), a.sin()
    rinv = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)
    det = 1 - shx * shy
    shinv = torch.stack([torch.stack([one, -shx], 1), torch.stack([-shy, one], 1)], 1) / det[:, None, None]
    left = torch.diag_embed(torch.stack([zx * fx / sx, zy * fy / sy], 1))
    m = left @ shinv @ rinv
    offset = torch.stack([cx, cy], 1)[:, :, None] - m @ torch.stack([tx, ty], 1)[:, :, None]
    theta = torch.cat([m, offset], 2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _gaussian(ksize: int, sigma: torch.Tensor) -> torch.Tensor:
    """(n, ksize) normalised 1-d Gaussian kernels, one per sigma."""
    t = torch.arange(ksize, device=sigma.device, dtype=torch.float32) - (ksize - 1) / 2
    k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None] ** 2))
    return k / k.sum(1, keepdim=True)


def blur(x: torch.Tensor, r: dict, g: torch.Generator) -> torch.Tensor:
    """Gaussian blur with an odd kernel size from blur_limit and sigma from blur_sigma, per sample."""
    n, c, h, w = x.shape
    dev = x.device
    sizes = list(range(r["blur_limit"][0], r["blur_limit"][1] + 1, 2))
    which = torch.randint(len(sizes), (n,), generator=g, device=dev)
    sigma = _uniform(n, *r["blur_sigma"], g, dev)
    on = _chance(n, r["blur"], g, dev)
    out = x
    for k, size in enumerate(sizes):  # a handful of sizes: every one over the batch, then select
        kern = _gaussian(size, sigma).repeat_interleave(c, 0)  # (n*c, size), a depthwise kernel per image channel
        flat = x.reshape(1, n * c, h, w)
        pad = size // 2
        y = F.conv2d(F.pad(flat, (pad, pad, 0, 0), mode="reflect"), kern[:, None, None, :], groups=n * c)
        y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), kern[:, None, :, None], groups=n * c)
        out = torch.where((on & (which == k))[:, None, None, None], y.view(n, c, h, w), out)
    return out


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _hue(x: torch.Tensor, turn: torch.Tensor) -> torch.Tensor:
    """Hue shifted by `turn` of the colour circle in HSV (as albumentations does), x in 0..255."""
    x = x / 255
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v, low = x.max(1).values, x.min(1).values
    d = v - low
    s = torch.where(v > 0, d / v.clamp_min(1e-8), torch.zeros_like(v))
    dd = d.clamp_min(1e-8)
    h = torch.where(v == r, ((g - b) / dd) % 6, torch.where(v == g, (b - r) / dd + 2, (r - g) / dd + 4)) / 6
    h = (torch.where(d > 0, h, torch.zeros_like(h)) + turn[:, None, None]) % 1

    def channel(n: int) -> torch.Tensor:  # HSV -> RGB: f(n) = v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6
        k = (n + h * 6) % 6
        return v - v * s * torch.minimum(k, 4 - k).clamp(0, 1)

    return torch.stack([channel(5), channel(3), channel(1)], 1) * 255


def photometric(x: torch.Tensor, r: dict, g: torch.Generator) -> torch.Tensor:
    """Gamma, blur, then colour jitter: brightness (scale), contrast (around the gray mean),
    saturation (towards gray), hue (rotation); saturation and hue only on colour images."""
    n, dev = len(x), x.device
    col = lambda v: v[:, None, None, None]  # noqa: E731
    gamma = _uniform(n, r["gamma_limit"][0] / 100, r["gamma_limit"][1] / 100, g, dev)
    x = torch.where(col(_chance(n, r["gamma"], g, dev)), 255 * (x / 255).clamp(0, 1).pow(col(gamma)), x)
    x = blur(x, r, g)
    jit = col(_chance(n, r["color_jitter"], g, dev))
    jittered = (x * col(_uniform(n, 1 - r["brightness"], 1 + r["brightness"], g, dev))).clamp(0, 255)
    mean = _gray(jittered).mean((1, 2, 3), keepdim=True)
    jittered = ((jittered - mean) * col(_uniform(n, 1 - r["contrast"], 1 + r["contrast"], g, dev)) + mean).clamp(0, 255)
    saturation = _uniform(n, 1 - r["saturation"], 1 + r["saturation"], g, dev)
    hue = _uniform(n, -r["hue"], r["hue"], g, dev)
    if x.shape[1] == 3:
        gray = _gray(jittered)
        jittered = ((jittered - gray) * col(saturation) + gray).clamp(0, 255)
        jittered = _hue(jittered, hue).clamp(0, 255)
    return torch.where(jit, jittered, x)


def erase(x: torch.Tensor, r: dict, g: torch.Generator) -> torch.Tensor:
    """Coarse dropout: 1..erasing_holes rectangles per chosen sample, sides a fraction of the image's, filled with 0."""
    n, dev = len(x), x.device
    h, w = x.shape[2:]
    on = _chance(n, r["erasing"], g, dev)
    holes = torch.randint(1, r["erasing_holes"] + 1, (n,), generator=g, device=dev)
    rows = torch.arange(h, device=dev)[None, :, None]
    cols = torch.arange(w, device=dev)[None, None, :]
    mask = torch.zeros(n, h, w, dtype=torch.bool, device=dev)
    for k in range(r["erasing_holes"]):
        eh = (_uniform(n, *r["erasing_size"], g, dev) * h).long().clamp(min=1)
        ew = (_uniform(n, *r["erasing_size"], g, dev) * w).long().clamp(min=1)
        y0 = (torch.rand(n, generator=g, device=dev) * (h - eh + 1)).long()
        x0 = (torch.rand(n, generator=g, device=dev) * (w - ew + 1)).long()
        box = (rows >= y0[:, None, None]) & (rows < (y0 + eh)[:, None, None]) & (cols >= x0[:, None, None]) & (cols < (x0 + ew)[:, None, None])
        mask |= box & (on & (holes > k))[:, None, None]
    return x.masked_fill(mask[:, None], 0.0)


def augment(x: torch.Tensor, r: dict, g: torch.Generator) -> torch.Tensor:
    """x: float (B,C,H,W) in 0..255 -> augmented, same shape; the albumentations order (geometry,
    photometric, occlusion). Keys missing from `r` count as off, so a partial recipe works in tests."""
    r = {**OFF, **r}
    if any(r[k] > 0 for k in ("crop", "hflip", "vflip", "affine", "rotation")):
        x = geometry(x, r, g)
    if any(r[k] > 0 for k in ("gamma", "blur", "color_jitter")):
        x = photometric(x, r, g)
    return erase(x, r, g) if r["erasing"] > 0 else x


OFF = {"hflip": 0.0, "vflip": 0.0, "crop": 0.0, "crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "affine": 0.0, "shift": 0.0,
       "scale": 0.0, "rotate": 0.0, "shear": 0.0, "rotation": 0.0, "rotation_limit": 0.0, "gamma": 0.0, "gamma_limit": [100, 100],
       "blur": 0.0, "blur_limit": [3, 3], "blur_sigma": [1.0, 1.0], "color_jitter": 0.0, "brightness": 0.0, "contrast": 0.0,
       "saturation": 0.0, "hue": 0.0, "erasing": 0.0, "erasing_size": [0.1, 0.1], "erasing_holes": 1}


class DeviceBatches:
    """The fold's training rows and validation rows as one uint8 tensor on the device. Training batches
    come in a given order, augmented and normalised there, with their row positions as a device tensor
    (so targets and weights are indexed on the device); validation batches are normalised only."""

    def __init__(self, array, rows: np.ndarray, val_rows: np.ndarray, recipe: dict, norm: dict, device: torch.device):
        both = np.concatenate([rows, val_rows])
        self.images = torch.from_numpy(np.ascontiguousarray(array[both])).permute(0, 3, 1, 2).to(device)
        self.n_train, self.recipe, self.device = len(rows), recipe, device
        self.mean = torch.tensor(norm["mean"], device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(norm["std"], device=device).view(1, -1, 1, 1) * 255

    def epoch(self, order: np.ndarray, batch_size: int, drop_last: bool, seed: int):
        """(x, idx) per batch; `order` goes to the device once per epoch, batches are slices of it."""
        g = torch.Generator(device=self.device).manual_seed(seed)
        order_t = torch.as_tensor(order).to(self.device)
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            idx = order_t[start : start + batch_size]
            x = augment(self.images[idx].float(), self.recipe, g)
            yield (x - self.mean) / self.std, idx

    def validation(self, batch_size: int, start: int, stop: int):
        """Normalised validation images start..stop (positions among the validation rows), from the device copy."""
        for first in range(self.n_train + start, self.n_train + stop, batch_size):
            yield (self.images[first : min(first + batch_size, self.n_train + stop)].float() - self.mean) / self.std
