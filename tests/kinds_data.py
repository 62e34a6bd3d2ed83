"""Generated competitions of every task kind (multi-label tags, binary probability, ordinal grades,
top-k answers), tiny enough for an end-to-end run on a CPU in a test."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

TAGS = ("clear", "cloudy", "road", "water", "field")
FAST = ["-S", "preprocess.size=32", "-S", "train.model=resnet10t", "-S", "train.folds=2", "-S", "train.epochs=1",
        "-S", "train.batch_size=8", "-S", "train.workers=0", "-S", "train.warmup_epochs=0", "-S", "predict.batch_size=16",
        "-S", "predict.tta=[identity]", "-S", "preprocess.workers=1"]


def tag_image(tags: set[str], rng: np.random.Generator, side: int = 32) -> np.ndarray:
    """Each tag draws its own mark at its own place (a colour square), on a noisy background."""
    image = rng.integers(0, 40, (side, side, 3), dtype=np.uint8)
    step = side // len(TAGS)
    for k, tag in enumerate(TAGS):
        if tag in tags:
            colour = [(k * 50) % 256, 255 - k * 40, 120 + k * 25]
            image[k * step : (k + 1) * step, 4 : side - 4] = colour
    return image


def _write_images(folder: Path, images: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        cv2.imwrite(str(folder / f"{name}.png"), image)


def make_multilabel(root: Path, n_train: int = 40, n_test: int = 8, seed: int = 0, duplicates: int = 4,
                    indicator: bool = False) -> Path:
    """2-4 tags per image (space-separated, or one 0/1 column per tag); the first `duplicates` train
    images have an exact copy (a dedup cluster of two) with the same tags."""
    rng = np.random.default_rng(seed)
    rows, images = [], {}
    for i in range(n_train):
        tags = set(rng.choice(TAGS, size=int(rng.integers(2, 5)), replace=False))
        images[f"tr{i:03d}"] = tag_image(tags, rng)
        rows.append((f"tr{i:03d}", tags))
    for j in range(duplicates):
        images[f"dup{j:02d}"] = images[f"tr{j:03d}"].copy()
        rows.append((f"dup{j:02d}", rows[j][1]))
    _write_images(root / "train", images)
    _write_images(root / "test", {f"te{i:03d}": tag_image(set(rng.choice(TAGS, 2, replace=False)), rng) for i in range(n_test)})
    if indicator:
        table = pd.DataFrame([{"image_id": i, **{t: int(t in tags) for t in TAGS}} for i, tags in rows])
        sample = pd.DataFrame({"image_id": [f"te{i:03d}" for i in range(n_test)], **{t: 0 for t in TAGS}})
    else:
        table = pd.DataFrame({"image_name": [i for i, _ in rows], "tags": [" ".join(sorted(t)) for _, t in rows]})
        sample = pd.DataFrame({"image_name": [f"te{i:03d}" for i in range(n_test)], "tags": "clear road"})
    table.to_csv(root / "train.csv", index=False)
    sample.to_csv(root / "sample_submission.csv", index=False)
    return root


def make_single(root: Path, classes: list[str], n_train: int, n_test: int, sample_value: str, seed: int = 0,
                label_column: str = "label") -> Path:
    """One label per image: class k is a bright band whose height grows with k (an ordinal signal)."""
    rng = np.random.default_rng(seed)
    labels = [classes[k % len(classes)] for k in range(n_train)]
    side = 32

    def draw(k: int) -> np.ndarray:
        image = rng.integers(0, 60, (side, side), dtype=np.uint8)
        image[: 4 + k * (side - 8) // max(1, len(classes) - 1)] = 200
        return image

    _write_images(root / "train", {f"a{i:03d}": draw(classes.index(label)) for i, label in enumerate(labels)})
    _write_images(root / "test", {f"b{i:03d}": draw(int(rng.integers(len(classes)))) for i in range(n_test)})
    pd.DataFrame({"id": [f"a{i:03d}" for i in range(n_train)], label_column: labels}).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"id": [f"b{i:03d}" for i in range(n_test)], label_column: sample_value}).to_csv(root / "sample_submission.csv", index=False)
    return root
