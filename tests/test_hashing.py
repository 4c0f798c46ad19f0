"""The near-duplicate search finds exactly the pairs the pairwise scan finds, at every distance that matters."""

import numpy as np
import pytest

from vidops.components.hashing import near_pairs, pairwise


def _hashes(n: int, planted: int, max_bits: int, seed: int = 0) -> np.ndarray:
    """`n` random 192-bit hashes, then `planted` copies of earlier ones with max_bits - 1, max_bits and max_bits + 1
    bits flipped (in turn), and a run of identical ones."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**64, (n, 3), dtype=np.uint64)
    copies = []
    for k in range(planted):
        bits = np.zeros(192, np.uint8)
        bits[rng.choice(192, max(0, max_bits - 1 + k % 3), replace=False)] = 1
        flip = np.packbits(bits).view(">u8").astype(np.uint64)
        copies.append(words[rng.integers(n)] ^ flip)
    same = np.repeat(words[:1], 5, axis=0)
    out = np.concatenate([words, *([np.stack(copies)] if copies else []), same])
    return out[rng.permutation(len(out))]


@pytest.mark.parametrize("max_bits", [0, 1, 6, 20])
def test_multi_index_hashing_finds_the_pairs_the_pairwise_scan_finds(max_bits: int):
    words = _hashes(3000, 300, max_bits)
    found, expected = near_pairs(words, max_bits), pairwise(words, max_bits)
    assert len(expected[0]) > 10  # the planted pairs are there to be found
    assert np.array_equal(found[0], expected[0]) and np.array_equal(found[1], expected[1])


def test_small_and_degenerate_inputs():
    words = _hashes(50, 10, 6, seed=1)
    for max_bits in (191, 192, 500):  # every pair within reach
        i, _j = near_pairs(words, max_bits)
        assert np.array_equal(i, pairwise(words, max_bits)[0]) and len(i) == len(words) * (len(words) - 1) // 2
    empty = np.empty((0, 3), np.uint64)
    assert all(len(a) == 0 for a in (*near_pairs(empty, 6), *near_pairs(words[:1], 6), *pairwise(words[:1], 6)))
