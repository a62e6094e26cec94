"""Keeping the object cache bounded: once its entries pass a size limit, the least recently used go;
temporary files a killed writer left behind go after an hour.

Every entry's key holds a hash of tinycomp's own source, the graph and its constants, so an upgrade,
or a model whose float attribute changes every step, leaves entries no compile will ask for again.
`sweep` runs after a process's first store, then whenever its stores since the last sweep would
take the folder past the limit, and after every SWEEP_EVERY-th store in any case, for what other
processes stored (`after_store`: a listing of the folder, a few ms for thousands of entries,
against compiles of tens of ms); a hit marks its entry used (`touch`). Only files named as the
cache names them are ever removed, none through a link: the folder is the private one
`cache._usable` checked.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import stat
import time
from pathlib import Path

DEFAULT_MAX_MB = 256.0
STALE_TMP_SECONDS = 3600.0  # a writer holds its temporary file for milliseconds
KEEP_FRACTION = 0.8  # a sweep over the limit goes down to 80 % of it: not one eviction per store
ENTRY = re.compile(r"[0-9a-f]{64}\.o")
TEMPORARY = re.compile(r"\.[0-9a-f]{16}\..*\.tmp")

SWEEP_EVERY = 32

_log = logging.getLogger("tinycomp.cache")
_stores = itertools.count()
_estimate: dict[str, int] = {}  # per folder: its entries' bytes at the last sweep plus this process's stores since
_warned: set[str] = set()  # values of TINYCOMP_CACHE_MAX_MB already warned of: once per process


def max_bytes() -> int:
    """The entries' size limit: TINYCOMP_CACHE_MAX_MB (a finite number of MB, at least a byte, whose
    bytes are finite too: 1e303 MB is not), else 256 MB. Anything else is warned of, once (`inf`
    too: a store must never fail on its sweep)."""
    raw = os.environ.get("TINYCOMP_CACHE_MAX_MB", "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_MAX_MB
    except ValueError:
        mb = -1.0
    if not (math.isfinite(mb * (1 << 20)) and mb * (1 << 20) >= 1):
        if raw not in _warned:
            _warned.add(raw)
            _log.warning("TINYCOMP_CACHE_MAX_MB=%r is not a finite number of MB of at least one byte; using %g",
                         raw, DEFAULT_MAX_MB)
        mb = DEFAULT_MAX_MB
    return int(mb * (1 << 20))


def after_store(folder: Path, size: int) -> None:
    """Sweep after this process's first store, after one that takes the folder past the limit as
    far as this process knows, and after every SWEEP_EVERY-th."""
    key = str(folder)
    known = _estimate.get(key)
    if known is not None:
        _estimate[key] = known + size
    if next(_stores) % SWEEP_EVERY == 0 or known is None or known + size > max_bytes():
        sweep(folder)


def touch(entry: Path) -> None:
    """Mark an entry just used (its mtime): the sweep removes the least recently used first."""
    try:
        os.utime(entry, follow_symlinks=False)
    except OSError:
        pass


def sweep(folder: Path, limit: int | None = None, now: float | None = None) -> int:
    """Remove stale temporary files, then least recently used entries while the entries pass `limit`
    bytes (down to KEEP_FRACTION of it). Returns how many files were removed."""
    limit = max_bytes() if limit is None else limit
    now = time.time() if now is None else now
    entries, total, removed = [], 0, 0
    try:
        listing = list(os.scandir(folder))
    except OSError:
        return 0
    for item in listing:
        try:
            st = item.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        if TEMPORARY.fullmatch(item.name) and now - st.st_mtime > STALE_TMP_SECONDS:
            removed += _remove(item.path)
        elif ENTRY.fullmatch(item.name):
            entries.append((st.st_mtime, st.st_size, item.path))
            total += st.st_size
    if total > limit:
        for _, size, path in sorted(entries):  # least recently used first
            if total <= limit * KEEP_FRACTION:
                break
            if _remove(path):
                removed, total = removed + 1, total - size
    _estimate[str(folder)] = total
    return removed


def _remove(path: str) -> int:
    try:
        os.unlink(path)
    except OSError:  # another process removed it first
        return 0
    return 1
