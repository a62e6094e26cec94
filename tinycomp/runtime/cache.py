"""On-disk cache of compiled object code.

An entry is keyed by everything that could change the machine code: the lowered graph, llvmlite
and LLVM versions, the target triple, CPU name and features, and compile options. Entries are
written atomically (temp file + rename) and verified on load (magic, key, checksum); a truncated,
corrupted or foreign entry is ignored and rebuilt, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm

from ..codegen.target import host

MAGIC = b"TINYCOMP-OBJ-2\n"
FORMAT = 2


def cache_dir() -> Path | None:
    """The cache folder, or None when TINYCOMP_CACHE=0 turns the cache off."""
    if os.environ.get("TINYCOMP_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if os.environ.get("TINYCOMP_CACHE_DIR"):
        return Path(os.environ["TINYCOMP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tinycomp"


def cache_key(graph_key: str, options: dict) -> str:
    fields = {
        "format": FORMAT,
        "graph": graph_key,
        "llvmlite": llvmlite.__version__,
        "llvm": ".".join(map(str, llvm.llvm_version_info)),
        "target": host().cache_fields,
        "options": options,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def load(key: str) -> tuple[dict, bytes] | None:
    """(metadata, object code) for `key`, or None if absent or not a valid entry for this key."""
    folder = cache_dir()
    if folder is None:
        return None
    try:
        blob = (folder / f"{key}.o").read_bytes()
    except OSError:
        return None
    return _decode(blob, key)


def _decode(blob: bytes, key: str) -> tuple[dict, bytes] | None:
    try:
        if not blob.startswith(MAGIC):
            return None
        header_end = blob.index(b"\n", len(MAGIC))
        header = json.loads(blob[len(MAGIC) : header_end])
        payload = blob[header_end + 1 :]
        if not isinstance(header, dict) or header.get("key") != key or header.get("size") != len(payload):
            return None
        if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
            return None
        meta = header["meta"]
        if not isinstance(meta, dict):
            return None
        return meta, payload
    except (ValueError, KeyError, TypeError, RecursionError):  # json errors are ValueErrors; deep nesting recurses
        return None


def store(key: str, meta: dict, object_code: bytes) -> None:
    """Write an entry atomically; a cache that cannot be written is silently skipped."""
    folder = cache_dir()
    if folder is None:
        return
    header = {"key": key, "size": len(object_code), "sha256": hashlib.sha256(object_code).hexdigest(),
              "meta": meta}
    blob = MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + object_code
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key[:16]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, folder / f"{key}.o")  # readers see the old entry or the whole new one
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass
