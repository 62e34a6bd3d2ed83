"""Blending runs on their out-of-fold predictions: shared by predict (predict.weights: oof) and
`pipeline compare --blend` (what a blend of finished runs would score, before predicting with it)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize


def log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)).mean())


def fit_weights(run_probs: list[np.ndarray], y: np.ndarray | None = None, objective=None) -> np.ndarray:
    """Non-negative run weights summing to 1 that minimise objective(weighted mean of the runs'
    out-of-fold probabilities), by default their log loss against y (predict passes the competition
    metric, signed so lower is better). Softmax parametrisation, so the constraint holds by
    construction; Nelder-Mead needs no gradient, and its first steps (one unit per run) are large
    enough to cross a stepwise metric's flat stretches. Equal weights stay unless the fit does better."""
    if len(run_probs) == 1:
        return np.ones(1)
    stacked = np.stack(run_probs)
    objective = objective or (lambda probs: log_loss(probs, y))

    def loss(z):
        w = np.exp(z - z.max())
        w /= w.sum()
        return objective(np.tensordot(w, stacked, axes=1))

    start = np.zeros(len(run_probs))
    simplex = np.vstack([start, *np.eye(len(start))])
    z = minimize(loss, start, method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-6, "initial_simplex": simplex}).x
    if loss(z) >= loss(start):
        return np.full(len(run_probs), 1 / len(run_probs))
    w = np.exp(z - z.max())
    return w / w.sum()
