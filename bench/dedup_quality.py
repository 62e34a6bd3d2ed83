"""Dedup quality: pairwise precision and recall on data with known, injected near-duplicates.

Two datasets, each a set of distinct images plus injected copies (exact, re-encoded JPEG, shifted
1-2 px, brighter or darker, resize round trip):
  small gray:  scikit-learn's handwritten digits upscaled to 28 x 28 (the hard case: one kind of
               object, few pixels, thousands of similar items)
  colour:      generated 128 x 128 colour scenes (gradient, shapes, texture)
Every image goes through preprocess's own per-image path with the default params (median filter,
auto size), then through dedup. Pairwise precision/recall compare the predicted clusters with the true
groups (original + its copies). Printed: the curve over dedup.threshold for the shift-tolerant
correlation, and the hash-only baseline (pHash within a Hamming radius, no verification).

    python bench/dedup_quality.py [--copies 0.25] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.params import load_params  # noqa: E402
from stages.dedup import exact_pairs  # noqa: E402
from stages.dedup.search import hash_pairs  # noqa: E402
from stages.dedup.signatures import signatures  # noqa: E402
from stages.dedup.verify import shift_correlation  # noqa: E402
from stages.preprocess import auto_size, process, target_hw  # noqa: E402
from stages.dedup.union_find import UnionFind  # noqa: E402

THRESHOLDS = (0.90, 0.95, 0.97, 0.98, 0.985, 0.99, 0.993, 0.995, 0.996, 0.997, 0.998, 0.999)
RADII = (2, 4, 6, 8, 10, 12)
TRANSFORMS = ("exact", "jpeg", "shift", "brightness", "resize")


def small_gray() -> list[np.ndarray]:
    """MNIST-like: each 8x8 digit upscaled to a 20x20 box centred in 28x28 (MNIST's own framing)."""
    from sklearn.datasets import load_digits

    images = []
    for d in load_digits().images * (255.0 / 16.0):
        box = cv2.resize(d.astype(np.float32), (20, 20), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
        images.append(cv2.copyMakeBorder(box, 4, 4, 4, 4, cv2.BORDER_CONSTANT, value=0)[:, :, None])
    return images


def colour_scenes(n: int, rng: np.random.Generator, side: int = 128) -> list[np.ndarray]:
    images = []
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    for _ in range(n):
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        angle = rng.uniform(0, np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy)[:, :, None]
        image = (c0 * (1 - t) + c1 * t).astype(np.float32)
        for _ in range(rng.integers(3, 7)):
            colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
            centre = tuple(int(v) for v in rng.integers(0, side, 2))
            if rng.random() < 0.5:
                cv2.circle(image, centre, int(rng.integers(6, side // 3)), colour, -1)
            else:
                size = rng.integers(8, side // 2, 2)
                cv2.rectangle(image, centre, (int(centre[0] + size[0]), int(centre[1] + size[1])), colour, -1)
        image += cv2.GaussianBlur(rng.normal(0, 12, image.shape).astype(np.float32), (0, 0), 1.5)
        images.append(image.clip(0, 255).astype(np.uint8))
    return images


def transform(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    if kind == "exact":
        out = image.copy()
    elif kind == "jpeg":
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 95))])
        out = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    elif kind == "shift":
        dy, dx = (rng.integers(1, 3) * rng.choice([-1, 1]) for _ in range(2))
        matrix = np.float32([[1, 0, dx], [0, 1, dy]])
        out = cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE)
    elif kind == "brightness":
        out = (image.astype(np.int16) + int(rng.integers(10, 30)) * int(rng.choice([-1, 1]))).clip(0, 255).astype(np.uint8)
    else:  # resize round trip
        f = rng.uniform(0.5, 0.8)
        small = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return out.reshape(h, w, -1)


def inject(originals: list[np.ndarray], fraction: float, rng: np.random.Generator):
    """originals + copies; returns (images, true group per image, transform per image)."""
    images, groups, kinds = list(originals), list(range(len(originals))), ["original"] * len(originals)
    for g in rng.choice(len(originals), int(fraction * len(originals)), replace=False):
        for _ in range(rng.integers(1, 4)):
            kind = TRANSFORMS[rng.integers(len(TRANSFORMS))]
            images.append(transform(originals[g], kind, rng))
            groups.append(int(g))
            kinds.append(kind)
    return images, np.array(groups), kinds


def pair_count(labels: np.ndarray) -> int:
    _, counts = np.unique(labels, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def pairwise_pr(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    both = pred.astype(np.int64) * (truth.max() + 1) + truth
    tp, predicted, true = pair_count(both), pair_count(pred), pair_count(truth)
    return (tp / predicted if predicted else 1.0), (tp / true if true else 1.0)


def clusters_from(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    uf = UnionFind(n)
    for x, y in zip(a.tolist(), b.tolist()):
        uf.union(x, y)
    return uf.labels()


def evaluate(name: str, originals: list[np.ndarray], params, rng: np.random.Generator, fraction: float) -> dict:
    images, truth, kinds = inject(originals, fraction, rng)
    p, d = params.preprocess, params.dedup
    hw = target_hw(auto_size([max(im.shape[:2]) for im in originals], p.size_range))
    channels = originals[0].shape[2]
    t0 = time.perf_counter()
    cache = [process(im, p, channels, hw) for im in images]
    t1 = time.perf_counter()
    ea, eb = exact_pairs(iter(cache), len(cache))
    thumbs, stds, hashes = signatures(iter(cache), len(cache))
    keep = np.flatnonzero(stds >= d.min_std)
    ci, cj, dist = hash_pairs(hashes[keep], max(max(RADII), d.radius), d.window)
    ci, cj = keep[ci], keep[cj]
    on_radius = dist <= d.radius
    scores = shift_correlation(thumbs, ci[on_radius], cj[on_radius], d.max_shift)
    t2 = time.perf_counter()
    print(f"\n== {name}: {len(originals)} distinct + {len(images) - len(originals)} copies, cache {hw[0]}x{hw[1]}x{channels}, "
          f"{int(on_radius.sum())} candidates at radius {d.radius}; preprocess {t1 - t0:.1f}s, dedup {t2 - t1:.1f}s")
    print("hash only (no verification):   radius  precision  recall")
    for r in RADII:
        m = dist <= r
        pr = pairwise_pr(clusters_from(len(cache), np.r_[ea, ci[m]], np.r_[eb, cj[m]]), truth)
        print(f"                                {r:>6}  {pr[0]:9.3f}  {pr[1]:6.3f}")
    print(f"hash radius {d.radius} + correlation:  threshold  precision  recall")
    curve = {}
    for t in sorted(set(THRESHOLDS) | {d.threshold}):
        m = scores >= t
        pred = clusters_from(len(cache), np.r_[ea, ci[on_radius][m]], np.r_[eb, cj[on_radius][m]])
        curve[t] = pairwise_pr(pred, truth)
        mark = "  <- default" if t == d.threshold else ""
        print(f"                                {t:9.3f}  {curve[t][0]:9.3f}  {curve[t][1]:6.3f}{mark}")
    # recall per transform at the default threshold: is each copy in its original's cluster?
    m = scores >= d.threshold
    pred = clusters_from(len(cache), np.r_[ea, ci[on_radius][m]], np.r_[eb, cj[on_radius][m]])
    per_kind = {k: float(np.mean([pred[i] == pred[truth[i]] for i in range(len(images)) if kinds[i] == k])) for k in TRANSFORMS}
    print("copy found, by transform at default: " + ", ".join(f"{k} {v:.2f}" for k, v in per_kind.items()))
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=float, default=0.25, help="fraction of originals that get 1-3 copies")
    ap.add_argument("--colour", type=int, default=1500, help="distinct colour scenes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--params", default=str(Path(__file__).resolve().parents[1] / "params.yaml"))
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="params override, e.g. -S dedup.radius=10")
    args = ap.parse_args()
    params, _ = load_params(Path(args.params), args.overrides)
    print(f"dedup params: {params.dedup.model_dump()}")
    rng = np.random.default_rng(args.seed)
    gray = evaluate("small gray (MNIST-like digits 28x28)", small_gray(), params, rng, args.copies)
    colour = evaluate("colour scenes 128x128", colour_scenes(args.colour, rng), params, rng, args.copies)
    # The default must hold on both kinds of data: pick the threshold whose worst P or R is highest.
    worst = {t: min(*gray[t], *colour[t]) for t in gray}
    best = max(worst, key=worst.get)
    print("\nthreshold  min(P, R) over both datasets")
    for t, w in worst.items():
        marks = ("  <- best" if t == best else "") + ("  <- default (dedup.threshold)" if t == params.dedup.threshold else "")
        print(f"{t:9.3f}  {w:.3f}{marks}")


if __name__ == "__main__":
    main()
