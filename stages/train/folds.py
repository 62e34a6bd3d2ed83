"""Folds: stratified by label, grouped by dedup cluster, so duplicates never straddle train and val."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold


def assign_folds(labels: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    folds = np.full(len(labels), -1)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, val) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[val] = fold
    return folds
