"""Blending runs on their out-of-fold predictions: shared by predict (predict.weights: oof) and
`pipeline compare --blend` (what a blend of finished runs would score, before predicting with it)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize


def log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)).mean())


def fit_weights(run_probs: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    """Non-negative run weights summing to 1 that minimise the log loss of the weighted mean of the runs'
    out-of-fold probabilities (softmax parametrisation, so the constraint holds by construction)."""
    if len(run_probs) == 1:
        return np.ones(1)
    stacked = np.stack(run_probs)

    def loss(z):
        w = np.exp(z - z.max())
        w /= w.sum()
        return log_loss(np.tensordot(w, stacked, axes=1), y)

    z = minimize(loss, np.zeros(len(run_probs)), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-6}).x
    w = np.exp(z - z.max())
    return w / w.sum()
