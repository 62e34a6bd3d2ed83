"""Candidate pairs: each image's k nearest neighbours by cosine similarity of the embeddings.

Up to EXACT_UP_TO images the search is exact: blocks of queries against all embeddings, one matrix
product (BLAS) and a top-k per block, O(N^2 D) flops but no approximation. Above it, an inverted-file
search keeps it sub-quadratic: spherical k-means puts the embeddings in about 4 sqrt(N) cells, every
image is filed in its PROBE nearest cells, and neighbours are searched inside each cell; a copy sits
next to its original, so the two share their nearest cell, and filing in several cells catches pairs
near a border. Cost O(N sqrt(N) D) for the clustering plus O(N * cell size * D) for the cells.
"""

from __future__ import annotations

import numpy as np
import torch

EXACT_UP_TO = 20_000  # images; above, the inverted-file search (exact search grows as N^2: ~10 s at 20k here)
BLOCK = 1024  # queries per matrix product in the exact search
PROBE = 3  # cells each image is filed in (inverted-file search)
KMEANS_ITERATIONS = 8


def unique_pairs(i: np.ndarray, j: np.ndarray, sim: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs as (low, high) without self-pairs or repeats, keeping the highest similarity."""
    keep = i != j
    low, high, sim = np.minimum(i, j)[keep], np.maximum(i, j)[keep], sim[keep]
    key = low.astype(np.int64) * n + high
    order = np.lexsort((-sim, key))
    key, sim = key[order], sim[order]
    first = np.r_[True, key[1:] != key[:-1]]
    return key[first] // n, key[first] % n, sim[first]


def top_k(queries: torch.Tensor, base: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    sims = queries @ base.T
    values, index = sims.topk(min(k + 1, base.shape[0]), dim=1)  # +1: the query itself
    return values, index


def exact_knn(embedding: np.ndarray, k: int, progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(embedding)
    base = torch.from_numpy(embedding)
    parts_i, parts_j, parts_s = [], [], []
    starts = range(0, n, BLOCK)
    for lo in starts if progress is None else progress(starts, len(starts), "neighbours"):
        values, index = top_k(base[lo : lo + BLOCK], base, k)
        parts_i.append(np.repeat(np.arange(lo, lo + len(values)), values.shape[1]))
        parts_j.append(index.numpy().ravel())
        parts_s.append(values.numpy().ravel())
    return unique_pairs(np.concatenate(parts_i), np.concatenate(parts_j), np.concatenate(parts_s), n)


def spherical_kmeans(embedding: torch.Tensor, cells: int, rng: np.random.Generator) -> torch.Tensor:
    """Unit-norm centroids of `cells` clusters, trained on a sample of at most 64 points per cell."""
    sample = embedding[torch.from_numpy(rng.choice(len(embedding), min(len(embedding), 64 * cells), replace=False))]
    centroids = sample[torch.from_numpy(rng.choice(len(sample), cells, replace=False))].clone()
    for _ in range(KMEANS_ITERATIONS):
        assign = (sample @ centroids.T).argmax(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, sample)
        empty = sums.norm(dim=1) < 1e-6
        sums[empty] = centroids[empty]  # a cell nobody chose keeps its centroid
        centroids = sums / sums.norm(dim=1, keepdim=True)
    return centroids


def clustered_knn(embedding: np.ndarray, k: int, seed: int = 0, progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(embedding)
    base = torch.from_numpy(embedding)
    centroids = spherical_kmeans(base, max(1, int(4 * np.sqrt(n))), np.random.default_rng(seed))
    cells = torch.cat([(base[lo : lo + 65536] @ centroids.T).topk(PROBE, dim=1).indices for lo in range(0, n, 65536)])
    members = cells.reshape(-1).numpy()
    owner = np.repeat(np.arange(n), PROBE)
    order = np.argsort(members, kind="stable")
    bounds = np.searchsorted(members[order], np.arange(len(centroids) + 1))
    parts_i, parts_j, parts_s = [], [], []
    cell_ids = range(len(centroids))
    for c in cell_ids if progress is None else progress(cell_ids, len(centroids), "neighbours"):
        ids = owner[order[bounds[c] : bounds[c + 1]]]
        if len(ids) < 2:
            continue
        group = base[torch.from_numpy(ids)]
        for lo in range(0, len(ids), BLOCK):
            values, index = top_k(group[lo : lo + BLOCK], group, k)
            parts_i.append(np.repeat(ids[lo : lo + len(values)], values.shape[1]))
            parts_j.append(ids[index.numpy().ravel()])
            parts_s.append(values.numpy().ravel())
    if not parts_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return unique_pairs(np.concatenate(parts_i), np.concatenate(parts_j), np.concatenate(parts_s), n)


def neighbour_pairs(embedding: np.ndarray, k: int, progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs (i < j, cosine similarity): j among i's k nearest or i among j's."""
    if len(embedding) < 2 or k == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    if len(embedding) <= EXACT_UP_TO:
        return exact_knn(embedding, k, progress)
    return clustered_knn(embedding, k, progress=progress)
