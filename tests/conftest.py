"""Test-wide fixtures: no test reads or writes the user's real object cache or its signing key.

The cache folder and the key that signs its entries are looked up at every compile
(`tinycomp.runtime.cache.cache_dir`, `key_path`), so pointing TINYCOMP_CACHE_DIR and
XDG_CONFIG_HOME at temporary folders before the first test runs keeps every compile of the suite --
in this process and in the subprocesses tests start, which inherit the environment -- out of
`~/.cache/tinycomp` and `~/.config/tinycomp`. One pair of folders serves the whole session (models
compiled by several tests are built once); `tmp_cache` gives a test empty ones of its own.

Hypothesis runs derandomized by default (the profile "ci"): every run of the suite, in CI and here,
tries the same examples, so a red run is reproducible and a green one does not depend on luck. The
profile "explore" (`TINYCOMP_HYPOTHESIS_PROFILE=explore`, README "Testing") draws fresh examples each
run to look for new failures.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from tinycomp.runtime import cache

# Where compiled objects and the key would go without this file: the environment the suite started with.
USER_CACHE_DIR = cache.cache_dir()
USER_KEY_PATH = cache.key_path()

HYPOTHESIS_PROFILE_VAR = "TINYCOMP_HYPOTHESIS_PROFILE"
# no example database in "ci": a failure found on one machine must not change what another runs
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get(HYPOTHESIS_PROFILE_VAR) or "ci")


@pytest.fixture(autouse=True, scope="session")
def private_object_cache(tmp_path_factory):
    """Every test (and every subprocess it starts) compiles into a session-wide temporary cache,
    signed with a key of its own."""
    folder = tmp_path_factory.mktemp("tinycomp-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYCOMP_CACHE_DIR", str(folder))
        mp.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))
        mp.delenv("TINYCOMP_CACHE", raising=False)  # on, as in CI: tests that turn it off do so themselves
        yield folder


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """A fresh, empty, enabled cache folder and key for one test (the folder does not exist until a
    compile writes it)."""
    folder = tmp_path / "tinycomp-cache"
    monkeypatch.setenv("TINYCOMP_CACHE_DIR", str(folder))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("TINYCOMP_CACHE", raising=False)
    return folder
