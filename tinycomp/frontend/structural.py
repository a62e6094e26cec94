"""Layers that only move data: `Flatten`, `Reshape`, `Identity`, and `InputShape`, which checks it (what
imported models are made of besides Linear and the activations). Written with Tensor ops, so they trace
and compile."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ir.shapes import fmt_shape
from .layers import Layer
from .tensor import Tensor, as_tensor


class Flatten(Layer):
    """Merge dimensions start_dim..end_dim into one, as `torch.nn.Flatten(start_dim=1, end_dim=-1)`:
    (N, 3, 4, 5) -> (N, 60); a negative dimension counts from the last, as in torch (Flatten(-2) on
    (N, 3, 4) gives (N, 12)). The batch dimension (0) is never merged."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        if isinstance(start_dim, bool) or not isinstance(start_dim, numbers.Integral) or start_dim == 0:
            raise ValueError(f"Flatten start_dim must be a nonzero int (dimension 0 is the batch; a negative one "
                             f"counts from the last); got {start_dim!r}")
        self.start_dim: int = int(start_dim)
        self.end_dim: int = int(end_dim)

    def forward(self, x: Tensor) -> Tensor:
        """x with dimensions start_dim..end_dim merged; the batch dimension stays first."""
        x = as_tensor(x)
        shape: tuple[Any, ...] = tuple(x.shape)
        start = self.start_dim + len(shape) if self.start_dim < 0 else self.start_dim
        if start < 1:
            raise ValueError(f"Flatten(start_dim={self.start_dim}) on an input of {len(shape)} dimensions would merge "
                             f"the batch dimension (0)")
        end = self.end_dim % len(shape) if len(shape) else 0
        if not start <= end < len(shape):
            if start == end + 1 or len(shape) <= start:  # nothing to merge, as torch
                return x
            raise ValueError(f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}) does not fit an input of "
                             f"{len(shape)} dimensions")
        merged = math.prod(int(d) for d in shape[start:end + 1])
        return x.reshape(-1, *shape[1:start], merged, *shape[end + 1:])

    def __repr__(self) -> str:
        return "Flatten()" if (self.start_dim, self.end_dim) == (1, -1) else \
            f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim})"


class Reshape(Layer):
    """Give each sample the shape `sample_shape` (one size may be -1): x.reshape(-1, *sample_shape)."""

    def __init__(self, *sample_shape: int):
        if len(sample_shape) == 1 and isinstance(sample_shape[0], (tuple, list)):
            sample_shape = tuple(sample_shape[0])
        self.sample_shape = tuple(int(d) for d in sample_shape)

    def forward(self, x: Tensor) -> Tensor:
        """x reshaped to (batch, *sample_shape)."""
        return as_tensor(x).reshape(-1, *self.sample_shape)

    def __repr__(self) -> str:
        return f"Reshape{self.sample_shape}"


class Identity(Layer):
    """Returns its input unchanged (ONNX `Identity`, torch `nn.Identity`)."""

    def forward(self, x: Tensor) -> Tensor:
        """x itself."""
        return x


class InputShape(Layer):
    """Returns its input unchanged, after checking that each sample has the shape `sample_shape` (the
    sizes after the batch); another is a ValueError naming both. An imported model starts with one
    where its computation fixed those sizes at import (a mean divided by the length it read, a slice
    to half of it): it would give wrong values for another shape, and is refused as ONNX Runtime
    refuses an input that does not match the graph's static shape."""

    def __init__(self, *sample_shape: int, feature_names: Sequence[str] | None = None):
        if len(sample_shape) == 1 and isinstance(sample_shape[0], (tuple, list)):
            sample_shape = tuple(sample_shape[0])
        self.sample_shape = tuple(int(d) for d in sample_shape)
        # the columns a model fitted on a DataFrame reads, in order (scikit-learn's feature_names_in_)
        self.feature_names = None if feature_names is None else tuple(map(str, feature_names))

    def forward(self, x: Tensor) -> Tensor:
        """x itself, when its shape after the batch is `sample_shape` (and a DataFrame's columns are
        `feature_names`, where the model has them)."""
        self.check_names(x)
        shape = tuple(x.shape if isinstance(x, (Tensor, np.ndarray)) else np.shape(x))  # np.shape: a list
        if shape[1:] != self.sample_shape:
            raise ValueError(f"this model takes inputs of shape {fmt_shape((None, *self.sample_shape))} (its sizes "
                             f"after the batch were fixed when it was made); got an input of shape "
                             f"{fmt_shape(shape)}")
        return x

    def check_names(self, x: Any) -> None:
        """A DataFrame (anything with `columns`) is read by position: refuse one whose columns are not
        the model's `feature_names` in order, as scikit-learn does."""
        columns = getattr(x, "columns", None)
        if self.feature_names is None or columns is None or isinstance(x, (Tensor, np.ndarray)):
            return
        check_feature_names(self.feature_names, [str(c) for c in columns], "the DataFrame's columns are")

    def __repr__(self) -> str:
        return f"InputShape{fmt_shape((None, *self.sample_shape))}"


def check_feature_names(expected: Sequence[str], given: Sequence[str], given_as: str) -> None:
    """ValueError unless `given` names the features `expected`, in that order (`given_as`: how the
    message introduces them)."""
    if list(given) != list(expected):
        shown = ", ".join(map(repr, expected[:12])) + (" ..." if len(expected) > 12 else "")
        got = ", ".join(map(repr, given[:12])) + (" ..." if len(given) > 12 else "")
        raise ValueError(f"this model reads the feature columns {shown} in that order (the names it was fitted "
                         f"with); {given_as} {got}: select them in that order, e.g. df[names]")
