"""Sub-quadratic candidate search over 64-bit hashes: sorted neighbourhoods under bit rotations.

For each of ORDERS rotations of the 64 bits (by 64/ORDERS bits each), hashes are sorted and every
hash is compared with its next `window` neighbours in that order. Two hashes within Hamming radius r
agree exactly on at least one of the ORDERS bands when ORDERS > r, so in the rotation that puts that
band first they sit in the same contiguous bucket; a bucket up to window+1 long is compared in full
(exact), and in a longer, crowded bucket the following bits keep close hashes close. Cost: ORDERS
sorts plus N * window * ORDERS popcounts, all vectorised; memory O(N) per pass plus the pairs found.
"""

from __future__ import annotations

import numpy as np

ORDERS = 16  # rotations by 4 bits: exact for radius < 16 whenever a bucket fits in the window


def rotate(hashes: np.ndarray, bits: int) -> np.ndarray:
    if bits == 0:
        return hashes
    b = np.uint64(bits)
    return (hashes << b) | (hashes >> (np.uint64(64) - b))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(a ^ b)


def hash_pairs(hashes: np.ndarray, radius: int, window: int, orders: int = ORDERS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) found within `radius`, with their Hamming distance: (i, j, distance)."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(hashes)
    found = []
    for k in range(orders):
        order = np.argsort(rotate(hashes, k * 64 // orders), kind="stable")
        sorted_hashes = hashes[order]
        for step in range(1, min(window, n - 1) + 1):
            dist = hamming(sorted_hashes[:-step], sorted_hashes[step:])
            hit = np.flatnonzero(dist <= radius)
            if hit.size:
                a, b = order[hit], order[hit + step]
                found.append(np.minimum(a, b).astype(np.int64) * n + np.maximum(a, b))  # one int64 per pair
    keys = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
    i, j = keys // n, keys % n
    return i, j, hamming(hashes[i], hashes[j]).astype(np.int64)
