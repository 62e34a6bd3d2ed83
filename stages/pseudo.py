"""pseudo: confident test predictions become extra training rows for the next round.

Selection (params.pseudo): a prediction is kept when it passes every criterion that is on:
  threshold     its top probability is at least this;
  top_fraction  it is in the most confident fraction of the test images predicted as its class, so
                every class keeps a share in proportion to how often it is predicted, and easy
                frequent classes do not crowd out the rare ones.
Multi-label (independent tag probabilities): an image's confidence is that of its least certain tag,
max(p, 1 - p), so a kept image has every tag confidently on or off; its label lists the tags on, and
its hard targets are those tags (soft: the probabilities themselves).
Left out always: test images preprocess could not read (they were filled with the train prior) and
test images dedup put in a cluster with train images (their label is known already, and as copies of
train images they would leak across folds).

Output: pseudo.csv (id, row, cluster, label, confidence, weight, p_<class>...) where row is the row of
preprocess/test.npy and p_<class> are the training targets (the ensemble's probabilities when
pseudo.soft, else one-hot), plus summary.json and pseudo.png (kept rows per class, confidence). The train stage reads them with `pipeline.cache.read_pseudo_rows`
and adds them to the training part of each fold, never to its validation part (stages/train/rows.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import tasks
from pipeline.artifacts import write_csv, write_json
from pipeline.cache import read_classes, read_clusters, read_index, read_probs, read_task
from pipeline.params import Params, PseudoParams
from pipeline.plots import plt, save_figure
from pipeline.errors import StageError



def confidence_of(probs: np.ndarray, multi_label: bool = False) -> np.ndarray:
    """Top probability; multi-label: the certainty of the least certain tag."""
    return np.maximum(probs, 1 - probs).min(1) if multi_label else probs.max(1)


def select(probs: np.ndarray, p: PseudoParams, multi_label: bool = False) -> np.ndarray:
    """Boolean mask of the rows to keep (see the module docstring)."""
    confidence, predicted = confidence_of(probs, multi_label), probs.argmax(1)
    keep = np.ones(len(probs), dtype=bool)
    if p.threshold is not None:
        keep &= confidence >= p.threshold
    if p.top_fraction is not None:
        top = np.zeros(len(probs), dtype=bool)
        for c in np.unique(predicted):
            members = np.where(predicted == c)[0]
            n = math.ceil(p.top_fraction * len(members))
            top[members[np.argsort(-confidence[members], kind="stable")[:n]]] = True
        keep &= top
    return keep


def run(params: Params, paths) -> dict:
    p = params.pseudo
    pre = paths["preprocess"]
    classes, task = read_classes(pre), read_task(pre)
    predictions = read_probs(paths["predict"] / "probs.csv", classes, "run `pipeline predict` first")
    columns = [f"p_{c}" for c in classes]

    test = read_index(pre).query("split == 'test'").set_index("id")
    clusters = read_clusters(paths["dedup"])
    train_clusters = set(clusters.cluster[clusters.split == "train"])
    cluster_of = clusters.set_index("id")["cluster"]
    readable = predictions.id.isin(test.index).to_numpy()
    leaked = predictions.id.map(cluster_of).isin(train_clusters).to_numpy()
    probs = predictions[columns].to_numpy()
    keep = select(probs, p, task.multi_label) & readable & ~leaked

    chosen = predictions[keep]
    kept = probs[keep]
    if task.multi_label:
        on = kept >= 0.5  # every kept tag is confidently on or off (select), so 0.5 splits them
        targets = kept if p.soft else on.astype(float)
        labels = [task.separator.join(c for c, tag in zip(classes, row) if tag) for row in on]
    else:
        targets = kept if p.soft else np.eye(len(classes))[kept.argmax(1)]
        labels = np.array(classes)[kept.argmax(1)]
    table = pd.DataFrame({
        "id": chosen.id.values,
        "row": test.loc[chosen.id, "row"].to_numpy(),
        "cluster": chosen.id.map(cluster_of).to_numpy(),
        "label": labels,
        "confidence": confidence_of(kept, task.multi_label),
        "weight": p.weight,
    })
    for k, column in enumerate(columns):
        table[column] = targets[:, k]
    write_csv(paths.out / "pseudo.csv", table)
    label_counts = table.label.map(lambda c: tasks.split_tags(c, task.separator)).explode() if task.multi_label else table.label
    per_class = label_counts.value_counts().reindex(classes, fill_value=0)
    summary = {
        "test predictions": len(predictions),
        "pseudo rows": len(table),
        "share kept": round(len(table) / max(1, len(predictions)), 4),
        "left out (unreadable)": int((~readable).sum()),
        "left out (duplicates of train)": int((readable & leaked).sum()),
        "targets": "soft" if p.soft else "hard",
        "mean confidence kept": float(table.confidence.mean()) if len(table) else 0.0,
        "classes with no pseudo rows": [c for c in classes if per_class[c] == 0][:20],
    }
    write_json(paths.out / "summary.json", {**summary, "per class": per_class.to_dict()})
    plot_selection(paths.out / "pseudo.png", probs, keep, classes, p, task.multi_label)
    return summary


def plot_selection(path: Path, probs: np.ndarray, keep: np.ndarray, classes: list[str], p: PseudoParams, multi_label: bool = False) -> None:
    """pseudo.png: per predicted class, test images against those kept; confidence with the threshold."""
    predicted = pd.Series(np.array(classes)[probs.argmax(1)])
    counts = pd.DataFrame({"predicted": predicted.value_counts(), "kept": predicted[keep].value_counts()})
    counts = counts.reindex(classes, fill_value=0).fillna(0).sort_values("predicted", ascending=False).head(30)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    x = np.arange(len(counts))
    axes[0].bar(x - 0.2, counts.predicted, 0.4, label="test predicted")
    axes[0].bar(x + 0.2, counts.kept, 0.4, label="pseudo rows")
    axes[0].set_xticks(x, counts.index, rotation=90 if len(counts) > 10 else 0)
    axes[0].set_title("per predicted class")
    axes[0].legend()
    confidence = confidence_of(probs, multi_label)
    axes[1].hist([confidence[~keep], confidence[keep]], bins=20, range=(0, 1), stacked=True, label=["left out", "kept"])
    if p.threshold is not None:
        axes[1].axvline(p.threshold, color="k", linestyle="--", label=f"threshold {p.threshold}")
    axes[1].set_title("confidence of test predictions")
    axes[1].legend()
    save_figure(fig, path, dpi=100)
