"""Issue 13: the object cache runs no code it did not build. Entries are authenticated with a
per-user key kept outside the cache folder, headers are checked against the graph, folders are
private (0700/0600 whatever the umask) and a folder others can write is refused.

Every test points the cache and the key at tmp folders: none touches the user's own."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat

import numpy as np
import pytest
from llvmlite import ir

import tinycomp as tc
from tests.reliability.rel_helpers import assert_matches_eager, fifo_released_after, peak_traced
from tinycomp.codegen.module import ENTRY, graph_fingerprint, lower_graph
from tinycomp.codegen.target import host
from tinycomp.frontend.tracer import trace
from tinycomp.ir.passes import run_pipeline
from tinycomp.nn import Linear, ReLU, Sequential, manual_seed
from tinycomp.runtime import cache
from tinycomp.runtime.engine import emit_object

X = np.linspace(-2, 2, 3 * 8, dtype=np.float32).reshape(3, 8)


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """A fresh cache folder and the victim's own config folder (the key lives there)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("TINYCOMP_CACHE_DIR", str(folder))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "victim-config"))
    monkeypatch.delenv("TINYCOMP_CACHE", raising=False)
    return folder


@pytest.fixture
def warnings_seen():
    """The records the cache logs (its own handler: another test may stop `tinycomp` propagating)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("tinycomp.cache")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def model(hidden=None, out=4):
    manual_seed(13)
    if hidden is None:
        return Sequential(Linear(8, out), ReLU())
    return Sequential(Linear(8, hidden), ReLU(), Linear(hidden, out))


def attacker_key_and_meta(m):
    """What anyone can compute with tinycomp's own public functions: the entry's name and a header."""
    g = run_pipeline(trace(m, (None, 8)))
    width = host().vector_width
    return cache.cache_key(graph_fingerprint(g, width), {"speed_level": 0}), lower_graph(g, width).to_meta()


def evil_object(marker) -> bytes:
    """Object code whose entry creates `marker` (a harmless stand-in for `system(...)`)."""
    mod = ir.Module(name="planted")
    ptr, i32 = ir.PointerType(), ir.IntType(32)
    creat = ir.Function(mod, ir.FunctionType(i32, [ptr, i32]), "creat")
    entry = ir.Function(mod, ir.FunctionType(ir.VoidType(), [ir.IntType(64)] + [ptr] * 4), ENTRY)
    path = bytearray(str(marker).encode() + b"\0")
    text_type = ir.ArrayType(ir.IntType(8), len(path))
    text = ir.GlobalVariable(mod, text_type, "path")
    text.initializer = ir.Constant(text_type, path)
    text.global_constant = True
    b = ir.IRBuilder(entry.append_basic_block())
    b.call(creat, [text, ir.Constant(i32, 0o600)])
    b.ret_void()
    return emit_object(str(mod))


def header_line(blob: bytes) -> int:
    """Index of the JSON header among the entry's lines (whatever comes before it)."""
    lines = blob.split(b"\n")
    for i, line in enumerate(lines[:4]):
        try:
            if isinstance(json.loads(line), dict):
                return i
        except ValueError:
            continue
    raise AssertionError("no header line in the entry")


def edit_header(blob: bytes, edit) -> bytes:
    """The entry with its JSON header changed by `edit(header)`, every non-secret check fixed up
    (size, sha256): what someone who can write the cache folder but lacks the key can do."""
    i = header_line(blob)
    parts = blob.split(b"\n", i + 1)
    header = json.loads(parts[i])
    edit(header)
    parts[i] = json.dumps(header, sort_keys=True).encode()
    return b"\n".join(parts)


def replace_code(blob: bytes, code: bytes) -> bytes:
    i = header_line(blob)
    parts = blob.split(b"\n", i + 1)

    def fix(header):
        header["sizes"] = [len(code)]
        if "sha256" in header:
            header["sha256"] = hashlib.sha256(code).hexdigest()
    return edit_header(b"\n".join(parts[: i + 1]) + b"\n" + code, fix)


def only_entry(folder):
    [entry] = folder.glob("*.o")
    return entry


def assert_compiled_fresh(m, x=X):
    """Compiling m loads nothing from the cache and gives the eager result."""
    fast = tc.compile(m, input_shape=(None, 8))
    y = fast(x).data
    assert fast.stats.cache_hits == 0, "an entry tinycomp must not trust was loaded"
    assert_matches_eager(y, m, x)
    return fast


# ---------------------------------------------------------------- planted and tampered entries

def plant_with_own_key(tmp_path, monkeypatch, key, meta, code):
    """The attacker runs tinycomp's own store() with their own key to write a well-formed entry."""
    victim = os.environ["XDG_CONFIG_HOME"]
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "attacker-config"))
    cache.store(key, meta, [code])
    monkeypatch.setenv("XDG_CONFIG_HOME", victim)


def splice_into_victims_entry(tmp_path, monkeypatch, key, meta, code):
    """The attacker replaces the code of the victim's own entry and fixes size and checksums."""
    tc.compile(model(), input_shape=(None, 8))
    entry = cache.cache_dir() / f"{key}.o"
    entry.write_bytes(replace_code(entry.read_bytes(), code))


@pytest.mark.parametrize("plant", [plant_with_own_key, splice_into_victims_entry])
def test_planted_entry_is_never_executed(dirs, tmp_path, monkeypatch, plant):
    marker = tmp_path / "planted-code-ran"
    victim = model()
    key, meta = attacker_key_and_meta(victim)
    plant(tmp_path, monkeypatch, key, meta, evil_object(marker))
    assert (dirs / f"{key}.o").exists()
    fast = tc.compile(victim, input_shape=(None, 8))
    y = fast(X).data
    assert not marker.exists(), "the planted object code was executed"
    assert fast.stats.cache_hits == 0
    assert_matches_eager(y, victim, X)
    assert tc.compile(model(), input_shape=(None, 8)).stats.cache_hits == 1  # rebuilt, and ours again


def test_swapped_key_field_is_ignored(dirs):
    """Another model's entry, renamed and its `key` field rewritten to this model's key."""
    tc.compile(model(out=2), input_shape=(None, 8))
    other = only_entry(dirs)
    victim = model(out=4)
    key, _ = attacker_key_and_meta(victim)
    (dirs / f"{key}.o").write_bytes(edit_header(other.read_bytes(), lambda h: h.update(key=key)))
    fast = assert_compiled_fresh(victim)
    assert fast(X).shape == (3, 4)


def test_renamed_entry_of_another_model_is_ignored(dirs):
    """Authentic, but made for another key: its header says so."""
    tc.compile(model(out=2), input_shape=(None, 8))
    victim = model(out=4)
    key, _ = attacker_key_and_meta(victim)
    only_entry(dirs).rename(dirs / f"{key}.o")
    assert_compiled_fresh(victim)


BAD_HEADERS = {
    "out_shape-narrower": ("out_shape", [None, 1]),
    "out_shape-wider": ("out_shape", [None, 8]),
    "scratch_per_row-smaller": ("scratch_per_row", 4),
    "scratch_per_row-larger": ("scratch_per_row", 4096),
    "scratch_pack-smaller": ("scratch_pack", 0),
    "pack_rows-larger": ("pack_rows", 1 << 20),  # calls below it would pass no room for the packed W
    "params-reordered": ("params", ["2.bias", "2.weight", "0.bias", "0.weight"]),
    "params-dropped": ("params", ["0.weight"]),
}


@pytest.mark.parametrize("field,value", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_edited_header_is_ignored_and_rebuilt(dirs, field, value):
    """The header edited in the file by someone without the key."""
    tc.compile(model(hidden=64), input_shape=(None, 8))
    entry = only_entry(dirs)
    good = entry.read_bytes()
    edited = edit_header(good, lambda h: h["meta"].update({field: value}))
    entry.write_bytes(edited)
    assert_compiled_fresh(model(hidden=64), np.ones((300, 8), np.float32))
    assert entry.read_bytes() != edited  # rebuilt (its objects cut as the compile's threads went)
    assert tc.compile(model(hidden=64), input_shape=(None, 8)).stats.cache_hits == 1


@pytest.mark.parametrize("field,value", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_authentic_header_that_disagrees_with_the_graph_is_ignored(dirs, field, value):
    """A header signed with the user's own key (as a tinycomp bug could write it) is still checked
    against what the graph gives: nothing in it is trusted for memory safety."""
    tc.compile(model(hidden=64), input_shape=(None, 8))
    entry = only_entry(dirs)
    key = entry.stem
    meta, code = cache.load(key)
    assert meta[field] != value
    cache.store(key, {**meta, field: value}, code)
    assert_compiled_fresh(model(hidden=64), np.ones((300, 8), np.float32))
    assert cache.load(key)[0] == meta  # rebuilt: the stored header is right again


# ---------------------------------------------------------------- private folders

@pytest.mark.parametrize("mode", [0o777, 0o770, 0o703], ids=["world", "group", "others"])
def test_writable_cache_dir_is_refused_with_one_warning(dirs, warnings_seen, mode):
    m = model(hidden=64)
    tc.compile(m, input_shape=(None, 8))  # a valid entry, written while the folder was private
    entry = only_entry(dirs)
    dirs.chmod(mode)
    for _ in range(3):  # refused every time, warned about once
        assert_compiled_fresh(m)
    assert [entry] == list(dirs.glob("*.o")), "wrote into a refused folder"
    [record] = warnings_seen
    message = record.getMessage()
    assert str(dirs) in message and f"{mode:04o}" in message
    assert ("group" in message) == bool(mode & 0o020) and ("others" in message) == bool(mode & 0o002)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0,
                    reason="only root can make a folder that another user owns")
def test_cache_dir_owned_by_another_user_is_refused(dirs, warnings_seen):
    m = model()
    tc.compile(m, input_shape=(None, 8))
    os.chown(dirs, 65534, 65534)
    assert_compiled_fresh(m)
    [record] = warnings_seen
    assert str(dirs) in record.getMessage() and "owned by uid 65534" in record.getMessage()


def test_folders_and_files_are_private_under_umask_000(tmp_path, monkeypatch):
    monkeypatch.delenv("TINYCOMP_CACHE_DIR", raising=False)
    monkeypatch.delenv("TINYCOMP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache" / "deeper"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config" / "deeper"))
    old = os.umask(0)
    try:
        m = model()
        assert_compiled_fresh(m)
    finally:
        os.umask(old)
    created = [tmp_path / top / sub for top in ("xdg-cache", "xdg-config") for sub in ("", "deeper", "deeper/tinycomp")]
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in created}
    assert modes == dict.fromkeys(modes, 0o700)
    key = tmp_path / "xdg-config" / "deeper" / "tinycomp" / "cache.key"
    entry = only_entry(tmp_path / "xdg-cache" / "deeper" / "tinycomp")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert tc.compile(m, input_shape=(None, 8)).stats.cache_hits == 1


@pytest.mark.parametrize("relative", ["relcache", ""], ids=["relative", "empty"])
def test_relative_xdg_cache_home_is_ignored_like_xdg_config_home(tmp_path, monkeypatch, relative):
    """A relative XDG_CACHE_HOME was used from the working directory (a cache per folder one runs in);
    per the XDG spec, as for the key's XDG_CONFIG_HOME, it is ignored for ~/.cache."""
    monkeypatch.delenv("TINYCOMP_CACHE_DIR", raising=False)
    monkeypatch.delenv("TINYCOMP_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", relative)
    monkeypatch.setenv("XDG_CONFIG_HOME", "relconfig")
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "tinycomp"
    assert cache.key_path() == tmp_path / "home" / ".config" / "tinycomp" / "cache.key"


@pytest.mark.parametrize("xdg_set", [False, True], ids=["cache from HOME", "cache from XDG_CACHE_HOME"])
def test_a_relative_home_is_refused_and_named(tmp_path, monkeypatch, warnings_seen, xdg_set):
    """HOME=relhome put the key at <cwd>/relhome/.config/...: a key per working directory, so the
    same model missed and was rebuilt from another one; and with no TINYCOMP_CACHE_DIR the warning
    blamed TINYCOMP_CACHE_DIR, which the user never set."""
    monkeypatch.delenv("TINYCOMP_CACHE", raising=False)
    monkeypatch.delenv("TINYCOMP_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    if xdg_set:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    else:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", "relhome")
    monkeypatch.chdir(tmp_path)
    assert_compiled_fresh(model())
    assert not (tmp_path / "relhome").exists()
    [record] = warnings_seen
    message = record.getMessage()
    assert "HOME ('relhome') is a relative path" in message and "TINYCOMP_CACHE_DIR is" not in message
    if xdg_set:  # the cache folder is absolute: the key is what would move with the working directory
        assert "a key of its own; give HOME or XDG_CONFIG_HOME an absolute path" in message


@pytest.mark.parametrize("home, cache_dir, said", [
    ("relhome", "~/c", "HOME ('relhome') is a relative path (relhome/c, from TINYCOMP_CACHE_DIR='~/c')"),
    ("", None, "HOME is empty (.cache/tinycomp)"),
    ("", "~/c", "HOME is empty (~/c, from TINYCOMP_CACHE_DIR='~/c')"),
    ("/home/x", "~nosuchuser/x", "TINYCOMP_CACHE_DIR ('~nosuchuser/x') starts with ~nosuchuser, but there is no user "
                                 "'nosuchuser'"),
], ids=["cache dir under a relative HOME", "empty HOME", "cache dir under an empty HOME", "unknown user"])
def test_a_cache_folder_from_a_bad_home_is_refused_naming_the_cause(tmp_path, monkeypatch, warnings_seen, home,
                                                                    cache_dir, said):
    """TINYCOMP_CACHE_DIR='~/c' under HOME=relhome was blamed on TINYCOMP_CACHE_DIR; an empty HOME
    put the cache and key in the root's .cache and .config without a word (expanduser makes '' '/');
    '~nosuchuser/x' was called a relative path."""
    monkeypatch.delenv("TINYCOMP_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("HOME", home)
    if cache_dir is None:
        monkeypatch.delenv("TINYCOMP_CACHE_DIR", raising=False)
    else:
        monkeypatch.setenv("TINYCOMP_CACHE_DIR", cache_dir)
    monkeypatch.chdir(tmp_path)
    assert_compiled_fresh(model())
    [record] = warnings_seen
    assert said in record.getMessage()
    assert not any(tmp_path.glob("*/tinycomp")) and not (tmp_path / "c").exists()


def test_a_long_key_is_reported_at_its_size(dirs, warnings_seen):
    """A key file of 4,096 bytes was said to hold 33 (the bytes read to tell it is too long)."""
    key = cache.key_path()
    key.parent.mkdir(mode=0o700, parents=True)
    key.write_bytes(b"k" * 4096)
    key.chmod(0o600)
    assert_compiled_fresh(model())
    [record] = warnings_seen
    assert f"the key {key} holds 4096 bytes, not 32" in record.getMessage()


def test_key_readable_by_others_is_refused(dirs, warnings_seen):
    m = model()
    tc.compile(m, input_shape=(None, 8))
    cache.key_path().chmod(0o644)
    assert_compiled_fresh(m)
    [record] = warnings_seen
    assert str(cache.key_path()) in record.getMessage() and "0644" in record.getMessage()


@pytest.mark.parametrize("make", [os.mkdir, os.mkfifo], ids=["folder", "fifo"])
def test_key_that_is_not_a_regular_file_is_refused_with_one_warning(dirs, warnings_seen, make):
    """A folder at the key path made compile() raise IsADirectoryError; a FIFO made it wait forever
    for a writer. Either is refused like any unusable key: compile without the cache, warn once."""
    key = cache.key_path()
    key.parent.mkdir(mode=0o700, parents=True)
    key.parent.chmod(0o700)
    make(key, 0o600)
    with fifo_released_after(key, seconds=30) as released:
        for _ in range(2):
            assert_compiled_fresh(model())
    assert not released.is_set(), "compile() waited for a writer on the FIFO at the key path"
    [record] = warnings_seen
    assert str(key) in record.getMessage() and "not a regular file" in record.getMessage()
    assert not list(dirs.glob("*.o")), "wrote entries without a usable key"


def test_writable_key_folder_is_named_in_the_one_warning(dirs, warnings_seen):
    """The warning blamed the cache folder ('the folder has mode 0775') though the key's folder was."""
    m = model()
    tc.compile(m, input_shape=(None, 8))
    cache.key_path().parent.chmod(0o775)
    assert_compiled_fresh(m)
    [record] = warnings_seen
    message = record.getMessage()
    assert f"the key's folder {cache.key_path().parent} has mode 0775, open to group" in message
    assert stat.S_IMODE(dirs.stat().st_mode) == 0o700  # the cache folder itself is private


def test_each_user_key_signs_its_own_entries(dirs, monkeypatch, tmp_path):
    """The key lives outside the cache folder; another key (another user, a new key) verifies nothing."""
    m = model()
    tc.compile(m, input_shape=(None, 8))
    assert dirs not in cache.key_path().parents
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "new-config"))
    assert_compiled_fresh(m)


# ---------------------------------------------------------------- settings and folders, named clearly

def test_a_symlinked_key_is_named_as_a_link(dirs, warnings_seen, tmp_path):
    """O_NOFOLLOW's ELOOP read 'Too many levels of symbolic links' (dotfile managers link files)."""
    tc.compile(model(), input_shape=(None, 8))
    key = cache.key_path()
    moved = tmp_path / "dotfiles" / "cache.key"
    moved.parent.mkdir()
    key.rename(moved)
    key.symlink_to(moved)
    assert_compiled_fresh(model())
    [record] = warnings_seen
    assert f"the key {key} is a symbolic link, which is not followed" in record.getMessage()


def test_a_cache_dir_that_is_a_file_or_relative_is_named_and_tilde_expands(dirs, warnings_seen, tmp_path,
                                                                          monkeypatch):
    """A file: 'the folder is not a folder'. A relative TINYCOMP_CACHE_DIR was used from the working
    directory, and '~/x' (quoted, as in a unit file) made a folder named '~' there."""
    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.setenv("TINYCOMP_CACHE_DIR", str(afile))
    assert_compiled_fresh(model())
    monkeypatch.setenv("TINYCOMP_CACHE_DIR", "relcache")
    monkeypatch.chdir(tmp_path)
    assert_compiled_fresh(model())
    assert not (tmp_path / "relcache").exists()
    assert [r.getMessage() for r in warnings_seen] == [
        f"tinycomp: not using the object cache {afile}: it is not a folder; compiling without the disk cache",
        "tinycomp: not using the object cache relcache: TINYCOMP_CACHE_DIR is a relative path (relcache): each "
        "working directory would have a cache of its own; give an absolute one; compiling without the disk cache"]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TINYCOMP_CACHE_DIR", "~/tc-cache")
    assert cache.cache_dir() == tmp_path / "home" / "tc-cache"


def test_a_store_that_fails_is_said_once_and_an_unknown_switch_too(dirs, warnings_seen, monkeypatch):
    """A read-only or full disk, or a folder at an entry's path, stored nothing without a word;
    TINYCOMP_CACHE=none left the cache on silently."""
    m = model(hidden=16)
    fast = tc.compile(m, input_shape=(None, 8))
    fast(X)
    entry = only_entry(dirs)
    entry.unlink()
    entry.mkdir()  # os.replace cannot put the new entry there
    for _ in range(2):
        assert_compiled_fresh(m)
    monkeypatch.setenv("TINYCOMP_CACHE", "none")
    assert cache.cache_dir() == dirs and cache.cache_dir() == dirs
    messages = [r.getMessage() for r in warnings_seen]
    assert len(messages) == 2
    assert messages[0].startswith(f"tinycomp: cannot store compiled code at {entry} (")  # the entry, not the folder
    assert messages[0].endswith("this model's code is not stored in the object cache until that path is removed")
    assert messages[1] == ("tinycomp: TINYCOMP_CACHE='none' is none of 0, false, no, off (off) or 1, true, yes, on "
                           "(on); the cache stays on")


def test_a_file_that_is_not_an_entry_is_not_read_past_its_first_bytes(dirs):
    """A 255 MB file of zeros at an entry's path (under the size limit) was read whole, 230 MB more
    memory and a second, before its first bytes showed it is no entry."""
    m = model(hidden=20)
    tc.compile(m, input_shape=(None, 8))
    entry = only_entry(dirs)
    entry.write_bytes(b"")
    with entry.open("r+b") as f:
        f.truncate(200 << 20)
    _, peak = peak_traced(lambda: assert_compiled_fresh(m))
    assert peak < 32 << 20, f"{peak / 2**20:.0f} MB allocated while compiling"


def test_an_entry_larger_than_the_cache_may_be_is_not_read(dirs, monkeypatch):
    """A sparse file of 512 MB at an entry's path was read whole (1.7 GB peak) before its tag was
    checked: one that the size limit could not have let stay is not read in."""
    m = model(hidden=24)
    tc.compile(m, input_shape=(None, 8))
    entry = only_entry(dirs)
    with entry.open("r+b") as f:
        f.truncate(64 << 20)
    monkeypatch.setenv("TINYCOMP_CACHE_MAX_MB", "8")
    _, peak = peak_traced(lambda: assert_compiled_fresh(m))
    assert peak < 32 << 20, f"{peak / 2**20:.0f} MB allocated while compiling"
