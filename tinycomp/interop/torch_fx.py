"""`from_torch` for modules other than `nn.Sequential`: their forward read through `torch.fx`.

Sub-module calls, the activation functions and the adding of two tensors need nothing but the graph.
Anything else a forward writes with tensors — parameters used directly (`F.linear(x, self.w)`, `x @
self.w`), arithmetic with numbers and parameters, `view`/`reshape` with sizes read from `x.shape`,
`transpose`/`permute`, products of two computed tensors (attention), `mean`/`sum`, indexing and
splits, `torch.cat`, `masked_fill` with a buffer's mask (traced as get_attr nodes, so `self.mask[:T,
:T]` is recorded) — needs each value's shape and the sizes the forward computes. With `input_shape`
given, the traced graph runs on random inputs at two batch sizes (`BATCHES`, as `onnx_fold` runs
ONNX size arithmetic): a node whose result is a tensor and reads the input is data; any other node
is fixed (a parameter, `self.w.t()`, `e // heads`) where both runs agree, a size where they differ
by the batch (`x.size(0)`: the batch; a number computed from it stays the batch's even where the
runs agree, as `x.size(0) % 4` does), and refused where it is read otherwise.
"""

from __future__ import annotations

import inspect
import math
import operator
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import nn as tnn
from ..errors import CompileError
from ..frontend.layers import Layer
from ..ir.shapes import fmt_shape
from . import graph_layers
from .common import NodeImporter, Step, chain_or_graph, layer_key, unsupported
from .graph_layers import ConstantOperand
from .graph_rules import check_matmul, check_ranks, with_constant
from .torch_ops import (
    AUGMENTED,
    PIECES,
    SHAPED,
    VARIES,
    Data,
    Sized,
    attention,
    canonical_name,
    cat,
    function_layer,
    index_key,
    out_of_place,
    select,
)
from .torch_trace import example_runs, symbolic_trace

TOP = "(the top module)"  # how errors name the module passed in, which has no path
NODES = ("calls of supported modules", "relu/sigmoid/tanh/gelu/softmax/log_softmax/silu/leaky_relu/flatten",
         "+ - * / ** @ with tensors, numbers and parameters", "F.linear", "F.layer_norm", "F.batch_norm (eval)",
         "F.dropout", "exp/log/sqrt/rsqrt/abs/neg/reciprocal", "torch.maximum/minimum",
         "clamp/clip/F.relu6/F.hardtanh to fixed bounds", "torch.where/masked_fill", "comparisons and ~ of masks",
         "indexing with ints, slices, ... and None", "split/chunk/unbind/narrow/select along a sample axis",
         "torch.cat/stack of computed tensors", "F.scaled_dot_product_attention (no dropout)",
         "view/reshape/transpose/permute/.mT/unsqueeze/squeeze/contiguous that keep the batch first",
         "mean/sum/amax not over the batch", "sizes read from x.shape / x.size()")
BINARY, UNARY = tuple(graph_layers.BINARY), tuple(graph_layers.UNARY)  # the steps GraphModel runs
ALIASES = ("contiguous", "clone", "detach", "float")  # no change to a float32 value
PASS_SHAPE = "pass the input's shape, from_torch(module, input_shape=(None, ...))"


class FxImporter(NodeImporter):
    """Turns the nodes of a traced forward, in order, into layers and steps (`GraphModel`)."""

    def __init__(self, torch: Any, gm: Any, where: str, convert: Callable[[Any, str], Layer],
                 runs: tuple[dict[str, Any], dict[str, Any]] | None, training: bool):
        self.torch, self.gm, self.where, self.convert, self.runs = torch, gm, where, convert, runs
        self.training = training
        self.values: dict[str, Any] = {}  # node name -> Data, a fixed value, a Sized or VARIES
        self.layers: dict[str, Layer] = {}
        self.steps: list[Step] = []
        self.same_tensor: dict[str, set[str]] = {}  # node -> the nodes that are one tensor (in-place results)

    def refuse(self, node: Any, detail: str = "") -> CompileError:
        target = getattr(node.target, "__name__", str(node.target))
        return unsupported("node", f"{self.where}: node {node.name}", f"{node.op} {target}", NODES, detail)

    def resolve(self, arg: Any) -> Any:
        if isinstance(arg, self.torch.fx.Node):
            return self.values[arg.name]
        if isinstance(arg, (tuple, list)):
            return type(arg)(self.resolve(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self.resolve(v) for k, v in arg.items()}
        if isinstance(arg, slice):  # x[:, :n] with n read from x.size()
            return slice(self.resolve(arg.start), self.resolve(arg.stop), self.resolve(arg.step))
        return arg

    def shape(self, node: Any, value: Data) -> tuple[int, ...]:
        """The shape of a data value at the first of BATCHES (the batch first)."""
        if self.runs is None:
            raise self.refuse(node, f"its operands' shapes are needed: {PASS_SHAPE}")
        return tuple(self.runs[0][value.name].shape)

    def sample(self, node: Any, value: Data) -> list[int]:
        return list(self.shape(node, value)[1:])

    def layer(self, node: Any, layer: Layer, *sources: Data, output: Data | None = None) -> None:
        """`layer` makes node's value (or `output`, one of several it has) from `sources`."""
        made = output or Data(node.name)
        key = layer_key(made.name, self.layers)
        self.layers[key] = layer
        self.steps.append(Step(made.name, tuple(s.name for s in sources), layer=key))
        if output is None:
            self.values[node.name] = made

    def step(self, node: Any, op: str, *sources: Data) -> None:
        self.steps.append(Step(node.name, tuple(s.name for s in sources), op=op))
        self.values[node.name] = Data(node.name)

    def constant(self, node: Any, value: Any) -> np.ndarray:
        """A fixed operand as a float32 array, or a refusal saying what it is instead."""
        if isinstance(value, Sized) or value is VARIES:
            raise self.refuse(node, "an operand changes with the batch size (a size read from the input used as "
                                    "a number, or a tensor made from one) or between runs (random numbers)")
        if isinstance(value, self.torch.Tensor):
            value = value.detach().cpu().double().numpy()
        if isinstance(value, bool) or not isinstance(value, (int, float, np.ndarray, np.number)):
            raise self.refuse(node, f"an operand of type {type(value).__name__}; a number or a tensor was expected")
        return np.asarray(value, np.float32)

    # ------------------------------------------------------------------ nodes
    def add(self, node: Any) -> None:
        if node.op == "placeholder":  # the input; or an argument traced at its default (fx's concrete_args)
            self.values[node.name] = node.args[0] if node.args else Data(node.name)
        elif node.op == "get_attr":
            self.values[node.name] = operator.attrgetter(node.target)(self.gm)  # a parameter or buffer
        elif node.op == "call_module":
            self.call_module(node)
        else:
            operands = [a for a in flatten_args((node.args, node.kwargs)) if isinstance(a, self.torch.fx.Node)]
            reads_data = any(isinstance(v, Data) for a in operands for v in flatten_args(self.values[a.name]))
            name = canonical_name(self.torch, node)
            if self.runs is None and reads_data and name in ("getattr", "size", "dim", "numel"):
                raise self.refuse(node, f"it reads the input's sizes: {PASS_SHAPE}")
            args = self.resolve(node.args)
            pieces = args[0] if args else None
            if name == "getitem" and isinstance(pieces, tuple) and reads_data:  # q, k, v = x.split(e, -1)
                self.values[node.name] = self.pick(node, pieces, args[1])
                return
            result = None if self.runs is None else self.runs[0][node.name]
            if reads_data and name in PIECES and isinstance(pieces, Data):
                PIECES[name](self, node, pieces, list(args[1:]), self.resolve(node.kwargs))
                return
            if reads_data and isinstance(result, (tuple, list)) and \
                    any(isinstance(r, self.torch.Tensor) for r in flatten_args(result)):
                raise self.refuse(node, "it returns several tensors (as max with a dim, sort or topk do; "
                                        "of split, chunk and unbind the parts are read)")
            if not reads_data or (self.runs is not None and not isinstance(result, self.torch.Tensor)):
                self.values[node.name] = self.fixed(node)  # a size, or arithmetic on parameters and numbers
            else:
                self.call(node, name)

    def pick(self, node: Any, parts: tuple, key: Any) -> Any:
        """parts[key] for the parts of a split: an int or a slice (read from sizes that are not the batch)."""
        index_key(self, node, key)
        try:
            return parts[key]
        except (TypeError, IndexError) as exc:
            raise self.refuse(node, f"it picks parts [{key!r}] of {len(parts)} ({exc})") from None

    def fixed(self, node: Any) -> Any:
        """A node that computes no data: a size of a data value where the runs differ by the batch; a
        value computed from such a size stays one (batch % 4 is 1 at 97 and 101 alike, not a
        number: `Sized`), except what only picks elements out of a tuple of sizes; anything else is
        its value where both runs agree (or as the graph alone gives it)."""
        args, kwargs = self.resolve(node.args), self.resolve(node.kwargs)
        operands = flatten_args((args, kwargs))
        if self.runs is not None and any(isinstance(a, Sized) or a is VARIES for a in operands):
            if node.target is operator.getitem and isinstance(args[0], (tuple, list)) or \
                    node.target is operator.add and all(isinstance(a, (tuple, list)) for a in args):
                return node.target(*args)  # x.shape[1], x.size()[:-1] + (h, d): the sizes picked
            return tainted_value(self.torch, self.runs[0][node.name], self.runs[1][node.name])
        if self.runs is not None:
            return fixed_value(self.torch, self.runs[0][node.name], self.runs[1][node.name])
        if any(isinstance(a, (Data, Sized)) or a is VARIES for a in operands):
            raise self.refuse(node, f"it reads the input's sizes: {PASS_SHAPE}")
        with self.torch.no_grad():
            if node.op == "call_method":
                return getattr(args[0], node.target)(*args[1:], **kwargs)
            return node.target(*args, **kwargs)

    def call_module(self, node: Any) -> None:
        arguments = (*node.args, *node.kwargs.values())  # self.fc(x) or self.fc(input=x)
        path = f"{self.where}.{node.target}" if self.where != TOP else str(node.target)
        sub = self.gm.get_submodule(node.target)
        layer = self.convert(sub, path)  # first: a module tinycomp has no rule for is refused as that
        if len(arguments) != 1 or not isinstance(self.resolve(arguments[0]), Data):
            raise self.refuse(node, f"called with {len(arguments)} arguments; a layer takes one computed tensor")
        self.layer(node, layer, self.resolve(arguments[0]))
        self.in_place(node, bool(getattr(sub, "inplace", False)))

    def in_place(self, node: Any, inplace: bool) -> None:
        """After an op that wrote its result into its operand (inplace=True), the operand's later
        readers see the result, as in torch: under every name of that tensor, as in-place ops return
        their operand (`e.mul_(2).add_(1)` writes e through the node mul_ returned). The operand: the
        first argument, given by position or by name (input=...)."""
        source = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
        if inplace and isinstance(source, self.torch.fx.Node):
            for name in self.join(node.name, source.name):
                self.values[name] = self.values[node.name]

    def join(self, a: str, b: str) -> set[str]:
        """Record that nodes a and b are one tensor (with every node either already was); the names."""
        names = self.same_tensor.get(a, {a}) | self.same_tensor.get(b, {b})
        for name in names:
            self.same_tensor[name] = names
        return names

    def call(self, node: Any, name: str) -> None:
        """The layer or step for a call on data; an in-place form (`masked_fill_`, `F.hardtanh_`) as the
        op it does, its result then read where the operand was."""
        target, inplace = out_of_place(self.torch, node.target)
        self.call_out_of_place(node, name, target)
        if inplace and (node.target not in AUGMENTED or self.is_tensor(node.args[0])):
            self.in_place(node, True)

    def is_tensor(self, arg: Any) -> bool:
        """Is a node's argument a tensor (computed, a parameter or a buffer), not a Python number?"""
        value = self.resolve(arg)
        return isinstance(value, Data) or self.torch.is_tensor(value)

    def call_out_of_place(self, node: Any, name: str, target: Any) -> None:
        args, kwargs = self.resolve(node.args), self.resolve(node.kwargs)
        x = args[0] if args else kwargs.get("input")
        if name in ("softmax", "log_softmax") and (args[1] if len(args) > 1 else kwargs.get("dim")) is None:
            raise self.refuse(node, f"dim=None: give the axis, e.g. {name}(x, dim=-1); torch picks one from the "
                                    "input's rank, with a deprecation warning")
        activation = function_layer(self.torch, target, args[1:], kwargs)
        if activation is not None and isinstance(x, Data):
            activation.training = self.training
            if isinstance(activation, tnn.Flatten) and self.runs is not None and \
                    activation.start_dim % len(self.shape(node, x)) == 0:
                raise self.refuse(node, f"start_dim {activation.start_dim} on a {len(self.shape(node, x))}-D value "
                                        "is the batch")
            self.layer(node, activation, x)
            self.in_place(node, kwargs.get("inplace", False))
        elif name in BINARY and len(args) == 2 and not kwargs:
            self.binary(node, name, *args)
        elif name in ("max", "min") and len(args) == 2 and not kwargs and not isinstance(args[1], int):
            self.binary(node, {"max": "maximum", "min": "minimum"}[name], *args)  # torch.max(a, b): elementwise
        elif name in UNARY and len(args) == 1 and not kwargs:
            self.step(node, name, x)
        elif name in ("rsqrt", "reciprocal") and len(args) == 1 and not kwargs:
            if name == "rsqrt":
                self.steps.append(Step(f"{node.name}_sqrt", (x.name,), op="sqrt"))
                x = Data(f"{node.name}_sqrt")
            self.layer(node, ConstantOperand("div", 1.0, constant_first=True), x)
        elif name in ALIASES and len(args) == 1 and not kwargs:
            self.values[node.name] = x
            if name != "clone":  # detach, contiguous, float: the same tensor, so in-place writes show in both
                self.join(node.name, node.args[0].name)
        elif name in SHAPED and isinstance(x, Data):
            SHAPED[name](self, node, x, list(args[1:]), kwargs)
        elif name in ("where", "masked_fill"):
            select(self, node, name, list(args), kwargs)
        elif name in ("cat", "concat", "concatenate", "stack"):
            cat(self, node, name, list(args), kwargs)
        elif name == "scaled_dot_product_attention":
            attention(self, node, name, list(args), kwargs)
        else:
            known = name in (*BINARY, *UNARY, *ALIASES, *SHAPED, "rsqrt", "reciprocal")
            raise self.refuse(node, f"with keyword arguments {', '.join(kwargs)}" if kwargs and known else "")

    def binary(self, node: Any, op: str, a: Any, b: Any) -> None:
        if isinstance(a, Data) and isinstance(b, Data):
            if op == "pow":
                raise self.refuse(node, "the exponent is computed data; tinycomp raises to constant powers only")
            if self.runs is not None:  # without shapes, as before: the graph's own adds of two values
                ranks = (len(self.shape(node, a)), len(self.shape(node, b)))
                self.check(node, check_matmul if op == "matmul" else check_ranks, *ranks)
            self.step(node, op, a, b)
            return
        data, value, first = (b, a, True) if isinstance(b, Data) else (a, b, False)
        constant = self.constant(node, value)
        if self.runs is None and (constant.ndim > 0 or op == "matmul"):
            raise self.refuse(node, f"an operand is a tensor; its rank against the data's is needed: {PASS_SHAPE}")
        rank = len(self.shape(node, data)) if self.runs is not None else 1
        if op == "matmul":
            self.check(node, check_matmul, None if first else rank, rank if first else None)
        self.layer(node, self.check(node, with_constant, op, constant, first, rank), data)


def flatten_args(args: Any) -> list[Any]:
    if isinstance(args, (tuple, list)):
        return [x for a in args for x in flatten_args(a)]
    if isinstance(args, dict):
        return [x for a in args.values() for x in flatten_args(a)]
    return [args]


def fixed_value(torch: Any, a: Any, b: Any) -> Any:
    """The value of a node that computes no data from its results at the two batch sizes."""
    if isinstance(a, torch.Tensor):
        return a if isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b)) else VARIES
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return tuple(fixed_value(torch, x, y) for x, y in zip(a, b, strict=True))
    if type(a) is int and type(b) is int and a != b:
        return Sized((a, b))
    if a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
        return a
    return VARIES


def tainted_value(torch: Any, a: Any, b: Any) -> Any:
    """The value of a node computed from sizes that depend on the batch: ints stay `Sized` even
    where both runs agree, anything else is `VARIES`."""
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return tuple(tainted_value(torch, x, y) for x, y in zip(a, b, strict=True))
    if type(a) is int and type(b) is int:
        return Sized((a, b))
    return VARIES


def from_fx(torch: Any, m: Any, path: str, convert: Callable[[Any, str], Layer],
            sample: tuple[int, ...] | None) -> Layer:
    """The `tinycomp.nn` model of module `m`'s traced forward; `sample` is its input's shape after the
    batch, if known."""
    where = path or TOP
    params = list(inspect.signature(m.forward).parameters.values())
    packed = next((p for p in params if p.kind is p.VAR_POSITIONAL), None)
    if packed is not None:
        raise CompileError(f"cannot import module {where!r} of type {type(m).__name__}: its forward takes "
                           f"*{packed.name}; tinycomp models take one tensor: write forward(self, x)")
    keywords = next((p.name for p in params if p.kind is p.VAR_KEYWORD), None)
    try:  # arguments after the input that have defaults are traced at them (mask=None, scale=2.0)
        defaults = {p.name: p.default for p in params[1:] if p.default is not inspect.Parameter.empty}
        gm = symbolic_trace(torch, m, defaults or None)  # tracing runs forward: on copies
    except Exception as exc:
        raise CompileError(f"cannot import module {where!r} of type {type(m).__name__}: torch.fx cannot trace its "
                           f"forward ({type(exc).__name__}: {exc})") from exc
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder" and not n.args]
    if keywords is not None:  # fx's placeholder for **kwargs: a call passes none, so it must go unread
        [kw] = [n for n in inputs if n.target == f"**{keywords}"] or [None]
        if kw is not None and kw.users:
            raise CompileError(f"cannot import module {where!r} of type {type(m).__name__}: its forward reads "
                               f"**{keywords}; tinycomp models take one tensor")
        inputs = [n for n in inputs if n is not kw]
    if len(inputs) != 1:
        raise CompileError(f"cannot import module {where!r} of type {type(m).__name__}: its forward takes "
                           f"{len(inputs)} arguments without defaults ({', '.join(n.name for n in inputs)}); "
                           "tinycomp models take one tensor")
    runs = None
    if sample is not None:
        try:
            runs = example_runs(torch, gm, sample)
        except Exception as exc:
            raise CompileError(f"cannot import module {where!r} of type {type(m).__name__}: its forward fails on "
                               f"an input of shape {fmt_shape((None, *sample))} ({type(exc).__name__}: "
                               f"{exc})") from exc
    importer = FxImporter(torch, gm, where, convert, runs, bool(m.training))
    output = None
    for node in gm.graph.nodes:
        if node.op == "output":
            output = importer.resolve(node.args[0])
            break
        importer.add(node)
    if not isinstance(output, Data):
        raise CompileError(f"cannot import module {where!r} of type {type(m).__name__}: its forward must return "
                           f"one tensor computed from its input; it returns {type(output).__name__}")
    return chain_or_graph(importer.layers, importer.steps, inputs[0].name, output.name)
