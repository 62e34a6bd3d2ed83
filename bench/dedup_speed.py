"""Dedup speed: candidate search over 64-bit hashes at 100k and 1M images, plus union-find.

Random 64-bit hashes stand in for the images' DCT hashes; 10% of them are replaced by near copies of
another (0..radius bits flipped) so the search has real pairs to find and a recall to report. Each
size runs in a fresh subprocess so its peak memory (max RSS) is its own; the tracemalloc peak of the
search itself is reported too. Also timed: the full per-image path (signatures + search + verification)
on synthetic 64x64 cached images, as images/s, and on crowded augmented digits (the worst case for
the verification: many similar siblings per image).

    python bench/dedup_speed.py [--sizes 100000 1000000] [--images 20000] [--crowded 20000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.params import load_params  # noqa: E402


def planted_hashes(n: int, radius: int, rng: np.random.Generator):
    hashes = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    copies = rng.choice(n, n // 10, replace=False)
    sources = np.setdiff1d(np.arange(n), copies)[rng.integers(0, n - len(copies), len(copies))]
    for c, s in zip(copies, sources):
        flips = rng.choice(64, rng.integers(0, radius + 1), replace=False).astype(np.uint64)
        hashes[c] = hashes[s] ^ np.bitwise_or.reduce(np.uint64(1) << flips, initial=np.uint64(0))
    return hashes, copies, sources


def one_size(n: int, seed: int) -> dict:
    from stages.dedup.search import hash_pairs
    from stages.dedup.union_find import UnionFind

    d = load_params(ROOT / "params.yaml")[0].dedup
    hashes, copies, sources = planted_hashes(n, d.radius, np.random.default_rng(seed))
    tracemalloc.start()
    t0 = time.perf_counter()
    i, j, _ = hash_pairs(hashes, d.radius, d.window)
    t1 = time.perf_counter()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    uf = UnionFind(n)
    for a, b in zip(i.tolist(), j.tolist()):
        uf.union(a, b)
    labels = uf.labels()
    t2 = time.perf_counter()
    found = set((i * n + j).tolist())
    truth = np.minimum(copies, sources) * n + np.maximum(copies, sources)
    return {
        "hashes": n,
        "search_s": round(t1 - t0, 2),
        "union_find_s": round(t2 - t1, 2),
        "pairs_found": int(len(i)),
        "planted_recall": round(float(np.mean([t in found for t in truth.tolist()])), 4),
        "copies_clustered": round(float(np.mean(labels[copies] == labels[sources])), 4),
        "search_peak_mb": round(peak / 2**20, 1),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def full_path(n: int, seed: int) -> dict:
    """Synthetic 64x64 gray images (blurred noise, 10% shifted copies) through the whole dedup core."""
    import cv2

    from stages.dedup import find_duplicates

    rng = np.random.default_rng(seed)
    images = [cv2.GaussianBlur(rng.integers(0, 256, (64, 64), dtype=np.uint8), (0, 0), 2)[:, :, None] for _ in range(n)]
    copies = rng.choice(n, n // 10, replace=False)
    sources = np.setdiff1d(np.arange(n), copies)[rng.integers(0, n - len(copies), len(copies))]
    shift = np.float32([[1, 0, 1], [0, 1, 0]])  # one pixel to the right
    for c, s in zip(copies, sources):
        images[c] = cv2.warpAffine(images[s], shift, (64, 64), borderMode=cv2.BORDER_REPLICATE)[:, :, None]
    d = load_params(ROOT / "params.yaml")[0].dedup
    t0 = time.perf_counter()
    found = find_duplicates(images, d)
    seconds = time.perf_counter() - t0
    labels = found["cluster"]
    return {"images": n, "seconds": round(seconds, 2), "images_per_s": round(n / seconds), "candidate_pairs": found["candidate_pairs"],
            "near_pairs": found["near_pairs"], "copies_clustered": round(float(np.mean(labels[copies] == labels[sources])), 4),
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def crowded(n: int, seed: int) -> dict:
    """The expensive case for verification: n digits-like images made from the 1,797 digits by small
    random rotations, scalings and shifts, so each digit has n/1797 similar siblings and the hash
    buckets are crowded. Times the whole dedup core."""
    import cv2

    from bench.dedup_quality import small_gray
    from stages.dedup import find_duplicates
    from stages.preprocess import resize

    base, rng = small_gray(), np.random.default_rng(seed)
    images = []
    for k in range(n):
        m = cv2.getRotationMatrix2D((14, 14), rng.uniform(-12, 12), rng.uniform(0.9, 1.1))
        m[:, 2] += rng.uniform(-2, 2, 2)
        images.append(resize(cv2.warpAffine(base[k % len(base)][:, :, 0], m, (28, 28))[:, :, None], (64, 64), "pad"))
    d = load_params(ROOT / "params.yaml")[0].dedup
    t0 = time.perf_counter()
    found = find_duplicates(images, d)
    seconds = time.perf_counter() - t0
    return {"images": n, "seconds": round(seconds, 1), "candidate_pairs": found["candidate_pairs"],
            "candidates_per_image": round(found["candidate_pairs"] / n, 1), "near_pairs": found["near_pairs"],
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--images", type=int, default=20_000, help="synthetic images for the full-path timing (0: skip)")
    ap.add_argument("--crowded", type=int, default=20_000, help="augmented digits for the crowded-bucket timing (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", choices=["hashes", "images", "crowded"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        result = {"hashes": one_size, "images": full_path, "crowded": crowded}[args.child](args.n, args.seed)
        print(json.dumps(result))
        return
    jobs = [("hashes", n) for n in args.sizes] + ([("images", args.images)] if args.images else [])
    jobs += [("crowded", args.crowded)] if args.crowded else []
    for kind, n in jobs:
        out = subprocess.run([sys.executable, __file__, "--child", kind, "--n", str(n), "--seed", str(args.seed)],
                             capture_output=True, text=True, check=True)
        print(kind, out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
