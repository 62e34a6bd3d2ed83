"""`dedup.threshold: auto`: a copy-score threshold that holds on any data, raised where distinct items look alike.

How alike distinct items are depends on the data: two different handwritten 3s score higher than two
different photo crops. Each image's 6th-best verified neighbour (LOOKALIKE_RANK) is, in practice, not
a copy of it (copies come one to a few per picture), so the QUANTILE of those scores is how high a
distinct look-alike reaches here. The threshold sits GAP of the way from that level up to a perfect
copy (1.0), and never under FLOOR. The 90th percentile, not the 99th: a few families of near-identical
items (five scenes on one background, each with its copies) put copies of siblings at the 6th rank,
and a 99th percentile then follows them up (on one calibration dataset to a threshold of 0.98 and a
recall of 0.68).

Chosen on bench/dedup_quality.py --half top, seeds 0-2 (twelve datasets), for the best worst case over
all of them; the reported figures are the bottom half (bench/README.md). With the residual verifier the
FLOOR alone is within 0.005 of the best rule on every one of them: the level raises the threshold only
where nearly every image has a close look-alike (digits), which is where precision needs it.

The verifier's gate (verify.py) refuses most distinct pairs unscored, which would leave the 6th-best
neighbour at 0; so the level is measured on SAMPLE images (fixed seed) whose candidates are all
verified, whatever the gate says. On fewer images all of them are the sample.
"""

from __future__ import annotations

import numpy as np

LOOKALIKE_RANK = 5  # 0-based: the 6th-best neighbour
QUANTILE = 0.9
GAP = 0.8
FLOOR = 0.925
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
    """QUANTILE of the LOOKALIKE_RANK-th best candidate score of every image (of the `sample`
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
    raised = level + GAP * (1.0 - level)
    point = f"the {QUANTILE:.0%} point of each image's {LOOKALIKE_RANK + 1}th-best candidate"
    if level > 0:
        seen = f"distinct look-alikes score up to {level:.3f} here, {point}"
    else:  # those pairs were refused before the fine comparison (verify.py): they do not even line up
        seen = f"distinct images do not line up here: {point} scores 0 (refused before the fine comparison)"
    if raised <= FLOOR:
        return FLOOR, f"auto: {FLOOR} (the floor: {seen})"
    return round(raised, 4), f"auto: {raised:.3f} ({seen}; {GAP:.0%} of the way from there to 1, above the floor {FLOOR})"
