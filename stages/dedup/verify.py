"""Verify candidate pairs: Pearson correlation of two thumbnails, maximised over small shifts.

For each pair (a, b) and each shift (dy, dx) with |dy|, |dx| <= max_shift, the correlation is taken
over the overlapping region only (no padding bias), so a copy shifted by a pixel or two still scores
close to 1. Brightness and contrast changes do not move a correlation; a different image of the same
kind (two handwritten 3s) stays clearly lower. All shifts of a batch of pairs are one grouped
convolution in torch (each pair's first thumbnail is its own kernel), so this is fast on a CPU.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

BATCH = 8192  # pairs per grouped convolution


def window_sums(thumbs: np.ndarray, s: int, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """For every thumbnail and shift index (y, x) in 0..2s: the sum and the sum of squares over the
    region of it that overlaps its partner when it is the moved image B, i.e. rows
    [max(0, y-s), min(t, t+y-s)) and the same for columns. Box sums from integral images, computed
    once per image (not per pair): (N, 2s+1, 2s+1) float32 each."""
    n, t = len(thumbs), thumbs.shape[-1]
    shifts = np.arange(2 * s + 1) - s
    lo, hi = np.maximum(0, shifts), np.minimum(t, t + shifts)
    sums = np.zeros((n, 2 * s + 1, 2 * s + 1), np.float32)
    squares = np.zeros_like(sums)
    for start in range(0, n, chunk):
        block = thumbs[start : start + chunk].astype(np.float64)
        for out, values in ((sums, block), (squares, block * block)):
            integral = np.zeros((len(block), t + 1, t + 1))
            integral[:, 1:, 1:] = values.cumsum(1).cumsum(2)
            box = (integral[:, hi][:, :, hi] - integral[:, lo][:, :, hi] - integral[:, hi][:, :, lo] + integral[:, lo][:, :, lo])
            out[start : start + chunk] = box
    return sums, squares


def shift_correlation(thumbs: np.ndarray, i: np.ndarray, j: np.ndarray, max_shift: int) -> np.ndarray:
    """Max over shifts of the overlap correlation of thumbs[i] and thumbs[j], for each pair (float32).
    thumbs may be float16 (half the memory at a million images); the maths is float32, batch by batch."""
    s, t = max_shift, thumbs.shape[-1]
    scores = np.zeros(len(i), np.float32)
    if len(i) == 0:
        return scores
    used = np.unique(np.concatenate([i, j]))  # window sums only for images in some pair
    slot = np.zeros(len(thumbs), np.int64)
    slot[used] = np.arange(len(used))
    sums, squares = (torch.from_numpy(a) for a in window_sums(thumbs[used], s))
    offsets = torch.arange(2 * s + 1) - s
    count = ((t - offsets.abs())[:, None] * (t - offsets.abs())[None, :]).to(torch.float32)
    with torch.no_grad():
        for lo in range(0, len(i), BATCH):
            ia, jb = i[lo : lo + BATCH], j[lo : lo + BATCH]
            a = torch.from_numpy(thumbs[ia].astype(np.float32))  # (P, t, t), each pair's own kernel
            moved = np.zeros((1, len(jb), t + 2 * s, t + 2 * s), np.float32)  # B, zero-padded by s
            moved[0, :, s : s + t, s : s + t] = thumbs[jb]
            cross = F.conv2d(torch.from_numpy(moved), a[:, None], groups=len(ia))[0]  # (P, 2s+1, 2s+1)
            sb, qb = sums[slot[jb]], squares[slot[jb]]
            # A's overlap region for shift (y, x) is its own region for the opposite shift.
            sa, qa = sums[slot[ia]].flip(-1).flip(-2), squares[slot[ia]].flip(-1).flip(-2)
            cov = cross - sa * sb / count
            var_a = (qa - sa * sa / count).clamp_min(1e-6)
            var_b = (qb - sb * sb / count).clamp_min(1e-6)
            corr = cov / torch.sqrt(var_a * var_b)
            scores[lo : lo + len(ia)] = subpixel_peak(corr).numpy()
    return np.minimum(scores, 1.0)


def subpixel_peak(corr: torch.Tensor) -> torch.Tensor:
    """Max of each (P, k, k) correlation surface, refined to sub-pixel: a copy shifted by half a pixel
    peaks between two integer shifts. Near its top a correlation peak is close to a Gaussian, so a
    parabola is fitted to the logs of the peak and its two neighbours on each axis (the classic
    three-point Gaussian peak fit); a peak on the edge of the shift window or with a non-positive
    neighbour is left as it is."""
    p, k, _ = corr.shape
    flat = corr.flatten(1).argmax(1)
    y, x = flat // k, flat % k
    rows = torch.arange(p)
    peak = corr[rows, y, x]
    log_peak = torch.log(peak.clamp_min(1e-6))
    refined = log_peak.clone()
    for axis in (0, 1):
        pos = y if axis == 0 else x
        lo, hi = (pos - 1).clamp(0, k - 1), (pos + 1).clamp(0, k - 1)
        before = corr[rows, lo, x] if axis == 0 else corr[rows, y, lo]
        after = corr[rows, hi, x] if axis == 0 else corr[rows, y, hi]
        log_before, log_after = torch.log(before.clamp_min(1e-6)), torch.log(after.clamp_min(1e-6))
        curvature = log_before - 2 * log_peak + log_after
        gain = (log_before - log_after) ** 2 / (-8 * curvature).clamp_min(1e-9)
        usable = (pos > 0) & (pos < k - 1) & (before > 0) & (after > 0) & (curvature < 0)
        refined = refined + torch.where(usable, gain, torch.zeros_like(gain))
    return refined.exp()
