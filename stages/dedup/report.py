"""Cluster weights and the dedup report: sizes, weakest links, label conflicts, train/test leaks."""

from __future__ import annotations

import pandas as pd

LISTED_IDS = 20  # ids listed per cluster in the report (the csv has them all)


def assign_weights(clusters: pd.DataFrame, policy: str) -> pd.DataFrame:
    """Equal rights per cluster: its train members share a total weight of 1 (or one keeps it all).
    The representative is the cluster's first train member (its first member when it has none)."""
    clusters = clusters.copy()
    train = clusters.split == "train"
    order = clusters.assign(_test=~train).sort_values(["_test"], kind="stable")  # train members first
    clusters["is_representative"] = False
    clusters.loc[order.drop_duplicates("cluster").index, "is_representative"] = True
    clusters["weight"] = 0.0
    if policy == "weight":
        size = clusters[train].groupby("cluster")["id"].transform("size")
        clusters.loc[train, "weight"] = 1.0 / size
    else:
        clusters.loc[train & clusters.is_representative, "weight"] = 1.0
    return clusters


def report_clusters(clusters: pd.DataFrame, weakest: dict, top: int) -> dict:
    sizes = clusters.groupby("cluster").size()
    multi = sizes[sizes > 1].sort_values(ascending=False, kind="stable")
    members = clusters.groupby("cluster")
    largest = [
        {
            "cluster": int(c),
            "size": int(n),
            "weakest_link": round(float(weakest.get(c, 1.0)), 4),
            "labels": sorted(set(members.get_group(c).label) - {""}),
            "ids": members.get_group(c).id.tolist()[:LISTED_IDS],
        }
        for c, n in multi.head(top).items()
    ]
    train = clusters[clusters.split == "train"]
    train_labels = train.groupby("cluster")["label"].agg(lambda s: sorted(set(s)))
    train_ids = train.groupby("cluster")["id"].agg(list)
    conflicts = [
        {"cluster": int(c), "labels": labels, "ids": train_ids[c][:LISTED_IDS], "weakest_link": round(float(weakest.get(c, 1.0)), 4)}
        for c, labels in train_labels.items()
        if len(labels) > 1
    ]
    test = clusters[(clusters.split == "test") & clusters.cluster.isin(train_labels.index)]
    # pixel-identical to a train image of its cluster: predict may then use the train label as it is
    identical = set(zip(train.cluster, train.exact_of)) if "exact_of" in clusters else set()
    leaks = [
        {"test_id": row.id, "train_ids": train_ids[row.cluster][:LISTED_IDS], "labels": train_labels[row.cluster],
         "exact": (row.cluster, getattr(row, "exact_of", None)) in identical,
         "weakest_link": round(float(weakest.get(row.cluster, 1.0)), 4)}
        for row in test.itertuples()
    ]
    return {
        "images": int(len(clusters)),
        "clusters": int(len(sizes)),
        "duplicate_clusters": int(len(multi)),
        "images_in_duplicate_clusters": int(multi.sum()),
        "largest_cluster": int(sizes.max()) if len(sizes) else 0,
        "cluster_sizes": {int(k): int(v) for k, v in multi.value_counts().sort_index().items()},  # size -> clusters
        "weakest_link": round(float(min(weakest.values())), 4) if weakest else None,
        "label_conflicts_count": len(conflicts),
        "train_test_leaks_count": len(leaks),
        "largest_clusters": largest,
        "label_conflicts": conflicts,
        "train_test_leaks": leaks,
    }
