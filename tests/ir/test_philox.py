"""The Philox-4x32-10 generator behind dropout masks (ir/philox.py): the published known answers,
the element numbering, and the statistics of the masks (issue 15)."""

from __future__ import annotations

import numpy as np
import pytest

from tinycomp.ir.philox import (
    DropoutStream,
    dropout_mask,
    keep_scale,
    keep_threshold,
    philox4x32_10,
    random_words,
)

# Random123's tests/kat_vectors, lines 27-29 (github.com/DEShawResearch/random123, v1.14.0):
# "philox4x32 10" counter[4] key[2] -> output[4], hex uint32 words.
KAT = """
philox4x32 10 00000000 00000000 00000000 00000000 00000000 00000000   6627e8d5 e169c58d bc57ac4c 9b00dbd8
philox4x32 10 ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff   408f276d 41c83b0e a20bc7c6 6d5451fd
philox4x32 10 243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0   d16cfe09 94fdcceb 5001e420 24126ea1
"""


def kat_cases() -> list[tuple[list[int], list[int], list[int]]]:
    cases = []
    for line in KAT.strip().splitlines():
        words = [int(w, 16) for w in line.split()[2:]]
        cases.append((words[:4], words[4:6], words[6:]))
    return cases


@pytest.mark.parametrize(("counter", "key", "expected"), kat_cases())
def test_philox_matches_the_published_known_answers(counter, key, expected):
    out = philox4x32_10(np.array(counter, np.uint32).reshape(4, 1), tuple(key))
    assert out[:, 0].tolist() == expected


def test_many_counters_at_once_are_each_their_own_block():
    counters = np.array([c for c, _, _ in kat_cases()], np.uint32).T  # (4, 3), one key for all
    out = philox4x32_10(counters, (0, 0))
    assert out[:, 0].tolist() == kat_cases()[0][2]
    for i in range(3):
        assert out[:, i].tolist() == philox4x32_10(counters[:, i:i + 1], (0, 0))[:, 0].tolist()


def test_element_words_follow_the_documented_numbering():
    """Element i reads word i % 4 of the block at counter (i // 4 low, high, layer, call)."""
    s = DropoutStream(0x12345678, 0x9ABCDEF0, 5, 11)
    first = (1 << 34) + 3  # the block number needs its high word
    words = random_words(s, first, 9)
    for e in range(9):
        i = first + e
        block = np.array([i // 4 & 0xFFFFFFFF, i // 4 >> 32, 5, 11], np.uint32).reshape(4, 1)
        assert words[e] == philox4x32_10(block, (s.key0, s.key1))[i % 4, 0]


@pytest.mark.parametrize(("first", "count"), [(0, 10), (1, 1), (3, 6), (7, 100), (4, 0)])
def test_any_range_of_elements_is_a_slice_of_the_whole(first, count):
    s = DropoutStream(1, 2, 3, 4)
    whole = random_words(s, 0, 200)
    np.testing.assert_array_equal(random_words(s, first, count), whole[first:first + count])


def test_threshold_and_scale():
    assert keep_threshold(0.5) == 1 << 31
    assert keep_threshold(0.25) == 1 << 30
    assert keep_threshold(1 - 2.0**-40) == 0xFFFFFFFF  # never past the largest word
    for p in (0.1, 0.3, 0.5, 0.9):
        assert keep_scale(p) == np.float32(1.0 / (1.0 - p))
        assert keep_scale(p).dtype == np.float32


def test_mask_values_and_edge_probabilities():
    s = DropoutStream(9, 9, 0, 0)
    np.testing.assert_array_equal(dropout_mask(s, (3, 5), 1.0), np.zeros((3, 5)))
    np.testing.assert_array_equal(dropout_mask(s, (3, 5), 0.0), np.ones((3, 5)))
    m = dropout_mask(s, (4, 7), 0.3)
    assert m.dtype == np.float32 and m.shape == (4, 7)
    assert set(np.unique(m).tolist()) <= {0.0, float(np.float32(1 / 0.7))}
    words = random_words(s, 0, 28).reshape(4, 7)  # kept exactly where the word reaches the threshold
    np.testing.assert_array_equal(m != 0, words >= keep_threshold(0.3))


# ---------------------------------------------------------------- statistics (issue 15)

N = 1_000_000
SIDE = 1000  # masks of SIDE x SIDE = N elements


def keep(stream: DropoutStream, p: float) -> np.ndarray:
    return (dropout_mask(stream, (SIDE, SIDE), p) != 0).astype(np.float64)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_within_4_sigma_and_scale_exact(p):
    m = dropout_mask(DropoutStream(2024, 7, 0, 0), (SIDE, SIDE), p)
    kept = np.count_nonzero(m)
    sigma = np.sqrt(N * p * (1 - p))
    assert abs(kept - N * (1 - p)) <= 4 * sigma, (kept, N * (1 - p), sigma)
    assert np.all(m[m != 0] == np.float32(1.0 / (1.0 - p)))  # exactly, not approximately


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_no_correlation_between_calls_layers_rows_or_columns(p):
    """Independent masks have sample correlations ~ N(0, 1/n); 4 sigma is 4/sqrt(n). Lags 1-4 along
    a row cover the words of one Philox block and of neighbouring blocks."""
    base = DropoutStream(77, 78, 3, 10)
    k = keep(base, p)
    pairs = {
        "next call": (k, keep(base._replace(call=11), p)),
        "next layer": (k, keep(base._replace(layer=4), p)),
        "other key": (k, keep(base._replace(key0=76), p)),
        "next row": (k[:-1], k[1:]),
        **{f"column lag {lag}": (k[:, :-lag], k[:, lag:]) for lag in (1, 2, 3, 4)},
    }
    for what, (a, b) in pairs.items():
        r = corr(a, b)
        assert abs(r) <= 4 / np.sqrt(a.size), f"{what}: correlation {r:.2e} (p={p})"
