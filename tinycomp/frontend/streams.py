"""The dropout generator's state: the key `manual_seed` sets, each Dropout layer's id and call count.

Masks come from Philox (`ir/philox.py`), a keyed hash of (element, layer id, call number): eager
`Dropout` and compiled training-mode code draw the same mask for the same call of the same layer,
and after `manual_seed(s)` the n-th call of a layer gives the same mask in every run and engine.

- The key is two 32-bit words from `numpy.random.SeedSequence(seed)`; until a seed is given, fresh
  entropy (as NumPy's unseeded generators).
- A layer's id is its construction number counted from the last `manual_seed` (negative, modulo
  2**32, for layers built before it): `manual_seed(0); build()` numbers the layers the same way in
  every process, reseeding without building layers in between keeps every id, and no two layers of
  one process ever share an id.
- A layer's call count starts at 0 at each `manual_seed` and goes up by one per mask drawn.

The state lives here, keyed weakly by layer object, not on the layers: a compiled model watches
its layers' attributes and would take a changing counter for a changed model. Copies of a layer
(pickle, deepcopy) are new layers with ids of their own, given when they are made
(`Dropout.__setstate__`).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

import numpy as np

from ..ir.philox import MASK32, DropoutStream

_lock = threading.RLock()  # re-entrant: check=True replays eager draws while holding it
_built = 0  # layers registered so far: the next one's ordinal
_layers: weakref.WeakKeyDictionary[Any, list[int]] = weakref.WeakKeyDictionary()  # [ordinal, epoch, calls]
_epoch = 0
_base = 0  # the ordinal of the first layer built after the last manual_seed
_key = tuple(int(w) for w in np.random.SeedSequence().generate_state(2, np.uint32))


def reseed(seed: Any) -> None:
    """Key the generator by `seed` and restart every layer's numbering and call count."""
    global _key, _epoch, _base
    key = key_words(seed)
    with _lock:
        _key, _epoch = key, _epoch + 1
        _base = _built


def key_words(seed: Any) -> tuple[int, int]:
    """The generator key `manual_seed(seed)` sets: two 32-bit words from NumPy's SeedSequence."""
    return tuple(int(w) for w in np.random.SeedSequence(seed).generate_state(2, np.uint32))  # type: ignore[return-value]


def dropout_key(seed: Any) -> int:
    """The key of `manual_seed(seed)` as one 64-bit number, key0 | key1 << 32: the `seed` argument of
    a training-mode export's C entry (`tinycomp.export(..., training=True)`)."""
    k0, k1 = key_words(seed)
    return k0 | k1 << 32


def layer_id(layer: Any) -> int:
    """`layer`'s id in the streams it draws (as `draw` gives it), without drawing."""
    with _lock:
        return (_state(layer)[0] - _base) & MASK32


def register(layer: Any) -> None:
    """Give a new layer its id (called when it is built)."""
    global _built
    with _lock:
        _layers[layer] = [_built, _epoch, 0]
        _built += 1


def _state(layer: Any) -> list[int]:
    state = _layers.get(layer)
    if state is None:  # made without __init__ (unpickled, copied): a new layer all the same
        register(layer)
        state = _layers[layer]
    if state[1] != _epoch:
        state[1], state[2] = _epoch, 0
    return state


def draw(layer: Any, calls: int = 1) -> DropoutStream:
    """The stream of `layer`'s next call, taking `calls` calls (a compiled forward that calls the layer
    k times takes k at once: calls call, call + 1, ...)."""
    with _lock:
        state = _state(layer)
        first = state[2]
        state[2] += calls
        return DropoutStream(_key[0], _key[1], (state[0] - _base) & MASK32, first & MASK32)


def rewind(layer: Any, call: int) -> None:
    """Set `layer`'s call count back to `call`, so the same calls are drawn again (check=True replays
    a compiled call eagerly; hold `lock()` from the draw to the replay)."""
    with _lock:
        _state(layer)[2] = call


def lock() -> threading.RLock:
    return _lock


def _fresh_lock_after_fork() -> None:
    # a lock held by a thread that did not survive the fork would block the child for ever
    global _lock
    _lock = threading.RLock()


os.register_at_fork(after_in_child=_fresh_lock_after_fork)
