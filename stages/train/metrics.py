"""Validation metrics; `metric` picks the best checkpoint (log_loss: lower is better)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, log_loss


def compute(y: np.ndarray, probs: np.ndarray) -> dict:
    labels = range(probs.shape[1])
    # float32 softmax rows sum to 1 only within rounding; log_loss wants them exact
    q = np.clip(probs, 1e-7, 1).astype(np.float64)
    q /= q.sum(1, keepdims=True)
    return {
        "accuracy": float(accuracy_score(y, probs.argmax(1))),
        "macro_f1": float(f1_score(y, probs.argmax(1), average="macro", labels=list(labels), zero_division=0)),
        "log_loss": float(log_loss(y, q, labels=list(labels))),
    }


def better(metric: str, new: float, best: float | None) -> bool:
    return best is None or (new < best if metric == "log_loss" else new > best)
