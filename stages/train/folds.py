"""Folds: stratified by label, grouped by dedup cluster, so duplicates never straddle train and val.

Single-label: scikit-learn's StratifiedGroupKFold. Multi-label: iterative stratification (Sechidis,
Tsoumakas and Vlahavas, 2011) over dedup clusters instead of images: the rarest tag is dealt out
first, each cluster to the fold that still wants most of that tag, so every tag held by two or more
clusters lands in two or more folds, hence in every fold's training part.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold


def assign_folds(labels: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    folds = np.full(len(labels), -1)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, val) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[val] = fold
    return folds


def _pick(wants: np.ndarray, room: np.ndarray, rng: np.random.Generator) -> int:
    """The fold that wants most; ties go to the fold with most room left, then at random."""
    best = np.flatnonzero(wants == wants.max())
    best = best[room[best] == room[best].max()]
    return int(rng.choice(best))


def assign_multilabel_folds(tags: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold of each image for (N, K) 0/1 tags, whole groups at a time (iterative stratification)."""
    names, group_of = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    group_tags = np.zeros((len(names), tags.shape[1]))
    np.add.at(group_tags, group_of, tags > 0)
    group_size = np.bincount(group_of, minlength=len(names)).astype(float)
    wants = np.tile(group_tags.sum(0) / k, (k, 1))  # (fold, tag): tag counts each fold still wants
    room = np.full(k, group_size.sum() / k)  # images each fold still wants
    fold_of_group = np.full(len(names), -1)
    rng = np.random.default_rng(seed)
    while (fold_of_group < 0).any():
        left = fold_of_group < 0
        counts = group_tags[left].sum(0)
        if counts.max() == 0:  # groups without tags: fill the folds with most room
            for g in rng.permutation(np.flatnonzero(left)):
                fold = _pick(room, room, rng)
                fold_of_group[g], room[fold] = fold, room[fold] - group_size[g]
            break
        tag = int(np.where(counts > 0, counts, np.inf).argmin())  # the rarest tag still to deal
        for g in rng.permutation(np.flatnonzero(left & (group_tags[:, tag] > 0))):
            fold = _pick(wants[:, tag], room, rng)
            fold_of_group[g] = fold
            wants[fold] -= group_tags[g]
            room[fold] -= group_size[g]
    return fold_of_group[group_of]
