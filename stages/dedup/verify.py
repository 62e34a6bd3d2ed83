"""Verify candidate pairs: is B a copy of A (re-shot, re-encoded, resized, re-lit) or another item?

Both thumbnails are gray, THUMB x THUMB, z-scored (signatures.py), at about the cache's native
detail. For a batch of pairs, all in torch:

1. Align. The overlap-normalised cross-correlation of the lightly blurred thumbnails over every
   integer shift up to `max_shift`, the best shift refined to sub-pixel by a parabola through the
   peak and its neighbours, then B resampled (bicubic) onto A's grid; a pair whose best shift is the largest searched has no peak and is
   refused (on_border); then one of the two blurred to match the other, or both lightly, or
   neither, whichever correlates best (match_blur: a resized copy has lost fine detail, a sub-pixel
   shift aliases it differently). Brightness and contrast are absorbed by the z-scoring and step 2's
   gain fit.
2. Compare, place by place, what is left after the alignment. B is fitted to A by one gain and
   offset (least squares over the overlap), the residual r = A - fitted B is squared and averaged
   in a small Gaussian window (RESIDUAL_BLUR) at every pixel, and set against the content there:
       similarity(x) = 1 - local mean of r^2 / (local var A + local var B + 2 STABILISER var A).
   A copy leaves a residual of JPEG noise and resampling blur: small against the picture's contrast,
   so every place scores near 1 (the STABILISER term keeps a flat patch's JPEG noise from counting
   as a difference: the window SSIM this replaces failed re-encoded copies there). A changed detail
   leaves a residual as strong as the picture's own contrast in one place; another texture in the same
   silhouette or another object on a shared background, in many. The score is the lowest place: a
   copy must match everywhere.
3. For colour data, the same for the aligned chroma thumbnails (colour_similarity); the pair's score
   is the lower of the two.

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
# The local comparison (residual_similarity). Chosen on bench/dedup_quality.py's calibration half (--half
# top, seeds 0-2: twelve datasets) with the threshold, for the best worst case over all of them
# (bench/README.md); the window SSIM it replaces lost JPEG'd copies of textured items in their flat parts.
RESIDUAL_BLUR = 1.2  # sigma of the Gaussian window, thumbnail pixels: about a 3-px detail of a 28-px item
STABILISER = 0.25  # in units of the image variance: a residual must be this strong against the picture to count


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


def overlap_mask(t: int, margin: torch.Tensor) -> torch.Tensor:
    """(P, t, t) float mask of the pixels at least `margin` (per pair) from the border: where both
    images have content after B was moved."""
    idx = torch.arange(t)
    inside = (idx[None, :] >= margin[:, None]) & (idx[None, :] < t - margin[:, None])
    return (inside[:, :, None] & inside[:, None, :]).float()


def residual_similarity(a: torch.Tensor, b: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Lowest local similarity of aligned images a and b over their overlap (module docstring, step 2): (P,)."""
    mask = overlap_mask(a.shape[-1], margin)
    count = mask.sum((1, 2)).clamp_min(1)
    a = (a - (a * mask).sum((1, 2), keepdim=True) / count[:, None, None]) * mask
    b = (b - (b * mask).sum((1, 2), keepdim=True) / count[:, None, None]) * mask
    gain = (a * b).sum((1, 2)) / (b * b).sum((1, 2)).clamp_min(1e-6)
    b = b * gain[:, None, None]
    variance = (a * a).sum((1, 2)) / count  # of A over the overlap

    def local(x):
        return blur(x, RESIDUAL_BLUR)

    var_a = (local(a * a) - local(a) ** 2).clamp_min(0)
    var_b = (local(b * b) - local(b) ** 2).clamp_min(0)
    residual = local((a - b) ** 2)
    similarity = 1 - residual / (var_a + var_b + 2 * STABILISER * variance.clamp_min(1e-6)[:, None, None])
    return torch.where(mask > 0, similarity, torch.full_like(similarity, 2.0)).flatten(1).min(1).values.clamp(0, 1)


GATE_FACTOR = 2  # the gate compares thumbnails average-pooled by this factor (16 x 16 of 32 x 32)
GATE_BLUR = 2.0  # thumbnail pixels of blur before pooling: a half-pixel misalignment at 16 px barely moves the gate
# Gate correlation under which a pair is refused unverified. On bench/dedup_quality.py's calibration half
# (--half top) every candidate that reached the fine comparison (COARSE_GATE) scored >= 0.77 here
# (copies >= 0.91; distinct items from -0.3 up); 0.7 keeps a margin. On the reported half none of the
# pairs the verifier accepts or compares finely is under it (bench/README.md).
GATE = 0.7
MATCH_BLURS = (0.6, 1.2)  # blurs tried on one image so that a resized or blurred copy matches the sharper one
BOTH_BLUR = 0.5  # blur tried on both: a sub-pixel shift aliases the finest detail differently
COARSE_GATE = 0.8  # blurred, aligned correlation under which a pair is refused without the fine comparison
COLOUR_FLAT = 64.0  # (8 Lab units)^2: chroma means and variances below this scale count as gray
# The colour check's worst place (colour_similarity): chosen with the residual on the calibration half;
# scenes' recoloured and shared-background negatives went from 0.957-0.967 to 0.976-0.984 there.
COLOUR_BLUR = 1.5  # chroma-thumbnail pixels (of 16)
COLOUR_LOCAL_FLAT = 1000.0  # (~22 Lab units)^2: JPEG's halved chroma resolution moves a copy's a/b locally


def inner(x: torch.Tensor, margin: int) -> torch.Tensor:
    return x[:, margin : x.shape[1] - margin, margin : x.shape[2] - margin]


def inner_correlation(a: torch.Tensor, b: torch.Tensor, margin: int) -> torch.Tensor:
    a, b = inner(a, margin), inner(b, margin)
    a = a - a.mean((1, 2), keepdim=True)
    b = b - b.mean((1, 2), keepdim=True)
    return (a * b).sum((1, 2)) / torch.sqrt((a * a).sum((1, 2)) * (b * b).sum((1, 2))).clamp_min(1e-6)


def match_blur(a: torch.Tensor, b: torch.Tensor, margin: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The pair with one image blurred to match the other, or both lightly blurred, or neither,
    whichever correlates best: a resized or blurred copy has lost the fine detail its original still
    has, and a copy shifted by a fraction of a pixel has its finest detail aliased differently in the
    thumbnail (resampling cannot undo that; a light blur of both removes it). Compared as they are,
    every textured place would differ."""
    candidates = [(blur(a, sigma), b) for sigma in MATCH_BLURS] + [(a, blur(b, sigma)) for sigma in MATCH_BLURS]
    candidates.append((blur(a, BOTH_BLUR), blur(b, BOTH_BLUR)))
    best_a, best_b, best = a, b, inner_correlation(a, b, margin)
    for x, y in candidates:
        corr = inner_correlation(x, y, margin)
        better = (corr > best)[:, None, None]
        best_a, best_b, best = torch.where(better, x, best_a), torch.where(better, y, best_b), torch.maximum(corr, best)
    return best_a, best_b


def colour_similarity(a: torch.Tensor, b: torch.Tensor, margin: int) -> torch.Tensor:
    """Colour agreement of the aligned chroma thumbnails (P, c, c, 2), 0..1: the lower of
    - the whole picture: SSIM (mean and structure terms) per Lab channel, the worse channel;
    - the worst place: 1 - the local squared a/b difference against the local chroma energy of both
      (+ COLOUR_LOCAL_FLAT), in Gaussian windows of COLOUR_BLUR chroma pixels: a recoloured object, or
      another object, on a shared gray or dark background barely moves the whole picture's statistics.
    A copy keeps its colours (brightness and JPEG barely move Lab a/b); gray content (chroma near 0
    in both) compares as equal."""
    a, b = inner(a, margin), inner(b, margin)
    mean_a, mean_b = a.mean((1, 2)), b.mean((1, 2))
    var_a, var_b = a.var((1, 2), unbiased=False), b.var((1, 2), unbiased=False)
    cov = ((a - mean_a[:, None, None]) * (b - mean_b[:, None, None])).mean((1, 2))
    mean_term = (2 * mean_a * mean_b + COLOUR_FLAT) / (mean_a**2 + mean_b**2 + COLOUR_FLAT)
    structure = (2 * cov + COLOUR_FLAT) / (var_a + var_b + COLOUR_FLAT)
    whole = (mean_term * structure).min(1).values
    difference = blur(((a - b) ** 2).sum(-1), COLOUR_BLUR)
    energy = blur((a * a).sum(-1) + (b * b).sum(-1), COLOUR_BLUR)
    worst_place = (1 - difference / (energy + COLOUR_LOCAL_FLAT)).flatten(1).min(1).values
    return torch.minimum(whole, worst_place).clamp(0, 1)


def on_border(dy: torch.Tensor, dx: torch.Tensor, max_shift: int) -> torch.Tensor:
    """True where the best alignment is the largest shift searched on either axis (the parabola
    cannot refine it there). A copy shifted by up to about max_shift - 0.5 peaks inside the search.
    Two distinct crops of one long edge (a retina's rim, a horizon) match almost equally well at any
    shift along the edge: their surface is a ridge, not a peak, and where the ridge leaves the
    searched shifts its best value lies on the border (tests/test_dedup.py builds that case). On the
    quality benchmark's calibration half, refusing them took colour photos' worst precision from
    0.955 to 0.975; the true pairs there (1-1.5% of digits' and look-alikes': a shifted copy shifted
    again) stay linked through the copy between. max_shift 0 searches no shift and has no border."""
    if max_shift == 0:
        return torch.zeros_like(dy, dtype=torch.bool)
    return (dy.abs() >= max_shift) | (dx.abs() >= max_shift)


def verify_batch(a: torch.Tensor, b: torch.Tensor, max_shift: int, chroma: tuple | None = None) -> dict[str, torch.Tensor]:
    s = max_shift
    surface = shift_surface(blur(a, ALIGN_BLUR), blur(b, ALIGN_BLUR), s)
    dy, dx = peak_offset(surface, s)
    out = {"coarse": surface.flatten(1).max(1).values, "dy": dy, "dx": dx}
    out["structure"], out["colour"] = torch.zeros_like(dy), torch.ones_like(dy)
    # A pair that does not line up even blurred is no copy (copies score >= 0.95 here on the quality
    # benchmark): the fine comparison, 2/3 of the cost, is spent on the others only. Nor is a pair whose
    # best alignment lies on the border of the search (on_border): it has no peak inside it.
    close = torch.nonzero((out["coarse"] >= COARSE_GATE) & ~on_border(dy, dx, s)).flatten()
    if len(close):
        a, b, dy, dx = a[close], b[close], dy[close], dx[close]
        aligned = resample(b, dy, dx)
        margin = torch.ceil(torch.maximum(dy.abs(), dx.abs())).long()
        ma, mb = match_blur(a, aligned, s)
        out["structure"][close] = residual_similarity(ma, mb, margin)
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
