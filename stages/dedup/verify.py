"""Verify candidate pairs: is B a copy of A (re-shot, re-encoded, resized, re-lit) or another item?

Both thumbnails are gray, THUMB x THUMB, z-scored (signatures.py), at about the cache's native
detail. For a batch of pairs, all in torch:

1. Align. The overlap-normalised cross-correlation of the lightly blurred thumbnails over every
   integer shift up to `max_shift`, the
   best shift refined to sub-pixel by a parabola through the peak and its neighbours, then B resampled
   (bicubic) onto A's grid. Brightness and contrast are absorbed by the z-scoring and by comparing
   correlations, never raw differences.
2. Compare where both images have content, at the fine scale, window by window. In each 8 x 8
   window (stride 4) of the aligned pair, the structural term of SSIM, (2 cov + c) / (var_a + var_b + c)
   with c a small fraction of the image variance, is near 1 for a copy (JPEG noise and resampling blur
   barely move it) and drops where the two differ: another texture in the same silhouette, one changed
   detail, another small object on a shared background. The score is the lowest window: a copy must
   match everywhere, so one differing detail is enough to refuse.

Before both, a cheap gate (`gate_scores`): the same shift search on 16 x 16, more blurred copies
(made once per image; a tenth of the cost per pair). A pair under GATE there has never lined up at
the full size either, so it is refused unverified; on most data the bulk of the candidates are
distinct items and stop here.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from stages.dedup.workers import map_batches

BATCH = 4096  # pairs per batch (one worker each: workers.py)
ALIGN_BLUR = 1.0  # thumbnail pixels of Gaussian blur for the alignment search only
WINDOW, STRIDE = 8, 4  # local comparison windows (thumbnail pixels)
FLAT = 0.05  # SSIM's stabiliser c, as a fraction of the (unit) image variance: windows flatter than this match


def blur_matrix(t: int, sigma: float) -> torch.Tensor:
    """(t, t) matrix M with M @ x = x blurred along its first axis by a Gaussian (borders reflected):
    a batch of thumbnails is blurred by two matrix products, far faster than a tiny convolution."""
    radius = max(1, int(3 * sigma))
    offsets = torch.arange(-radius, radius + 1)
    weights = torch.exp(-(offsets.float() ** 2) / (2 * sigma**2))
    weights = weights / weights.sum()
    m = torch.zeros(t, t)
    rows = torch.arange(t)
    for o, w in zip(offsets.tolist(), weights.tolist()):
        cols = rows + o
        cols = torch.where(cols < 0, -cols - 1, torch.where(cols >= t, 2 * t - cols - 1, cols))  # reflect
        m.index_put_((rows, cols.clamp(0, t - 1)), torch.full((t,), w), accumulate=True)
    return m


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """(P, t, t) -> the same, Gaussian-blurred with reflected borders."""
    m = blur_matrix(images.shape[-1], sigma)
    return m @ images @ m.T


def box_sums(x: torch.Tensor, s: int) -> torch.Tensor:
    """Sum of x over the rows [max(0, y-s), min(t, t+y-s)) and the same columns, for y, x in 0..2s:
    (P, 2s+1, 2s+1), from cumulative sums (rows first, then columns)."""
    t = x.shape[-1]
    shifts = torch.arange(2 * s + 1) - s
    lo, hi = shifts.clamp_min(0), (t + shifts).clamp_max(t)
    rows = F.pad(x.cumsum(1), (0, 0, 1, 0))
    rows = rows[:, hi] - rows[:, lo]  # (P, 2s+1, t)
    cols = F.pad(rows.cumsum(2), (1, 0))
    return cols[:, :, hi] - cols[:, :, lo]


def shift_surface(a: torch.Tensor, b: torch.Tensor, s: int) -> torch.Tensor:
    """Overlap-normalised correlation of a and b for every shift (dy, dx) in [-s, s]^2: (P, 2s+1, 2s+1).
    Entry (y, x) compares a[r, c] with b[r + y - s, c + x - s]; the cross terms of all shifts come from
    one FFT product (zero padding by s keeps them from wrapping around; half the CPU time of
    (2s+1)^2 shifted multiply-adds)."""
    t = a.shape[-1]
    n = (t + s + 3) // 4 * 4  # FFT sizes with small factors are the fast ones
    spectrum = torch.fft.rfft2(b, s=(n, n)) * torch.conj(torch.fft.rfft2(a, s=(n, n)))
    full = torch.fft.irfft2(spectrum, s=(n, n))  # full[u, v] = sum a[r, c] b[r + u, c + v] (mod n)
    index = (torch.arange(2 * s + 1) - s) % n
    cross = full[:, index][:, :, index]
    shifts = (torch.arange(2 * s + 1) - s).abs()
    count = ((t - shifts)[:, None] * (t - shifts)[None, :]).float()
    sum_b, sq_b = box_sums(b, s), box_sums(b * b, s)
    sum_a, sq_a = box_sums(a, s).flip(-1).flip(-2), box_sums(a * a, s).flip(-1).flip(-2)
    cov = cross - sum_a * sum_b / count
    var_a = (sq_a - sum_a**2 / count).clamp_min(1e-6)
    var_b = (sq_b - sum_b**2 / count).clamp_min(1e-6)
    return cov / torch.sqrt(var_a * var_b)


def peak_offset(surface: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-pixel position (dy, dx) of each surface's maximum, in shift units (parabola fit per axis)."""
    p, k, _ = surface.shape
    flat = surface.flatten(1).argmax(1)
    y, x = flat // k, flat % k
    rows = torch.arange(p)
    peak = surface[rows, y, x]
    out = []
    for pos, axis in ((y, 0), (x, 1)):
        lo, hi = (pos - 1).clamp(0, k - 1), (pos + 1).clamp(0, k - 1)
        before = surface[rows, lo, x] if axis == 0 else surface[rows, y, lo]
        after = surface[rows, hi, x] if axis == 0 else surface[rows, y, hi]
        curvature = before - 2 * peak + after
        delta = torch.where((pos > 0) & (pos < k - 1) & (curvature < 0), 0.5 * (before - after) / curvature.clamp_max(-1e-6), 0.0)
        out.append(pos.float() - s + delta.clamp(-0.5, 0.5))
    return out[0], out[1]


def resample(b: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """B moved so that A[r, c] lines up with B[r + dy, c + dx] (bicubic, borders replicated)."""
    p, t, _ = b.shape
    base = (torch.arange(t, dtype=torch.float32) + 0.5) / t * 2 - 1
    gy = base[None, :, None] + (2 * dy / t)[:, None, None]
    gx = base[None, None, :] + (2 * dx / t)[:, None, None]
    grid = torch.stack([gx.expand(p, t, t), gy.expand(p, t, t)], -1)
    return F.grid_sample(b[:, None], grid, mode="bicubic", padding_mode="border", align_corners=False)[:, 0]


def window_similarity(a: torch.Tensor, b: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Lowest SSIM structure term over the 8x8 windows inside the overlap (margin px from the border),
    for z-scored images: a window flatter than FLAT in both images counts as matching."""
    def pool(x):
        return F.avg_pool2d(x[:, None], WINDOW, STRIDE)[:, 0]

    mean_a, mean_b = pool(a), pool(b)
    var_a = (pool(a * a) - mean_a**2).clamp_min(0)
    var_b = (pool(b * b) - mean_b**2).clamp_min(0)
    cov = pool(a * b) - mean_a * mean_b
    local = (2 * cov + FLAT) / (var_a + var_b + FLAT)
    t = a.shape[-1]
    starts = torch.arange(local.shape[-1]) * STRIDE
    inside = (starts[None, :] >= margin[:, None]) & (starts[None, :] + WINDOW <= t - margin[:, None])  # (P, w)
    valid = inside[:, :, None] & inside[:, None, :]
    return torch.where(valid, local, torch.full_like(local, 2.0)).flatten(1).min(1).values.clamp_max(1.0)


GATE_FACTOR = 2  # the gate compares thumbnails average-pooled by this factor (16 x 16 of 32 x 32)
GATE_BLUR = 2.0  # thumbnail pixels of blur before pooling: a half-pixel misalignment at 16 px barely moves the gate
# Gate correlation under which a pair is refused unverified. On bench/dedup_quality.py's calibration half
# (--half top) every candidate that reached the fine comparison (COARSE_GATE) scored >= 0.77 here
# (copies >= 0.91; distinct items from -0.3 up); 0.7 keeps a margin. On the reported half none of the
# pairs the verifier accepts or compares finely is under it (bench/README.md).
GATE = 0.7
MATCH_BLURS = (0.6, 1.2)  # blurs tried on one image so that a resized or blurred copy matches the sharper one
COARSE_GATE = 0.8  # blurred, aligned correlation under which a pair is refused without the fine comparison
COLOUR_FLAT = 64.0  # (8 Lab units)^2: chroma means and variances below this scale count as gray


def inner(x: torch.Tensor, margin: int) -> torch.Tensor:
    return x[:, margin : x.shape[1] - margin, margin : x.shape[2] - margin]


def inner_correlation(a: torch.Tensor, b: torch.Tensor, margin: int) -> torch.Tensor:
    a, b = inner(a, margin), inner(b, margin)
    a = a - a.mean((1, 2), keepdim=True)
    b = b - b.mean((1, 2), keepdim=True)
    return (a * b).sum((1, 2)) / torch.sqrt((a * a).sum((1, 2)) * (b * b).sum((1, 2))).clamp_min(1e-6)


def match_blur(a: torch.Tensor, b: torch.Tensor, margin: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The pair with one image blurred to match the other (or neither), whichever correlates best: a
    resized or blurred copy has lost the fine detail its original still has; compared as they are,
    every textured window would differ."""
    best_a, best_b, best = a, b, inner_correlation(a, b, margin)
    for sigma in MATCH_BLURS:
        for x, y in ((blur(a, sigma), b), (a, blur(b, sigma))):
            corr = inner_correlation(x, y, margin)
            better = (corr > best)[:, None, None]
            best_a, best_b, best = torch.where(better, x, best_a), torch.where(better, y, best_b), torch.maximum(corr, best)
    return best_a, best_b


def colour_similarity(a: torch.Tensor, b: torch.Tensor, margin: int) -> torch.Tensor:
    """SSIM (mean and structure terms) of the aligned chroma thumbnails (P, c, c, 2), the worse of the
    two channels. A copy keeps its colours (brightness and JPEG barely move Lab a/b); a recoloured
    picture does not. Gray content (chroma near 0 in both) compares as equal."""
    a, b = inner(a, margin), inner(b, margin)
    mean_a, mean_b = a.mean((1, 2)), b.mean((1, 2))
    var_a, var_b = a.var((1, 2), unbiased=False), b.var((1, 2), unbiased=False)
    cov = ((a - mean_a[:, None, None]) * (b - mean_b[:, None, None])).mean((1, 2))
    mean_term = (2 * mean_a * mean_b + COLOUR_FLAT) / (mean_a**2 + mean_b**2 + COLOUR_FLAT)
    structure = (2 * cov + COLOUR_FLAT) / (var_a + var_b + COLOUR_FLAT)
    return (mean_term * structure).min(1).values.clamp(0, 1)


def verify_batch(a: torch.Tensor, b: torch.Tensor, max_shift: int, chroma: tuple | None = None) -> dict[str, torch.Tensor]:
    s = max_shift
    surface = shift_surface(blur(a, ALIGN_BLUR), blur(b, ALIGN_BLUR), s)
    dy, dx = peak_offset(surface, s)
    out = {"coarse": surface.flatten(1).max(1).values, "dy": dy, "dx": dx}
    out["structure"], out["colour"] = torch.zeros_like(dy), torch.ones_like(dy)
    # A pair that does not line up even blurred is no copy (copies score >= 0.95 here on the quality
    # benchmark): the fine comparison, 2/3 of the cost, is spent on the others only.
    close = torch.nonzero(out["coarse"] >= COARSE_GATE).flatten()
    if len(close):
        a, b, dy, dx = a[close], b[close], dy[close], dx[close]
        aligned = resample(b, dy, dx)
        margin = torch.ceil(torch.maximum(dy.abs(), dx.abs())).long()
        ma, mb = match_blur(a, aligned, s)
        out["structure"][close] = window_similarity(ma, mb, margin)
        if chroma is not None:
            ca, cb = chroma[0][close], chroma[1][close]
            scale = ca.shape[1] / a.shape[1]
            moved = torch.stack([resample(cb[..., c], dy * scale, dx * scale) for c in range(2)], -1)
            out["colour"][close] = colour_similarity(ca, moved, int(np.ceil(s * scale)))
    out["score"] = torch.minimum(out["structure"], out["colour"])
    return out


def rows(x: np.ndarray, ids) -> torch.Tensor:
    return torch.from_numpy(x[ids].astype(np.float32))


def gate_thumbs(thumbs: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """(N, t, t) thumbnails -> (N, t / GATE_FACTOR, t / GATE_FACTOR) float16: blurred by GATE_BLUR,
    average-pooled; one linear map per axis (blur then pool), computed once per image, not per pair."""
    t = thumbs.shape[-1]
    side = t // GATE_FACTOR
    m = blur_matrix(t, GATE_BLUR).reshape(side, GATE_FACTOR, t).mean(1)  # (side, t): blur, then pool rows
    out = np.empty((len(thumbs), side, side), np.float16)

    def fill(lo: int) -> None:
        out[lo : lo + chunk] = (m @ rows(thumbs, slice(lo, lo + chunk)) @ m.T).half().numpy()

    map_batches(fill, range(0, len(thumbs), chunk), "gate thumbnails")
    return out


def gate_scores(a: torch.Tensor, b: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Best overlap-normalised correlation of two batches of gate thumbnails over the shifts that
    cover +-max_shift full-size thumbnail pixels: (P,)."""
    return shift_surface(a, b, -(-max_shift // GATE_FACTOR)).flatten(1).max(1).values


def pair_scores(thumbs: np.ndarray, i: np.ndarray, j: np.ndarray, max_shift: int, chroma: np.ndarray | None = None,
                progress=None, always: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Verification of each pair (i[k], j[k]): 'score' (the copy score, 0..1: the lower of the
    structural and the colour similarity), its two parts, the sub-pixel shift found, the gate value
    and whether the pair was verified. Pairs under GATE score 0 unverified unless `always` (a bool
    per pair) asks for the full verification (the auto threshold's calibration sample)."""
    n = len(i)
    out = {k: np.zeros(n, np.float32) for k in ("score", "structure", "dy", "dx", "gate")}
    out["colour"], out["verified"] = np.ones(n, np.float32), np.zeros(n, bool)
    always = np.zeros(n, bool) if always is None else always
    small = gate_thumbs(thumbs) if n else None

    def score_batch(lo: int) -> None:  # fills its own slice of `out`
        ia, jb = i[lo : lo + BATCH], j[lo : lo + BATCH]
        gate = gate_scores(rows(small, ia), rows(small, jb), max_shift).numpy()
        chosen = np.flatnonzero((gate >= GATE) | always[lo : lo + BATCH])
        out["gate"][lo : lo + len(ia)] = gate
        out["verified"][lo + chosen] = True
        if not len(chosen):
            return
        ia, jb = ia[chosen], jb[chosen]  # only these need their full thumbnails
        colour = None if chroma is None else (rows(chroma, ia), rows(chroma, jb))
        for k, v in verify_batch(rows(thumbs, ia), rows(thumbs, jb), max_shift, colour).items():
            if k in out:
                out[k][lo + chosen] = v.numpy()

    map_batches(score_batch, range(0, n, BATCH), "verify", progress)
    return out
