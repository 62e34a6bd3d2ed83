"""Losses on soft targets (so mixup, label smoothing and hard labels share one path), per sample, so
the dedup weights can weigh each sample; optional class weights and focal modulation.

Single-label: softmax cross-entropy (focal optional). Multi-label: independent sigmoid outputs with
binary cross-entropy per tag, focal BCE, or the asymmetric loss (ASL, Ridnik et al. 2021), averaged
over the tags."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def class_weights(targets: np.ndarray, num_classes: int, kind: str) -> np.ndarray | None:
    """Inverse class frequency (balanced) or its square root, normalised to mean 1 over the samples.
    `targets` are class indices, or (N, K) tags for multi-label (normalised over the tag occurrences)."""
    if kind == "none":
        return None
    tags = np.ndim(targets) == 2
    counts = np.asarray(targets, float).sum(0) if tags else np.bincount(targets, minlength=num_classes).astype(float)
    w = 1.0 / np.maximum(counts, 1)
    w = np.sqrt(w) if kind == "sqrt" else w
    return w / ((w * counts).sum() / counts.sum() if tags else w[targets].mean())


def probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Independent per-tag probabilities (sigmoid) for multi-label, a distribution (softmax) otherwise."""
    return logits.sigmoid() if multi_label else logits.softmax(-1)


def hard_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, p, multi_label: bool) -> torch.Tensor:
    """The per-sample label loss of train params `p` (label smoothing included) for the task kind."""
    if multi_label:
        smoothed = target * (1 - p.label_smoothing) + p.label_smoothing / 2  # towards 0.5 per tag
        return multi_label_loss(logits, smoothed, weight, p.loss, p.focal_gamma, p.asl_gamma_neg, p.asl_clip)
    return per_sample_loss(logits, smooth(target, p.label_smoothing), weight, p.focal_gamma if p.loss == "focal" else 0.0)


def multi_label_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, kind: str = "ce",
                     gamma: float = 0.0, gamma_neg: float = 4.0, clip: float = 0.05) -> torch.Tensor:
    """Mean over tags, per sample: BCE (ce), focal BCE (focal, `gamma`) or ASL (asymmetric: positives
    plain, negatives shifted down by `clip` and focused by `gamma_neg`)."""
    x = logits.float()
    prob = x.sigmoid()
    positive = target * F.logsigmoid(x)
    if kind == "asymmetric":
        shifted = (prob - clip).clamp_min(0)
        negative = (1 - target) * shifted.pow(gamma_neg) * torch.log((1 - shifted).clamp_min(1e-8))
    else:
        negative = (1 - target) * F.logsigmoid(-x)
        if kind == "focal" and gamma > 0:
            positive, negative = positive * (1 - prob).pow(gamma), negative * prob.pow(gamma)
    term = positive + negative
    if weight is not None:
        term = term * weight[None, :]
    return -term.mean(1)


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
