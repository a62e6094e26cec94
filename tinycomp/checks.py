"""Small checks of user-given values, shared by the API and the command line."""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable
from typing import Any


def is_whole_number(value: Any) -> bool:
    """An int or NumPy integer, not a bool (True is 1 to Python, never a size here)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(owner: str, name: str, value: Any) -> int:
    """`value` as an int, or ValueError naming the layer and argument (`Linear in_features ...`)."""
    if not is_whole_number(value) or value <= 0:
        raise ValueError(f"{owner} {name} must be a positive integer; got {value!r}")
    return int(value)


def positive_number(kind: type) -> Callable[[str], Any]:
    """An argparse type: a finite number of `kind` (int or float) above zero."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value <= 0:
            whole = "whole " if kind is int else ""
            raise argparse.ArgumentTypeError(f"expected a {whole}number above 0; got {text!r}")
        return value
    return parse


def seed_number(text: str) -> int:
    """An argparse type: a whole number >= 0 (a seed, as `tinycomp.nn.manual_seed` takes it)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0; got {text!r}")
    return value


def positive_ints(text: str) -> list[int]:
    """An argparse type: a comma list of whole numbers above 0 (batch sizes)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected a comma list of whole numbers above 0; got {text!r}")
    return values
