"""What makes two compiles the same code: the cache key's hash of a graph and of the code generator.

An object-cache entry is keyed by `graph_fingerprint` (with the llvmlite and LLVM versions, the
target and the options: `runtime/cache.py`), so a graph with another structure, another constant,
another vector width or a code generator whose source changed never loads another's machine code.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..ir.graph import Graph
from . import vecmath

CODE_FOLDERS = ("codegen", "ir", "runtime")


def hash_code_files(root: Path) -> str | None:
    """A hash of the files under `root` that shape object code: the code generator, the IR it lowers
    (the op table, layouts, passes) and the runtime that parses, optimizes and emits it
    (`runtime/engine.py`; target options in `codegen/target.py`). They are the `.py` files, and the
    `.pyc` files beside them of an install without sources (`compileall -b`), which Python then runs;
    None where there are neither (the key would be the same for every version). The front end, the
    command line and the bench do not shape object code."""
    files = sorted(p for folder in CODE_FOLDERS for p in (root / folder).rglob("*.py*")
                   if p.suffix in (".py", ".pyc") and "__pycache__" not in p.parts)
    if not files:
        return None
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


# Read when tinycomp is imported, as its modules are (the package imports all of codegen, ir and
# runtime): the key is of the code this process runs. Read at the first compile, it was of whatever
# was on disk then, and a process that had imported the code before an upgrade stored its objects
# under the new code's key, which the next process then loaded.
_SOURCE_HASH = hash_code_files(Path(__file__).resolve().parents[1])


def codegen_source_hash() -> str | None:
    """The hash of the code generator this process imported (`hash_code_files`), None if it has no
    files to hash: then compiled code is not cached."""
    return _SOURCE_HASH


def graph_fingerprint(g: Graph, width: int) -> str | None:
    """A hash of everything in g that shapes the generated code (not parameter values); None when
    the code generator has none (`codegen_source_hash`)."""
    source = codegen_source_hash()
    if source is None:
        return None
    # AVX512_FORMS: the one code-generation switch that is set at run time (tests, benchmarks)
    h = hashlib.sha256(f"width={width};codegen={source};avx512_forms={vecmath.AVX512_FORMS}".encode())
    for n in g.nodes():
        attrs = sorted((k, repr(v)) for k, v in g.attrs(n).items())
        h.update(repr((n, g.op(n), g.shape(n), attrs, g.args(n))).encode())
        if g.op(n) == "const":
            h.update(np.ascontiguousarray(np.asarray(g[n]["value"], dtype=np.float32)).tobytes())
    return h.hexdigest()
