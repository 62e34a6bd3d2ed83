"""Duplicate-aware correction: use what dedup found about the test images.

- consistent clusters: test images in one duplicate cluster are the same picture, so they get one
  prediction, the mean of their members' probabilities.
- leak labels: a test image in a cluster with labelled train images is probably a known answer. Its
  probabilities are blended toward the label distribution of those train images with weight
  `leak_weight` (p = (1 - w) p_model + w p_train): a near-duplicate match is right most of the time,
  not always (bench/dedup_quality.py: pairwise precision 0.95-1.0), and a hard 0/1 that is wrong costs
  an unbounded log loss. Only a test image pixel-identical to a train image of the cluster (listed
  in dedup's report as `exact`) takes the train distribution as it is.
Every change is listed (id, rule, class before, class after) so it can be checked by eye.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline import tasks
from pipeline.tasks import Task


def exact_leak_ids(dedup_report: dict) -> frozenset:
    """Test ids that dedup found pixel-identical to a train image of their cluster."""
    return frozenset(leak["test_id"] for leak in dedup_report.get("train_test_leaks", []) if leak.get("exact"))


def correct(probs: np.ndarray, ids: list[str], clusters: pd.DataFrame, train_labels: pd.Series, classes: list[str],
            leak_label: bool, consistent: bool, leak_weight: float = 1.0, exact_ids: frozenset = frozenset(),
            task: Task | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Return corrected probabilities (rows of `ids`) and one row per image whose probabilities changed.

    clusters: clusters.csv (id, split, cluster, ...); train_labels: label by train id; exact_ids: test
    ids pixel-identical to a train image of their cluster (blended with weight 1). Multi-label (task):
    a leaked test image takes each tag's share among its cluster's train images.
    """
    probs = probs.copy()
    before = probs.argmax(1)
    rule = np.array([""] * len(ids), dtype=object)
    # Test ids may repeat train ids (CIFAR-10 on Kaggle numbers both 1..N): look them up among test rows.
    cluster_of = clusters[clusters.split == "test"].set_index("id")["cluster"]
    test_cluster = cluster_of.reindex(ids).to_numpy()  # NaN for ids dedup never saw (unreadable images)
    known = ~pd.isna(test_cluster)

    if consistent:
        frame = pd.DataFrame({"k": np.arange(len(ids))[known], "cluster": test_cluster[known]})
        for _, members in frame.groupby("cluster")["k"]:
            if len(members) > 1:
                rows = members.to_numpy()
                probs[rows] = probs[rows].mean(0)
                rule[rows] = "cluster"

    if leak_label:
        train = clusters[clusters.split == "train"].copy()
        train["label"] = train.id.map(train_labels)
        multi = task is not None and task.multi_label
        train = train[train.label.notna() & (train.label != "")] if multi else train[train.label.isin(classes)]
        distribution = {}
        for cluster, labels in train.groupby("cluster")["label"]:
            if multi:
                distribution[cluster] = tasks.targets(labels, classes, task).mean(0)
                continue
            counts = np.bincount(labels.map({c: i for i, c in enumerate(classes)}), minlength=len(classes)).astype(float)
            distribution[cluster] = counts / counts.sum()
        for k in np.where(known)[0]:
            if test_cluster[k] in distribution:
                exact = ids[k] in exact_ids
                weight = 1.0 if exact else leak_weight
                probs[k] = (1 - weight) * probs[k] + weight * distribution[test_cluster[k]]
                rule[k] = "leak (exact)" if exact else "leak"

    touched = np.where(rule != "")[0]
    changes = pd.DataFrame({
        "id": [ids[k] for k in touched],
        "rule": rule[touched],
        "before": [classes[before[k]] for k in touched],
        "after": [classes[probs[k].argmax()] for k in touched],
    })
    return probs, changes
