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


def soft_targets(targets: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    return torch.full((len(targets), num_classes), off, device=targets.device).scatter_(1, targets[:, None], 1 - smoothing + off)


def per_sample_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, gamma: float = 0.0) -> torch.Tensor:
    """-sum_c w_c (1 - p_c)^gamma t_c log p_c for each sample: CE (gamma 0), focal (gamma > 0), weighted."""
    logp = F.log_softmax(logits.float(), dim=1)
    term = target * logp
    if gamma > 0:
        term = term * (1 - logp.exp()).pow(gamma)
    if weight is not None:
        term = term * weight[None, :]
    return -term.sum(1)
