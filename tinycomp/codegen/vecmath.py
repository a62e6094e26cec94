"""Vectorized float32 math on <W x float> values (placeholder: the vecmath helper replaces this)."""

from __future__ import annotations

from llvmlite import ir


def apply_activation(builder: ir.IRBuilder, module: ir.Module, name: str, x: ir.Value) -> ir.Value:
    """Apply activation `name` ('relu', 'sigmoid', 'tanh', 'gelu') lane-wise to vector `x`."""
    if name == "relu":
        zero = ir.Constant(x.type, None)
        # select(x < 0, 0, x) keeps NaN as NaN, like np.maximum(x, 0)
        return builder.select(builder.fcmp_ordered("<", x, zero), zero, x)
    raise NotImplementedError(f"vecmath has no rule for activation {name!r}")
