"""`from_sklearn`: a fitted scikit-learn `MLPClassifier` or `MLPRegressor` -> a `tinycomp.nn` model."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import nn as tnn
from ..errors import CompileError
from ..frontend.layers import Layer
from .common import linear_from, require

HIDDEN = {"relu": tnn.ReLU, "logistic": tnn.Sigmoid, "tanh": tnn.Tanh, "identity": None}


def from_sklearn(estimator: Any) -> Layer:
    """A `tinycomp.nn` model of a fitted `MLPClassifier` (output: `predict_proba`) or `MLPRegressor`
    (output: `predict`, always 2-D: (n, n_outputs)).

    The layers are `Linear(coefs_[i], intercepts_[i])` with the estimator's hidden activation between
    them and its output activation last: Softmax for several classes; for one output column (two
    classes, or one: a classifier fitted on a single class) a Sigmoid and a fixed Linear(1, 2) giving
    [1 - p, p], the two columns of predict_proba; Sigmoid alone for multi-label. scikit-learn
    computes in float64 when fitted on float64; the model computes in float32, so probabilities agree
    within float32 rounding. Anything else raises `CompileError` naming the estimator's type. Needs
    scikit-learn (`pip install -e '.[sklearn]'`).
    """
    neural = require("sklearn.neural_network", "from_sklearn", "sklearn", "scikit-learn")
    if not isinstance(estimator, (neural.MLPClassifier, neural.MLPRegressor)):
        raise CompileError(f"cannot import estimator of type {type(estimator).__name__}; supported: MLPClassifier, "
                           "MLPRegressor (fitted)")
    if not hasattr(estimator, "coefs_"):
        raise CompileError(f"this {type(estimator).__name__} is not fitted (no coefs_): call fit() first")
    hidden = HIDDEN.get(estimator.activation)
    if estimator.activation not in HIDDEN:
        raise CompileError(f"cannot import {type(estimator).__name__} with activation {estimator.activation!r}; "
                           f"supported: {', '.join(HIDDEN)}")
    layers: list[Layer] = []
    n = len(estimator.coefs_)
    for i, (w, b) in enumerate(zip(estimator.coefs_, estimator.intercepts_, strict=True)):
        layers.append(linear_from(w, b))
        if i < n - 1 and hidden is not None:
            layers.append(hidden())
    layers += _output_layers(estimator)
    return tnn.Sequential(*layers).eval()


def _output_layers(estimator: Any) -> list[Layer]:
    out = estimator.out_activation_
    if out == "identity":
        return []
    if out == "softmax":
        return [tnn.Softmax(dim=-1)]
    if out == "logistic":
        if estimator.n_outputs_ == 1:  # predict_proba's own rule: one output column is [1 - p, p]
            both = linear_from(np.array([[-1.0, 1.0]]), np.array([1.0, 0.0]))  # p -> [1 - p, p]
            return [tnn.Sigmoid(), both]
        return [tnn.Sigmoid()]
    raise CompileError(f"cannot import {type(estimator).__name__} with output activation {out!r}")
