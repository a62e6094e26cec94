"""Issue 7: on-disk cache faults. Truncated, corrupted or foreign entries are ignored and rebuilt,
never loaded; two processes filling the cache at once leave it valid. (Attacks on the cache:
test_rel_cache_trust.py.)"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

import tinycomp as tc
from tests.models import CASES
from tests.reliability.rel_helpers import fifo_released_after
from tinycomp.runtime import cache


def compile_one(case="residual_net"):
    c = CASES[case]
    fast = tc.compile(c.build(), input_shape=(None, c.in_features))
    return fast, c.sample(5)


def entries(folder):
    return sorted(p for p in folder.glob("*.o"))


def _truncate(blob):
    return blob[: len(blob) // 2]


def _flip_payload_byte(blob):
    b = bytearray(blob)
    b[-100] ^= 0xFF
    return bytes(b)


def _split(blob):
    """(tag line, header dict, object code) of an entry."""
    tag_end = blob.index(b"\n", len(cache.MAGIC))
    header_end = blob.index(b"\n", tag_end + 1)
    return blob[len(cache.MAGIC):tag_end], json.loads(blob[tag_end + 1:header_end]), blob[header_end + 1:]


def _join(tag, header, code):
    """An entry from its parts, with the tag as given: only tinycomp's secret can make a new one."""
    return cache.MAGIC + tag + b"\n" + json.dumps(header, sort_keys=True).encode() + b"\n" + code


def _garbage_header(blob):
    tag, _, code = _split(blob)
    return cache.MAGIC + tag + b"\n{not json\n" + code


def _foreign_magic(blob):
    return b"TINYCOMP-OBJ-2\n" + blob[len(cache.MAGIC):]


def _foreign_version(blob):
    """A well-formed entry whose header says another key (another llvmlite/LLVM/CPU produced it)."""
    tag, header, code = _split(blob)
    header["key"] = "0" * 64
    return _join(tag, header, code)


def _wrong_size(blob):
    tag, header, code = _split(blob)
    header["sizes"][-1] += 1
    return _join(tag, header, code)


def _consistent_but_broken_object(blob):
    """Junk signed with the user's own key (as a tinycomp bug could write it): it passes
    authentication, so loading it must still fail safely."""
    _, header, _ = _split(blob)
    junk = b"\x7fELF" + b"\x00" * 200
    return cache.encode(header["key"], header["meta"], [junk], cache.secret())


def _header(text: bytes):
    """A header that is valid JSON but no object (or nested past the parser's recursion limit)."""
    def fault(blob):
        tag, _, code = _split(blob)
        return cache.MAGIC + tag + b"\n" + text + b"\n" + code
    return fault


FAULTS = [_truncate, _flip_payload_byte, _garbage_header, _foreign_magic, _foreign_version, _wrong_size,
          _consistent_but_broken_object, lambda blob: b"", lambda blob: blob[:5],
          _header(b"[]"), _header(b"null"), _header(b"42"), _header(b"[" * 100_000 + b"]" * 100_000)]


@pytest.mark.parametrize("fault", FAULTS, ids=["truncated", "flipped-byte", "garbage-header", "foreign-magic",
                                               "foreign-key", "wrong-size", "broken-object", "empty", "5-bytes",
                                               "list-header", "null-header", "number-header", "deep-header"])
def test_bad_entry_is_ignored_and_rebuilt(tmp_cache, fault):
    fast, x = compile_one()
    want = fast(x).data
    [entry] = entries(tmp_cache)
    good = entry.read_bytes()
    entry.write_bytes(fault(good))
    again, _ = compile_one()
    assert again.stats.cache_hits == 0, "a damaged entry was loaded"
    np.testing.assert_array_equal(again(x).data, want)
    assert entry.read_bytes() == good  # rebuilt and written back whole
    third, _ = compile_one()
    assert third.stats.cache_hits == 1


def test_fifo_in_place_of_an_entry_is_ignored_and_rebuilt(tmp_cache):
    """load() read the entry with Path.read_bytes, which waits for a writer on a FIFO: compile() hung."""
    fast, x = compile_one()
    want = fast(x).data
    [entry] = entries(tmp_cache)
    entry.unlink()
    os.mkfifo(entry, 0o600)
    with fifo_released_after(entry, seconds=30) as released:
        again, _ = compile_one()
    assert not released.is_set(), "compile() waited for a writer on the FIFO named like the entry"
    assert again.stats.cache_hits == 0
    np.testing.assert_array_equal(again(x).data, want)
    assert stat.S_ISREG(entry.lstat().st_mode)  # the rebuilt entry replaced the FIFO
    assert compile_one()[0].stats.cache_hits == 1


def test_every_source_that_shapes_object_code_is_in_the_key():
    """Editing the LLVM pipeline (runtime/engine.py), the target (codegen/target.py) or the op table
    (ir/ops.py) changes the object code as much as editing a kernel: the key covers all of it, and
    not the command line, whose edits would only throw users' caches away."""
    from pathlib import Path

    import tinycomp.codegen.module as module

    module.codegen_source_hash.cache_clear()
    try:
        before = module.codegen_source_hash()
        for rel in ("runtime/engine.py", "codegen/target.py", "ir/ops.py", "codegen/gemm.py"):
            path = Path(tc.__file__).resolve().parent / rel
            text = path.read_bytes()
            real_read = Path.read_bytes

            def edited(self, path=path, text=text, real_read=real_read):
                return text + b"\n# edited\n" if self == path else real_read(self)

            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(Path, "read_bytes", edited)
                module.codegen_source_hash.cache_clear()
                assert module.codegen_source_hash() != before, rel
        cli = Path(tc.__file__).resolve().parent / "cli.py"
        with pytest.MonkeyPatch.context() as mp:
            real_read = Path.read_bytes
            mp.setattr(Path, "read_bytes", lambda self: real_read(self) + (b"#" if self == cli else b""))
            module.codegen_source_hash.cache_clear()
            assert module.codegen_source_hash() == before
    finally:
        module.codegen_source_hash.cache_clear()


def test_foreign_llvm_version_is_a_different_key(monkeypatch):
    key = cache.cache_key("graph", {"speed_level": 0})
    monkeypatch.setattr(cache.llvmlite, "__version__", "0.0.1")
    assert cache.cache_key("graph", {"speed_level": 0}) != key


def test_unwritable_cache_dir_still_compiles(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TINYCOMP_CACHE_DIR", str(blocker / "cache"))
    fast, x = compile_one("no_bias")
    assert fast(x).shape == (5, 3)


def test_cache_off(tmp_cache, monkeypatch):
    monkeypatch.setenv("TINYCOMP_CACHE", "0")
    compile_one()
    assert not tmp_cache.exists()


FILLER = """
import sys, numpy as np, tinycomp as tc
sys.path.insert(0, {root!r})
from tests.models import CATALOGUE
for rep in range(3):
    for c in CATALOGUE:
        fast = tc.compile(c.build(), input_shape=(None, c.in_features))
        fast(c.sample(2))
print("ok")
"""


def test_two_processes_filling_the_cache_leave_it_valid(tmp_cache):
    import pathlib

    root = str(pathlib.Path(__file__).resolve().parents[2])
    code = FILLER.format(root=root)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and "ok" in out, err
    files = entries(tmp_cache)
    assert len(files) >= 8
    assert not list(tmp_cache.glob("*.tmp")) and not list(tmp_cache.glob(".*"))  # no temp files left
    for f in files:
        assert cache.decode(f.read_bytes(), f.stem, cache.secret()) is not None, f"{f.name} is not a valid entry"
    for c in CASES.values():  # and every entry loads and runs
        fast = tc.compile(c.build(), input_shape=(None, c.in_features))
        assert fast.stats.cache_hits == 1
        x = c.sample(3)
        from tests.models import eager_eval

        np.testing.assert_allclose(fast(x).data, eager_eval(fast.model, x), rtol=1e-4, atol=1e-5)
