"""Fixtures the runtime tests share."""

import pytest

from tests.models import reference_mlp
from tinycomp.nn import manual_seed


@pytest.fixture
def mlp():
    """The reference MLP with seed-0 weights."""
    manual_seed(0)
    return reference_mlp()
