"""Locks around compiling, and what keeps them (and tracing, and LLVM) safe across `os.fork()`.

Every `CompiledModel` compiles under its model's lock, then its own `CompileLock`. At a fork the
parent waits for a quiet moment (no trace patching a model, no thread inside LLVM), and the child,
which has only the forking thread, gets a fresh lock for every compiled model another thread was
compiling: those locks would stay held in the child for ever.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from .frontend.layers import model_lock
from .frontend.tracer import PATCHING
from .runtime.engine import hold_llvm_for_fork, release_llvm_after_fork


class CompileLock:
    """One compiled model's compile lock, which knows the thread holding it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # re-entrant: a signal handler may land just after a compile took it
        self._compiling: int | None = None  # the thread compiling now, holding _lock
        _LIVE.add(self)

    @contextlib.contextmanager
    def held(self, model: Any) -> Iterator[None]:
        """The model's lock, then this one, for a compile. A call on the thread that is compiling
        (from the model's forward(), which tracing runs, or a signal handler or gc callback landing
        in the compile) would wait for itself for ever: refused instead. The locks are re-entrant,
        so one landing before the compile began runs whole first."""
        with model_lock(model), self._lock:
            if self._compiling == threading.get_ident():
                raise RuntimeError(f"{type(model).__name__}'s compiled model was called on the thread compiling "
                                   "it (from its forward(), which tracing runs, or a signal handler or gc callback): "
                                   "call the eager model there")
            self._compiling = threading.get_ident()
            try:
                yield
            finally:
                self._compiling = None

    def _renew_unless_held_by(self, thread: int) -> None:
        if self._compiling != thread:
            self._lock, self._compiling = threading.RLock(), None


_LIVE: weakref.WeakSet[CompileLock] = weakref.WeakSet()  # every live one: renewed in a forked child


def _before_fork() -> None:
    """Fork at a quiet moment: no model patched by a trace (the trace would never undo it in the
    child), no thread in LLVM (its lock would stay held there). Traces first: one may compile
    another model, which takes LLVM's lock."""
    PATCHING.hold()
    hold_llvm_for_fork()


def _after_fork_in_parent() -> None:
    release_llvm_after_fork()
    PATCHING.release()


def _after_fork_in_child() -> None:
    """The locks another thread held while it compiled stay held in the child, whose compiles
    then waited for ever (8 of 10 children): fresh ones for every compiled model (the model locks:
    frontend/layers.py)."""
    _after_fork_in_parent()
    me = threading.get_ident()  # the forking thread, the child's only one: its own compile goes on
    for lock in list(_LIVE):
        lock._renew_unless_held_by(me)


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
