"""Validation metrics; `metric` picks the best checkpoint (log_loss: lower is better)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, log_loss


def compute(y: np.ndarray, probs: np.ndarray) -> dict:
    labels = range(probs.shape[1])
    return {
        "accuracy": float(accuracy_score(y, probs.argmax(1))),
        "macro_f1": float(f1_score(y, probs.argmax(1), average="macro", labels=list(labels), zero_division=0)),
        "log_loss": float(log_loss(y, np.clip(probs, 1e-7, 1), labels=list(labels))),
    }


def better(metric: str, new: float, best: float | None) -> bool:
    return best is None or (new < best if metric == "log_loss" else new > best)
