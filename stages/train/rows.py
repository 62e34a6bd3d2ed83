"""What may train, as one table: the labelled images, their offline-augmented copies, pseudo-labelled
test images and teacher-taught test images (distillation).

One rule decides a fold's training part: a row trains fold k unless its dedup cluster holds one of
fold k's validation images. For labelled images that is the fold split itself (folds are grouped by
cluster); for the extra rows it keeps copies of a validation image (its augmented copies, a test
duplicate carrying a pseudo-label) out of training, so CV stays honest. Only labelled images validate.

Pixels come from several uint8 arrays (the train cache, augment's expanded copies, the test cache);
RowStack reads them as one without copying the memory-mapped cache into memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from pipeline.tasks import Task
from stages.train.metrics import Scoring


@dataclass
class Rows:
    ids: np.ndarray  # image id (a test id for pseudo and teacher rows)
    rows: np.ndarray  # row of the RowStack
    labels: np.ndarray  # int class for sampling, class weights and curriculum (row_classes of the target)
    targets: np.ndarray  # (N, K) float32 training target: one-hot, pseudo probabilities, or zeros (teacher only)
    weights: np.ndarray  # (N,) float32 sample weight
    clusters: np.ndarray  # dedup cluster, as str
    fold: np.ndarray  # validation fold of a labelled image; -1 for extra rows, which never validate
    kind: np.ndarray  # "labelled", "expanded" (offline copies), "pseudo" or "teacher" (taught test images)
    teacher: np.ndarray | None = None  # (N, K) teacher probabilities when distilling

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray) -> "Rows":
        return Rows(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index] for f in fields(self)})

    def fold_split(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, validation) positions for one fold, by the cluster rule in the module docstring."""
        val = np.where(self.fold == fold)[0]
        return np.where(~np.isin(self.clusters, self.clusters[val]))[0], val

    def describe(self) -> str:
        """'958 labelled + 183 pseudo': what a fold trains on."""
        kinds, counts = np.unique(self.kind, return_counts=True)
        return " + ".join(f"{n} {k}" for k, n in sorted(zip(kinds, counts), key=lambda kc: kc[0] != "labelled"))

    def fingerprint(self) -> str:
        """Identifies the training data, so a checkpoint is only resumed on the data it was trained on."""
        h = hashlib.sha1("\n".join(map(str, self.ids)).encode())
        for a in (self.targets, self.weights, self.teacher):
            if a is not None:
                h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
        return h.hexdigest()


def row_classes(targets: np.ndarray) -> np.ndarray:
    """One class per row, for sampling, stratification and curriculum: the argmax of a distribution;
    for multi-label tags, the row's rarest tag (so balanced sampling reaches rare tags)."""
    targets = np.asarray(targets, dtype=np.float32)
    if len(targets) == 0 or np.allclose(targets.sum(1), 1.0, atol=1e-3):
        return targets.argmax(1)
    frequency = targets.sum(0)
    rarity = np.where(targets > 0.5, frequency[None, :], np.inf)
    return np.where(np.isfinite(rarity).any(1), rarity.argmin(1), targets.argmax(1))


def concat(parts: list[Rows]) -> Rows:
    with_teacher = [p.teacher is not None for p in parts]
    assert all(with_teacher) or not any(with_teacher), "teacher targets for some parts only"
    return Rows(**{f.name: None if not all(with_teacher) and f.name == "teacher"
                   else np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Rows)})


def extra_rows(kind: str, ids, rows, targets: np.ndarray, weights, clusters) -> Rows:
    """Rows that only ever train. Teacher rows are given the teacher's probabilities as `targets`: they
    set the row's class for sampling, and the target becomes all-zero (no label: the teacher alone teaches)."""
    targets = np.asarray(targets, dtype=np.float32)
    return Rows(ids=np.asarray(ids), rows=np.asarray(rows, dtype=np.int64), labels=row_classes(targets),
                targets=np.zeros_like(targets) if kind == "teacher" else targets, weights=np.asarray(weights, dtype=np.float32),
                clusters=np.asarray(clusters).astype(str), fold=np.full(len(targets), -1), kind=np.full(len(targets), kind))


class RowStack:
    """Several (N, H, W, C) uint8 arrays indexed as one, rows of later arrays following the earlier."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])  # empty parts are fine: searchsorted skips them
        self.shape = (int(self.starts[-1]), *self.parts[0].shape[1:])
        self.dtype = self.parts[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if np.ndim(index) == 0:
            k = int(np.searchsorted(self.starts, index, side="right")) - 1
            return self.parts[k][int(index) - self.starts[k]]
        index = np.asarray(index)
        out = np.empty((len(index), *self.shape[1:]), dtype=self.dtype)
        which = np.searchsorted(self.starts, index, side="right") - 1
        for k in np.unique(which):
            at = np.where(which == k)[0]
            local = index[at] - self.starts[k]
            order = np.argsort(local, kind="stable")  # memory maps read fastest in row order
            out[at[order]] = self.parts[k][local[order]]
        return out


@dataclass
class TrainData:
    """What every fold trains from (stages.train.load_data)."""

    rows: Rows  # every row that may train; labelled rows validate
    pixels: Any  # RowStack of the uint8 caches
    classes: list[str]
    transform: Any  # the albumentations pipeline (CPU path)
    gpu_recipe: dict | None  # the same recipe for the device path
    norm: dict  # input mean/std
    task: Task  # the task kind (multi-label: sigmoid outputs, tag targets)
    scoring: Scoring  # the selection metric, resolved for the task (stages.train.metrics)
    weights: dict = field(default_factory=dict)  # the pretrained weights' kind, identity, source and why (pipeline.weights)
    loading: dict = field(default_factory=dict)  # how timm loads them into each fold's model (stages.train.model.weight_loading)
