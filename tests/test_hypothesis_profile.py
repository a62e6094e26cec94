"""The suite's Hypothesis profile (tests/conftest.py): derandomized unless TINYCOMP_HYPOTHESIS_PROFILE
asks for another, and the per-test `@settings(...)` keep it."""

from __future__ import annotations

import os
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import HYPOTHESIS_PROFILE_VAR

DRAWN: list[int] = []


def test_default_profile_is_derandomized():
    if os.environ.get(HYPOTHESIS_PROFILE_VAR) not in (None, "", "ci"):
        assert not settings.default.derandomize  # a run that chose another profile gets it
        return
    assert settings.default.derandomize and settings.default.database is None


@settings(max_examples=5)
@given(st.integers())
def _draw(n):
    DRAWN.append(n)


def test_a_test_with_its_own_settings_stays_derandomized():
    if os.environ.get(HYPOTHESIS_PROFILE_VAR) not in (None, "", "ci"):
        return
    _draw()
    first = list(DRAWN)
    DRAWN.clear()
    _draw()
    assert DRAWN == first  # the same examples on every run


def test_the_environment_variable_selects_the_explore_profile():
    code = ("import tests.conftest; from hypothesis import settings; "
            "print(settings.default.derandomize, settings._current_profile)")
    env = {**os.environ, HYPOTHESIS_PROFILE_VAR: "explore"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.split() == ["False", "explore"]
