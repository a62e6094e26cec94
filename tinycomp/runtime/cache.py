"""On-disk cache of compiled object code: private and authenticated, since we execute what it holds.

An entry is keyed by everything that could change the machine code: the lowered graph, llvmlite
and LLVM versions, the target triple, CPU name and features, and compile options. Entries are
written atomically (temp file + rename).

Treated like `~/.ssh`:
- Folders tinycomp creates are 0700 and entries 0600, whatever the umask. A folder not owned by
  the user, or writable by group or others (`TINYCOMP_CACHE_DIR` included), is refused: one
  warning through `logging` names it and why, and models compile without the disk cache.
- Each entry carries an HMAC-SHA256 over its header and object code, keyed by a per-user secret
  kept outside the cache folder (`$XDG_CONFIG_HOME/tinycomp/cache.key`, by default
  `~/.config/tinycomp/cache.key`, created 0600 in a 0700 folder). An entry whose tag does not
  verify (planted, edited, truncated, copied from another user) is ignored and rebuilt, never
  loaded: whoever can write into the cache folder still cannot get code run.
- The header is not trusted for memory safety either: the caller recomputes output shape, scratch
  sizes and the parameter table from the graph and compares (`ModulePlan.from_meta`).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import llvmlite
import llvmlite.binding as llvm

from ..codegen.target import host
from . import cache_sweep

MAGIC = b"TINYCOMP-OBJ-4\n"
FORMAT = 4
TAG_CHARS = 64  # hex digits of an HMAC-SHA256 tag, on the line after MAGIC
SECRET_BYTES = 32

_log = logging.getLogger("tinycomp.cache")
_warned: set[tuple[str, str]] = set()


class Refused(Exception):
    """A folder or key file that must not be used; the message says why."""


OFF, ON = ("0", "false", "no", "off"), ("", "1", "true", "yes", "on")


def cache_dir() -> Path | None:
    """The configured cache folder, or None when TINYCOMP_CACHE=0 turns the cache off (another value
    than those of OFF and ON is warned of, once, and leaves it on). TINYCOMP_CACHE_DIR may start with
    ~; a relative one is refused by `_usable`, as the XDG spec ignores one: every working directory
    would get a cache of its own."""
    switch = os.environ.get("TINYCOMP_CACHE", "1").strip().lower()
    if switch in OFF:
        return None
    if switch not in ON:
        _warn_once(Path("TINYCOMP_CACHE"), f"TINYCOMP_CACHE={switch!r} is none of {', '.join(OFF[:4])} (off) or "
                                            f"{', '.join(ON[1:])} (on); the cache stays on", plain=True)
    if os.environ.get("TINYCOMP_CACHE_DIR"):
        return Path(_expand(os.environ["TINYCOMP_CACHE_DIR"]))
    return _xdg_home("XDG_CACHE_HOME", ".cache") / "tinycomp"


def key_path() -> Path:
    """Where the per-user secret lives: the user's config folder, never the cache folder."""
    return _xdg_home("XDG_CONFIG_HOME", ".config") / "tinycomp" / "cache.key"


def _xdg_home(variable: str, default_in_home: str) -> Path:
    """The XDG base folder `variable` names, else ~/`default_in_home`. The XDG spec ignores a relative
    (or empty) value: one would give every working directory a cache and key of its own; so is a
    relative or empty home refused (`_not_absolute`)."""
    base = os.environ.get(variable, "")
    if not os.path.isabs(base):
        base = os.path.join(_home(), default_in_home)
    return Path(base)


def _home() -> str:
    """The user's home as ~ expands, but '' where HOME is set and empty: expanduser made that '/',
    and the cache and key went to the root's folders without a word."""
    return "" if os.environ.get("HOME") == "" else os.path.expanduser("~")


def _expand(path: str) -> str:
    """`path` with a leading ~ or ~user expanded (left as it is where that cannot be done)."""
    if path == "~" or path.startswith("~/"):
        home = _home()
        return home + path[1:] if home else path
    return os.path.expanduser(path)


def _not_absolute(path: Path, variable: str) -> str:
    """Why a cache folder or key path that is not absolute is refused, naming what made it so: the
    variable `variable` (TINYCOMP_CACHE_DIR, or the XDG one whose default under HOME was taken:
    XDG_CONFIG_HOME for the key)."""
    raw = os.environ.get(variable, "") if variable == "TINYCOMP_CACHE_DIR" else ""  # XDG values are never expanded
    if raw.startswith("~") and not (raw == "~" or raw.startswith("~/")):
        user = raw[1:].split("/")[0]
        return f"{variable} ({raw!r}) starts with ~{user}, but there is no user {user!r}; give an absolute path"
    what = "key" if variable == "XDG_CONFIG_HOME" else "cache"
    if raw and not raw.startswith("~"):
        cause, fix = f"TINYCOMP_CACHE_DIR is a relative path ({path})", "give an absolute one"
    else:
        cause = "HOME is empty" if os.environ.get("HOME") == "" else f"HOME ({_home()!r}) is a relative path"
        cause += f" ({path}{f', from {variable}={raw!r}' if raw else ''})"
        fix = "give HOME or XDG_CONFIG_HOME an absolute path" if what == "key" else \
            "give HOME an absolute path, or TINYCOMP_CACHE_DIR an absolute one"
    return f"{cause}: each working directory would have a {what} of its own; {fix}"


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


# ---------------------------------------------------------------- private folders and the secret

def refuse(reason: str) -> None:
    """Say once, if the cache is on, that it is not used, and why."""
    if cache_dir() is not None:
        _warn_once(Path("object cache"), f"not using the object cache: {reason}; compiling without the disk "
                                         "cache", plain=True)


def _warn_once(path: Path, reason: str, plain: bool = False) -> None:
    """One warning per (path, reason) and process; `plain`: the reason is the whole message."""
    if (str(path), reason) not in _warned:
        _warned.add((str(path), reason))
        if plain:
            _log.warning("tinycomp: %s", reason)
        else:
            _log.warning("tinycomp: not using the object cache %s: %s; compiling without the disk cache", path,
                         reason)


def _make_private_dirs(path: Path) -> None:
    """Create `path` and its missing parents, each 0700 (mkdir's mode is masked by the umask: chmod)."""
    missing = []
    p = path
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:  # another process made it meanwhile: checked like any folder
            continue
        os.chmod(d, 0o700)


def _check_private(st: os.stat_result, what: str, others: int) -> None:
    """Refuse what another user owns, or whose mode grants `others` bits to group or others."""
    if os.name != "posix":
        return
    if st.st_uid != os.getuid():
        raise Refused(f"{what} is owned by uid {st.st_uid}, not by this user (uid {os.getuid()})")
    if st.st_mode & others:
        who = " and ".join(w for w, bits in (("group", others & 0o070), ("others", others & 0o007))
                           if st.st_mode & bits)
        raise Refused(f"{what} has mode {stat.S_IMODE(st.st_mode):04o}, open to {who}")


def private_dir(path: Path, what: str = "it") -> Path:
    """`path`, created 0700 if absent; Refused unless it is a folder of ours no one else may write.
    `what` names it in the reason: the warning names the cache folder, which may not be this one."""
    try:
        _make_private_dirs(path)
        st = os.stat(path)
    except OSError as exc:
        raise Refused(f"cannot create or read {what} ({exc.strerror or exc})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise Refused(f"{what} is not a folder")
    _check_private(st, what, 0o022)
    return path


class NotRegularFile(OSError):
    """A folder, FIFO, device or socket where a key or an entry (a regular file) was expected."""


@contextmanager
def _open_regular(path: Path) -> Iterator[tuple[BinaryIO, os.stat_result]]:
    """`path` opened for reading, with its fstat; NotRegularFile unless it is a regular file.

    Non-blocking, since open() of a FIFO waits for a writer, maybe forever; the type is checked on
    the opened descriptor, so nothing swapped in after a stat can slip past; no final symlink is
    followed (the key is ours, not whatever a link points at)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"{path} is not a regular file")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f, st


def _read_secret(path: Path) -> bytes | None:
    try:
        with _open_regular(path) as (f, st):
            _check_private(st, f"the key {path}", 0o077)  # read by another, it could sign entries
            secret, size = f.read(SECRET_BYTES + 1), st.st_size
    except FileNotFoundError:
        return None
    except NotRegularFile:
        raise Refused(f"the key {path} is not a regular file") from None
    except OSError as exc:
        if os.path.islink(path):  # O_NOFOLLOW's ELOOP: no loop, a link, which is never followed
            raise Refused(f"the key {path} is a symbolic link, which is not followed: put the key file "
                          "itself there") from None
        raise Refused(f"cannot read the key {path} ({exc.strerror or exc})") from None
    if len(secret) != SECRET_BYTES:
        raise Refused(f"the key {path} holds {max(size, len(secret))} bytes, not {SECRET_BYTES}; delete it to make "
                      "a new one")
    return secret


def _create_secret(path: Path) -> None:
    """Write a new random key whole, under its final name only once complete (a racing process's
    key wins: both then read the same one)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".cache.key.", suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(os.urandom(SECRET_BYTES))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def secret() -> bytes:
    """The per-user key entries are signed with, made on first use; Refused if it is not private."""
    path = key_path()
    if not path.is_absolute():
        raise Refused(_not_absolute(path, "XDG_CONFIG_HOME"))
    private_dir(path.parent, f"the key's folder {path.parent}")
    key = _read_secret(path)
    if key is None:
        try:
            _create_secret(path)
        except OSError as exc:
            raise Refused(f"cannot create the key {path} ({exc.strerror or exc})") from None
        key = _read_secret(path)
        if key is None:
            raise Refused(f"the key {path} vanished while being created")
    return key


def _usable() -> tuple[Path, bytes] | None:
    """(cache folder, secret), or None: the cache is off, or refused (warned about once)."""
    folder = cache_dir()
    if folder is None:
        return None
    if not folder.is_absolute():
        _warn_once(folder, _not_absolute(folder, "TINYCOMP_CACHE_DIR" if os.environ.get("TINYCOMP_CACHE_DIR")
                                          else "XDG_CACHE_HOME"))
        return None
    key = key_path()
    if not key.is_absolute():  # refused before the cache folder is made, not after
        _warn_once(folder, _not_absolute(key, "XDG_CONFIG_HOME"))
        return None
    try:
        private_dir(folder)
    except Refused as exc:
        _warn_once(folder, str(exc))
        return None
    try:
        return folder, secret()
    except Refused as exc:
        _warn_once(folder, str(exc))
        return None


# ---------------------------------------------------------------- entries

def _tag(key: bytes, signed: bytes) -> bytes:
    return hmac.new(key, signed, hashlib.sha256).hexdigest().encode()


def encode(key: str, meta: dict, objects: list[bytes], secret_key: bytes) -> bytes:
    """An entry: MAGIC, the tag line, a JSON header line, then the object files one after another
    (the header gives their sizes: a large module is several, `engine.emit_objects`)."""
    header = json.dumps({"key": key, "sizes": [len(o) for o in objects], "meta": meta}, sort_keys=True).encode()
    body = header + b"\n" + b"".join(objects)
    return MAGIC + _tag(secret_key, MAGIC + body) + b"\n" + body


def decode(blob: bytes, key: str, secret_key: bytes) -> tuple[dict, list[bytes]] | None:
    """(metadata, object files) if `blob` is an entry we signed for `key`, else None. Nothing is
    parsed before the tag verifies."""
    start = len(MAGIC) + TAG_CHARS + 1
    if not blob.startswith(MAGIC) or len(blob) < start or blob[start - 1:start] != b"\n":
        return None
    body = blob[start:]
    if not hmac.compare_digest(blob[len(MAGIC):start - 1], _tag(secret_key, MAGIC + body)):
        return None
    try:
        header_end = body.index(b"\n")
        header = json.loads(body[:header_end])
        payload = body[header_end + 1:]
        if not isinstance(header, dict) or header.get("key") != key:
            return None  # ours, but another model's entry (renamed): not this key's code
        sizes, meta = header["sizes"], header["meta"]
        if (not isinstance(meta, dict) or not isinstance(sizes, list) or not sizes
                or not all(type(n) is int and n > 0 for n in sizes) or sum(sizes) != len(payload)):
            return None
        ends = list(itertools.accumulate(sizes))
        return meta, [payload[end - n:end] for n, end in zip(sizes, ends, strict=True)]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None


def load(key: str) -> tuple[dict, list[bytes]] | None:
    """(metadata, object files) for `key`, or None if absent, refused or not an entry we signed for it."""
    usable = _usable()
    if usable is None:
        return None
    folder, secret_key = usable
    entry = folder / f"{key}.o"
    try:
        with _open_regular(entry) as (f, st):
            if st.st_size > cache_sweep.max_bytes():  # larger than the whole cache may be: not read in
                return None
            head = f.read(len(MAGIC))
            if head != MAGIC:  # not an entry: not read further (a 2 GB file of zeros was read whole)
                return None
            blob = head + f.read()
    except (OSError, MemoryError):  # absent, or a folder or FIFO in its place (NotRegularFile): rebuilt
        return None
    decoded = decode(blob, key, secret_key)
    if decoded is not None:
        cache_sweep.touch(entry)  # used: the size limit removes the least recently used entries first
    return decoded


def store(key: str, meta: dict, objects: list[bytes]) -> None:
    """Write an entry atomically, 0600; a cache that is refused or cannot be written is skipped."""
    usable = _usable()
    if usable is None:
        return
    folder, secret_key = usable
    blob = encode(key, meta, objects, secret_key)
    if len(blob) > cache_sweep.max_bytes():  # larger than the whole cache may be: it would never be read
        return
    entry = folder / f"{key}.o"
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key[:16]}.", suffix=".tmp")  # 0600
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(blob)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:  # a read-only or full disk: said once, then skipped
        _warn_once(folder, f"cannot store compiled code in the object cache {folder} ({exc.strerror or exc}); "
                           "compiled code is not stored there (entries already there are still used)", plain=True)
        return
    try:
        os.replace(tmp, entry)  # readers see the old entry or the whole new one
    except OSError as exc:  # something else at this entry's path (a folder): this model is not stored
        os.unlink(tmp)
        _warn_once(entry, f"cannot store compiled code at {entry} ({exc.strerror or exc}); this model's code is "
                          "not stored in the object cache until that path is removed", plain=True)
        return
    cache_sweep.after_store(folder, len(blob))
