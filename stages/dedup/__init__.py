"""dedup: find exact and near-duplicate images, cluster them, weight each cluster as one sample.

1. Exact duplicates: identical cached pixels (content hash); they score 1.
2. Near duplicates (re-shot, shifted, re-lit, re-encoded, resized, blurred): every image gets
   signatures (signatures.py: a z-scored 32x32 gray thumbnail, a chroma thumbnail for colour data,
   and a shift-tolerant Fourier-magnitude embedding); each image's `dedup.neighbours` nearest
   neighbours by the embedding are the candidates (search.py, sub-quadratic above 20k images); each
   candidate is aligned and scored (verify.py: worst local structural similarity after sub-pixel
   alignment and blur matching, and colour), kept when >= `dedup.threshold` (auto: calibrate.py).
   Near-uniform thumbnails (std < `dedup.min_std`) are left out of step 2: they all look alike.
3. Union-find turns the pairs into clusters (connected components), strongest links first; each
   cluster's weakest spanning link is reported so chaining is visible.

`score_pairs` is the pair-scoring API (pairs of indices with a copy score, all candidates); the stage
keeps those over the threshold. Outputs: clusters.csv (id, split, cluster, is_representative,
weight), report.json (counts, the threshold and why, largest clusters, label conflicts, train/test
leaks with their weakest link and whether pixel-identical), contact_sheet.png (largest clusters and
conflicts, with ids and link scores).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from pipeline.artifacts import write_csv, write_json
from pipeline.cache import read_arrays, read_index
from pipeline.console import console, track
from pipeline.params import DedupParams, Params
from stages.dedup.calibrate import auto_threshold
from stages.dedup.report import assign_weights, report_clusters
from stages.dedup.search import neighbour_pairs
from stages.dedup.sheet import contact_sheet
from stages.dedup.signatures import signatures
from stages.dedup.verify import pair_scores
from stages.dedup.union_find import UnionFind


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
    channels = np.asarray(images[0]).shape[2] if n else 1
    sig = signatures(iter(images), n, colour=channels == 3, progress=progress)
    # exact copies are searched once, through their first occurrence; flat images not at all
    keep = np.flatnonzero((sig.stds >= d.min_std) & ~np.isin(np.arange(n), eb))
    ci, cj, _ = neighbour_pairs(sig.embedding[keep], d.neighbours, progress)
    ci, cj = keep[ci], keep[cj]
    verified = pair_scores(sig.thumbs, ci, cj, d.max_shift, sig.chroma, progress)
    return {
        "i": np.r_[ea, ci], "j": np.r_[eb, cj], "score": np.r_[np.ones(len(ea), np.float32), verified["score"]],
        "exact_pairs": int(len(ea)), "candidate_pairs": int(len(ci)), "exact_of": exact_of(n, ea, eb),
        "flat_images": int((sig.stds < d.min_std).sum()),
    }


def find_duplicates(images, d: DedupParams) -> dict:
    """Images -> cluster number per image, weakest link per cluster, the scored pairs and counts.
    Used by the stage and by the benchmarks."""
    scored = score_pairs(images, d)
    if d.threshold == "auto":
        threshold, why = auto_threshold(scored["i"], scored["j"], scored["score"], len(images))
    else:
        threshold, why = d.threshold, "set in params"
    ok = scored["score"] >= threshold
    cluster, weakest = cluster_links(len(images), scored["i"][ok], scored["j"][ok], scored["score"][ok])
    return {
        "cluster": cluster,
        "weakest": weakest,
        "pairs": (scored["i"], scored["j"], scored["score"]),
        "threshold": threshold,
        "threshold_reason": why,
        "accepted": (scored["i"][ok], scored["j"][ok], scored["score"][ok]),
        "exact_of": scored["exact_of"],
        "exact_pairs": scored["exact_pairs"],
        "candidate_pairs": scored["candidate_pairs"],
        "near_pairs": int(ok.sum()) - scored["exact_pairs"],
        "flat_images": scored["flat_images"],
    }


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


def run(params: Params, paths) -> dict:
    d = params.dedup
    index, arrays = read_index(paths["preprocess"]), read_arrays(paths["preprocess"])
    images = CacheRows(arrays, index)
    found = find_duplicates(images, d)

    clusters = index[["id", "split", "label"]].copy()
    clusters["cluster"] = found["cluster"]
    clusters["exact_of"] = found["exact_of"]
    clusters = assign_weights(clusters, d.policy)
    report = {
        "exact_pairs": found["exact_pairs"],
        "candidate_pairs": found["candidate_pairs"],
        "near_pairs": found["near_pairs"],
        "flat_images": found["flat_images"],
        "threshold": found["threshold"],
        "threshold_reason": found["threshold_reason"],
        **report_clusters(clusters, found["weakest"], d.sheet_clusters),
    }
    write_csv(paths.out / "clusters.csv", clusters[["id", "split", "cluster", "is_representative", "weight"]])
    write_json(paths.out / "report.json", report)
    contact_sheet(paths.out / "contact_sheet.png", clusters, images, report, d.sheet_clusters, found["accepted"])
    if report["label_conflicts"] or report["train_test_leaks"]:
        console.print(f"[yellow]dedup:[/] {len(report['label_conflicts'])} label conflicts, "
                      f"{len(report['train_test_leaks'])} test images leak from train (see report.json)")
    return {k: v for k, v in report.items() if not isinstance(v, (list, dict))}
