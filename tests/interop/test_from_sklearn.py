"""from_sklearn against real scikit-learn: fitted MLPs, random data, batch 0/1/7/129."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install -e '.[sklearn]')")
from interop_helpers import check_imported  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: E402

import tinycomp as tc  # noqa: E402
from tinycomp.interop import from_sklearn  # noqa: E402


def rows_or_empty(predict, outputs: int):
    """scikit-learn refuses an empty batch; its answer would have no rows."""
    return lambda x: predict(x) if len(x) else np.zeros((0, outputs), np.float32)


def fitted(estimator, classes: int | None, width: int = 10, outputs: int = 1, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((200, width))
    if classes is None:
        y = x[:, :outputs] @ rng.standard_normal((outputs, outputs)) + 0.1 * rng.standard_normal((200, outputs))
        y = y.ravel() if outputs == 1 else y
    elif outputs > 1:
        y = (rng.random((200, outputs)) < 0.5).astype(int)  # multi-label
    else:
        y = rng.integers(0, classes, 200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a few iterations: weights, not accuracy, matter
        return estimator.fit(x, y)


@pytest.mark.parametrize("activation", ["relu", "logistic", "tanh", "identity"])
def test_multiclass_classifier_probabilities(activation):
    est = fitted(MLPClassifier(hidden_layer_sizes=(24, 12), activation=activation, max_iter=20, random_state=0),
                 classes=4)
    model = from_sklearn(est)
    check_imported(model, rows_or_empty(est.predict_proba, 4), 10, scale=2.0)


def test_binary_classifier_gives_both_columns():
    est = fitted(MLPClassifier(hidden_layer_sizes=(16,), max_iter=20, random_state=1), classes=2)
    model = from_sklearn(est)
    check_imported(model, rows_or_empty(est.predict_proba, 2), 10, scale=2.0)
    x = np.random.default_rng(3).standard_normal((50, 10)).astype(np.float32)
    np.testing.assert_array_equal(tc.compile(model)(x).data.argmax(axis=1), est.predict(x))


def test_a_classifier_fitted_on_one_class_gives_both_columns():
    """predict_proba is [1 - p, p] for any one output column (sklearn's own rule): a classifier fitted
    on a single class gave the p column alone."""
    est = fitted(MLPClassifier(hidden_layer_sizes=(5,), max_iter=20, random_state=0), classes=1)
    assert len(est.classes_) == 1 and est.predict_proba(np.zeros((1, 10))).shape == (1, 2)
    check_imported(from_sklearn(est), rows_or_empty(est.predict_proba, 2), 10)


def test_multilabel_classifier():
    est = fitted(MLPClassifier(hidden_layer_sizes=(8,), max_iter=20, random_state=2), classes=2, outputs=3)
    check_imported(from_sklearn(est), rows_or_empty(est.predict_proba, 3), 10)


@pytest.mark.parametrize("outputs", [1, 3])
def test_regressor(outputs):
    est = fitted(MLPRegressor(hidden_layer_sizes=(20, 20), max_iter=20, random_state=3), classes=None, outputs=outputs)
    check_imported(from_sklearn(est), rows_or_empty(lambda x: est.predict(x).reshape(len(x), outputs), outputs), 10,
                   rtol=1e-4)


def test_unfitted_and_foreign_estimators_are_compile_errors():
    with pytest.raises(tc.CompileError, match="MLPClassifier is not fitted"):
        from_sklearn(MLPClassifier())
    with pytest.raises(tc.CompileError, match="estimator of type LogisticRegression"):
        from_sklearn(LogisticRegression())
