"""augment: build the training augmentation from params and save it for train.

Outputs:
- transform.json: the albumentations pipeline in albumentations' own format (A.save); train loads it
  with A.load for the CPU data-loader path. Normalisation is not in it: train normalises on the device.
- gpu_augment.json: the same recipe, every op, for train's device-side engine (stages/train/gpu_augment.py)
  when the cache lives on the GPU.
- preview.png: for each class, one original and `preview` augmented samples, to eyeball the recipe.
- expanded.npy + expanded.csv (only when expand_to > 0): augmented copies of rare-class images, rows
  (id, label, source_id); train adds a copy only to folds whose training part holds its source.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pandas as pd

from pipeline.artifacts import atomic_path, write_csv, write_json
from pipeline.cache import read_arrays, read_cache_report, read_classes, read_index, read_task
from pipeline.tasks import primary
from pipeline.console import track
from pipeline.params import AugmentParams, Params, ParamsError
from pipeline.plots import plt, save_figure

PREVIEW_CLASSES = 16  # more rows than this make an unreadable sheet
# Written out so that both engines (albumentations here, stages/train/gpu_augment.py on the device) use
# the same values: albumentations' own defaults for the crop's aspect ratio range and the blur's sigma.
CROP_RATIO = (3 / 4, 4 / 3)
BLUR_SIGMA = (0.5, 3.0)


def check(params: Params, data=None) -> None:
    """Before any work (pipeline.checks)."""
    check_ranges(params.augment)


def check_ranges(p: AugmentParams) -> None:
    """Range pairs must be ordered; blur kernels odd. One line naming the key, as params errors do."""
    for key in ("crop_scale", "gamma_limit", "blur_limit", "erasing_size"):
        lo, hi = getattr(p, key)
        if lo > hi or lo < 0:
            raise ParamsError(f"augment.{key} = [{lo}, {hi}]: expected [low, high] with 0 <= low <= high")
    if p.crop_scale[1] > 1 or p.crop_scale[0] <= 0:
        raise ParamsError(f"augment.crop_scale = {list(p.crop_scale)}: expected area fractions in (0, 1]")
    if p.erasing_size[1] > 1:
        raise ParamsError(f"augment.erasing_size = {list(p.erasing_size)}: expected side fractions <= 1")
    if any(k % 2 == 0 or k < 3 for k in p.blur_limit):
        raise ParamsError(f"augment.blur_limit = {list(p.blur_limit)}: expected odd kernel sizes >= 3")


def build(p: AugmentParams, height: int, width: int) -> A.Compose:
    """The training augmentation, geometry first, then photometric, then occlusion."""
    check_ranges(p)
    constant = dict(border_mode=cv2.BORDER_CONSTANT, fill=0)
    return A.Compose(
        [
            A.RandomResizedCrop(size=(height, width), scale=tuple(p.crop_scale), ratio=CROP_RATIO, p=p.crop),
            A.HorizontalFlip(p=p.hflip),
            A.VerticalFlip(p=p.vflip),
            A.Affine(
                translate_percent=(-p.shift, p.shift),
                scale=(1 - p.scale, 1 + p.scale),
                rotate=(-p.rotate, p.rotate),
                shear=(-p.shear, p.shear),
                p=p.affine,
                **constant,
            ),
            A.Rotate(limit=p.rotation_limit, p=p.rotation, **constant),
            A.RandomGamma(gamma_limit=tuple(p.gamma_limit), p=p.gamma),
            A.GaussianBlur(blur_limit=tuple(p.blur_limit), sigma_limit=BLUR_SIGMA, p=p.blur),
            A.ColorJitter(brightness=p.brightness, contrast=p.contrast, saturation=p.saturation, hue=p.hue, p=p.color_jitter),
            A.CoarseDropout(
                num_holes_range=(1, p.erasing_holes),
                hole_height_range=tuple(p.erasing_size),
                hole_width_range=tuple(p.erasing_size),
                fill=0,
                p=p.erasing,
            ),
        ]
    )


def gpu_recipe(p: AugmentParams) -> dict:
    """The same recipe for train's device-side engine (stages/train/gpu_augment.py), every op of build()."""
    keys = ("hflip", "vflip", "crop", "affine", "shift", "scale", "rotate", "shear", "rotation", "rotation_limit", "gamma", "blur",
            "color_jitter", "brightness", "contrast", "saturation", "hue", "erasing", "erasing_holes")
    ranges = {"crop_scale": p.crop_scale, "crop_ratio": CROP_RATIO, "gamma_limit": p.gamma_limit, "blur_limit": p.blur_limit,
              "blur_sigma": BLUR_SIGMA, "erasing_size": p.erasing_size}
    return {**{k: getattr(p, k) for k in keys}, **{k: list(v) for k, v in ranges.items()}}


def apply(transform: A.Compose, image: np.ndarray) -> np.ndarray:
    """Albumentations drops the channel axis of some gray outputs; keep HxWxC."""
    out = transform(image=image)["image"]
    return out[..., None] if out.ndim == 2 else out


def expand(p: AugmentParams, transform: A.Compose, array, train: pd.DataFrame, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Augmented copies of images of classes under expand_to, cycling through each class's images
    (train.group: the class of each image; multi-label, its rarest tag; a copy keeps all its tags)."""
    transform.set_random_seed(seed)
    counts = train.group.value_counts()
    jobs = []  # (class, source row of the table, copy number)
    for group, n in counts.items():
        sources = train[train.group == group]
        jobs += [(group, sources.iloc[k % len(sources)], k // len(sources)) for k in range(max(0, p.expand_to - int(n)))]
    images, rows = [], []
    for _, src, copy in track(jobs, len(jobs), "expand rare classes"):
        images.append(apply(transform, np.array(array[src.row])))
        rows.append({"id": f"{src.id}#aug{copy}", "label": src.label, "source_id": src.id})
    stacked = np.stack(images) if images else np.zeros((0,) + array.shape[1:], np.uint8)
    return stacked, pd.DataFrame(rows, columns=["id", "label", "source_id"])


def preview(transform: A.Compose, array, train: pd.DataFrame, classes: list[str], per_class: int, path, seed: int) -> None:
    """One row per class: the original, then augmented versions of it."""
    transform.set_random_seed(seed)
    shown = [c for c in classes if (train.group == c).any()][:PREVIEW_CLASSES]
    fig, axes = plt.subplots(len(shown), per_class + 1, figsize=(1.3 * (per_class + 1), 1.3 * len(shown)), squeeze=False)
    gray = array.shape[3] == 1
    for r, label in enumerate(shown):
        image = np.array(array[train[train.group == label].row.iloc[0]])
        views = [image] + [apply(transform, image.copy()) for _ in range(per_class)]
        for c, view in enumerate(views):
            ax = axes[r, c]
            ax.imshow(view[..., 0] if gray else view, cmap="gray" if gray else None, vmin=0, vmax=255)
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(str(label)[:12], fontsize=8)
    axes[0, 0].set_title("original", fontsize=8)
    fig.suptitle("augment preview", fontsize=10)
    save_figure(fig, path)


def run(params: Params, paths) -> dict:
    p = params.augment
    pre = paths["preprocess"]
    report = read_cache_report(pre)  # the train side: augment depends on the training data only
    height, width = report["size"]
    transform = build(p, height, width)
    with atomic_path(paths.out / "transform.json") as tmp:
        A.save(transform, str(tmp), data_format="json")
    # Fail here, not in train, if the saved pipeline does not load or run.
    loaded = A.load(str(paths.out / "transform.json"), data_format="json")
    apply(loaded, np.zeros((height, width, report["channels"]), np.uint8))
    write_json(paths.out / "gpu_augment.json", gpu_recipe(p))

    index, classes = read_index(pre, ("train",)), read_classes(pre)
    train = index[index.split == "train"].reset_index(drop=True)
    train["group"] = primary(train.label, classes, read_task(pre))  # the class it shows (multi-label: rarest tag)
    array = read_arrays(pre, ("train",))["train"]
    result = {"transforms": len(transform.transforms), "size": f"{height}x{width}"}
    if len(train):
        preview(transform, array, train, classes, p.preview, paths.out / "preview.png", params.seed)
        result["preview"] = "augment/preview.png"
    if p.expand_to > 0:
        images, table = expand(p, transform, array, train, params.seed)
        with atomic_path(paths.out / "expanded.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, images)
        write_csv(paths.out / "expanded.csv", table)
        result["expanded copies"] = len(table)
        result["expanded classes"] = int(table.label.nunique()) if len(table) else 0
    return result
