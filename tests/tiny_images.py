"""Helpers for the preprocess and dedup tests: tiny generated images and competitions, and params
pointing at them (a module, not conftest.py, so it merges beside the shared conftest)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.params import load_params

ROOT = Path(__file__).resolve().parents[1]


def digit_like(seed: int, side: int = 28) -> np.ndarray:
    """A distinct object on a black background: random strokes, like a handwritten glyph."""
    rng = np.random.default_rng(seed)
    image = np.zeros((side, side), np.uint8)
    points = rng.integers(side // 5, side - side // 5, (5, 2))
    cv2.polylines(image, [points.reshape(-1, 1, 2).astype(np.int32)], False, 255, max(1, side // 10))
    return image


def write_competition(root: Path, train: dict[str, tuple[object, str]], test: dict[str, object]) -> Path:
    """Kaggle layout. Each image is an array (written as PNG) or raw bytes (written as given);
    ids may carry an extension (e.g. 'x.jpg') to choose the file name."""
    for split in ("train", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)

    def write(folder: Path, name: str, image) -> None:
        path = folder / (name if "." in name else f"{name}.png")
        if isinstance(image, bytes):
            path.write_bytes(image)
        else:
            cv2.imwrite(str(path), image)

    for name, (image, _) in train.items():
        write(root / "train", name, image)
    for name, image in test.items():
        write(root / "test", name, image)
    pd.DataFrame({"id": list(train), "label": [label for _, label in train.values()]}).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"id": list(test), "label": ""}).to_csv(root / "sample_submission.csv", index=False)
    return root


@pytest.fixture
def make_params(tmp_path):
    def make(*overrides: str, root: Path | None = None):
        sets = [f"data.root={root or tmp_path / 'data'}", f"workdir={tmp_path / 'art'}", "preprocess.workers=1", *overrides]
        return load_params(ROOT / "params.yaml", sets)[0]

    return make
