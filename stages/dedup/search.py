"""Candidate pairs: each image's k nearest neighbours by cosine similarity of the embeddings.

Up to EXACT_UP_TO images the search is exact: blocks of queries against all embeddings, one matrix
product (BLAS) and a top-k per block, O(N^2 D) flops but no approximation. Above it, an inverted-file
search keeps it sub-quadratic: spherical k-means puts the embeddings in about CELLS_PER_ROOT sqrt(N)
cells, every image is filed in its nearest cell and looks for its k nearest among the images filed in
its PROBE nearest cells (a copy near a cell border may be filed in the next one). Cost O(N sqrt(N) D)
for the clustering plus O(N * PROBE * cell size * D) for the search.
"""

from __future__ import annotations

import numpy as np
import torch

from stages.dedup.workers import map_batches

EXACT_UP_TO = 20_000  # images; above, the inverted-file search (exact search grows as N^2: ~10 s at 20k here)
BLOCK = 1024  # queries per matrix product in the exact search
CELLS_PER_ROOT = 4  # inverted-file cells: this many times sqrt(N)
PROBE = 24  # inverted-file search: each image looks among the images filed in its PROBE nearest cells
KMEANS_ITERATIONS = 8
KMEANS_SAMPLE = 32  # points per cell the centroids are trained on
QUERY_CHUNK = 65536  # images searched together (their per-cell results: QUERY_CHUNK * PROBE * (k + 1) entries)


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


def neighbours_of(queries: np.ndarray, members: np.ndarray, base: torch.Tensor, k: int) -> tuple[np.ndarray, ...]:
    """(query, neighbour, similarity) for each query's k + 1 nearest among `members` (itself included)."""
    group = base[torch.from_numpy(members.astype(np.int64))]
    values, index = top_k(base[torch.from_numpy(queries.astype(np.int64))], group, k)
    return np.repeat(queries, values.shape[1]), members[index.numpy().ravel()], values.numpy().ravel()


def concat(parts: list[tuple]) -> tuple[np.ndarray, ...]:
    return tuple(np.concatenate([p[c] for p in parts]) for c in range(3))


def exact_knn(embedding: np.ndarray, k: int, progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(embedding)
    base, everyone = torch.from_numpy(embedding), np.arange(n)
    parts = map_batches(lambda lo: neighbours_of(everyone[lo : lo + BLOCK], everyone, base, k), range(0, n, BLOCK), "neighbours", progress)
    return unique_pairs(*concat(parts), n)


def nearest_cells(x: torch.Tensor, centroids: torch.Tensor, count: int) -> torch.Tensor:
    """Each row's `count` most similar centroids, in blocks (a million rows by 4000 cells is 16 GB at once)."""
    return torch.cat([(x[lo : lo + 16384] @ centroids.T).topk(count, dim=1).indices for lo in range(0, len(x), 16384)])


def spherical_kmeans(embedding: torch.Tensor, cells: int, rng: np.random.Generator) -> torch.Tensor:
    """Unit-norm centroids of `cells` clusters, trained on a sample of at most KMEANS_SAMPLE points per cell."""
    sample = embedding[torch.from_numpy(rng.choice(len(embedding), min(len(embedding), KMEANS_SAMPLE * cells), replace=False))]
    centroids = sample[torch.from_numpy(rng.choice(len(sample), cells, replace=False))].clone()
    for _ in range(KMEANS_ITERATIONS):
        assign = nearest_cells(sample, centroids, 1)[:, 0]
        sums = torch.zeros_like(centroids).index_add_(0, assign, sample)
        empty = sums.norm(dim=1) < 1e-6
        sums[empty] = centroids[empty]  # a cell nobody chose keeps its centroid
        centroids = sums / sums.norm(dim=1, keepdim=True)
    return centroids


def cell_lists(cell_of: np.ndarray, cells: int) -> list[np.ndarray]:
    """For each cell, the positions in cell_of that hold it."""
    order = np.argsort(cell_of, kind="stable")
    bounds = np.searchsorted(cell_of[order], np.arange(cells + 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(cells)]


def search_chunk(lo: int, nearest: np.ndarray, members: list[np.ndarray], base: torch.Tensor, k: int) -> tuple[np.ndarray, ...]:
    """Images lo..lo+QUERY_CHUNK, each against the images filed in its own nearest cells (`nearest`):
    its k + 1 best (itself included) from each cell, then its k + 1 best overall. An image is filed
    in one cell, so no neighbour comes twice."""
    near = nearest[lo : lo + QUERY_CHUNK]
    m, probes = near.shape
    sims = np.full((m, probes, k + 1), -np.inf, np.float32)
    index = np.zeros((m, probes, k + 1), np.int64)
    for c, looking in enumerate(cell_lists(near.reshape(-1), len(members))):
        if not len(looking) or not len(members[c]):
            continue
        rows, slots = looking // probes, looking % probes
        values, found = top_k(base[torch.from_numpy(rows + lo)], base[torch.from_numpy(members[c])], k)
        sims[rows, slots, : values.shape[1]] = values.numpy()
        index[rows, slots, : values.shape[1]] = members[c][found.numpy()]
    values, at = torch.from_numpy(sims.reshape(m, -1)).topk(min(k + 1, probes * (k + 1)), dim=1)
    values, at = values.numpy(), at.numpy()
    found = np.isfinite(values)
    i = np.broadcast_to(np.arange(lo, lo + m)[:, None], at.shape)
    return i[found], np.take_along_axis(index.reshape(m, -1), at, 1)[found], values[found]


def clustered_knn(embedding: np.ndarray, k: int, seed: int = 0, progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(embedding)
    base = torch.from_numpy(embedding)
    centroids = spherical_kmeans(base, max(1, int(CELLS_PER_ROOT * np.sqrt(n))), np.random.default_rng(seed))
    probes = min(PROBE, len(centroids))
    nearest = nearest_cells(base, centroids, probes).numpy()
    members = cell_lists(nearest[:, 0], len(centroids))  # each image is filed in its nearest cell
    parts = map_batches(lambda lo: search_chunk(lo, nearest, members, base, k), range(0, n, QUERY_CHUNK), "neighbours", progress)
    return unique_pairs(*concat(parts), n)


def neighbour_pairs(embedding: np.ndarray, k: int, progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs (i < j, cosine similarity): j among i's k nearest or i among j's."""
    if len(embedding) < 2 or k == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    if len(embedding) <= EXACT_UP_TO:
        return exact_knn(embedding, k, progress)
    return clustered_knn(embedding, k, progress=progress)
