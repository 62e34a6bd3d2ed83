"""preprocess: decode every image once into a training-ready uint8 cache.

Outputs, one folder per side (train depends on the train side alone; pipeline.runner):
  train/images.npy, test/images.npy   uint8 arrays (N, H, W, C), memory-mapped by train and predict
  train/index.csv, test/index.csv     id, split, label, row (into that side's array), path (relative to data.root)
  train/classes.json                  the label vocabulary (multi-label: the tags), in class-index order
  train/task.json                     the task kind, tag separator and answers per image (pipeline.tasks;
                                      the sample's answer format is read with the train side: it picks
                                      the metric train selects on, and a new test set keeps that format)
  train/report.json                   size, channel mode, median/crop decisions with their measurements (all
                                      chosen from the train images), counts, skipped files
  test/sample_submission.csv          the submission template (the competition's, or id,label)
  test/report.json                    test counts and skipped files
  report.json                         both sides together, for a person to read
The train side reads only train/ and train.csv; the test side reads only test/ and the sample, at the
train side's size and channels. When only the test set changed, the runner carries the train side over
(paths.reused) and this stage builds the test side alone.

Per image: decode -> channel mode -> median filter (salt-and-pepper noise) -> optional crop to the
object (Canny edges -> contours -> box) -> resize (pad or stretch). With median_ksize / crop.enabled
`auto`, a fixed-seed sample of train images decides: the median filter runs only when the sample shows
impulse noise (it erases fine texture and 1-pixel strokes on clean data), the crop only when the
dominant-object box is small in most sampled images (objects in wide empty or noisy margins). Images are processed in worker
processes and written straight into memory-mapped arrays, so the cache can be larger than RAM.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass, field
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from scipy.stats import trim_mean

from pipeline.artifacts import read_json, write_csv, write_json
from pipeline.cache import IMAGES
from pipeline.console import console, track
from pipeline.data import discover, discover_test
from pipeline.tasks import present
from pipeline.errors import DataError, StageError
from pipeline.images import ImageError, bit_depth, decode, is_gray, to_uint8_hwc
from pipeline.params import Params, PreprocessParams

from pipeline.params import CropParams

PROBE_IMAGES = 128  # train images inspected (a fixed-seed sample) for gray/rgb, the auto size, median and crop
PROBE_SEED = 0  # the sample depends on the data only, not on params.seed (which preprocess does not read)
EDGE_MEDIAN_KSIZE = 3  # the crop's edge map is always median-filtered: impulse noise must not make edges
SIZE_STEP = 32  # auto sizes are multiples of this (every timm network downsamples by 32)


def target_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def auto_size(sides: list[int], size_range: tuple[int, int]) -> int:
    """The train images' median side, rounded up to a multiple of 32 and clipped to size_range: small
    datasets (28-64 px) are not blown up to 224, large photos are brought down to it."""
    lo, hi = size_range
    if not sides:
        return hi
    median = float(np.median(sides))
    return int(np.clip(int(np.ceil(median / SIZE_STEP)) * SIZE_STEP, lo, hi))


def object_bounds(image: np.ndarray, c: CropParams) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the dominant object(s), no margin, or None when no trustworthy box.

    Canny on the gray image, median-filtered first so that salt-and-pepper noise (whether or not the
    cached pixels are filtered) makes no edges, dilated so broken outlines join, then external contours;
    contours whose box is under min_area of the image are specks. The box is the union of the rest. No
    edges (uniform or empty images), only specks, or a box under min_fraction of a side -> None."""
    h, w = image.shape[:2]
    if h < 4 or w < 4:
        return None
    gray = image[:, :, 0] if image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    gray = cv2.medianBlur(np.ascontiguousarray(gray), EDGE_MEDIAN_KSIZE)
    edges = cv2.Canny(gray, c.canny_low, c.canny_high)
    edges = cv2.dilate(edges, np.ones((3, 3), np.uint8))
    contours, _ = cv2.findContours(edges, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    boxes = [cv2.boundingRect(cnt) for cnt in contours]
    boxes = [(x, y, bw, bh) for x, y, bw, bh in boxes if bw * bh >= c.min_area * h * w]
    if not boxes:
        return None
    x0 = min(x for x, _, _, _ in boxes)
    y0 = min(y for _, y, _, _ in boxes)
    x1 = max(x + bw for x, _, bw, _ in boxes)
    y1 = max(y + bh for _, y, _, bh in boxes)
    if (y1 - y0) < c.min_fraction * h or (x1 - x0) < c.min_fraction * w:
        return None
    return y0, y1, x0, x1


def object_box(image: np.ndarray, c: CropParams) -> tuple[int, int, int, int] | None:
    """The object's bounds grown by `margin` of its side on every side (clipped to the image), or None."""
    bounds = object_bounds(image, c)
    if bounds is None:
        return None
    h, w = image.shape[:2]
    y0, y1, x0, x1 = bounds
    my, mx = round(c.margin * (y1 - y0)), round(c.margin * (x1 - x0))
    return max(0, y0 - my), min(h, y1 + my), max(0, x0 - mx), min(w, x1 + mx)


# Auto median filter: impulse (salt-and-pepper) noise is isolated pixels near black or white that stand
# out from every one of their 8 neighbours. Thin strokes and edges have at least one similar neighbour,
# so they do not count (a 3x3 median would erase 1-pixel strokes: exactly why it must not run on clean data).
AUTO_MEDIAN_KSIZE = 3
IMPULSE_EXTREME = 40  # an impulse lies within this of 0 or 255
IMPULSE_CONTRAST = 100  # and differs from each of its 8 neighbours by at least this (of 255; 60 flags stroke corners of 8x8 digits)
IMPULSE_SHARE = 0.001  # filter from 0.1% of pixels (1% salt-and-pepper measures about 0.6%, clean photos and digits 0)
IMPULSE_TRIM = 0.1  # the level is the mean share over the sample with the top and bottom 10% of images left out:
#   a few odd images (a star field, a dotted glyph) do not decide, and tiny images (8x8 digits, a few
#   impulses each) still average to a stable level where a per-image median would flicker to 0
# Auto crop: objects sit in wide empty (or noisy) margins when the dominant-object box is small, consistently.
CROP_MEDIAN_AREA = 0.35  # median box area, as a fraction of the frame, at most this ("well under half")
CROP_SMALL_AREA = 0.5  # and at least CROP_CONSISTENT of the sampled images have a box under half the frame
CROP_CONSISTENT = 0.75


def impulse_share(image: np.ndarray) -> float:
    """Share of pixels (any channel) that are isolated extremes: near black or white and at least
    IMPULSE_CONTRAST darker (pepper) or brighter (salt) than all 8 neighbours."""
    if min(image.shape[:2]) < 3:
        return 0.0
    ring = np.ones((3, 3), np.uint8)
    ring[1, 1] = 0
    hits = np.zeros(image.shape[:2], bool)
    for channel in range(image.shape[2]):
        plane = np.ascontiguousarray(image[:, :, channel])
        value = plane.astype(np.int16)
        brightest = cv2.dilate(plane, ring).astype(np.int16)  # of the 8 neighbours
        darkest = cv2.erode(plane, ring).astype(np.int16)
        hits |= (value >= 255 - IMPULSE_EXTREME) & (value - brightest >= IMPULSE_CONTRAST)
        hits |= (value <= IMPULSE_EXTREME) & (darkest - value >= IMPULSE_CONTRAST)
    return float(hits.mean())


def box_area(image: np.ndarray, c: CropParams) -> float:
    """Area of the dominant-object box as a fraction of the frame (1.0 when there is no trustworthy box)."""
    bounds = object_bounds(image, c)
    if bounds is None:
        return 1.0
    y0, y1, x0, x1 = bounds
    return (y1 - y0) * (x1 - x0) / (image.shape[0] * image.shape[1])


def decide_median(p: PreprocessParams, shares: list[float]) -> tuple[int, str]:
    """The median kernel to use and why: a number in params is used as is; auto filters when the
    sampled train images' (trimmed mean) impulse share reaches IMPULSE_SHARE."""
    if p.median_ksize != "auto":
        return p.median_ksize, "params"
    level = float(trim_mean(shares, IMPULSE_TRIM)) if shares else 0.0
    noisy = level >= IMPULSE_SHARE
    why = (f"auto: impulse noise {level:.2%} of pixels ({IMPULSE_TRIM:.0%}-trimmed mean of {len(shares)} sampled train images), "
           f"{'at or above' if noisy else 'under'} {IMPULSE_SHARE:.1%}")
    return (AUTO_MEDIAN_KSIZE if noisy else 0), why


def decide_crop(p: PreprocessParams, areas: list[float]) -> tuple[bool, str]:
    """Crop or not, and why: true/false in params is used as is; auto crops when the sampled train
    images' dominant-object box covers at most CROP_MEDIAN_AREA of the frame (median) and under half
    of it in at least CROP_CONSISTENT of them."""
    if p.crop.enabled != "auto":
        return p.crop.enabled, "params"
    if not areas:
        return False, "auto: no train image could be sampled"
    median, small = float(np.median(areas)), float(np.mean(np.array(areas) < CROP_SMALL_AREA))
    crop = median <= CROP_MEDIAN_AREA and small >= CROP_CONSISTENT
    why = (f"auto: object box median {median:.0%} of the frame, under half of it in {small:.0%} of "
           f"{len(areas)} sampled train images ({'objects in wide margins' if crop else f'needs <= {CROP_MEDIAN_AREA:.0%} and >= {CROP_CONSISTENT:.0%}'})")
    return crop, why


def crop_to_object(image: np.ndarray, c: CropParams) -> np.ndarray:
    box = object_box(image, c)
    if box is None:
        return image
    top, bottom, left, right = box
    return image[top:bottom, left:right]


def resize(image: np.ndarray, hw: tuple[int, int], mode: str) -> np.ndarray:
    h, w = image.shape[:2]
    th, tw = hw
    if mode == "stretch":
        out = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA if h * w > th * tw else cv2.INTER_LINEAR)
    else:
        scale = min(th / h, tw / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        out = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        top, left = (th - nh) // 2, (tw - nw) // 2
        out = cv2.copyMakeBorder(out, top, th - nh - top, left, tw - nw - left, cv2.BORDER_CONSTANT, value=0)
    return out.reshape(th, tw, -1)


def process(image: np.ndarray, p: PreprocessParams, channels: int, hw: tuple[int, int]) -> np.ndarray:
    """One decoded image -> its cache entry: channel mode, median denoise, crop, resize."""
    if channels == 1 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None]
    elif channels == 3 and image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if p.median_ksize > 1:  # run() has replaced "auto" by the kernel it chose
        k = p.median_ksize | 1  # OpenCV needs an odd kernel
        if min(image.shape[:2]) >= 2:  # OpenCV's median needs at least 2 pixels per side
            image = cv2.medianBlur(np.ascontiguousarray(image), k).reshape(image.shape)
    if p.crop.enabled:
        image = crop_to_object(image, p.crop)
    return resize(image, hw, p.resize)


def pixel_count(path: Path) -> int | None:
    """Width x height from the file header (Pillow reads it lazily), None when Pillow cannot tell."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size[0] * im.size[1]
    except Image.DecompressionBombError:
        return 1 << 62
    except Exception:  # not an image Pillow knows: the decoder will say what is wrong
        return None


def read_checked(path: Path, max_pixels: int, bits: int | None = None) -> np.ndarray:
    return to_uint8_hwc(decode_checked(path, max_pixels), bits)


def decode_checked(path: Path, max_pixels: int) -> np.ndarray:
    pixels = pixel_count(path)
    if pixels is not None and pixels > max_pixels:
        raise ImageError(f"too large ({pixels} pixels > preprocess.max_pixels={max_pixels})")
    return decode(path)


def _load_one(args: tuple[str, PreprocessParams, int, tuple[int, int], int]) -> tuple[np.ndarray | None, str]:
    path, p, channels, hw, bits = args
    try:
        return process(read_checked(Path(path), p.max_pixels, bits), p, channels, hw), ""
    except ImageError as exc:
        return None, str(exc)
    except cv2.error as exc:  # e.g. an image larger than OpenCV's pixel limit
        return None, f"OpenCV failed: {str(exc).strip().splitlines()[-1]}"
    except MemoryError:
        return None, "out of memory while decoding (lower preprocess.max_pixels or preprocess.workers)"
    except Exception as exc:  # one odd file must not end a long run; it is reported instead
        return None, f"unexpected {type(exc).__name__}: {exc}"


@dataclass
class Sample:
    """What a fixed-seed sample of train images says about the data."""

    gray: bool = True  # every sampled image is gray (or RGB with equal channels)
    sides: list[int] = field(default_factory=list)  # longer sides
    impulse: list[float] = field(default_factory=list)  # impulse-noise share per image (median auto)
    box_areas: list[float] = field(default_factory=list)  # object box area / frame per image (crop auto)
    bits: int = 8  # bit depth of the data: 16-bit images are scaled by the dataset's depth, not each by its own


def probe(paths: list[str], p: PreprocessParams) -> Sample:
    """Decode a fixed-seed sample of up to PROBE_IMAGES train images and measure them."""
    chosen = np.random.default_rng(PROBE_SEED).permutation(len(paths))[:PROBE_IMAGES]
    found = Sample()
    for k in sorted(chosen):
        try:
            raw = decode_checked(Path(paths[k]), p.max_pixels)
            image = to_uint8_hwc(raw)
        except Exception:  # noqa: BLE001 - any bad file is reported when its split is cached
            continue
        found.gray = found.gray and is_gray(image)
        found.bits = max(found.bits, bit_depth(raw))
        found.sides.append(max(image.shape[:2]))
        if p.median_ksize == "auto":
            found.impulse.append(impulse_share(image))
        if p.crop.enabled == "auto":
            found.box_areas.append(box_area(image, p.crop))
    return found


def choose_channels(mode: str, all_gray: bool) -> int:
    if mode != "auto":
        return 1 if mode == "gray" else 3
    return 1 if all_gray else 3


def reserve(path: Path) -> None:
    """Allocate the memory-mapped cache file's blocks now: a full disk is then one OSError (ENOSPC) here,
    never a SIGBUS when a page of a sparse file is first written."""
    with open(path, "r+b") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise
            # the filesystem cannot preallocate (EOPNOTSUPP/EINVAL): the free-space check stands alone


def check_free_space(out: Path, images: int, hw: tuple[int, int], channels: int) -> None:
    """Before decoding anything: the cache must fit on the workdir's disk, with 5% to spare."""
    needed = images * hw[0] * hw[1] * channels * 1.05 + (64 << 20)
    free = shutil.disk_usage(out).free
    if free < needed:
        raise StageError(f"preprocess: the cache of {images} images at {hw[0]}x{hw[1]}x{channels} needs "
                         f"{needed / 2**30:.2f} GiB, {out} has {free / 2**30:.2f} GiB free: free space or lower preprocess.size")


def _cache_split(rows: pd.DataFrame, out: Path, split: str, p: PreprocessParams, channels: int, hw, workers: int, root: Path,
                 bits: int = 8):
    """Write one split's images.npy into `out`; return its index rows (with row numbers and paths
    relative to the data root, so a moved folder gives the same index) and its failures.

    A failed image leaves its row zero and is absent from the index, so no reader ever sees it."""
    h, w = hw
    out.mkdir(parents=True, exist_ok=True)
    check_free_space(out, len(rows), hw, channels)
    array = np.lib.format.open_memmap(out / IMAGES, mode="w+", dtype=np.uint8, shape=(len(rows), h, w, channels))
    reserve(out / IMAGES)
    index, failures = [], []
    jobs = [(path, p, channels, hw, bits) for path in rows.path]
    # No worker initialiser that touches OpenCV's thread pool: in a child forked from a process that
    # already used it (a second stage in the same process), cv2.setNumThreads hangs.
    with ProcessPoolExecutor(workers) as pool:
        results = pool.map(_load_one, jobs, chunksize=32) if workers > 1 else map(_load_one, jobs)
        for i, (row, (image, error)) in enumerate(track(zip(rows.itertuples(index=False), results), len(rows), f"preprocess {split}")):
            rel = Path(row.path).relative_to(root).as_posix()
            if image is None:
                failures.append({"id": row.id, "split": split, "path": rel, "reason": error})
                continue
            array[i] = image
            index.append({"id": row.id, "split": split, "label": row.label, "row": i, "path": rel})
    array.flush()
    return pd.DataFrame(index, columns=["id", "split", "label", "row", "path"]), failures


def build_train_side(params: Params, root: Path, out: Path, workers: int) -> dict:
    """The train side, from train/ and train.csv alone: the cache geometry (size, channels) is chosen
    here from the training images, and the test side follows it. Returns the train report."""
    p = params.preprocess
    d = params.data
    data = discover(root, d.id_column, d.label_column, d.task, d.tag_separator, d.class_order)
    for note in data.notes:
        console.print(f"[yellow]data:[/] {note}")
    train = data.manifest[data.manifest.split == "train"].reset_index(drop=True)
    sample = probe(list(train.path), p)
    sides = sample.sides
    channels = choose_channels(p.channels, sample.gray)
    median_ksize, median_from = decide_median(p, sample.impulse)
    crop, crop_from = decide_crop(p, sample.box_areas)
    p = decided(p, median_ksize, crop)
    hw = target_hw(auto_size(sides, p.size_range) if p.size == "auto" else p.size)
    size_from = f"auto (median train side {int(np.median(sides)) if sides else '?'} px)" if p.size == "auto" else "params"
    out.mkdir(parents=True, exist_ok=True)
    check_free_space(out, len(data.manifest), hw, channels)  # both sides, before decoding any
    index, failures = _cache_split(train, out, "train", p, channels, hw, workers, root, sample.bits)
    classes = present(data.classes, index.label, data.task)
    if len(classes) < 2:
        raise DataError(f"preprocess: only {len(classes)} class ({', '.join(classes) or 'none'}) has readable training images "
                        f"after {len(failures)} unreadable files (first: {failures[0]['path'] if failures else '-'}: "
                        f"{failures[0]['reason'] if failures else '-'}); classification needs two")
    write_csv(out / "index.csv", index)
    write_json(out / "classes.json", classes)
    write_json(out / "task.json", data.task.as_json())
    report = {
        "layout": data.layout,
        "task": f"{data.task.kind} ({data.task.why})" + (f", {data.task.top_k} answers per image" if data.task.top_k > 1 else ""),
        "id_column": data.id_column,
        "label_column": data.label_column,
        "size": list(hw),
        "size_from": size_from,
        "median_ksize": median_ksize,
        "median_from": median_from,
        "crop": crop,
        "crop_from": crop_from,
        "impulse_share": sample_stats(sample.impulse),
        "object_box_area": sample_stats(sample.box_areas),
        "channels": channels,
        "bit_depth": sample.bits,
        "notes": data.notes,
        "classes": len(classes),
        "train_images": len(index),
        "skipped": len(failures),
        "failures": failures,
    }
    write_json(out / "report.json", report)
    return report


def build_test_side(params: Params, root: Path, out: Path, train: dict, workers: int) -> dict:
    """The test side, from test/ and sample_submission.csv alone, at the train side's size and channels."""
    notes: list[str] = []
    test, sample = discover_test(root, train["id_column"], train["label_column"], notes)
    for note in notes:
        console.print(f"[yellow]data:[/] {note}")
    p = decided(params.preprocess, train["median_ksize"], train["crop"])  # the train side's decisions, never the test set's
    index, failures = _cache_split(test, out, "test", p, train["channels"], tuple(train["size"]), workers, root,
                                   train.get("bit_depth", 8))
    write_csv(out / "index.csv", index)
    write_csv(out / "sample_submission.csv", sample)
    report = {"test_images": len(index), "notes": notes, "skipped": len(failures), "failures": failures}
    write_json(out / "report.json", report)
    return report


def run(params: Params, paths) -> dict:
    workers = params.preprocess.workers or os.cpu_count() or 1
    root = Path(paths["data"])
    if paths.reused:  # the runner carried the finished train side over: only the test set changed
        train = read_json(paths.out / "train" / "report.json")
    else:
        train = build_train_side(params, root, paths.out / "train", workers)
    test = build_test_side(params, root, paths.out / "test", train, workers)
    report = {
        **{k: v for k, v in train.items() if k not in ("skipped", "failures")},
        "test_images": test["test_images"],
        "train_side": "carried over (unchanged)" if paths.reused else "built",
        "skipped": train["skipped"] + test["skipped"],
        "failures": train["failures"] + test["failures"],
    }
    write_json(paths.out / "report.json", report)  # both sides, for a person to read
    return {k: v for k, v in report.items() if k not in ("failures", "id_column", "label_column", "impulse_share", "object_box_area")}


def decided(p: PreprocessParams, median_ksize: int, crop: bool) -> PreprocessParams:
    """The preprocess params with "auto" replaced by what the train side decided."""
    return p.model_copy(update={"median_ksize": median_ksize, "crop": p.crop.model_copy(update={"enabled": crop})})


def sample_stats(values: list[float]) -> dict | None:
    """Quartiles of a per-image measurement over the sample (None when it was not measured)."""
    if not values:
        return None
    q = np.quantile(values, [0.25, 0.5, 0.75])
    return {"images": len(values), "p25": round(float(q[0]), 5), "median": round(float(q[1]), 5), "p75": round(float(q[2]), 5)}
