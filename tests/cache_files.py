"""Write hand-made preprocess caches and dedup clusters in the stages' side-by-side layout
(pipeline/cache.py): each table's rows go to the train/ or test/ side named by their split column."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.cache import IMAGES, SIDES


def save_index(pre: Path, index: pd.DataFrame) -> None:
    for side in SIDES:
        (Path(pre) / side).mkdir(parents=True, exist_ok=True)
        index[index.split == side].to_csv(Path(pre) / side / "index.csv", index=False)


def save_cache(pre: Path, train: np.ndarray, test: np.ndarray, index: pd.DataFrame, classes: list[str]) -> None:
    save_index(pre, index)
    np.save(Path(pre) / "train" / IMAGES, train)
    np.save(Path(pre) / "test" / IMAGES, test)
    (Path(pre) / "train" / "classes.json").write_text(json.dumps(classes))


def save_clusters(dedup: Path, clusters: pd.DataFrame) -> None:
    for side in SIDES:
        (Path(dedup) / side).mkdir(parents=True, exist_ok=True)
        clusters[clusters.split == side].to_csv(Path(dedup) / side / "clusters.csv", index=False)
