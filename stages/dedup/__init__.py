"""dedup: find exact and near-duplicate images, cluster them, weight each cluster as one sample.

1. Exact duplicates: identical cached pixels (content hash).
2. Near duplicates (re-encoded, shifted 1-2 px, brighter/darker, resized): every image gets a centred,
   z-scored 32x32 gray thumbnail and a 64-bit DCT hash (signatures.py); pairs of hashes within
   `dedup.radius` are found by sorted neighbourhoods under bit rotations (search.py, sub-quadratic);
   each candidate is verified by the thumbnails' correlation maximised over shifts up to
   `dedup.max_shift` (verify.py), kept when >= `dedup.threshold`. The hash alone is not trusted: on
   small gray images (digits) it puts thousands of distinct items within any useful radius.
   Near-uniform thumbnails (std < `dedup.min_std`) are left out of step 2: they all look alike.
3. Union-find turns the pairs into clusters (connected components); each cluster's weakest accepted
   link is reported so chaining is visible.

Train depends on the training data only (pipeline.runner), so the clusters are built in two sides:
  train/  train clusters and weights from train<->train links alone (a test image never changes a
          train weight): clusters.csv, report.json (counts, largest clusters, label conflicts)
  test/   each test image joins the train cluster of its strongest link (a leak), through other test
          images if need be, or a test-only cluster; it never merges two train clusters:
          clusters.csv, report.json
  report.json (both sides: counts, largest clusters, label conflicts, train/test leaks) and
  contact_sheet.png (largest clusters and conflicts), for a person to look at.
clusters.csv columns: id, split, cluster, is_representative, weight (test rows weigh 0).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from pipeline.artifacts import read_json, write_csv, write_json
from pipeline.cache import read_arrays, read_clusters, read_index
from pipeline.console import console, track
from pipeline.params import DedupParams, Params
from stages.dedup.report import assign_weights, report_clusters
from stages.dedup.search import hash_pairs
from stages.dedup.sheet import contact_sheet
from stages.dedup.signatures import signatures
from stages.dedup.verify import shift_correlation
from stages.dedup.union_find import UnionFind

COLUMNS = ["id", "split", "cluster", "is_representative", "weight"]


class CacheRows:
    """The cached images in index order, read lazily from the memory maps (no list of a million views)."""

    def __init__(self, arrays: dict[str, np.ndarray], index: pd.DataFrame):
        self.arrays, self.split, self.row = arrays, index.split.to_numpy(), index.row.to_numpy()

    def __len__(self) -> int:
        return len(self.row)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.arrays[self.split[i]][self.row[i]])

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def exact_pairs(images, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (first image with this content, image) for every repeated pixel content."""
    first_seen: dict[bytes, int] = {}
    a, b = [], []
    for i, image in enumerate(track(images, total, "exact hash")):
        digest = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()
        j = first_seen.setdefault(digest, i)
        if j != i:
            a.append(j)
            b.append(i)
    return np.array(a, np.int64), np.array(b, np.int64)


def near_pairs(thumbs: np.ndarray, stds: np.ndarray, hashes: np.ndarray, d: DedupParams, skip: np.ndarray):
    """Verified near-duplicate pairs (i, j, score) among the non-flat images, plus the candidate count.
    `skip` marks exact copies: their first occurrence stands for them, so ten thousand copies of one
    picture cost one search entry, not ten thousand."""
    keep = np.flatnonzero((stds >= d.min_std) & ~skip)
    ci, cj, _ = hash_pairs(hashes[keep], d.radius, d.window)
    ci, cj = keep[ci], keep[cj]
    scores = shift_correlation(thumbs, ci, cj, d.max_shift)
    ok = scores >= d.threshold
    return ci[ok], cj[ok], scores[ok], len(ci)


def find_links(images, d: DedupParams) -> dict:
    """Images (a sequence of uint8 HxWxC arrays, all the same size) -> every accepted duplicate link
    (a, b, score: 1 for exact copies) and the counts behind them."""
    n = len(images)
    ea, eb = exact_pairs(iter(images), n)
    thumbs, stds, hashes = signatures(iter(images), n, track)
    na, nb, scores, candidates = near_pairs(thumbs, stds, hashes, d, skip=np.isin(np.arange(n), eb))
    return {
        "a": np.r_[ea, na].astype(np.int64),
        "b": np.r_[eb, nb].astype(np.int64),
        "link": np.r_[np.ones(len(ea), np.float32), scores],
        "exact_pairs": int(len(ea)),
        "candidate_pairs": int(candidates),
        "near_pairs": int(len(na)),
        "flat_images": int((stds < d.min_std).sum()),
    }


def find_duplicates(images, d: DedupParams) -> dict:
    """Images -> cluster number per image, weakest link per cluster, and the counts behind them: every
    link counts (the train side's clustering; used by the stage and by the benchmarks)."""
    found = find_links(images, d)
    cluster, weakest = cluster_links(len(images), found.pop("a"), found.pop("b"), found.pop("link"))
    return {"cluster": cluster, "weakest": weakest, **found}


def cluster_links(n: int, a: np.ndarray, b: np.ndarray, link: np.ndarray) -> tuple[np.ndarray, dict[int, float]]:
    """Union-find over the pairs, strongest first (as Kruskal builds a maximum spanning tree).
    Returns the cluster number of every image and, per cluster with links, its weakest spanning link:
    the borderline pair the cluster hangs on, low when it is a chain a~b~c of looser matches."""
    order = np.argsort(-link, kind="stable")
    uf = UnionFind(n)
    used = np.array([uf.union(int(a[k]), int(b[k])) for k in order], dtype=bool)
    cluster = uf.labels()
    spanning = order[used]
    weakest = pd.Series(link[spanning], dtype=np.float64).groupby(cluster[a[spanning]]).min()
    return cluster, {int(c): float(v) for c, v in weakest.items()}


def attach_test(train_cluster: np.ndarray, n_test: int, a: np.ndarray, b: np.ndarray, link: np.ndarray):
    """Clusters of the test images, given the train clusters and the links among train + test images
    (train images first, numbered 0..n_train-1, then the test images).

    Train<->train links are ignored: the train clusters are final, so no test image can merge two of
    them or change a train weight. Test images linked to each other form components; a component with
    links to train images joins the train cluster of its strongest such link (a leak), any other one is
    a new test-only cluster, numbered after the train clusters. Returns (cluster per test image,
    attaching link score per test image or NaN, weakest spanning link per test-only cluster, number of
    components linked to more than one train cluster)."""
    n_train = len(train_cluster)
    test_a, test_b = a >= n_train, b >= n_train
    both = test_a & test_b
    component, weakest = cluster_links(n_test, a[both] - n_train, b[both] - n_train, link[both])
    cross = test_a ^ test_b
    test_end = np.where(test_a[cross], a[cross], b[cross]) - n_train
    train_end = np.where(test_a[cross], b[cross], a[cross])
    links = pd.DataFrame({"component": component[test_end], "cluster": train_cluster[train_end], "link": link[cross]})
    links = links.sort_values(["component", "link", "cluster"], ascending=[True, False, True], kind="stable")
    best = links.drop_duplicates("component").set_index("component")
    ambiguous = int((links.groupby("component")["cluster"].nunique() > 1).sum())
    first_new = int(train_cluster.max()) + 1 if n_train else 0
    alone = [c for c in pd.unique(component) if c not in best.index]
    new_number = {c: first_new + k for k, c in enumerate(alone)}
    cluster = np.array([best.cluster[c] if c in best.index else new_number[c] for c in component], dtype=np.int64)
    score = np.array([best.link[c] if c in best.index else np.nan for c in component], dtype=np.float64)
    weakest_new = {new_number[c]: v for c, v in weakest.items() if c in new_number}
    return cluster, score, weakest_new, ambiguous


def build_train_side(index: pd.DataFrame, arrays, d: DedupParams, out) -> tuple[pd.DataFrame, dict]:
    """Clusters and weights of the train images from train<->train links alone (train/clusters.csv)."""
    train = index[index.split == "train"].reset_index(drop=True)
    found = find_duplicates(CacheRows(arrays, train), d)
    clusters = assign_weights(train[["id", "split", "label"]].assign(cluster=found["cluster"]), d.policy)
    report = {k: found[k] for k in ("exact_pairs", "candidate_pairs", "near_pairs", "flat_images")}
    report.update({k: v for k, v in report_clusters(clusters, found["weakest"], d.sheet_clusters).items() if "leak" not in k})
    report["weakest_links"] = {str(c): v for c, v in found["weakest"].items()}  # the test side reports with them
    write_csv(out / "clusters.csv", clusters[COLUMNS])
    write_json(out / "report.json", report)
    return clusters, report


def build_test_side(index: pd.DataFrame, images, train: pd.DataFrame, d: DedupParams, out) -> tuple[pd.DataFrame, dict, dict]:
    """Test images attached to the train clusters (leaks) or in test-only clusters (test/clusters.csv)."""
    test = index[index.split == "test"].reset_index(drop=True)
    found = find_links(images, d)
    cluster, score, weakest, ambiguous = attach_test(train.cluster.to_numpy(np.int64), len(test), found["a"], found["b"], found["link"])
    clusters = test[["id", "split", "label"]].assign(cluster=cluster, is_representative=False, weight=0.0)
    new = ~clusters.cluster.isin(set(train.cluster))
    clusters.loc[new & ~clusters.cluster.duplicated(), "is_representative"] = True
    report = {
        "test_images": int(len(test)),
        "attached_to_train_clusters": int((~new).sum()),
        "test_only_clusters": int(clusters.cluster[new].nunique()),
        "linked_to_several_train_clusters": ambiguous,  # joined the strongest; never merged the train clusters
        "attaching_links": {row.id: round(float(s), 4) for row, s in zip(clusters.itertuples(), score) if not np.isnan(s)},
    }
    write_csv(out / "clusters.csv", clusters[COLUMNS])
    write_json(out / "report.json", report)
    return clusters, report, {"links": found, "weakest": weakest}


def run(params: Params, paths) -> dict:
    d = params.dedup
    pre, out = paths["preprocess"], paths.out
    index, arrays = read_index(pre), read_arrays(pre)
    if paths.reused:  # the runner carried the train side over: only the test images changed
        train = read_clusters(out, ("train",))
        train_report = read_json(out / "train" / "report.json")
    else:
        train, train_report = build_train_side(index, arrays, d, out / "train")
    images = CacheRows(arrays, index)
    test, test_report, found = build_test_side(index, images, train, d, out / "test")

    labels = index[index.split == "train"][["id", "label"]]
    clusters = pd.concat([labels.merge(train[COLUMNS], on="id", how="left"), test], ignore_index=True)
    weakest = {int(c): v for c, v in train_report["weakest_links"].items()} | found["weakest"]
    links = found["links"]
    report = {
        "exact_pairs": links["exact_pairs"],
        "candidate_pairs": links["candidate_pairs"],
        "near_pairs": links["near_pairs"],
        "flat_images": links["flat_images"],
        "train_side": "carried over (unchanged)" if paths.reused else "built",
        **report_clusters(clusters, weakest, d.sheet_clusters),
    }
    write_json(out / "report.json", report)  # both sides, for a person to read
    contact_sheet(out / "contact_sheet.png", clusters, images, report, d.sheet_clusters)
    if report["label_conflicts"] or report["train_test_leaks"]:
        console.print(f"[yellow]dedup:[/] {len(report['label_conflicts'])} label conflicts, "
                      f"{len(report['train_test_leaks'])} test images leak from train (see report.json)")
    return {k: v for k, v in report.items() if not isinstance(v, (list, dict))}
