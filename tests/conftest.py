"""Shared fixtures: the shipped params.yaml in a temp dir, and tiny generated competitions."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_hub(tmp_path_factory, monkeypatch):
    """No test reaches the Hugging Face hub or the user's cache: an empty cache, offline. With the shipped
    train.pretrained: auto, training then starts from scratch, as on an offline CI machine."""
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-home-empty"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    """A copy of the shipped params.yaml, with the workdir inside the test's temp dir."""
    dest = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", dest)
    return dest


def blob_image(rng: np.random.Generator, label: int, size: int = 24, channels: int = 1) -> np.ndarray:
    """A dark image with a bright square whose position depends on the label: easy to learn."""
    image = rng.integers(0, 40, (size, size, channels), dtype=np.uint8)
    x = 2 + (label * 7) % (size - 10)
    image[4:12, x : x + 8] = 220
    return image


def make_kaggle(root: Path, n_train: int = 24, n_test: int = 6, classes=("cat", "dog"), seed: int = 0, ext: str = ".png") -> Path:
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rows = []
    for i in range(n_train):
        label = i % len(classes)
        cv2.imwrite(str(root / "train" / f"img{i:03d}{ext}"), blob_image(rng, label))
        rows.append({"image_id": f"img{i:03d}", "class": classes[label]})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    ids = [f"t{i:03d}" for i in range(n_test)]
    for i, name in enumerate(ids):
        cv2.imwrite(str(root / "test" / f"{name}{ext}"), blob_image(rng, i % len(classes)))
    pd.DataFrame({"image_id": ids, "class": classes[0]}).to_csv(root / "sample_submission.csv", index=False)
    return root


def make_folders(root: Path, per_class: int = 6, classes=("a", "b", "c"), n_test: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        (root / "train" / name).mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(root / "train" / name / f"{i}.png"), blob_image(rng, k, channels=3))
    (root / "test").mkdir()
    for i in range(n_test):
        cv2.imwrite(str(root / "test" / f"x{i}.jpg"), blob_image(rng, i % len(classes), channels=3))
    return root


@pytest.fixture
def kaggle_dir(tmp_path: Path) -> Path:
    return make_kaggle(tmp_path / "comp")


@pytest.fixture
def folders_dir(tmp_path: Path) -> Path:
    return make_folders(tmp_path / "folders")
