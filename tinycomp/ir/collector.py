"""`paused_gc`: Python's cycle collector paused while graphs and LLVM IR are built.

Building a graph or LLVM IR allocates many small objects and no cycles: collections only cost time
there, and more the bigger the heap (measured: the first reference-MLP IR build took 38 ms with the
collector on, 7 ms off; tracing a 10,000-step chain spent most of its time in collections).

The collector is one switch for the whole process, so pauses are counted per thread: it is back on
when the last open pause ends, if it was on before the first. A child forked while another thread
was in a pause gets it back at once: that thread does not exist in the child, and its pause would
have left the child's collector off for the child's whole life (a helper's fork during a compile:
25 of 30 children never collected a cycle).
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_open: dict[int, int] = {}  # thread ident -> that thread's open pauses
_was_on = False  # the collector's state before the first open pause


@contextmanager
def paused_gc() -> Iterator[None]:
    """The collector off for the block (see the module doc). Release an llvmlite module
    (`codegen.cgutils.release_module`) before the pause ends, or the first collection after it walks
    every IR object."""
    global _was_on
    me = threading.get_ident()
    with _lock:
        if not _open:
            _was_on = gc.isenabled()
            gc.disable()
        _open[me] = _open.get(me, 0) + 1
    try:
        yield
    finally:
        with _lock:
            _open[me] -= 1
            if not _open[me]:
                del _open[me]
            if not _open and _was_on:
                gc.enable()


def _resume_in_child() -> None:
    """Only the forking thread lives on in the child: the other threads' pauses end here."""
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    me = threading.get_ident()
    for ident in [ident for ident in _open if ident != me]:
        del _open[ident]
    if not _open and _was_on:
        gc.enable()


os.register_at_fork(after_in_child=_resume_in_child)
