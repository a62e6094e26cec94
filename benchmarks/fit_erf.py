"""Derive the coefficients of tinycomp's vector erf (`tinycomp/codegen/vecerf.py`): minimax fits by
Lawson's iteratively reweighted least squares against `math.erf` / `math.erfc` (float64).

    python benchmarks/fit_erf.py     # prints ERF_POLY and ERFC_POLY, highest degree first

- ERF_POLY  P(s), s = x^2:  erf(x) = x + x * P(x^2) for |x| < ERF_SMALL (degree 6).
- ERFC_POLY Q(u), u = tau - ERFC_TAU_MID, tau = 1 / (1 + a/2):
            erfc(a) = tau * exp(-a^2 + Q(u)) for a in [ERFC_FROM, ERFC_MAX] (degree 9).
Q's error is erfc's relative error (below 2e-9 here); the kernel's error is float32 rounding.
"""

from __future__ import annotations

import math

import numpy as np

from tinycomp.codegen.vecerf import ERF_SMALL, ERFC_FROM, ERFC_MAX, ERFC_TAU_MID


def lawson(points: np.ndarray, values: np.ndarray, degree: int, iterations: int = 80,
           weight: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Coefficients (lowest degree first) of a near-minimax polynomial fit, and its max error
    (of weight * (P - values) when a weight is given)."""
    basis = np.vander(points, degree + 1, increasing=True)
    if weight is not None:
        basis, values = basis * weight[:, None], values * weight
    weights = np.full(points.size, 1.0 / points.size)
    for _ in range(iterations):
        root = np.sqrt(weights)
        coeffs, *_ = np.linalg.lstsq(basis * root[:, None], values * root, rcond=None)
        err = np.abs(basis @ coeffs - values)
        weights *= err / err.max() + 1e-3
        weights /= weights.sum()
    return coeffs, float(err.max())


def main() -> None:
    erf, erfc = np.frompyfunc(math.erf, 1, 1), np.frompyfunc(math.erfc, 1, 1)
    x = np.linspace(1e-6, ERF_SMALL, 20_000)
    p, p_err = lawson(x * x, erf(x).astype(float) / x - 1, 6)
    tau = np.linspace(1 / (1 + ERFC_MAX / 2), 1 / (1 + ERFC_FROM / 2), 20_000)
    a = (1 / tau - 1) * 2
    q, q_err = lawson(tau - ERFC_TAU_MID, np.log(erfc(a).astype(float) * np.exp(a * a) / tau), 9)
    as_f32 = lambda c: tuple(float(np.float32(v)) for v in c[::-1])  # noqa: E731
    print(f"# P max error {p_err:.2e} (relative to erf), Q max error {q_err:.2e} (relative to erfc)")
    print(f"ERF_POLY = {as_f32(p)}")
    print(f"ERFC_POLY = {as_f32(q)}")


if __name__ == "__main__":
    main()
