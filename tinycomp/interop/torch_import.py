"""`from_torch`: a `torch.nn.Module` of Linear, activations, Softmax, Dropout, LayerNorm, Flatten and
Identity layers -> a `tinycomp.nn` model. `nn.Sequential` maps layer by layer; any other module
with sub-modules is read through `torch.fx` (its forward's dataflow, residual adds included)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from .. import nn as tnn
from ..errors import CompileError
from ..frontend.layers import Dropout, Layer, reachable
from ..frontend.tensor import Tensor
from ..frontend.tracer import trace
from ..ir.shapes import fmt_shape
from .common import linear_from, pinned, require, unsupported
from .graph_layers import ChannelAffine, Clip, LeakyReLU, LogSoftmax, SiLU
from .graph_rules import BATCHES
from .torch_fx import TOP, from_fx
from .torch_trace import float_dtype, runnable

TOLERANCE = 1e-3  # _verify's bound on |imported - torch| over the output's scale: float32 rounding is ~1e-6
MODULES = ("Sequential", "Linear", "ReLU", "Sigmoid", "Tanh", "GELU", "Softmax", "Dropout", "LayerNorm", "Flatten",
           "Identity", "SiLU", "LeakyReLU", "ReLU6", "Hardtanh", "LogSoftmax", "BatchNorm1d/2d/3d (eval)",
           "a Module whose forward torch.fx can trace, calling these and tensor operations (see from_torch)")


def from_torch(module: Any, input_shape: tuple | None = None) -> Layer:
    """A `tinycomp.nn` model computing what `module` computes (eager output within float32 rounding).

    `module` is a `torch.nn.Module`: an `nn.Sequential` or a module tree of `Linear`, `ReLU`, `Sigmoid`,
    `Tanh`, `GELU` (exact and tanh forms, kept apart: `GELU(approximate="none")` compiles with
    tinycomp's erf kernel), `Softmax`, `Dropout`, `LayerNorm`, `Flatten`, `Identity`, `SiLU`,
    `LeakyReLU`, `ReLU6`, `Hardtanh`, `LogSoftmax`, `BatchNorm1d/2d/3d` in eval mode (a per-channel
    scale and shift from its running statistics). Any other
    module is read through `torch.fx`: its forward may call those, relu/sigmoid/tanh/gelu/softmax/
    flatten functions and add tensors; given `input_shape` (the batch first, as `None`: as
    `tinycomp.compile` takes it) it may also use parameters directly (`F.linear(x, self.w)`,
    `x @ self.w + self.b`), `F.layer_norm`, `F.dropout`, + - * / ** with numbers and parameters,
    products of computed tensors (attention), exp/log/sqrt/rsqrt/abs/neg/reciprocal, `view`/
    `reshape` with sizes read from `x.shape`, `transpose`/`permute`/`unsqueeze`/`squeeze` that keep
    the batch first, `mean`/`sum`/`amax` not over it, basic indexing, `split`/`chunk`/`unbind`/
    `narrow`/`select`, `torch.cat` and `torch.stack` along an axis after the batch, `masked_fill`/`torch.where`,
    comparisons and `~` of masks, `clamp` to fixed bounds, `torch.maximum`/`minimum` and
    `F.scaled_dot_product_attention` without dropout (`torch_fx`). Weights are copied (as float32,
    Linear's transposed to tinycomp's (in, out)); each layer takes the training
    flag of the module it comes from (a Dropout set to `eval()` in a training model stays off), so
    import a module in `eval()` mode for inference. Anything else raises
    `CompileError` naming the module's path and type. Needs PyTorch (`pip install -e '.[torch]'`).
    """
    torch = require("torch", "from_torch", "torch", "PyTorch")
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch expects a torch.nn.Module; got {type(module).__name__}")
    module = getattr(module, "_orig_mod", module)  # torch.compile's wrapper: the module it compiles
    sample = _sample_shape(input_shape)
    _refuse_hooks(torch, module)
    meta = [name for name, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
    if meta:
        raise CompileError(f"cannot import a module whose tensors are on the meta device (no values): {meta[0]!r}")
    with torch.no_grad():
        model = pinned(_convert(torch, module, "", sample), sample)  # its sizes were read at that shape
    if sample is not None:
        _verify(torch, module, model, sample)
    return model


def _refuse_hooks(torch: Any, module: Any) -> None:
    """Forward hooks change what a module computes outside its forward (weight_norm's pre-hook
    recomputes the weight): an import that reads the forward and the weights would miss them."""
    hooks = torch.nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        raise CompileError("cannot import while global forward hooks are registered "
                           "(torch.nn.modules.module.register_module_forward_hook): they change what modules compute")
    for name, sub in module.named_modules():
        if sub._forward_hooks or sub._forward_pre_hooks:
            raise unsupported("module", name or TOP, type(sub).__name__, MODULES,
                              "it has forward hooks (register_forward_hook, or weight_norm's pre-hook), which change "
                              "what it computes outside its forward")


def _verify(torch: Any, module: Any, model: Layer, sample: tuple[int, ...]) -> None:
    """Run the module and the imported model, each in eval mode (copies: the user's stay as they
    are), on the same random input: anything torch.fx does not record (a tensor changed in place
    through another name, say) shows as different values."""
    dtype = float_dtype(torch, module)
    shown = fmt_shape((BATCHES[0], *sample))
    imported = copy.deepcopy(model)
    imported.eval()
    try:
        x = torch.randn(BATCHES[0], *sample, generator=torch.Generator().manual_seed(1), dtype=dtype)
        given = x.float().numpy().copy()  # before the module runs: a forward may write into its input
        # leave torch's random stream where it was, and the user's module as it is
        with torch.no_grad(), torch.random.fork_rng(devices=[]), runnable(torch, module) as reference:
            want = reference.eval()(x)
        with np.errstate(all="ignore"):  # NaN or inf where the module's own forward makes them
            out = imported(given)  # a model that passes its input through returns the array it was given
            got = np.asarray(out.data if isinstance(out, Tensor) else out, np.float32)
    except Exception as exc:
        raise CompileError(f"the module and the model imported from it cannot both run on an input of shape "
                           f"{shown} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(want, torch.Tensor) or tuple(want.shape) != got.shape:
        raise CompileError(f"the model imported from {type(module).__name__} returns shape {got.shape} where the "
                           f"module returns {getattr(want, 'shape', type(want).__name__)}")
    want_np = want.double().numpy()
    finite = np.isfinite(want_np) & np.isfinite(got)
    scale = max(1.0, float(np.max(np.abs(want_np[finite])))) if finite.any() else 1.0
    err = float(np.max(np.abs(got[finite] - want_np[finite]))) if finite.any() else 0.0
    specials_match = np.array_equal(np.isnan(got), np.isnan(want_np)) and \
        np.array_equal(got[np.isinf(want_np)], want_np[np.isinf(want_np)])  # NaN where torch has NaN, same infinities
    bound = max(TOLERANCE, 16 * float(torch.finfo(dtype).eps))  # a bfloat16 module rounds at 2^-8
    if not (specials_match and err <= bound * scale):
        nan_only_in_torch = int((np.isnan(want_np) & ~np.isnan(got)).sum())
        why = (f"torch gives NaN at {nan_only_in_torch} places where the import gives numbers: "
               + ("a softmax of a row that is all -inf (every key masked) is NaN in torch and zeros in tinycomp"
                  if _has_softmax(model, sample) else "a NaN one of them makes and the other does not (a log or "
                  "square root of a value near 0, whose sign depends on the order of the sums?)")
               if nan_only_in_torch else
               "its forward may change a tensor in place in a way torch.fx does not record (a write into a "
               "view or through .data), or draw random numbers"
               + (" (an F.dropout(..., training=True) drops in eval mode too: pass training=self.training)"
                  if module.training and any(isinstance(layer, Dropout) for layer in reachable(model)) else ""))
        raise CompileError(f"the model imported from {type(module).__name__} computes other values than the module "
                           f"(max |difference| {err:.3g}, output scale {scale:.3g}, on a random input of shape "
                           f"{shown}, both in eval mode): {why}")


def _has_softmax(model: Layer, sample: tuple[int, ...]) -> bool:
    """Whether the imported model computes a softmax (where an all -inf row gives zeros, not NaN)."""
    ops = trace(model, (None, *sample)).op_counts()
    return "softmax" in ops or "attention" in ops


def _sample_shape(input_shape: tuple | None) -> tuple[int, ...] | None:
    if input_shape is None:
        return None
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()

    def size(d: Any) -> bool:
        return isinstance(d, int) and not isinstance(d, bool) and d > 0
    if not shape or not (shape[0] is None or size(shape[0])) or not all(size(d) for d in shape[1:]):
        raise ValueError(f"input_shape must be (None, *sizes) with positive int sizes after the batch; "
                         f"got {input_shape!r}")
    return shape[1:]


def _array(t: Any) -> np.ndarray:
    return np.array(t.detach().cpu().float().numpy(), np.float32)


def _convert(torch: Any, m: Any, path: str, sample: tuple[int, ...] | None = None) -> Layer:
    layer = _convert_module(torch, m, path, sample)
    layer.training = bool(m.training)  # as torch runs it: a sub-module may be in eval() inside a training one
    return layer


def _convert_module(torch: Any, m: Any, path: str, sample: tuple[int, ...] | None) -> Layer:
    nn = torch.nn
    if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward:  # a subclass's own forward: fx
        layers = []
        for name, child in m.named_children():
            layers.append(_convert(torch, child, f"{path}.{name}" if path else name, sample))
            sample = _output_sample(torch, child, sample)
        return tnn.Sequential(*layers)
    layer = _leaf(torch, m, path)
    if layer is not None:
        return layer
    if type(m).__module__.startswith("torch.nn"):  # a torch layer tinycomp has no rule for
        raise unsupported("module", path or TOP, type(m).__name__, MODULES)
    return from_fx(torch, m, path, lambda sub, sub_path: _convert(torch, sub, sub_path), sample)


def _output_sample(torch: Any, m: Any, sample: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """The shape after the batch of what `m` returns for inputs of `sample` (for the next layer of a
    Sequential: a module there read through torch.fx may need it)."""
    if sample is None:
        return None
    try:
        # leave torch's random stream where it was (dropout draws), and the user's module as it is
        with torch.random.fork_rng(devices=[]), runnable(torch, m) as run:
            return tuple(run(torch.zeros(2, *sample, dtype=float_dtype(torch, m))).shape[1:])
    except Exception as exc:
        raise CompileError(f"cannot import module of type {type(m).__name__}: it fails on an input of shape "
                           f"{fmt_shape((None, *sample))} ({type(exc).__name__}: {exc})") from exc


def _leaf(torch: Any, m: Any, path: str) -> Layer | None:
    nn = torch.nn
    if type(m) is nn.Linear:
        if not (m.in_features and m.out_features):
            raise unsupported("module", path or TOP, "Linear", MODULES,
                              f"{m.in_features} in, {m.out_features} out: a layer of no inputs or outputs")
        return linear_from(_array(m.weight).T, None if m.bias is None else _array(m.bias))
    simple = {nn.ReLU: tnn.ReLU, nn.Sigmoid: tnn.Sigmoid, nn.Tanh: tnn.Tanh, nn.Identity: tnn.Identity}
    if type(m) in simple:
        return simple[type(m)]()
    if type(m) is nn.GELU:
        return tnn.GELU(approximate="tanh" if m.approximate == "tanh" else "none")
    if type(m) is nn.Softmax:
        if m.dim is None:
            raise unsupported("module", path or TOP, "Softmax", MODULES,
                              "dim=None: give the axis, e.g. Softmax(dim=-1)")
        return tnn.Softmax(dim=int(m.dim))
    if type(m) is nn.Dropout:
        return tnn.Dropout(float(m.p))
    if type(m) is nn.Flatten:
        try:
            return tnn.Flatten(int(m.start_dim), int(m.end_dim))
        except ValueError as exc:  # start_dim=0: tinycomp keeps the batch dimension its own
            raise unsupported("module", path or TOP, "Flatten", MODULES, str(exc)) from exc
    if type(m) is nn.LayerNorm:
        return _layer_norm(m, path)
    if type(m) is nn.SiLU:
        return SiLU()
    if type(m) is nn.LeakyReLU:
        return LeakyReLU(float(m.negative_slope))
    if type(m) in (nn.ReLU6, nn.Hardtanh):
        return Clip(float(m.min_val), float(m.max_val))
    if type(m) is nn.LogSoftmax:
        if m.dim is None:
            raise unsupported("module", path or TOP, "LogSoftmax", MODULES, "dim=None: give the axis")
        return LogSoftmax(int(m.dim))
    if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        return _batch_norm(m, path)
    return None


def _batch_norm(m: Any, path: str) -> Layer:
    """A batch norm in eval mode with running statistics: a per-channel scale and shift."""
    if m.training or m.running_mean is None:
        raise unsupported("module", path or TOP, type(m).__name__, MODULES,
                          "in training mode, or without running statistics, it normalizes by the batch's own; "
                          "import the model in eval()")
    return ChannelAffine.from_statistics(_array(m.running_mean), _array(m.running_var), float(m.eps),
                                         None if m.weight is None else _array(m.weight),
                                         None if m.bias is None else _array(m.bias))


def _layer_norm(m: Any, path: str) -> Layer:
    shape = tuple(m.normalized_shape)
    if len(shape) != 1:
        raise unsupported("module", path or TOP, "LayerNorm", MODULES, f"normalized_shape {shape}: only the last axis")
    layer = tnn.LayerNorm(shape[0], eps=float(m.eps))
    if m.weight is not None:
        layer.gamma = tnn.Tensor(_array(m.weight))
    if m.bias is not None:
        layer.beta = tnn.Tensor(_array(m.bias))
    return layer
