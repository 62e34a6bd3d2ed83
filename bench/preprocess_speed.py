"""Preprocess speed: images/s per core for decode + median + crop + resize to 224, and cache reads.

Generates JPEG photos-like scenes (default 640x480, the size of a typical competition photo) in a temp
folder, then times on one core (no pool), in the same run:
  decode only          cv2.imdecode of the file bytes (the reference)
  full path            preprocess's own per-image function: decode, median 3, crop to object, resize 224
and the stage's process pool over all cores. Cache reads: a (N, 224, 224, 3) uint8 .npy memory map,
random batches of 256 rows (sorted indices, as a sampler's batch would be gathered) and sequential.
Reads after the first pass come from the page cache, as they do in training.

    python bench/preprocess_speed.py [--images 300] [--side 640x480] [--cache 4000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.params import load_params  # noqa: E402
from stages.preprocess import _load_one  # noqa: E402


def write_photos(folder: Path, n: int, w: int, h: int, rng: np.random.Generator) -> list[str]:
    paths = []
    for k in range(n):
        image = np.full((h, w, 3), rng.integers(0, 256, 3), np.uint8)
        for _ in range(6):
            c = tuple(int(v) for v in rng.integers(0, 256, 3))
            cv2.circle(image, (int(rng.integers(w)), int(rng.integers(h))), int(rng.integers(20, h // 3)), c, -1)
        image = cv2.add(image, rng.integers(0, 30, image.shape, dtype=np.uint8))  # sensor-like texture
        path = folder / f"{k:05d}.jpg"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(str(path))
    return paths


def rate(fn, items) -> float:
    t0 = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - t0)


def cache_reads(n: int, folder: Path, rng: np.random.Generator) -> dict:
    path = folder / "train.npy"
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 224, 224, 3))
    for lo in range(0, n, 512):
        array[lo : lo + 512] = rng.integers(0, 256, (min(512, n - lo), 224, 224, 3), dtype=np.uint8)
    array.flush()
    del array
    cache = np.load(path, mmap_mode="r")
    row_mb = cache[0].nbytes / 2**20
    t0 = time.perf_counter()
    for lo in range(0, n, 256):
        np.array(cache[lo : lo + 256])  # a real copy out of the map
    sequential = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    batches = 0
    for _ in range(max(1, n // 256)):
        np.array(cache[np.sort(rng.choice(n, 256, replace=False))])
        batches += 1
    random = batches * 256 / (time.perf_counter() - t0)
    return {"sequential_img_s": round(sequential), "sequential_mb_s": round(sequential * row_mb),
            "random_batch_img_s": round(random), "random_batch_mb_s": round(random * row_mb)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--side", default="640x480", help="WxH of the generated photos")
    ap.add_argument("--cache", type=int, default=4000, help="rows in the cache-read test (224x224x3 each)")
    args = ap.parse_args()
    w, h = (int(v) for v in args.side.split("x"))
    params, _ = load_params(Path(__file__).resolve().parents[1] / "params.yaml", ["data.root=bench", "preprocess.size=224", "preprocess.crop.enabled=true"])
    p = params.preprocess
    rng = np.random.default_rng(0)
    workers = os.cpu_count() or 1
    cv2.setNumThreads(1)  # one core means one core: OpenCV would otherwise spread a resize over threads
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_photos(Path(tmp), args.images, w, h, rng)
        jobs = [(path, p, 3, (224, 224)) for path in paths]
        decode = rate(lambda path: cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR), paths)
        full = rate(_load_one, jobs)
        with ProcessPoolExecutor(workers) as pool:  # forked workers inherit the one-thread setting
            list(pool.map(_load_one, jobs[: 4 * workers]))  # start the workers before timing
            t0 = time.perf_counter()
            list(pool.map(_load_one, jobs, chunksize=16))
            pooled = len(jobs) / (time.perf_counter() - t0)
        print(f"{args.images} JPEGs {w}x{h} -> 224x224x3, median {p.median_ksize}, crop on")
        print(f"  decode only, 1 core          {decode:8.0f} images/s (reference)")
        print(f"  full path,   1 core          {full:8.0f} images/s  ({full / decode:.2f}x decode only)")
        print(f"  stage pool,  {workers} workers       {pooled:8.0f} images/s  ({pooled / workers:.0f} per core; {pooled / full:.2f}x one core)")
        reads = cache_reads(args.cache, Path(tmp), rng)
        print(f"cache reads ({args.cache} x 224x224x3 memmap): sequential {reads['sequential_img_s']} images/s "
              f"({reads['sequential_mb_s']} MB/s), random batches of 256 {reads['random_batch_img_s']} images/s "
              f"({reads['random_batch_mb_s']} MB/s)")


if __name__ == "__main__":
    main()
