"""from_sklearn against real scikit-learn: fitted MLPs, linear models and pipelines with scalers, random data,
batch 0/1/7/129."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install -e '.[sklearn]')")
from interop_helpers import check_imported  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import (  # noqa: E402
    ElasticNet,
    HuberRegressor,
    Lasso,
    LinearRegression,
    LogisticRegression,
    LogisticRegressionCV,
    PoissonRegressor,
    Ridge,
    SGDRegressor,
)
from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: E402
from sklearn.pipeline import Pipeline, make_pipeline  # noqa: E402
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, StandardScaler  # noqa: E402

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


@pytest.mark.parametrize("classes", [2, 3])
def test_logistic_regression_probabilities(classes):
    est = fitted(LogisticRegression(max_iter=200), classes=classes)
    check_imported(from_sklearn(est), rows_or_empty(est.predict_proba, classes), 10, scale=2.0)


@pytest.mark.parametrize("make, outputs", [
    (lambda: LinearRegression(), 1), (lambda: LinearRegression(fit_intercept=False), 3), (lambda: Ridge(alpha=2.0), 3),
    (lambda: Lasso(alpha=0.01), 1), (lambda: ElasticNet(alpha=0.01), 1), (lambda: SGDRegressor(random_state=0), 1),
    (lambda: HuberRegressor(), 1),
], ids=["linear", "linear-no-intercept", "ridge", "lasso", "elasticnet", "sgd", "huber"])
def test_linear_regressors(make, outputs):
    est = fitted(make(), classes=None, outputs=outputs)
    check_imported(from_sklearn(est), rows_or_empty(lambda x: est.predict(x).reshape(len(x), outputs), outputs), 10,
                   rtol=1e-4)


SCALERS = {"standard": lambda: StandardScaler(), "standard-no-mean": lambda: StandardScaler(with_mean=False),
           "minmax": lambda: MinMaxScaler(), "minmax-clip": lambda: MinMaxScaler(feature_range=(-1, 2), clip=True),
           "maxabs": lambda: MaxAbsScaler()}


@pytest.mark.parametrize("scaler", list(SCALERS))
def test_a_pipeline_of_a_scaler_and_a_classifier(scaler):
    """In scikit-learn an MLP is fitted on scaled features: the scaler is part of the model. Features
    far from unit scale, so that a missing or wrong scaling shows."""
    rng = np.random.default_rng(5)
    offset, spread = rng.uniform(-50, 50, 10), rng.uniform(0.1, 20, 10)
    x = rng.standard_normal((300, 10)) * spread + offset
    y = (x[:, 0] - offset[0] > 0).astype(int) + (x[:, 1] - offset[1] > 0)
    est = make_pipeline(SCALERS[scaler](), MLPClassifier(hidden_layer_sizes=(12,), max_iter=50, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(x, y)
    model = from_sklearn(est)
    fast = tc.compile(model)
    probe = (rng.standard_normal((64, 10)) * spread * 1.5 + offset).astype(np.float32)  # some past the fitted range
    want = est.predict_proba(probe)
    np.testing.assert_allclose(model(probe).data, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fast(probe).data, want, rtol=1e-4, atol=1e-5)


def test_nested_pipelines_and_passthrough_steps():
    est = fitted(Pipeline([("a", Pipeline([("s", StandardScaler()), ("skip", "passthrough")])),
                           ("m", MaxAbsScaler()), ("r", Ridge())]), classes=None, outputs=2)
    check_imported(from_sklearn(est), rows_or_empty(lambda x: est.predict(x).reshape(len(x), 2), 2), 10, rtol=1e-4)


@pytest.mark.parametrize("skip", ["passthrough", None])
def test_a_pipeline_that_starts_with_a_skipped_step(skip):
    """A Pipeline's n_features_in_ is its first step's: a leading "passthrough" (or None) has none,
    and from_sklearn failed with AttributeError: 'str' object has no attribute 'n_features_in_'."""
    est = fitted(Pipeline([("skip", skip), ("s", StandardScaler()), ("r", Ridge())]), classes=None, outputs=2)
    model = from_sklearn(est)
    assert model.input_check.sample_shape == (10,)
    check_imported(model, rows_or_empty(lambda x: est.predict(x).reshape(len(x), 2), 2), 10, rtol=1e-4)
    alone = fitted(Pipeline([("skip", skip), ("r", Ridge())]), classes=None, outputs=2)
    check_imported(from_sklearn(alone), rows_or_empty(lambda x: alone.predict(x).reshape(len(x), 2), 2), 10,
                   rtol=1e-4)


def test_the_width_it_was_fitted_on_is_checked():
    """A scaler's per-feature constants broadcast over one column as readily as over three: a pipeline
    fitted on 3 features gave numbers for (4, 1) inputs where scikit-learn refuses them."""
    est = fitted(make_pipeline(StandardScaler(), Ridge()), classes=None, width=3)
    model = from_sklearn(est)
    assert model.input_check.sample_shape == (3,) and tc.summary(model).parameters == 3 + 3 + 3 + 1
    narrow = np.ones((4, 1), np.float32)
    for call in (model, tc.compile(model)):
        with pytest.raises(ValueError, match=r"takes inputs of shape \(N, 3\)"):
            call(narrow)
    with pytest.raises(tc.CompileError, match="a Pipeline whose last step is not a model"):
        from_sklearn(fitted(Pipeline([("s", StandardScaler()), ("m", "passthrough")]), classes=None))


def test_unfitted_and_foreign_estimators_are_compile_errors():
    with pytest.raises(tc.CompileError, match="MLPClassifier is not fitted"):
        from_sklearn(MLPClassifier())
    with pytest.raises(tc.CompileError, match="LogisticRegression is not fitted"):
        from_sklearn(LogisticRegression())
    with pytest.raises(tc.CompileError, match="StandardScaler is not fitted"):
        from_sklearn(make_pipeline(StandardScaler(), Ridge()))
    with pytest.raises(tc.CompileError, match="estimator of type PoissonRegressor"):  # exp of a linear score
        from_sklearn(PoissonRegressor().fit(np.eye(4, 2), np.arange(4.0)))
    with pytest.raises(tc.CompileError, match="Pipeline step of type PCA"):
        from_sklearn(fitted(make_pipeline(PCA(3), Ridge()), classes=None))
    with pytest.raises(tc.CompileError, match="estimator of type str"):
        from_sklearn("model")


@pytest.mark.skipif("loss" not in inspect.signature(MLPRegressor).parameters,
                    reason="this scikit-learn's MLPRegressor has no loss parameter (newer releases add loss='poisson')")
def test_a_poisson_mlp_regressor_ends_in_exp():
    est = fitted(MLPRegressor(hidden_layer_sizes=(12,), loss="poisson", max_iter=30, random_state=4), classes=None)
    assert est.out_activation_ == "exp"
    check_imported(from_sklearn(est), rows_or_empty(lambda x: est.predict(x).reshape(len(x), 1), 1), 10, rtol=1e-4)


def test_a_dataframe_of_other_columns_is_refused_as_scikit_learn_refuses_it():
    """A model fitted on a DataFrame read any DataFrame by position: columns given c, b, a gave another
    model's numbers where scikit-learn raises."""
    pd = pytest.importorskip("pandas", reason="pandas is not installed")
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.standard_normal((40, 3)), columns=["a", "b", "c"])
    est = make_pipeline(StandardScaler(), Ridge()).fit(df, df.a * 3 - df.c)
    model = from_sklearn(est)
    fast = tc.compile(model)
    want = est.predict(df.head(4)).reshape(4, 1)
    for call in (model, fast):
        np.testing.assert_allclose(call(df.head(4)).data, want, rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="columns 'a', 'b', 'c' in that order .* columns are 'c', 'b', 'a'"):
            call(df[["c", "b", "a"]].head(4))
    with pytest.raises(ValueError):
        est.predict(df[["c", "b", "a"]])  # what scikit-learn does
    array = df.to_numpy(np.float32)[:4]  # an array has no names: read by position
    np.testing.assert_allclose(fast(array).data, want, rtol=1e-5, atol=1e-6)


class ClippedRidge(Ridge):
    def predict(self, X):
        return np.maximum(super().predict(X), 0.0)


def test_refusals_name_what_was_given():
    with pytest.raises(tc.CompileError, match="got the class MLPClassifier: fit an instance first"):
        from_sklearn(MLPClassifier)
    with pytest.raises(tc.CompileError, match="ClippedRidge, a subclass of Ridge: it may compute"):
        from_sklearn(fitted(ClippedRidge(), classes=None))
    huge = fitted(Ridge(), classes=None, width=3)
    huge.coef_ = huge.coef_ + 2e40  # as a fit on features near 1e-40 leaves it
    with pytest.raises(tc.CompileError, match=r"Ridge.coef_ holds 2e\+40, beyond float32's range"):
        from_sklearn(huge)
    with pytest.raises(tc.CompileError, match=r"StandardScaler.mean_ holds 5e\+39, beyond float32"):
        from_sklearn(make_pipeline(StandardScaler(), Ridge()).fit(np.array([[0.0], [1e40]]), np.arange(2.0)))
    odd = fitted(Ridge(), classes=None, width=3)
    odd.coef_ = np.ones(5)  # OrthogonalMatchingPursuit leaves such a coef_ for 1 feature and 3 targets
    with pytest.raises(tc.CompileError, match=r"coef_ has shape \(5,\), not \(targets, 3\)"):
        from_sklearn(odd)


def test_logistic_regression_cv_imports():
    """A guard: the importer takes its classes exactly now, and LogisticRegressionCV (a subclass of
    LogisticRegression, imported as one before) is listed by name."""
    # scikit-learn 1.9 warns that three defaults change in 1.10 / 1.11: the new ones given where the
    # estimator takes them (use_legacy_attributes=False is 1.10's fitted-attribute layout)
    future = {"l1_ratios": (0.0,), "scoring": "neg_log_loss", "use_legacy_attributes": False}
    taken = inspect.signature(LogisticRegressionCV).parameters
    est = fitted(LogisticRegressionCV(max_iter=200, cv=3, **{k: v for k, v in future.items() if k in taken}),
                 classes=3)
    check_imported(from_sklearn(est), rows_or_empty(est.predict_proba, 3), 10, scale=2.0)
