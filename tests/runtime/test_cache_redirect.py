"""tests/conftest.py keeps the suite off the user's real object cache (`~/.cache/tinycomp`) and its key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import tinycomp as tc
from tests.conftest import USER_CACHE_DIR, USER_KEY_PATH
from tinycomp.nn import Linear, ReLU, Sequential
from tinycomp.runtime import cache

ROOT = Path(__file__).resolve().parents[2]


def listing(folder: Path | None) -> dict[str, float]:
    """name -> modification time of every file in `folder` ({} if there is no such folder)."""
    if folder is None or not folder.is_dir():
        return {}
    return {e.name: e.stat().st_mtime_ns for e in os.scandir(folder)}


def test_compiles_write_the_temporary_cache_and_leave_the_user_cache_untouched(private_object_cache):
    assert cache.cache_dir() == private_object_cache
    assert USER_CACHE_DIR is None or private_object_cache.resolve() != USER_CACHE_DIR.resolve()
    assert cache.key_path() != USER_KEY_PATH
    user_before = listing(USER_CACHE_DIR)
    key_before = listing(USER_KEY_PATH.parent)
    ours_before = set(listing(private_object_cache))
    # A layer size drawn per run: this structure is in no cache yet, so the compile must write an entry.
    rng = np.random.default_rng()
    width, width2 = (int(w) for w in rng.integers(300, 5000, size=2))
    fast = tc.compile(Sequential(Linear(7, width), ReLU(), Linear(width, 3)), input_shape=(None, 7))
    assert fast(np.ones((2, 7), np.float32)).shape == (2, 3)
    # and a subprocess, as the CLI tests start them: it inherits the redirect
    code = ("import numpy as np, tinycomp as tc; from tinycomp.nn import Linear; "
            f"tc.compile(Linear(5, {width2}), input_shape=(None, 5))(np.ones((1, 5), np.float32))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    new = {n for n in set(listing(private_object_cache)) - ours_before if n.endswith(".o")}
    assert len(new) == 2, new  # one entry per compile, both in the temporary folder
    assert listing(USER_CACHE_DIR) == user_before
    assert listing(USER_KEY_PATH.parent) == key_before
    assert cache.key_path().is_file()  # the session's own key signed the new entries
    assert not new & set(listing(USER_CACHE_DIR))
