"""Multi-label folds: iterative stratification by dedup cluster against StratifiedGroupKFold on one
label per image (the rarest tag, what a single-label splitter sees), on Planet-like tags.

Prints, per splitter: rare tags that some fold's validation part lacks (that fold cannot score them),
the worst relative deviation of a tag's per-fold count from its even share, and the time. Both keep
every dedup cluster in one fold. Run: .venv/bin/python bench/multilabel_folds.py [images] [folds]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.train.folds import assign_folds, assign_multilabel_folds  # noqa: E402
from stages.train.rows import row_classes  # noqa: E402


def planet_like(n: int, tags: int = 17, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Zipf-like tag frequencies (a few tags on most images, several on under 1%), 1-5 tags per image,
    and 10% of the images in duplicate clusters of 2-4 with the same tags."""
    rng = np.random.default_rng(seed)
    frequency = 1.0 / np.arange(1, tags + 1) ** 2.5
    frequency /= frequency.sum()
    y = np.zeros((n, tags), int)
    for i in range(n):
        y[i, rng.choice(tags, size=int(rng.integers(1, 6)), replace=False, p=frequency)] = 1
    clusters = np.arange(n).astype(str)
    i = 0
    while i < n // 10:
        size = int(rng.integers(2, 5))
        members = np.arange(i, min(i + size, n))
        clusters[members], y[members] = clusters[members[0]], y[members[0]]
        i += size
    return y, clusters


def report(name: str, folds: np.ndarray, y: np.ndarray, clusters: np.ndarray, seconds: float) -> None:
    k = folds.max() + 1
    per_fold = np.stack([y[folds == f].sum(0) for f in range(k)])  # (fold, tag) validation counts
    expected = y.sum(0) / k
    missing = int(((per_fold == 0) & (y.sum(0) >= k)[None, :]).sum())
    deviation = np.abs(per_fold - expected) / expected
    split = sum(len(set(folds[clusters == c])) > 1 for c in set(clusters[:len(clusters) // 10]))
    print(f"{name:<34} {missing:>22} {deviation.max():>18.2f} {np.median(deviation):>14.3f} {split:>15} {seconds:>8.2f}")


def main(n: int = 5000, k: int = 5) -> None:
    y, clusters = planet_like(n)
    print(f"{n} images, {y.shape[1]} tags (rarest on {y.sum(0).min()} images), {k} folds, 10% in duplicate clusters")
    print(f"{'splitter':<34} {'(fold, tag) val empty':>22} {'worst deviation':>18} {'median dev.':>14} {'clusters split':>15} {'seconds':>8}")
    t0 = time.perf_counter()
    single = assign_folds(row_classes(y.astype(np.float32)), clusters, k, seed=0)
    report("StratifiedGroupKFold (rarest tag)", single, y, clusters, time.perf_counter() - t0)
    t0 = time.perf_counter()
    multi = assign_multilabel_folds(y, clusters, k, seed=0)
    report("iterative stratification (ours)", multi, y, clusters, time.perf_counter() - t0)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
