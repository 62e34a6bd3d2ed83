"""Full fit (train.full_fit): after the k folds, one more model on every training image, trained for the
folds' median best epoch count, written to full/ and added to predict's ensemble.

No image is held out, so it has no out-of-fold predictions: predict never uses it to choose TTA views or
run weights. Its per-epoch "validation" is measured on a fixed sample of training images (copies that do
not train, while their originals do): a fit check in metrics.csv, not a score. best.pt is the last epoch.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import distributed as ddp
from pipeline.artifacts import finished_folds, read_json, replace_dir, write_json
from pipeline.console import console
from pipeline.params import Params
from stages.train import checkpoint, recipe
from stages.train.plots import best_epoch
from stages.train.rows import Rows, TrainData, concat

FOLDER = "full"  # beside fold<k>/; not a fold folder, so nothing reads it as one
RECORD = "full.json"
MONITOR_IMAGES = 512  # training images whose accuracy is logged per epoch


def best_epochs(out: Path, folds: list[int], metric: str) -> dict[int, int]:
    """Per fold, how many epochs it took to reach its best checkpoint (1-based)."""
    found = {}
    for fold in folds:
        history = pd.read_csv(out / f"fold{fold}" / "metrics.csv")
        found[fold] = int(history.epoch[best_epoch(history, metric)]) + 1
    return found


def planned_epochs(out: Path, folds: list[int], epochs: int) -> int:
    """The folds' planned epoch count as their recipes resolved it (train.min_steps may have raised
    `epochs`), from each fold's recipe.json; `epochs` where a fold has none."""
    counts = [epochs]
    for fold in folds:
        path = out / f"fold{fold}" / recipe.RECORD
        if path.is_file():
            record = read_json(path)
            counts.append(record["total_steps"] // max(1, record["steps_per_epoch"]))
    return max(counts)


def full_rows(rows: Rows, monitor_fold: int, seed: int) -> Rows:
    """Every row trains (fold -1); a sample of labelled rows is appended again as the monitor, in clusters
    of their own so that the cluster rule keeps them out of training and their originals in."""
    every = rows.subset(np.arange(len(rows)))
    every.fold = np.full(len(rows), -1)
    labelled = np.where(rows.kind == "labelled")[0]
    pick = np.sort(np.random.default_rng(seed).permutation(labelled)[:MONITOR_IMAGES])
    monitor = rows.subset(pick)
    monitor.fold = np.full(len(pick), monitor_fold)
    monitor.clusters = np.char.add("monitor:", monitor.clusters.astype(str))
    return concat([every, monitor])


def run(data: TrainData, params: Params, out: Path, partial: Path, key: str, device, path: str) -> str:
    """Train (or keep) full/ once every fold of this recipe has finished; returns a line for the summary."""
    from stages.train.loop import train_fold

    p = params.train
    folds = finished_folds(out, key)
    if len(folds) < p.folds:
        return f"waits for all {p.folds} folds ({len(folds)} finished): run `pipeline train` without --fold"
    epochs = best_epochs(out, folds, data.scoring.metric)  # the resolved metric (auto replaced)
    count = max(1, int(np.ceil(np.median(list(epochs.values())))))
    record = {"key": key, "epochs": count, "fold_best_epochs": {str(k): v for k, v in epochs.items()}}
    if (out / FOLDER / RECORD).is_file() and read_json(out / FOLDER / RECORD) == record:
        return f"{count} epochs, kept from an earlier run"
    monitor_fold = p.folds  # no labelled row has this fold: the loop's seed and folder stay apart from the folds'
    if ddp.is_main():
        console.print(f"full fit: every training image for {count} epochs (median best epoch of folds {epochs}); "
                      f"logged below as fold {monitor_fold}, validated on training images (a fit check)")
    # The folds' regularisers whatever the shorter count: the full fit repeats their recipe (stages.train.recipe).
    regularise = 0 if planned_epochs(out, folds, p.epochs) >= p.regularise_min_epochs else p.regularise_min_epochs
    full = params.model_copy(update={"train": p.model_copy(update={"epochs": count, "patience": 0, "fold": None, "min_steps": 0,
                                                                   "regularise_min_epochs": regularise})})
    train_fold(monitor_fold, dataclasses.replace(data, rows=full_rows(data.rows, monitor_fold, params.seed)), full, partial, device, path)
    if ddp.is_main():
        folder = partial / f"fold{monitor_fold}"
        last = checkpoint.load(folder / "last.pt")
        checkpoint.save(folder / "best.pt", {k: v for k, v in last.items()
                                            if k not in ("optimizer", "scaler", "history", "best", "best_probs", "stale")})
        write_json(folder / RECORD, record)
        replace_dir(folder, out / FOLDER)
    return f"{count} epochs on every training image (median best epoch of the folds)"


def prune(out: Path, key: str, wanted: bool) -> None:
    """Remove a full/ model of another recipe, or any when train.full_fit is off (call under the lock)."""
    record = out / FOLDER / RECORD
    if (out / FOLDER).exists() and (not wanted or not record.is_file() or read_json(record)["key"] != key):
        console.print(f"[yellow]removed[/] {out / FOLDER}: " + ("train.full_fit is off" if wanted is False else "trained with other params or inputs"))
        shutil.rmtree(out / FOLDER)
