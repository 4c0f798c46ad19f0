"""Near pairs of perceptual hashes without comparing every pair: multi-index hashing (Norouzi et al., 2012).

Split each hash's bits into `max_bits + 1` chunks: two hashes at most `max_bits` apart agree
exactly on at least one chunk (pigeonhole), so only hashes that share a chunk's value are
compared. On hashes spread like a dataset's, a chunk of 27 bits is shared by few others, and
the work grows with the number of hashes rather than its square. Hashes that are alike
everywhere (a folder of black clips) share every chunk; those are compared among themselves,
which costs the square of their number, and every such pair is a near pair anyway.
"""

from __future__ import annotations

import itertools

import numpy as np

WORD_BITS = 64


def near_pairs(words: np.ndarray, max_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) of the hashes `words` (uint64 [n, w], w 64-bit words a hash) within `max_bits` of each other,
    as two index arrays sorted by (j, i)."""
    n, width = words.shape
    bits = width * WORD_BITS
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if max_bits >= bits:  # every pair is near
        j, i = np.tril_indices(n, -1)  # row by row: sorted by (j, i)
        return i, j
    flat = np.unpackbits(words.astype(">u8").view(np.uint8).reshape(n, -1), axis=1)  # [n, bits] of 0/1
    pairs = [_sharing(_chunk_keys(flat[:, start:stop])) for start, stop in _chunks(bits, max_bits + 1)]
    i, j = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
    unique = np.unique(j * n + i)  # a pair that shares several chunks, once; sorted by (j, i)
    i, j = unique % n, unique // n
    near = np.bitwise_count(words[i] ^ words[j]).sum(axis=1) <= max_bits
    return i[near], j[near]


def pairwise(words: np.ndarray, max_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The same pairs as `near_pairs`, by comparing every pair: the anchor the benchmark and the tests hold it to."""
    found_i, found_j = [], []
    for i in range(len(words) - 1):
        j = np.nonzero(np.bitwise_count(words[i + 1 :] ^ words[i]).sum(axis=1) <= max_bits)[0] + i + 1
        found_i.append(np.full(len(j), i))
        found_j.append(j)
    if not found_i:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    i, j = np.concatenate(found_i), np.concatenate(found_j)
    order = np.lexsort((i, j))
    return i[order], j[order]


def _chunks(bits: int, parts: int) -> list[tuple[int, int]]:
    """`parts` runs of consecutive bit positions covering 0..bits, as even as can be."""
    edges = np.linspace(0, bits, parts + 1).round().astype(int)
    return list(itertools.pairwise(edges))


def _chunk_keys(chunk: np.ndarray) -> np.ndarray:
    """Each row's bits (at most 64) as one integer."""
    weights = np.left_shift(np.uint64(1), np.arange(chunk.shape[1], dtype=np.uint64))
    return (chunk.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


def _sharing(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) of rows whose keys are equal."""
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    found_i, found_j = [], []
    for start, size in zip(starts[sizes > 1], sizes[sizes > 1], strict=True):
        members = np.sort(order[start : start + size])
        a, b = np.triu_indices(size, 1)
        found_i.append(members[a])
        found_j.append(members[b])
    if not found_i:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(found_i), np.concatenate(found_j)
