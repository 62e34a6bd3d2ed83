"""Read the preprocess cache and the dedup clusters, side by side (no decoding).

preprocess/ and dedup/ each hold a train/ side, built from the training data alone, and a test/ side:
  preprocess/train/{images.npy, index.csv, classes.json, task.json, report.json}
  preprocess/test/{images.npy, index.csv, sample_submission.csv, report.json}
  dedup/train/clusters.csv, dedup/test/clusters.csv
A stage that depends on the train side alone (augment, train without test rows) reads `sides=("train",)`
(its StagePaths.sides(name) says which), so no test image can reach it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts import read_json
from pipeline.errors import StageError
from pipeline.tasks import Task, from_json


SIDES = ("train", "test")
IMAGES = "images.npy"


def read_index(preprocess_dir: Path, sides: tuple[str, ...] = SIDES) -> pd.DataFrame:
    """id, split, label, row (into that split's images.npy), path (relative to the data root)."""
    frames = [pd.read_csv(Path(preprocess_dir) / side / "index.csv", dtype={"id": str, "label": str, "path": str}, keep_default_na=False)
              for side in sides]
    return pd.concat(frames, ignore_index=True)


def read_arrays(preprocess_dir: Path, sides: tuple[str, ...] = SIDES) -> dict[str, np.ndarray]:
    return {side: np.load(Path(preprocess_dir) / side / IMAGES, mmap_mode="r") for side in sides}


def read_classes(preprocess_dir: Path) -> list[str]:
    return [str(c) for c in read_json(Path(preprocess_dir) / "train" / "classes.json")]


def read_task(preprocess_dir: Path) -> Task:
    """The task kind the train side settled (preprocess/train/task.json; a cache without one is single-label)."""
    path = Path(preprocess_dir) / "train" / "task.json"
    if not path.is_file():
        return Task(kind="single_label", why="cache without task.json", separator=" ", top_k=1)
    return from_json(read_json(path))


def read_cache_report(preprocess_dir: Path) -> dict:
    """The train side's report: cache size, channels and the choices made from the training images."""
    return read_json(Path(preprocess_dir) / "train" / "report.json")


def read_sample(preprocess_dir: Path) -> pd.DataFrame:
    return pd.read_csv(Path(preprocess_dir) / "test" / "sample_submission.csv", dtype=str, keep_default_na=False)


def read_clusters(dedup_dir: Path, sides: tuple[str, ...] = SIDES) -> pd.DataFrame:
    frames = [pd.read_csv(Path(dedup_dir) / side / "clusters.csv", dtype={"id": str}, keep_default_na=False) for side in sides]
    return pd.concat(frames, ignore_index=True)


def read_probs(path: Path, classes: list[str], missing_hint: str) -> pd.DataFrame:
    """A table with an id column and one p_<class> column per class in classes.json order (oof.csv,
    probs.csv, pseudo.csv): checked, so no probability is ever read against the wrong class."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path} not found: {missing_hint}")
    table = pd.read_csv(path, dtype={"id": str, "label": str}, keep_default_na=False)
    if [c for c in table.columns if c.startswith("p_")] != [f"p_{c}" for c in classes]:
        raise StageError(f"{path}: probability columns do not match the cache's classes {classes[:5]}...")
    return table


@dataclass
class PseudoRows:
    """Pseudo-labelled test images, ready to join a fold's training data."""

    ids: np.ndarray
    rows: np.ndarray  # rows of preprocess/test.npy (not train.npy)
    clusters: np.ndarray  # dedup cluster of each image
    targets: np.ndarray  # (N, K) float32 probability targets (one-hot for hard pseudo-labels)
    weights: np.ndarray  # (N,) float32 sample weights

    def __len__(self) -> int:
        return len(self.ids)


def read_pseudo_rows(pseudo_dir: Path, classes: list[str]) -> PseudoRows:
    """Read pseudo/pseudo.csv; the class columns must match the cache's classes.json order."""
    table = read_probs(Path(pseudo_dir) / "pseudo.csv", classes, "run `pipeline pseudo` first")
    columns = [f"p_{c}" for c in classes]
    return PseudoRows(
        ids=table.id.to_numpy(),
        rows=table.row.to_numpy(dtype=np.int64),
        clusters=table.cluster.to_numpy(),
        targets=table[columns].to_numpy(dtype=np.float32),
        weights=table.weight.to_numpy(dtype=np.float32),
    )
