"""Derive EXP_TABLE_POLY of tinycomp's vector exp in its table form (`tinycomp/codegen/vecmath.py`):

    python benchmarks/fit_exp_table.py     # prints EXP_TABLE_POLY, highest degree first

exp(r) - 1 = r + r^2 (c2 + c3 r) on |r| <= ln2 / 32 (a hair wider for the rounding of 16 x / ln2),
fitted by Lawson's iteration (`fit_erf.lawson`) for the least maximum error relative to exp(r),
which is the error the kernel's y = T[j] exp(r) inherits. Prints that error in ulp of 1, with the
coefficients in float64 and rounded to float32 as the kernel holds them.
"""

from __future__ import annotations

import math

import numpy as np
from fit_erf import lawson

from tinycomp.codegen.vecmath import EXP_TABLE_BITS

ULP_OF_ONE = 2.0**-24


def main() -> None:
    edge = math.log(2) / 2 ** (EXP_TABLE_BITS + 1) * 1.0005
    r = np.linspace(-edge, edge, 40_001)
    r = r[r != 0]
    weight = r * r / np.exp(r)  # (exp(r) - 1 - r) = r^2 (c2 + c3 r): errors of the bracket weigh r^2 / exp(r)
    values = (np.expm1(r) - r) / (r * r)
    coeffs, err = lawson(r, values, 1, iterations=200, weight=weight)
    c32 = coeffs.astype(np.float32).astype(np.float64)
    err32 = float(np.abs(weight * (np.polynomial.polynomial.polyval(r, c32) - values)).max())
    print(f"# max error relative to exp(r): {err / ULP_OF_ONE:.4f} ulp of 1 (float32 coefficients: "
          f"{err32 / ULP_OF_ONE:.4f})")
    print(f"EXP_TABLE_POLY = {tuple(float(c) for c in c32[::-1])}")


if __name__ == "__main__":
    main()
