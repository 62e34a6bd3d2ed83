"""Device choice, input normalisation (on the device, from uint8) and the autocast dtype.

The CUDA decisions are pure functions of the device *type* and its capabilities, so their logic runs
(and is tested) on a CPU too.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from pipeline.errors import StageError

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError("train.device is cuda but no CUDA device is available (use auto or cpu)")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def normalisation(array: np.ndarray, kind: str, seed: int, sample: int, pretrained: dict | None = None) -> dict:
    """Per-channel mean/std on the 0..1 scale: the training cache's (from a seeded sample), ImageNet's, or the
    pretrained weights' own (`pretrained`); a gray cache takes the channels' average."""
    channels = array.shape[3]
    if kind in ("imagenet", "pretrained"):
        given = IMAGENET if kind == "imagenet" or pretrained is None else pretrained
        return {k: (list(v) if len(v) == channels else [float(np.mean(v))] * channels) for k, v in given.items()}
    rows = np.sort(np.random.default_rng(seed).choice(len(array), min(sample, len(array)), replace=False))
    pixels = np.asarray(array[rows], dtype=np.float64).reshape(-1, channels) / 255.0
    return {"mean": pixels.mean(0).tolist(), "std": np.maximum(pixels.std(0), 1e-3).tolist()}


@lru_cache(maxsize=32)
def _scale(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """mean and std on the 0..255 scale as (1, C, 1, 1) device tensors, built once per (norm, device):
    building them per batch is a host->device copy (a sync) on every call."""
    return (torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255, torch.tensor(std, device=device).view(1, -1, 1, 1) * 255)


def to_input(images: torch.Tensor, norm: dict, device: torch.device) -> torch.Tensor:
    """uint8 (B, C, H, W) -> normalised float on `device` (pinned host batches copy asynchronously)."""
    mean, std = _scale(tuple(norm["mean"]), tuple(norm["std"]), torch.device(device))
    return (images.to(device, non_blocking=True).float() - mean) / std


def autocast_dtype(amp: str, device: torch.device, bf16_supported: bool | None = None) -> torch.dtype | None:
    """train.amp / predict.amp -> the autocast dtype; None: full precision (always on CPU)."""
    if device.type != "cuda" or amp == "off":
        return None
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    if amp == "fp16" or (amp == "auto" and not bf16_supported):
        return torch.float16
    return torch.bfloat16
