"""top_losses.png: the out-of-fold images the ensemble of folds got most wrong (fastai's plot_top_losses),
where label noise, confusable classes and duplicates with conflicting labels show up first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.cache import read_arrays, read_clusters, read_index
from stages.train import plots

SHOWN = 24  # a 4 x 6 grid: enough to see a pattern, small enough to read every title


def worst(oof: pd.DataFrame, classes: list[str], clusters: pd.DataFrame, count: int = SHOWN) -> pd.DataFrame:
    """The `count` OOF rows with the highest loss (-log of the true class's probability), with the
    prediction, its probability, and how many other images share the row's dedup cluster."""
    probs = oof[[f"p_{c}" for c in classes]].to_numpy(np.float64)
    truth = oof.label.map({c: i for i, c in enumerate(classes)}).to_numpy()
    true_probability = probs[np.arange(len(oof)), truth]
    table = pd.DataFrame({"id": oof.id.to_numpy(), "label": oof.label.to_numpy(),
                          "predicted": np.asarray(classes, dtype=object)[probs.argmax(1)], "probability": probs.max(1),
                          "true_probability": true_probability, "loss": -np.log(np.clip(true_probability, 1e-12, 1.0))})
    sizes = clusters.groupby("cluster").id.transform("size")
    copies = pd.Series((sizes - 1).to_numpy(), index=clusters.id.to_numpy())
    table["copies"] = copies.reindex(table.id).fillna(0).astype(int).to_numpy()
    return table.sort_values("loss", ascending=False, kind="stable").head(count).reset_index(drop=True)


def write(path: Path, oof: pd.DataFrame, classes: list[str], preprocess: Path, dedup: Path) -> pd.DataFrame:
    """Train's side only (its cache and clusters), so a new test set never changes a train output."""
    index = read_index(preprocess, ("train",))
    rows = index[index.split == "train"].set_index("id").row
    table = worst(oof, classes, read_clusters(dedup, ("train",)))
    pixels = read_arrays(preprocess, ("train",))["train"]
    plots.top_losses(table, [np.asarray(pixels[rows[i]]) for i in table.id], path)
    return table
