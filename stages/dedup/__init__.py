"""dedup: find exact and near-duplicate images, cluster them, weight each cluster as one sample.

1. Exact duplicates: identical cached pixels (content hash); they score 1.
2. Near duplicates (re-shot, shifted, re-lit, re-encoded, resized, blurred): every image gets
   signatures (signatures.py: a z-scored 32x32 gray thumbnail, a chroma thumbnail for colour data,
   and a shift-tolerant Fourier-magnitude embedding); each image's `dedup.neighbours` nearest
   neighbours by the embedding are the candidates (search.py, sub-quadratic above 20k images); each
   candidate passes a cheap gate (the same alignment on smaller, blurred thumbnails) or is refused
   unscored; the rest are aligned and scored (verify.py: the worst place of the residual after
   sub-pixel alignment and blur matching, against the picture's contrast; and colour), kept when
   >= `dedup.threshold` (auto: calibrate.py, measured on a fixed sample of images whose candidates
   all skip the gate).
   Near-uniform thumbnails (std < `dedup.min_std`) are left out of step 2: they all look alike.
3. Union-find turns the pairs into clusters (connected components), strongest links first; each
   cluster's weakest spanning link is reported so chaining is visible.

`score_pairs` is the pair-scoring API (pairs of indices with a copy score, all candidates); the stage
keeps those over the threshold. The test side uses the
threshold the train side decided.

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
import mmap

import numpy as np
import pandas as pd

from pipeline.artifacts import read_json, write_csv, write_json
from pipeline.cache import read_arrays, read_clusters, read_index
from pipeline.console import console, track
from pipeline.params import DedupParams, Params
from stages.dedup.calibrate import auto_threshold, calibration_sample
from stages.dedup.report import assign_weights, report_clusters
from stages.dedup.search import neighbour_pairs
from stages.dedup.sheet import contact_sheet
from stages.dedup.signatures import signatures
from stages.dedup.verify import pair_scores
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


def release_pages(images) -> None:
    """Once a pass has read every image: drop the memory-mapped cache's pages from this process. They
    are clean file pages (the page cache keeps them; a later read faults them back in), but while
    mapped they count as this process's memory: 4 GB for a million 64x64 images, on top of the
    signatures. Lists and in-memory arrays are left alone."""
    arrays = images.arrays.values() if isinstance(images, CacheRows) else [images]
    for array in arrays:
        mapping = getattr(array, "_mmap", None)  # numpy's memmap keeps its mmap object here
        if mapping is not None:
            mapping.madvise(mmap.MADV_DONTNEED)


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


def exact_of(n: int, first: np.ndarray, copy: np.ndarray) -> np.ndarray:
    """For every image, the first image with the very same pixels (itself when it has none)."""
    out = np.arange(n)
    out[copy] = first
    return out


def score_pairs(images, d: DedupParams, progress=track) -> dict:
    """Every candidate pair of `images` (a sequence of uint8 HxWxC arrays, all the same size) with its
    copy score: exact copies (identical pixels) score 1; the others are each non-flat image's
    `d.neighbours` nearest neighbours by the shift-tolerant embedding, verified (verify.py).
    Returns {"i", "j", "score"} (i < j, all candidates, also those under the threshold) plus counts.
    The caller keeps the pairs with score >= d.threshold."""
    n = len(images)
    ea, eb = exact_pairs(iter(images), n)
    release_pages(images)
    channels = np.asarray(images[0]).shape[2] if n else 1
    sig = signatures(iter(images), n, colour=channels == 3, progress=progress)
    release_pages(images)
    # exact copies are searched once, through their first occurrence; flat images not at all
    keep = np.flatnonzero((sig.stds >= d.min_std) & ~np.isin(np.arange(n), eb))
    ci, cj, _ = neighbour_pairs(sig.embedding if len(keep) == n else sig.embedding[keep], d.neighbours, progress)
    ci, cj = keep[ci], keep[cj]
    sample = calibration_sample(keep, n)  # their candidates skip the gate: the auto threshold is measured on them
    verified = pair_scores(sig.thumbs, ci, cj, d.max_shift, sig.chroma, progress, always=sample[ci] | sample[cj])
    return {
        "i": np.r_[ea, ci], "j": np.r_[eb, cj], "score": np.r_[np.ones(len(ea), np.float32), verified["score"]],
        "exact_pairs": int(len(ea)), "candidate_pairs": int(len(ci)), "exact_of": exact_of(n, ea, eb),
        "flat_images": int((sig.stds < d.min_std).sum()), "calibration_sample": sample,
        "verified_pairs": int(verified["verified"].sum()),
        "gate": np.r_[np.full(len(ea), np.inf, np.float32), verified["gate"]],  # per pair, as i and j
    }


def find_links(images, d: DedupParams, threshold: float | None = None) -> dict:
    """Images -> every accepted duplicate link (a, b, score: 1 for exact copies), all scored pairs,
    the threshold used and why, and the counts behind them. `threshold`: a value decided before (the
    train side's); None: `d.threshold`, or from these images' own look-alike level when it is auto."""
    scored = score_pairs(images, d)
    if threshold is not None:
        why = f"{threshold} (decided on the train side)"
    elif d.threshold == "auto":
        threshold, why = auto_threshold(scored["i"], scored["j"], scored["score"], len(images), scored["calibration_sample"])
    else:
        threshold, why = d.threshold, "set in params"
    ok = scored["score"] >= threshold
    return {
        "a": scored["i"][ok].astype(np.int64),
        "b": scored["j"][ok].astype(np.int64),
        "link": scored["score"][ok],
        "pairs": (scored["i"], scored["j"], scored["score"]),
        "gate": scored["gate"],
        "threshold": float(threshold),
        "threshold_reason": why,
        "exact_of": scored["exact_of"],
        "exact_pairs": scored["exact_pairs"],
        "candidate_pairs": scored["candidate_pairs"],
        "verified_pairs": scored["verified_pairs"],
        "near_pairs": int(ok.sum()) - scored["exact_pairs"],
        "flat_images": scored["flat_images"],
    }


def find_duplicates(images, d: DedupParams) -> dict:
    """Images -> cluster number per image, weakest link per cluster, and find_links' outputs.
    Used by the train side and by the benchmarks."""
    found = find_links(images, d)
    cluster, weakest = cluster_links(len(images), found["a"], found["b"], found["link"])
    return {**found, "cluster": cluster, "weakest": weakest}


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
    report = {k: found[k] for k in ("exact_pairs", "candidate_pairs", "verified_pairs", "near_pairs", "flat_images", "threshold", "threshold_reason")}
    report.update({k: v for k, v in report_clusters(clusters, found["weakest"], d.sheet_clusters).items() if "leak" not in k})
    report["weakest_links"] = {str(c): v for c, v in found["weakest"].items()}  # the test side reports with them
    write_csv(out / "clusters.csv", clusters[COLUMNS])
    write_json(out / "report.json", report)
    return clusters, report


def build_test_side(index: pd.DataFrame, images, train: pd.DataFrame, d: DedupParams, out,
                    threshold: float | None = None) -> tuple[pd.DataFrame, dict, dict]:
    """Test images attached to the train clusters (leaks) or in test-only clusters (test/clusters.csv),
    with links kept at the train side's threshold."""
    test = index[index.split == "test"].reset_index(drop=True)
    found = find_links(images, d, threshold)
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
    test, test_report, found = build_test_side(index, images, train, d, out / "test", train_report.get("threshold"))

    labels = index[index.split == "train"][["id", "label"]]
    clusters = pd.concat([labels.merge(train[COLUMNS], on="id", how="left"), test], ignore_index=True)
    weakest = {int(c): v for c, v in train_report["weakest_links"].items()} | found["weakest"]
    links = found["links"]
    # Ids may repeat across sides (CIFAR-10's train and test are both numbered 1..N): key rows by side and id.
    keys = (index.split + ":" + index.id).to_numpy()
    cluster_keys = clusters.split + ":" + clusters.id
    clusters["exact_of"] = cluster_keys.map(pd.Series(keys[links["exact_of"]], index=keys))  # pixel-identical leaks
    report = {
        "exact_pairs": links["exact_pairs"],
        "candidate_pairs": links["candidate_pairs"],
        "verified_pairs": links["verified_pairs"],
        "near_pairs": links["near_pairs"],
        "flat_images": links["flat_images"],
        "threshold": links["threshold"],
        "threshold_reason": train_report.get("threshold_reason", links["threshold_reason"]),
        "train_side": "carried over (unchanged)" if paths.reused else "built",
        **report_clusters(clusters, weakest, d.sheet_clusters),
    }
    write_json(out / "report.json", report)  # both sides, for a person to read
    position = pd.Series(np.arange(len(clusters)), index=cluster_keys)[keys].to_numpy()  # index order -> sheet rows
    accepted = (position[links["a"]], position[links["b"]], links["link"])
    contact_sheet(out / "contact_sheet.png", clusters, images, report, d.sheet_clusters, accepted)
    if report["label_conflicts"] or report["train_test_leaks"]:
        console.print(f"[yellow]dedup:[/] {len(report['label_conflicts'])} label conflicts, "
                      f"{len(report['train_test_leaks'])} test images leak from train (see report.json)")
    return {k: v for k, v in report.items() if not isinstance(v, (list, dict))}
