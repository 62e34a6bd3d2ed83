"""Device-side data path: the uint8 cache lives on the GPU and batches are augmented there in torch.

For small images the CPU loader (decode-free as it is) cannot feed a modern GPU: on an H100, timm's
train.py with 14 workers reached 12.8k img/s on resnet18 at 64 px while a GPU-resident loop reached
~40k. This path applies the cheap, batched part of the augment recipe (augment/gpu_augment.json):
flips, random resized crop, affine (shift/scale/rotate) in one grid_sample, brightness/contrast, and
random erasing. Mixup/cutmix run after it, as in the CPU path. It also runs on CPU (tests).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def fits(nbytes: int, device: torch.device, fraction: float) -> bool:
    """auto: use the device path when the training rows take at most `fraction` of the free GPU memory."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= fraction * free


def _uniform(n, lo, hi, g, device):
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def _chance(n, p, g, device):
    return torch.rand(n, generator=g, device=device) < p


def augment(x: torch.Tensor, r: dict, g: torch.Generator) -> torch.Tensor:
    """x: float (B,C,H,W) in 0..255 -> augmented, same shape."""
    n, dev = len(x), x.device
    one = torch.ones(n, device=dev)
    # Geometry as one inverse affine per sample: output pixel -> input pixel in [-1, 1] coordinates.
    sx = torch.where(_chance(n, r["hflip"], g, dev), -one, one)
    sy = torch.where(_chance(n, r["vflip"], g, dev), -one, one)
    zoom, angle, tx, ty = one.clone(), torch.zeros(n, device=dev), torch.zeros(n, device=dev), torch.zeros(n, device=dev)
    crop = _chance(n, r["crop"], g, dev)
    side = _uniform(n, *r["crop_scale"], g, dev).sqrt()  # crop side from its area fraction
    zoom = torch.where(crop, side, zoom)
    tx = torch.where(crop, _uniform(n, -1, 1, g, dev) * (1 - side), tx)
    ty = torch.where(crop, _uniform(n, -1, 1, g, dev) * (1 - side), ty)
    aff = _chance(n, r["affine"], g, dev)
    zoom = torch.where(aff, zoom / _uniform(n, 1 - r["scale"], 1 + r["scale"], g, dev), zoom)
    angle = torch.where(aff, _uniform(n, -r["rotate"], r["rotate"], g, dev), angle)
    tx = torch.where(aff, tx + _uniform(n, -2 * r["shift"], 2 * r["shift"], g, dev), tx)
    ty = torch.where(aff, ty + _uniform(n, -2 * r["shift"], 2 * r["shift"], g, dev), ty)
    rot = _chance(n, r["rotation"], g, dev)
    angle = torch.where(rot, angle + _uniform(n, -r["rotation_limit"], r["rotation_limit"], g, dev), angle)
    if (sx != 1).any() or (sy != 1).any() or (zoom != 1).any() or angle.any() or tx.any() or ty.any():
        a = angle * math.pi / 180
        cos, sin = torch.cos(a) * zoom, torch.sin(a) * zoom
        theta = torch.stack([torch.stack([cos * sx, -sin * sy, tx], 1), torch.stack([sin * sx, cos * sy, ty], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # Photometric: brightness (scale) and contrast (around the image mean).
    jit = _chance(n, r["color_jitter"], g, dev)[:, None, None, None]
    bright = _uniform(n, 1 - r["brightness"], 1 + r["brightness"], g, dev)[:, None, None, None]
    contr = _uniform(n, 1 - r["contrast"], 1 + r["contrast"], g, dev)[:, None, None, None]
    mean = x.mean((1, 2, 3), keepdim=True)
    x = torch.where(jit, ((x * bright - mean) * contr + mean).clamp(0, 255), x)
    # Random erasing: one rectangle per chosen sample, filled with 0 like the CPU path.
    h, w = x.shape[2:]
    erase = _chance(n, r["erasing"], g, dev)
    eh = (_uniform(n, *r["erasing_size"], g, dev) * h).long().clamp(min=1)
    ew = (_uniform(n, *r["erasing_size"], g, dev) * w).long().clamp(min=1)
    y0 = (torch.rand(n, generator=g, device=dev) * (h - eh + 1)).long()
    x0 = (torch.rand(n, generator=g, device=dev) * (w - ew + 1)).long()
    rows = torch.arange(h, device=dev)[None, :, None]
    cols = torch.arange(w, device=dev)[None, None, :]
    hole = (rows >= y0[:, None, None]) & (rows < (y0 + eh)[:, None, None]) & (cols >= x0[:, None, None]) & (cols < (x0 + ew)[:, None, None])
    return x.masked_fill((hole & erase[:, None, None])[:, None], 0.0)


class DeviceBatches:
    """The training rows as one uint8 tensor on the device; batches in a given order, augmented there,
    normalised, as (x, y, idx) like the CPU loader yields after to_input."""

    def __init__(self, array: np.ndarray, rows: np.ndarray, targets: np.ndarray, recipe: dict, norm: dict, device: torch.device):
        self.images = torch.from_numpy(np.ascontiguousarray(array[rows])).permute(0, 3, 1, 2).to(device)
        self.targets = torch.as_tensor(targets, device=device)
        self.recipe, self.device = recipe, device
        self.mean = torch.tensor(norm["mean"], device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(norm["std"], device=device).view(1, -1, 1, 1) * 255

    def epoch(self, order: np.ndarray, batch_size: int, drop_last: bool, seed: int):
        g = torch.Generator(device=self.device).manual_seed(seed)
        order_t = torch.as_tensor(order, device=self.device)
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            idx = order_t[start : start + batch_size]
            x = augment(self.images[idx].float(), self.recipe, g)
            yield (x - self.mean) / self.std, self.targets[idx], idx.cpu()
