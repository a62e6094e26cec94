"""Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011) and the
dropout masks drawn from it: the NumPy reference that eager `Dropout`, the IR interpreter and the
compiled kernel (`codegen/philox.py`) all follow bit for bit.

A counter-based generator is a keyed hash of a 128-bit counter, so any element's random word can be
computed on its own: the mask of element i does not depend on the batch size, on how the rows are
split across threads, or on which engine computes it.

The mask of one dropout call (a `DropoutStream`: key, layer id, call number) over a tensor of any
shape, elements numbered in C order: element i reads word `i % 4` of
`philox4x32_10(counter=(i // 4 low 32 bits, i // 4 high 32 bits, layer, call), key)`, and is kept
when that word is >= `keep_threshold(p)`; kept elements are multiplied by `keep_scale(p)`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# The Philox-4x32 constants (Random123's philox.h): round multipliers and the Weyl key increments.
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
ROUNDS = 10
MASK32 = 0xFFFFFFFF


def dropout_effect(training: bool, p: float) -> str:
    """What one dropout call does, as eager `Dropout` decides it: "identity" unless in training
    with p > 0 (so a p set below 0, or to NaN, after the constructor checked it passes x through
    everywhere, as it does eagerly), "zeros" from p = 1 on (real zeros: x * 0 would turn inf and
    nan into nan), else "mask"."""
    if not training or not p > 0:
        return "identity"
    return "zeros" if p >= 1 else "mask"


class DropoutStream(NamedTuple):
    """Where one dropout call's mask comes from: the generator key (set by `manual_seed`), the layer
    and the layer's call number. Each is a 32-bit unsigned integer."""

    key0: int
    key1: int
    layer: int
    call: int


def _mulhilo(m: int, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    product = np.uint64(m) * c.astype(np.uint64)
    return (product >> np.uint64(32)).astype(np.uint32), product.astype(np.uint32)


def philox4x32_10(counter: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox-4x32 with 10 rounds: `counter` is (4, n) uint32, the result (4, n) uint32."""
    c0, c1, c2, c3 = (np.asarray(w, np.uint32) for w in counter)
    k0, k1 = np.uint32(key[0] & MASK32), np.uint32(key[1] & MASK32)
    with np.errstate(over="ignore"):  # the key schedule wraps modulo 2**32 by definition
        for r in range(ROUNDS):
            if r:
                k0, k1 = k0 + np.uint32(PHILOX_W0), k1 + np.uint32(PHILOX_W1)
            hi0, lo0 = _mulhilo(PHILOX_M0, c0)
            hi1, lo1 = _mulhilo(PHILOX_M1, c2)
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return np.stack([c0, c1, c2, c3])


def keep_threshold(p: float) -> int:
    """Words >= this are kept: P(keep) = (2**32 - T) / 2**32 = 1 - p to within 2**-32."""
    return min(int(round(float(p) * 2.0**32)), MASK32)


def keep_scale(p: float) -> np.float32:
    """The float32 nearest 1/(1-p): what kept elements are multiplied by (inverted dropout)."""
    return np.float32(1.0 / (1.0 - float(p)))


def random_words(stream: DropoutStream, first: int, count: int) -> np.ndarray:
    """The `count` words of elements first .. first + count - 1 (uint32)."""
    if count <= 0:
        return np.zeros(0, np.uint32)
    b0, b1 = first // 4, (first + count - 1) // 4 + 1
    blocks = np.arange(b0, b1, dtype=np.uint64)
    counter = np.stack([blocks.astype(np.uint32), (blocks >> np.uint64(32)).astype(np.uint32),
                        np.full(len(blocks), stream.layer & MASK32, np.uint32),
                        np.full(len(blocks), stream.call & MASK32, np.uint32)])
    words = philox4x32_10(counter, (stream.key0, stream.key1)).T.reshape(-1)  # block-major: word i % 4
    return words[first - 4 * b0: first - 4 * b0 + count]


def dropout_mask(stream: DropoutStream, shape: tuple[int, ...], p: float) -> np.ndarray:
    """The float32 mask of one call over `shape`: 0 where dropped, `keep_scale(p)` where kept."""
    p = float(p)
    if p >= 1:
        return np.zeros(shape, np.float32)
    if p <= 0:
        return np.ones(shape, np.float32)
    words = random_words(stream, 0, int(np.prod(shape, dtype=np.int64)))
    return np.where(words >= np.uint32(keep_threshold(p)), keep_scale(p), np.float32(0)).reshape(shape)
