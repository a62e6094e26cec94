"""Issue 7: on-disk cache faults. Truncated, corrupted or foreign entries are ignored and rebuilt,
never loaded; two processes filling the cache at once leave it valid. (Attacks on the cache:
test_rel_cache_trust.py.)"""

from __future__ import annotations

import compileall
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinycomp as tc
from tests.models import CASES
from tests.reliability.rel_helpers import fifo_released_after
from tinycomp.codegen import fingerprint
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
    # rebuilt and written back whole: the next compile loads it. (Not always `good`'s bytes: how a
    # cold compile cuts the module into objects follows its threads' timing, `runtime.engine.PartPipeline`.)
    assert entry.read_bytes() != fault(good)
    third, _ = compile_one()
    assert third.stats.cache_hits == 1
    np.testing.assert_array_equal(third(x).data, want)


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


def test_every_source_that_shapes_object_code_is_in_the_key(monkeypatch):
    """Editing the LLVM pipeline (runtime/engine.py), the target (codegen/target.py) or the op table
    (ir/ops.py) changes the object code as much as editing a kernel: the key covers all of it, and
    not the command line, whose edits would only throw users' caches away."""
    root = Path(tc.__file__).resolve().parent
    before = fingerprint.hash_code_files(root)
    assert before == fingerprint.codegen_source_hash()
    real_read = Path.read_bytes
    for rel in ("runtime/engine.py", "codegen/target.py", "ir/ops.py", "codegen/gemm.py", "cli.py"):
        path = root / rel
        monkeypatch.setattr(Path, "read_bytes",
                            lambda self, path=path: real_read(self) + (b"#" if self == path else b""))
        assert (fingerprint.hash_code_files(root) != before) is (rel != "cli.py"), rel


STALE_PROCESS = """
import sys
from pathlib import Path
sys.path.insert(0, {copy!r})
import tinycomp as tc
from tinycomp.codegen import fingerprint
vecmath = Path(tc.__file__).parent / "codegen" / "vecmath.py"
vecmath.write_text(vecmath.read_text() + "# upgraded after this process imported tinycomp\\n")
print(fingerprint.codegen_source_hash(), fingerprint.hash_code_files(Path(tc.__file__).parent))
"""


def test_the_key_is_of_the_code_the_process_imported(tmp_path):
    """The source was hashed at the first compile, not at import: a process that imported the code
    before an upgrade stored its objects under the new code's key, and the next process, running
    the new code, loaded them (a helper's planted relu bug came back from the cache)."""
    copy = tmp_path / "site"
    shutil.copytree(Path(tc.__file__).resolve().parent, copy / "tinycomp",
                    ignore=shutil.ignore_patterns("__pycache__"))
    imported = fingerprint.hash_code_files(copy / "tinycomp")
    out = subprocess.run([sys.executable, "-c", STALE_PROCESS.format(copy=str(copy))], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    key_source, on_disk = out.stdout.split()
    assert key_source == imported != on_disk


def test_an_install_without_sources_is_keyed_by_its_bytecode(tmp_path):
    """Byte-compiled beside the modules (`compileall -b`) and the .py files deleted, as frozen apps
    ship, every version hashed to sha256 of nothing: a fixed version loaded the old one's code."""
    site = tmp_path / "tinycomp"
    shutil.copytree(Path(tc.__file__).resolve().parent, site, ignore=shutil.ignore_patterns("__pycache__"))
    assert compileall.compile_dir(site, quiet=1, legacy=True)
    for source in site.rglob("*.py"):
        source.unlink()
    first = fingerprint.hash_code_files(site)
    assert first is not None and first != hashlib.sha256().hexdigest()
    pyc = site / "codegen" / "vecmath.pyc"
    pyc.write_bytes(pyc.read_bytes() + b"\0")
    assert fingerprint.hash_code_files(site) not in (first, None)
    for code in site.rglob("*.pyc"):
        code.unlink()
    assert fingerprint.hash_code_files(site) is None


def test_without_a_fingerprint_nothing_is_cached(tmp_cache, monkeypatch, caplog):
    """A code generator with no files to hash cannot be told from another version: compiled code is
    neither loaded from nor stored in the cache, and that is said once."""
    monkeypatch.setattr(fingerprint, "_SOURCE_HASH", None)
    monkeypatch.setattr(cache, "_warned", set())
    with caplog.at_level("WARNING", logger="tinycomp.cache"):
        for _ in range(2):
            fast, x = compile_one()
            assert fast.stats.cache_hits == 0
            fast(x)
    assert not tmp_cache.exists() or not entries(tmp_cache)
    assert [r.getMessage() for r in caplog.records if "fingerprint" in r.getMessage()] == [
        "tinycomp: not using the object cache: tinycomp's code generator has no source or bytecode files to "
        "fingerprint (it was loaded some other way), so cache keys could not tell its versions apart; compiling "
        "without the disk cache"]


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
