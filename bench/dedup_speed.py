"""Dedup speed: the whole stage core (exact hash, signatures, neighbour search, verification,
union-find) on N cached images, each step timed (wall), plus the process CPU time (on a shared
machine the wall time depends on the neighbours; CPU seconds / 2 is the 2-core wall time when quiet),
in a fresh process per size (its own max RSS, and its peak anonymous and file-backed memory).

Images: 64x64 gray (the cache of 28 px originals), blurred noise textures, 10% of them re-shot copies
of another (shifted 1 px, brighter, JPEG q85), so verification has real pairs to accept and the
search a recall to report. They are written once to --cache-dir and memory-mapped, as the stage maps
preprocess's cache. Blurred noise all has one spectrum, so the embedding's neighbourhoods are as
crowded as they get: a hard case for the inverted-file search, an easy one for the gate.

    python bench/dedup_speed.py [--sizes 20000 100000 300000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.params import load_params  # noqa: E402


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, 64, 64, 1) uint8 cache, copy indices, their sources."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 64, 64, 1), np.uint8)
    for k in range(n):
        noise = rng.integers(0, 256, (32, 32), dtype=np.uint8)
        images[k, :, :, 0] = cv2.resize(cv2.GaussianBlur(noise, (0, 0), 1.0), (64, 64), interpolation=cv2.INTER_LINEAR)
    copies = rng.choice(n, n // 10, replace=False)
    sources = np.setdiff1d(np.arange(n), copies)[rng.integers(0, n - len(copies), len(copies))]
    shift = np.float32([[1, 0, 2], [0, 1, 0]])  # 2 cache px = 1 px of a 28 px original
    for c, s in zip(copies, sources):
        moved = cv2.warpAffine(images[s, :, :, 0], shift, (64, 64), borderMode=cv2.BORDER_REPLICATE)
        brighter = cv2.convertScaleAbs(moved, alpha=1.08)
        images[c, :, :, 0] = cv2.imdecode(cv2.imencode(".jpg", brighter, [cv2.IMWRITE_JPEG_QUALITY, 85])[1], cv2.IMREAD_GRAYSCALE)
    return images, copies, sources


def cache_file(n: int, seed: int, folder: Path) -> Path:
    """The images written once as a .npy (with the copies beside it), read back memory-mapped as the
    stage reads preprocess's cache."""
    path = folder / f"dedup_speed_{n}_{seed}.npy"
    if not path.exists():
        images, copies, sources = make_images(n, seed)
        np.save(path.with_suffix(".tmp.npy"), images)
        np.savez(path.with_suffix(".copies.npz"), copies=copies, sources=sources)
        path.with_suffix(".tmp.npy").rename(path)
    return path


class MemoryPeaks:
    """Peak resident memory of this process by kind, sampled every 0.1 s: anonymous (what the stage
    allocates) and file-backed (the memory-mapped cache's pages: clean, the kernel drops them when it
    needs the room)."""

    def __init__(self):
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        while self.running:
            for line in Path("/proc/self/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], int(value.split()[0]) // 1024)
            time.sleep(0.1)

    def stop(self) -> dict:
        self.running = False
        self.thread.join()
        return {"peak_anon_mb": self.peak["RssAnon"], "peak_file_mb": self.peak["RssFile"]}


def one_size(n: int, seed: int, folder: Path) -> dict:
    from stages.dedup import cluster_links, exact_pairs, release_pages
    from stages.dedup.calibrate import auto_threshold, calibration_sample
    from stages.dedup.search import neighbour_pairs
    from stages.dedup.signatures import signatures
    from stages.dedup.verify import pair_scores

    d = load_params(ROOT / "params.yaml")[0].dedup
    path = cache_file(n, seed, folder)
    images = np.load(path, mmap_mode="r")
    planted = np.load(path.with_suffix(".copies.npz"))
    copies, sources = planted["copies"], planted["sources"]
    memory = MemoryPeaks()
    times, cpu0 = {}, time.process_time()
    t = time.perf_counter()
    ea, eb = exact_pairs(iter(images), n)
    release_pages(images)
    times["exact_s"] = time.perf_counter() - t
    t = time.perf_counter()
    sig = signatures(iter(images), n, colour=False)
    release_pages(images)
    times["signatures_s"] = time.perf_counter() - t
    t = time.perf_counter()
    keep = np.flatnonzero(sig.stds >= d.min_std)
    ci, cj, _ = neighbour_pairs(sig.embedding if len(keep) == n else sig.embedding[keep], d.neighbours)
    ci, cj = keep[ci], keep[cj]
    times["search_s"] = time.perf_counter() - t
    t = time.perf_counter()
    sample = calibration_sample(keep, n)
    verified = pair_scores(sig.thumbs, ci, cj, d.max_shift, always=sample[ci] | sample[cj])
    scores = verified["score"]
    times["verify_s"] = time.perf_counter() - t
    t = time.perf_counter()
    threshold, _ = auto_threshold(ci, cj, scores, n, sample)
    ok = scores >= threshold
    labels, _ = cluster_links(n, np.r_[ea, ci[ok]], np.r_[eb, cj[ok]], np.r_[np.ones(len(ea)), scores[ok]])
    times["union_find_s"] = time.perf_counter() - t
    pairs = set((np.minimum(ci, cj) * n + np.maximum(ci, cj)).tolist())
    truth = (np.minimum(copies, sources) * n + np.maximum(copies, sources)).tolist()
    return {"images": n, **{k: round(v, 1) for k, v in times.items()}, "total_s": round(sum(times.values()), 1),
            "cpu_s": round(time.process_time() - cpu0, 1),
            "candidates_per_image": round(len(ci) / n, 1), "verified_share": round(float(verified["verified"].mean()), 4),
            "pairs_per_s_verify": round(len(ci) / max(times["verify_s"], 1e-9)),
            "copies_candidate": round(float(np.mean([p in pairs for p in truth])), 4),
            "copies_clustered": round(float(np.mean(labels[copies] == labels[sources])), 4), "threshold": threshold,
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), **memory.stop(),
            "torch_threads": torch.get_num_threads(), "load_average_1m": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000, 300_000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp"), help="where the generated images are written once")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one_size(args.child, args.seed, args.cache_dir)))
        return
    for n in args.sizes:
        cache_file(n, args.seed, args.cache_dir)  # written here, so the measured process only reads it
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--seed", str(args.seed), "--cache-dir", str(args.cache_dir)],
                             capture_output=True, text=True, check=True)
        print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
