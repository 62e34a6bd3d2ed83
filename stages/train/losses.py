"""Losses on soft targets (so mixup, label smoothing and hard labels share one path), per sample, so
the dedup weights can weigh each sample; optional class weights and focal modulation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def class_weights(targets: np.ndarray, num_classes: int, kind: str) -> np.ndarray | None:
    """Inverse class frequency (balanced) or its square root, normalised to mean 1 over the samples."""
    if kind == "none":
        return None
    counts = np.bincount(targets, minlength=num_classes).astype(float)
    w = 1.0 / np.maximum(counts, 1)
    w = np.sqrt(w) if kind == "sqrt" else w
    return w / (w[targets].mean())


def smooth(targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Label smoothing of probability targets; an all-zero target (a teacher-only row) stays zero."""
    return targets * (1 - smoothing) + smoothing / targets.shape[1] * targets.sum(1, keepdim=True)


def mixing_matrix(mixup, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix the batch images with timm's Mixup and return (images, M), M the (B, B) matrix that mixes
    any per-row vectors the same way (M @ targets): timm mixes one-hot integer labels, so mixing the
    labels 0..B-1 of B classes yields M itself. Soft pseudo targets and teacher probabilities then mix
    exactly like the images."""
    mixup.num_classes = len(x)  # built with label_smoothing=0; smooth() smooths the mixed targets
    return mixup(x, torch.arange(len(x), device=x.device))


def per_sample_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, gamma: float = 0.0) -> torch.Tensor:
    """-sum_c w_c (1 - p_c)^gamma t_c log p_c for each sample: CE (gamma 0), focal (gamma > 0), weighted."""
    logp = F.log_softmax(logits.float(), dim=1)
    term = target * logp
    if gamma > 0:
        term = term * (1 - logp.exp()).pow(gamma)
    if weight is not None:
        term = term * weight[None, :]
    return -term.sum(1)
