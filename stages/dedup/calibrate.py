"""`dedup.threshold: auto`: place the copy-score threshold above this data's own look-alike level.

How alike distinct items are depends on the data: two different handwritten 3s score higher than two
different photo crops. Each image's 6th-best verified neighbour (LOOKALIKE_RANK) is, in practice, not
a copy of it (copies come one to a few per picture), so the 99th percentile of those scores is how
high a distinct look-alike reaches here. The threshold sits GAP of the way from that level up to a
perfect copy (1.0), and never under FLOOR. Calibrated on bench/dedup_quality.py --half top (the
reported figures are the other half); the curve is in bench/README.md.

The verifier's gate (verify.py) refuses most distinct pairs unscored, which would leave the 6th-best
neighbour at 0; so the level is measured on SAMPLE images (fixed seed) whose candidates are all
verified, whatever the gate says. A 99th percentile over a few thousand images is stable; on fewer
images all of them are the sample.
"""

from __future__ import annotations

import numpy as np

LOOKALIKE_RANK = 5  # 0-based: the 6th-best neighbour
QUANTILE = 0.99
GAP = 0.65
FLOOR = 0.88
MIN_SAMPLES = 200  # fewer images than this with a 6th neighbour: too few to measure, use FLOOR
SAMPLE = 4096  # images whose candidates are all verified to measure the level on
SAMPLE_SEED = 0


def calibration_sample(candidates: np.ndarray, n: int, size: int | None = None) -> np.ndarray:
    """Bool mask over n images: `size` of the `candidates` (the images searched), chosen with a fixed
    seed, so that the same images give the same threshold; all of them when there are fewer."""
    size = SAMPLE if size is None else size
    chosen = np.zeros(n, bool)
    pick = candidates if len(candidates) <= size else np.random.default_rng(SAMPLE_SEED).choice(candidates, size, replace=False)
    chosen[pick] = True
    return chosen


def lookalike_level(i: np.ndarray, j: np.ndarray, score: np.ndarray, n: int, sample: np.ndarray | None = None) -> tuple[float | None, int]:
    """99th percentile of the LOOKALIKE_RANK-th best candidate score of every image (of the `sample`
    images, a bool mask, when given: their candidates must all have been verified), and how many
    images had one."""
    ids, scores = np.r_[i, j], np.r_[score, score]
    if sample is not None:
        ids, scores = ids[sample[ids]], scores[sample[ids]]
    order = np.lexsort((-scores, ids))
    ids, scores = ids[order], scores[order]
    rank = np.arange(len(ids)) - np.searchsorted(ids, np.arange(n))[ids]
    sample = scores[rank == LOOKALIKE_RANK]
    return (float(np.quantile(sample, QUANTILE)) if len(sample) >= MIN_SAMPLES else None), int(len(sample))


def auto_threshold(i: np.ndarray, j: np.ndarray, score: np.ndarray, n: int, sample: np.ndarray | None = None) -> tuple[float, str]:
    """(threshold, why) for `dedup.threshold: auto`; `sample` as in lookalike_level."""
    level, samples = lookalike_level(i, j, score, n, sample)
    if level is None:
        return FLOOR, f"auto: {FLOOR} (only {samples} images with a {LOOKALIKE_RANK + 1}th neighbour to measure look-alikes on)"
    threshold = max(FLOOR, level + GAP * (1.0 - level))
    return round(threshold, 4), (f"auto: {threshold:.3f} (distinct look-alikes reach {level:.3f} here; "
                                 f"threshold {GAP:.0%} of the way from there to 1, at least {FLOOR})")
