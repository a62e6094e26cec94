"""What makes two compiles the same code: the cache key's hash of a graph and of the code generator.

An object-cache entry is keyed by `graph_fingerprint` (with the llvmlite and LLVM versions, the
target and the options: `runtime/cache.py`), so a graph with another structure, another constant,
another vector width or a code generator whose source changed never loads another's machine code.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np

from ..ir.graph import Graph
from . import vecmath


@functools.lru_cache(maxsize=1)
def codegen_source_hash() -> str:
    """A hash of the source that shapes object code, so that a fixed compiler never reuses old
    cached objects: the code generator, the IR it lowers (the op table, layouts, passes) and the
    runtime that parses, optimizes and emits it (`runtime/engine.py`; target options in
    `codegen/target.py`). The front end, the command line and the bench do not shape it."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for path in sorted(p for folder in ("codegen", "ir", "runtime") for p in (root / folder).rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def graph_fingerprint(g: Graph, width: int) -> str:
    """A hash of everything in g that shapes the generated code (not parameter values)."""
    # AVX512_FORMS: the one code-generation switch that is set at run time (tests, benchmarks)
    h = hashlib.sha256(f"width={width};codegen={codegen_source_hash()};avx512_forms={vecmath.AVX512_FORMS}".encode())
    for n in g.nodes():
        attrs = sorted((k, repr(v)) for k, v in g.attrs(n).items())
        h.update(repr((n, g.op(n), g.shape(n), attrs, g.args(n))).encode())
        if g.op(n) == "const":
            h.update(np.ascontiguousarray(np.asarray(g[n]["value"], dtype=np.float32)).tobytes())
    return h.hexdigest()
