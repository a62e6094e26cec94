"""A real data set end to end: scikit-learn's handwritten digits (8x8 images, shipped with
scikit-learn), an MLPClassifier trained on them, imported into tinycomp, compiled, and checked.

    pip install -e '.[sklearn]' && python examples/digits.py

Prints the test accuracy, shows that the compiled model predicts the very same classes with
probabilities equal to predict_proba's within float32 rounding, and times both on the test set
and on one image.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits  # a scikit-learn dependency

import tinycomp as tc
from tinycomp.interop import from_sklearn


def median_us(fn, x, budget_s: float = 0.3) -> float:
    fn(x)
    times = []
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e6


def main() -> int:
    x, y = load_digits(return_X_y=True)
    x = x / 16.0  # pixel values 0..16 -> 0..1
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=300, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, y_train)
    print(f"digits: {len(x_train)} training and {len(x_test)} test images of {x.shape[1]} pixels, 10 classes")
    print(f"scikit-learn MLPClassifier{clf.hidden_layer_sizes}: test accuracy {clf.score(x_test, y_test):.4f}")

    model = from_sklearn(clf)
    print(f"imported: {model!r}")
    fast = tc.compile(model, input_shape=(None, x.shape[1]))
    print(f"compiled in {fast.stats.compile_ms:.1f} ms")

    x32 = x_test.astype(np.float32)
    ours = fast(x32).data
    theirs = clf.predict_proba(x_test)
    same = np.array_equal(clf.classes_[ours.argmax(axis=1)], clf.predict(x_test))
    diff = float(np.abs(ours - theirs).max())
    accuracy = float(np.mean(clf.classes_[ours.argmax(axis=1)] == y_test))
    print(f"compiled test accuracy {accuracy:.4f}; same classes as predict: {same}; "
          f"max |probability difference| {diff:.2e}")

    print("median times, BLAS pinned to 1 thread (scikit-learn computes in float64, tinycomp in float32):")
    print(f"{'batch':>6} {'predict_proba us':>17} {'compiled us':>12} {'speed-up':>9}")
    with threadpool_limits(1):
        for rows in (len(x_test), 1):
            xs, xs32 = x_test[:rows], x32[:rows]
            t_sk = median_us(clf.predict_proba, xs)
            t_tc = median_us(fast, xs32)
            print(f"{rows:>6} {t_sk:>17.1f} {t_tc:>12.1f} {t_sk / t_tc:>8.1f}x")
    return 0 if same and diff < 1e-5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
