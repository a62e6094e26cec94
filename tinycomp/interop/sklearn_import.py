"""`from_sklearn`: a fitted scikit-learn model -> a `tinycomp.nn` model computing its `predict_proba`
(classifiers) or `predict` (regressors).

Models: `MLPClassifier`, `MLPRegressor`, `LogisticRegression`, and the linear regressors (`LinearRegression`,
`Ridge`, `Lasso`, `ElasticNet`, ...: `LINEAR_REGRESSORS`), alone or as
the last step of a `Pipeline` whose other steps are the feature scalers (`StandardScaler`,
`MinMaxScaler`, `MaxAbsScaler`) or "passthrough": in scikit-learn an MLP is nearly always fitted on
scaled features, and the scaler is part of the model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import nn as tnn
from ..errors import CompileError
from ..frontend.layers import Layer
from .common import float32_values, linear_from, pinned, require
from .graph_layers import Clip, ConstantOperand, Exp

SCALERS = ("StandardScaler", "MinMaxScaler", "MaxAbsScaler")
HIDDEN = {"relu": tnn.ReLU, "logistic": tnn.Sigmoid, "tanh": tnn.Tanh, "identity": None}
# the linear_model regressors whose predict is x @ coef_.T + intercept_ (not the GLMs: Poisson, Gamma,
# Tweedie apply an inverse link)
LINEAR_REGRESSORS = ("LinearRegression", "Ridge", "RidgeCV", "Lasso", "LassoCV", "ElasticNet", "ElasticNetCV", "Lars",
                     "LarsCV", "LassoLars", "LassoLarsCV", "LassoLarsIC", "BayesianRidge", "ARDRegression",
                     "HuberRegressor", "SGDRegressor", "TheilSenRegressor", "OrthogonalMatchingPursuit",
                     "OrthogonalMatchingPursuitCV", "QuantileRegressor", "MultiTaskLasso", "MultiTaskElasticNet",
                     "MultiTaskLassoCV", "MultiTaskElasticNetCV")
SUPPORTED = ("MLPClassifier, MLPRegressor, LogisticRegression, linear regressors (LinearRegression, Ridge, Lasso, "
             "ElasticNet, ...), and a Pipeline of StandardScaler/MinMaxScaler/MaxAbsScaler steps ending in one of "
             "them (fitted)")


def from_sklearn(estimator: Any) -> Layer:
    """A `tinycomp.nn` model of a fitted scikit-learn model: its `predict_proba` for a classifier, its
    `predict` for a regressor (always 2-D: (n, n_outputs)).

    - `MLPClassifier`/`MLPRegressor`: `Linear(coefs_[i], intercepts_[i])` with the estimator's hidden
      activation between them and its output activation last: Exp for a Poisson regressor, Softmax
      for several classes; for one
      output column (two classes, or one: a classifier fitted on a single class) a Sigmoid and a
      fixed Linear(1, 2) giving [1 - p, p], the two columns of predict_proba; Sigmoid alone for
      multi-label.
    - `LogisticRegression`, `LogisticRegressionCV`: one Linear, then the same outputs (its multinomial
      softmax, or [1 - p, p] for two classes).
    - Linear regressors (`LinearRegression`, `Ridge`, `Lasso`, `ElasticNet`, ...): one Linear.
    - `Pipeline`: its scaling steps first, each as scikit-learn computes it (`StandardScaler`:
      (x - mean) / scale; `MinMaxScaler`: x * scale + min, clipped with `clip=True`; `MaxAbsScaler`:
      x / scale), then the model of its last step; "passthrough" steps are skipped.

    scikit-learn computes in float64 when fitted on float64; the model computes in float32, so results
    agree within float32 rounding (a constant beyond float32's range is refused). A model fitted on
    a DataFrame keeps its column names: a DataFrame of other columns, or in another order, is a
    ValueError. Anything else, a subclass of these included, raises `CompileError` naming the
    estimator's type.
    Needs scikit-learn (`pip install -e '.[sklearn]'`).
    """
    for module in ("sklearn.neural_network", "sklearn.linear_model", "sklearn.pipeline", "sklearn.preprocessing"):
        require(module, "from_sklearn", "sklearn", "scikit-learn")
    if isinstance(estimator, type):
        raise CompileError(f"from_sklearn expects a fitted estimator; got the class {estimator.__name__}: fit an "
                           f"instance first, e.g. {estimator.__name__}(...).fit(X, y)")
    *scalers, last = _steps(estimator)
    layers = [layer for step in scalers for layer in _scaler_layers(step)] + _model_layers(last)
    first = (scalers or [last])[0]
    # the width it was fitted on, checked: a scaler's per-feature constants broadcast over one column
    # as readily as over the width they were fitted on, and gave numbers where scikit-learn refuses
    # (a Pipeline's own n_features_in_ is its first step's, which a leading "passthrough" does not have);
    # and the column names of a DataFrame it was fitted on, which a DataFrame given to it must have
    names = getattr(estimator, "feature_names_in_", getattr(first, "feature_names_in_", None))
    return pinned(tnn.Sequential(*layers).eval(), (int(first.n_features_in_),),
                  feature_names=None if names is None else list(names))


def _steps(estimator: Any) -> list[Any]:
    """The estimators a (nested) Pipeline applies in order, "passthrough" and None steps left out;
    [estimator] for one that is not a Pipeline."""
    from sklearn.pipeline import Pipeline
    if not isinstance(estimator, Pipeline):
        return [estimator]
    steps = [s for _, step in estimator.steps if step not in (None, "passthrough") for s in _steps(step)]
    if not steps:
        raise CompileError("cannot import a Pipeline of passthrough steps only: it computes nothing")
    return steps


def _fitted(estimator: Any) -> None:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted
    try:
        check_is_fitted(estimator)
    except NotFittedError:
        raise CompileError(f"this {type(estimator).__name__} is not fitted: call fit() first") from None
    except TypeError:  # not an estimator at all: _model_layers names it
        pass


def _scaler_layers(step: Any) -> list[Layer]:
    from sklearn import preprocessing as pre
    _fitted(step)
    kind = type(step)
    def constant(op: str, attribute: str) -> Layer:
        return ConstantOperand(op, float32_values(getattr(step, attribute), f"{kind.__name__}.{attribute}"))

    if kind is pre.StandardScaler:
        layers: list[Layer] = []  # as its transform: mean_ is kept with with_mean=False, but not subtracted
        if step.with_mean:
            layers.append(constant("sub", "mean_"))
        if step.with_std:
            layers.append(constant("div", "scale_"))
        return layers
    if kind is pre.MinMaxScaler:
        layers = [constant("mul", "scale_"), constant("add", "min_")]
        return layers + ([Clip(*step.feature_range)] if step.clip else [])
    if kind is pre.MaxAbsScaler:
        return [constant("div", "scale_")]
    raise CompileError(f"cannot import Pipeline step of type {kind.__name__}: only the last step may be a model, and "
                       f"the steps before it StandardScaler, MinMaxScaler, MaxAbsScaler or 'passthrough'; supported: "
                       f"{SUPPORTED}")


def _model_layers(estimator: Any) -> list[Layer]:
    from sklearn import linear_model, neural_network
    _fitted(estimator)
    importers: dict[type, Callable[[Any], list[Layer]]] = {
        neural_network.MLPClassifier: _mlp_layers, neural_network.MLPRegressor: _mlp_layers,
        linear_model.LogisticRegression: _logistic_layers, linear_model.LogisticRegressionCV: _logistic_layers,
        **{getattr(linear_model, name): lambda est: [_linear_regression(est)] for name in LINEAR_REGRESSORS}}
    kind = type(estimator)  # exactly: a subclass may compute its predictions otherwise
    if kind in importers:
        return importers[kind](estimator)
    base = next((c for c in importers if isinstance(estimator, c)), None)
    if base is not None:
        raise CompileError(f"cannot import {kind.__name__}, a subclass of {base.__name__}: it may compute its "
                           f"predictions otherwise; import a {base.__name__} itself (supported: {SUPPORTED})")
    if type(estimator).__name__ in SCALERS:
        raise CompileError(f"cannot import a {type(estimator).__name__} alone, or a Pipeline whose last step is not a "
                           f"model (its last steps here are scalers or 'passthrough'); supported: {SUPPORTED}")
    raise CompileError(f"cannot import estimator of type {type(estimator).__name__}; supported: {SUPPORTED}")


def _linear_regression(estimator: Any) -> Layer:
    """x @ coef_.T + intercept_, as (n, targets) also for one target."""
    coef = np.atleast_2d(np.asarray(estimator.coef_, np.float64))  # (targets, features)
    if coef.ndim != 2 or coef.shape[1] != estimator.n_features_in_:
        raise CompileError(f"cannot import this {type(estimator).__name__}: its coef_ has shape "
                           f"{np.shape(estimator.coef_)}, not (targets, {estimator.n_features_in_}) for the "
                           f"{estimator.n_features_in_} features it was fitted on")
    return linear_from(coef.T, np.broadcast_to(np.asarray(estimator.intercept_, np.float64), len(coef)),
                       f"{type(estimator).__name__}.coef_")


def _mlp_layers(estimator: Any) -> list[Layer]:
    hidden = HIDDEN.get(estimator.activation)
    if estimator.activation not in HIDDEN:
        raise CompileError(f"cannot import {type(estimator).__name__} with activation {estimator.activation!r}; "
                           f"supported: {', '.join(HIDDEN)}")
    layers: list[Layer] = []
    n = len(estimator.coefs_)
    for i, (w, b) in enumerate(zip(estimator.coefs_, estimator.intercepts_, strict=True)):
        layers.append(linear_from(w, b, f"{type(estimator).__name__}.coefs_[{i}]"))
        if i < n - 1 and hidden is not None:
            layers.append(hidden())
    out = estimator.out_activation_
    if out == "identity":
        return layers
    if out == "softmax":
        return [*layers, tnn.Softmax(dim=-1)]
    if out == "logistic":
        return layers + _sigmoid_outputs(estimator.n_outputs_)
    if out == "exp":  # MLPRegressor(loss="poisson"): predict is exp of the last layer
        return [*layers, Exp()]
    raise CompileError(f"cannot import {type(estimator).__name__} with output activation {out!r}; supported: "
                       "identity, softmax, logistic, exp")


def _logistic_layers(estimator: Any) -> list[Layer]:
    """predict_proba of a LogisticRegression: a softmax over the classes' scores, or for two classes
    (one row of coef_) the sigmoid of the one score as [1 - p, p]."""
    multi_class = getattr(estimator, "multi_class", "deprecated")
    coef = np.asarray(estimator.coef_, np.float64)
    if len(coef) > 1 and multi_class == "ovr":
        raise CompileError("cannot import a LogisticRegression fitted with multi_class='ovr' on more than two "
                           "classes (its probabilities are normalized one-vs-rest scores); fit it multinomial")
    layers: list[Layer] = [linear_from(coef.T, np.asarray(estimator.intercept_, np.float64),
                                       f"{type(estimator).__name__}.coef_")]
    return layers + (_sigmoid_outputs(1) if len(coef) == 1 else [tnn.Softmax(dim=-1)])


def _sigmoid_outputs(outputs: int) -> list[Layer]:
    """Sigmoid per output; one output column is [1 - p, p], as predict_proba gives it."""
    if outputs == 1:
        both = linear_from(np.array([[-1.0, 1.0]]), np.array([1.0, 0.0]))  # p -> [1 - p, p]
        return [tnn.Sigmoid(), both]
    return [tnn.Sigmoid()]
