"""The torch operations `torch_fx` reads: what a traced node does (`canonical_name`), the activation
functions as layers (`function_layer`), and one handler per operation that needs its operands'
shapes (`SHAPED`: F.linear, view, transpose, mean, ...), each turning its node into a layer of the
imported graph or refusing it. `imp` is torch_fx's `FxImporter`."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import nn as tnn
from ..frontend.layers import Layer
from .common import linear_from
from .graph_layers import Attention, ChannelAffine, LeakyReLU, LogSoftmax, SiLU
from .graph_rules import (
    BATCH,
    BATCHES,
    axis_key,
    check_matmul,
    clipping,
    indexing,
    joining,
    permutation,
    reduction,
    reshape_sample,
    selection,
)


@dataclass(frozen=True)
class Data:
    """A value computed from the input: the name of its step in the imported graph."""

    name: str


@dataclass(frozen=True)
class Sized:
    """An int that changes with the batch size: its value at each of BATCHES."""

    values: tuple[int, int]


VARIES = object()  # a fixed-looking value that changes with the batch otherwise (a tensor of batch size)


# torch's names of the comparisons and of the logic of masks (`~m`, `a & b`: their values are the 0s
# and 1s comparisons give, so and/or/xor are minimum/maximum/not_equal), as tinycomp's ops
COMPARED = {"gt": "greater", "ge": "greater_equal", "lt": "less", "le": "less_equal", "eq": "equal",
            "ne": "not_equal", "greater": "greater", "greater_equal": "greater_equal", "less": "less",
            "less_equal": "less_equal", "not_equal": "not_equal", "logical_not": "logical_not",
            "bitwise_not": "logical_not", "logical_and": "minimum", "bitwise_and": "minimum",
            "logical_or": "maximum", "bitwise_or": "maximum", "logical_xor": "not_equal", "bitwise_xor": "not_equal"}


# `h += y` on a tensor is `h.add_(y)`: every other name of h sees the sum (on a Python number it
# rebinds h alone: `FxImporter.call` checks the operand)
AUGMENTED = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
             operator.itruediv: operator.truediv, operator.ipow: operator.pow}


def out_of_place(torch: Any, target: Any) -> tuple[Any, bool]:
    """(the op an in-place call does out of place, whether it was in place): `x.masked_fill_(...)` ->
    ("masked_fill", True), `F.hardtanh_` -> (F.hardtanh, True), `operator.iadd` -> (operator.add,
    True); any other target as it is."""
    if target in AUGMENTED:
        return AUGMENTED[target], True
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    if not isinstance(name, str) or not name.endswith("_") or name.endswith("__") or name.startswith("_"):
        return target, False
    if isinstance(target, str):
        return name[:-1], True
    base = getattr(torch.nn.functional, name[:-1], None) or getattr(torch, name[:-1], None)
    return (base, True) if base is not None else (target, False)


def canonical_name(torch: Any, node: Any) -> str:
    """What a call_function or call_method node does, as one name ("add", "view", "linear", ...); an
    in-place form as the op it does (`add_`: "add")."""
    target, _ = out_of_place(torch, node.target)
    if node.op == "call_method":
        return {"subtract": "sub", "multiply": "mul", "divide": "div", "true_divide": "div", "bmm": "matmul",
                "mm": "matmul", **COMPARED}.get(target, target)
    F = torch.nn.functional
    names = {
        operator.add: "add", torch.add: "add", operator.sub: "sub",  # += and its kin: `out_of_place`
        torch.sub: "sub", torch.subtract: "sub", operator.mul: "mul", torch.mul: "mul",
        torch.multiply: "mul", operator.truediv: "div", torch.div: "div",
        torch.true_divide: "div", torch.divide: "div", operator.matmul: "matmul", torch.matmul: "matmul",
        torch.bmm: "matmul", torch.mm: "matmul", operator.pow: "pow", torch.pow: "pow", operator.neg: "neg",
        torch.neg: "neg", torch.exp: "exp", torch.log: "log", torch.sqrt: "sqrt", torch.abs: "abs",
        torch.rsqrt: "rsqrt", torch.reciprocal: "reciprocal", F.linear: "linear", F.layer_norm: "layer_norm",
        F.batch_norm: "batch_norm", F.dropout: "dropout", torch.transpose: "transpose", torch.permute: "permute",
        torch.reshape: "reshape",
        torch.mean: "mean", torch.sum: "sum", torch.amax: "amax", torch.unsqueeze: "unsqueeze",
        torch.squeeze: "squeeze",
    }
    names |= {operator.gt: "greater", operator.ge: "greater_equal", operator.lt: "less", operator.le: "less_equal",
              operator.eq: "equal", operator.ne: "not_equal", operator.invert: "logical_not",
              operator.and_: "minimum", operator.or_: "maximum", operator.xor: "not_equal"}
    names |= {getattr(torch, name): COMPARED[name] for name in COMPARED if hasattr(torch, name)}
    try:
        return names.get(target, getattr(target, "__name__", str(target)))
    except TypeError:  # an unhashable target
        return str(node.target)


def function_layer(torch: Any, target: Any, extra: tuple, kwargs: dict) -> Layer | None:
    """The layer for an activation function or method on one tensor (`extra`: its other arguments,
    resolved), or None."""
    F = torch.nn.functional
    if target in (torch.relu, F.relu, "relu") and not extra:
        return tnn.ReLU()
    if target in (torch.sigmoid, F.sigmoid, "sigmoid") and not extra:
        return tnn.Sigmoid()
    if target in (torch.tanh, F.tanh, "tanh") and not extra:
        return tnn.Tanh()
    if target is F.gelu and not extra:
        return tnn.GELU(approximate="tanh" if kwargs.get("approximate") == "tanh" else "none")
    if target in (F.softmax, torch.softmax, "softmax", F.log_softmax, torch.log_softmax, "log_softmax"):
        dim = extra[0] if extra else kwargs.get("dim")
        if not isinstance(dim, int):
            return None
        return tnn.Softmax(dim=dim) if target in (F.softmax, torch.softmax, "softmax") else LogSoftmax(dim)
    if target in (F.silu, "silu") and not extra:
        return SiLU()
    if target in (F.leaky_relu, "leaky_relu") and len(extra) <= 1:
        slope = extra[0] if extra else kwargs.get("negative_slope", 0.01)
        return LeakyReLU(float(slope)) if isinstance(slope, (int, float)) else None
    if target in (torch.flatten, "flatten"):
        start = extra[0] if extra else kwargs.get("start_dim", 0)
        end = extra[1] if len(extra) > 1 else kwargs.get("end_dim", -1)
        return tnn.Flatten(int(start), int(end)) if isinstance(start, int) and start != 0 else None
    return None


def named(args: list, kwargs: dict, *names: str) -> dict:
    """A call's arguments after the tensor by name: the positional ones under `names`, then the keywords."""
    return dict(zip(names, args, strict=False)) | kwargs


def linear(imp: Any, node: Any, x: Data, args: list, kwargs: dict) -> None:
    given = named(args, kwargs, "weight", "bias")
    weight, bias = given.get("weight"), given.get("bias")
    if isinstance(weight, Data) or isinstance(bias, Data):
        raise imp.refuse(node, "a weight or bias computed from the input")
    imp.layer(node, linear_from(imp.constant(node, weight).T, None if bias is None else imp.constant(node, bias)), x)


def layer_norm(imp: Any, node: Any, x: Data, args: list, kwargs: dict) -> None:
    given = named(args, kwargs, "normalized_shape", "weight", "bias", "eps")
    shape = tuple(given.get("normalized_shape", ()))
    if len(shape) != 1:
        raise imp.refuse(node, f"normalized_shape {shape}: only the last axis")
    layer = tnn.LayerNorm(int(shape[0]), eps=float(given.get("eps", 1e-5)))
    if given.get("weight") is not None:
        layer.gamma = tnn.Tensor(imp.constant(node, given["weight"]))
    if given.get("bias") is not None:
        layer.beta = tnn.Tensor(imp.constant(node, given["bias"]))
    imp.layer(node, layer, x)


def batch_norm(imp: Any, node: Any, x: Data, args: list, kwargs: dict) -> None:
    given = named(args, kwargs, "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    if given.get("training", False) or given.get("running_mean") is None:
        raise imp.refuse(node, "training=True or no running statistics: it normalizes by the batch's own")
    mean, var = (imp.constant(node, given[k]) for k in ("running_mean", "running_var"))
    weight, bias = (None if given.get(k) is None else imp.constant(node, given[k]) for k in ("weight", "bias"))
    imp.layer(node, ChannelAffine.from_statistics(mean, var, float(given.get("eps", 1e-5)), weight, bias), x)


def dropout(imp: Any, node: Any, x: Data, args: list, kwargs: dict) -> None:
    """F.dropout(x, p, training): a Dropout whose flag is `training` as traced (the idiom passes
    self.training, so the layer then follows the model's train() and eval() as the module does)."""
    given = named(args, kwargs, "p", "training", "inplace")
    training = bool(given.get("training", True))  # F.dropout's own default
    if training and not imp.training:
        raise imp.refuse(node, "training=True in a module in eval mode (F.dropout's default): it drops at "
                               "inference too; pass training=self.training")
    layer = tnn.Dropout(float(given.get("p", 0.5)))
    layer.training = training
    imp.layer(node, layer, x)
    imp.in_place(node, bool(given.get("inplace", False)))


def reshape(imp: Any, node: Any, x: Data, args: list, kwargs: dict) -> None:
    sizes = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
    sizes = list(kwargs.get("shape", sizes))
    target: list[int | str] = []
    for d in sizes:
        if isinstance(d, Sized) and d.values == BATCHES:
            target.append(BATCH)
        elif isinstance(d, int) and d >= -1 and d != 0:  # torch has no 0 meaning "copy": a 0 is a size of 0
            target.append(d)
        else:
            shown = [s.values[0] if isinstance(s, Sized) else s for s in sizes]
            raise imp.refuse(node, f"sizes {shown} at batch size {BATCHES[0]}: the batch must be the first size, "
                                   "or -1 leaving each sample whole")
    imp.layer(node, tnn.Reshape(*imp.check(node, reshape_sample, target, imp.sample(node, x))), x)


def transpose(imp: Any, node: Any, x: Data, args: list, kwargs: dict) -> None:
    rank = len(imp.shape(node, x))
    if canonical_name(imp.torch, node) == "t":
        dims = [0, 1] if rank > 1 else [0, 0]
    else:
        dims = [int(d) % rank for d in (args or [kwargs.get("dim0"), kwargs.get("dim1")])]
    perm = list(range(rank))
    perm[dims[0]], perm[dims[1]] = perm[dims[1]], perm[dims[0]]
    imp.layer(node, imp.check(node, permutation, perm), x)


def transposed_view(imp: Any, node: Any, x: Data, args: list, kwargs: dict) -> None:
    """`x.mT` (and `x.mH`, the same of a real tensor): the last two dims swapped; `x.T` / `x.H`: all
    of them reversed (which moves the batch: refused as permute is)."""
    rank = len(imp.shape(node, x))
    if args[0] in ("mT", "mH"):
        transpose(imp, node, x, [-2, -1], {})
    elif args[0] in ("T", "H"):
        imp.layer(node, imp.check(node, permutation, list(range(rank))[::-1]), x)
    else:
        raise imp.refuse(node, f"it reads .{args[0]} of a computed tensor")


def permute(imp: Any, node: Any, x: Data, args: list, kwargs: dict) -> None:
    dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
    rank = len(imp.shape(node, x))
    imp.layer(node, imp.check(node, permutation, [int(d) % rank for d in kwargs.get("dims", dims)]), x)


def squeeze_or_unsqueeze(imp: Any, node: Any, x: Data, args: list, kwargs: dict) -> None:
    dim = args[0] if args else kwargs.get("dim")
    rank = len(imp.shape(node, x)) + (canonical_name(imp.torch, node) == "unsqueeze")
    if not isinstance(dim, int) or dim % rank == 0:
        raise imp.refuse(node, f"dim {dim}: one dimension other than the batch (0) must be given")
    assert imp.runs is not None  # shape() above needs them
    imp.layer(node, tnn.Reshape(*imp.runs[0][node.name].shape[1:]), x)


def reduce(kind: str) -> Callable[[Any, Any, Data, list, dict], None]:
    def handler(imp: Any, node: Any, x: Data, args: list, kwargs: dict) -> None:
        given = named(args, kwargs, "dim", "keepdim")
        dim = given.get("dim", given.get("axis"))  # torch takes NumPy's axis= too
        axes = None if dim is None else [dim] if isinstance(dim, int) else list(dim)
        rank = len(imp.shape(node, x))
        imp.layer(node, imp.check(node, reduction, kind, axes, bool(given.get("keepdim", False)), rank), x)
    return handler


def select(imp: Any, node: Any, name: str, args: list, kwargs: dict) -> None:
    """torch.where(condition, input, other) and input.masked_fill(mask, value): a `Where` holding the
    fixed operands (a mask made from a buffer, -inf) and taking the computed ones."""
    if name == "masked_fill":
        given = named(args, kwargs, "input", "mask", "value")
        operands = [given.get("mask"), given.get("value"), given.get("input")]
    else:
        given = named(args, kwargs, "condition", "input", "other")
        operands = [given.get("condition"), given.get("input"), given.get("other")]
    if any(v is None for v in operands):
        raise imp.refuse(node, f"{name} needs all three operands (the one-argument torch.where returns indices)")
    data = [v for v in operands if isinstance(v, Data)]
    fixed = [None if isinstance(v, Data) else imp.constant(node, v) for v in operands]
    ranks = [len(imp.shape(node, d)) for d in data]
    imp.layer(node, imp.check(node, selection, fixed, ranks), *data)


CLAMPS = {"clamp": ("min", "max"), "clip": ("min", "max"), "clamp_min": ("min",), "clamp_max": ("max",),
          "hardtanh": ("min_val", "max_val", "inplace"), "relu6": ("inplace",)}


def clamp(imp: Any, node: Any, x: Data, args: list, kwargs: dict) -> None:
    """clamp/clip/clamp_min/clamp_max, F.hardtanh and F.relu6: a `Clip` to fixed bounds."""
    name = canonical_name(imp.torch, node)
    names = CLAMPS[name]
    given = named(args, kwargs, *names)
    bounds: list[Any]
    if name == "relu6":
        bounds = [0.0, 6.0]
    elif name == "hardtanh":
        bounds = [given.get("min_val", -1.0), given.get("max_val", 1.0)]
    else:
        bounds = [given.get("min"), given.get("max")]
    if any(isinstance(b, Data) for b in bounds):
        raise imp.refuse(node, "a bound computed from the input; tinycomp clamps to fixed bounds (torch.maximum and "
                               "torch.minimum take two computed tensors)")
    low, high = (None if b is None else imp.constant(node, b) for b in bounds)
    tensors = any(b is not None and b.ndim > 0 for b in (low, high))
    rank = len(imp.shape(node, x)) if tensors else 1  # a number fits data of any rank; a tensor needs it
    imp.layer(node, imp.check(node, clipping, low, high, rank), x)
    imp.in_place(node, bool(given.get("inplace", False)))


def index_key(imp: Any, node: Any, key: Any) -> tuple:
    """A getitem key (of data, or of the parts of a split) as a tuple, refused where it reads the batch
    size or is a computed tensor (advanced indexing)."""
    parts = key if isinstance(key, tuple) else (key,)
    for k in parts:
        bounds = (k.start, k.stop, k.step) if isinstance(k, slice) else (k,)
        if any(isinstance(b, Sized) or b is VARIES for b in bounds):
            raise imp.refuse(node, "an index computed from the batch size")
        if any(isinstance(b, Data) for b in bounds):
            raise imp.refuse(node, "an index that is a computed tensor (advanced indexing)")
    return tuple(parts)


def getitem(imp: Any, node: Any, x: Data, args: list, kwargs: dict) -> None:
    """x[key] for a basic index: an `Index`."""
    index_layer(imp, node, x, args[0])


def index_layer(imp: Any, node: Any, x: Data, key: Any) -> None:
    """The `Index` of x[key] as node's value, refused where compiled code cannot take the key."""
    imp.layer(node, imp.check(node, indexing, index_key(imp, node, key), (None, *imp.sample(node, x))), x)


def narrow_or_select(imp: Any, node: Any, x: Data, args: list, kwargs: dict) -> None:
    """x.narrow(dim, start, length) and x.select(dim, index): one part of one axis."""
    rank = len(imp.shape(node, x))
    if canonical_name(imp.torch, node) == "narrow":
        given = named(args, kwargs, "dim", "start", "length")
        start, stop = given["start"], given["start"] + given["length"]
        part: slice | int = slice(start, None if start < 0 <= stop else stop)  # narrow(1, -2, 2): the last two
    else:
        given = named(args, kwargs, "dim", "index")
        part = given["index"]
    index_layer(imp, node, x, axis_key(rank, given["dim"], part))


def pieces(imp: Any, node: Any, x: Data, args: list, kwargs: dict) -> None:
    """split, chunk, unbind: the parts along one axis, each an `Index` of its own (the parts' sizes
    from the example run), recorded as a tuple that later getitem nodes pick from."""
    name = canonical_name(imp.torch, node)
    given = named(args, kwargs, *(("dim",) if name == "unbind" else ("split_size_or_sections", "dim")))
    dim = given.get("dim", 0)
    shape = imp.shape(node, x)
    if not isinstance(dim, int) or dim % len(shape) == 0:
        raise imp.refuse(node, f"dim {dim}: the parts must be taken along an axis after the batch")
    parts, start, made = imp.runs[0][node.name], 0, []
    for i, part in enumerate(parts):
        size = int(part.shape[dim]) if name != "unbind" else 1
        cut: slice | int = start if name == "unbind" else slice(start, start + size)
        key = axis_key(len(shape), dim, cut)
        step = Data(f"{node.name}.{i}")  # fx names nodes as identifiers: no clash
        for run in imp.runs:  # the part's example values, for the shapes later nodes ask for
            run[step.name] = run[node.name][i]
        imp.layer(node, imp.check(node, indexing, key, (None, *shape[1:])), x, output=step)
        made.append(step)
        start += size
    imp.values[node.name] = tuple(made)


def cat(imp: Any, node: Any, name: str, args: list, kwargs: dict) -> None:
    """torch.cat / concat / concatenate (and torch.stack: along a new dim) of computed tensors along a
    dim after the batch."""
    given = named(args, kwargs, "tensors", "dim")
    tensors, dim = list(given.get("tensors", [])), given.get("dim", given.get("axis", 0))
    if not tensors or not all(isinstance(t, Data) for t in tensors):
        raise imp.refuse(node, "a tensor among them not computed from the input: it has no batch axis to join along")
    if not isinstance(dim, int):
        raise imp.refuse(node, f"dim {dim!r}: an int was expected")
    ranks = [len(imp.shape(node, t)) for t in tensors]
    imp.layer(node, imp.check(node, joining, dim, ranks, name == "stack"), *tensors)


def attention(imp: Any, node: Any, name: str, args: list, kwargs: dict) -> None:
    """F.scaled_dot_product_attention of computed q, k and v: an `Attention` layer (the fused kernel's
    ops); its mask a constant or computed, bool (selects) or float (added); no dropout at inference."""
    given = named(args, kwargs, "query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    q, k, v, mask = (given.get(n) for n in ("query", "key", "value", "attn_mask"))
    if not all(isinstance(t, Data) for t in (q, k, v)):
        raise imp.refuse(node, "q, k and v must be computed from the input")
    if given.get("dropout_p", 0.0) or given.get("enable_gqa", False):
        raise imp.refuse(node, "dropout_p > 0 (it drops at inference too: pass dropout_p=p if self.training else 0) "
                               "or enable_gqa=True")
    if given.get("is_causal", False) and mask is not None:
        raise imp.refuse(node, "is_causal=True with an attn_mask (torch refuses it too)")
    ranks = [len(imp.shape(node, t)) for t in (q, k, v)]
    imp.check(node, check_matmul, ranks[0], ranks[1])
    imp.check(node, check_matmul, ranks[0], ranks[2])
    example = mask if not isinstance(mask, Data) else imp.runs[0][mask.name]
    selects = example is None or example.dtype == imp.torch.bool
    layer = Attention(given.get("scale"), bool(given.get("is_causal", False)),
                      None if mask is None or isinstance(mask, Data) else imp.constant(node, mask), selects,
                      mask_given=isinstance(mask, Data))
    imp.layer(node, layer, q, k, v, *([mask] if isinstance(mask, Data) else []))


PIECES = {"split": pieces, "chunk": pieces, "unbind": pieces}


SHAPED: dict[str, Callable[[Any, Any, Data, list, dict], None]] = {
    "linear": linear, "layer_norm": layer_norm, "batch_norm": batch_norm, "dropout": dropout, "view": reshape,
    "reshape": reshape, "transpose": transpose, "t": transpose, "permute": permute, "getattr": transposed_view,
    "unsqueeze": squeeze_or_unsqueeze, "squeeze": squeeze_or_unsqueeze, "mean": reduce("mean"), "sum": reduce("sum"),
    "amax": reduce("max"), **dict.fromkeys(CLAMPS, clamp), "getitem": getitem, "narrow": narrow_or_select,
    "select": narrow_or_select,
}
