"""`from_torch`: a `torch.nn.Module` of Linear, activations, Softmax, Dropout, LayerNorm, Flatten and
Identity layers -> a `tinycomp.nn` model. `nn.Sequential` maps layer by layer; any other module
with sub-modules is read through `torch.fx` (its forward's dataflow, residual adds included)."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from .. import nn as tnn
from ..errors import CompileError
from ..frontend.layers import Layer
from .common import Step, chain_or_graph, layer_key, linear_from, require, unsupported

TOP = "(the top module)"  # how errors name the module passed in, which has no path
MODULES = ("Sequential", "Linear", "ReLU", "Sigmoid", "Tanh", "GELU", "Softmax", "Dropout", "LayerNorm", "Flatten",
           "Identity", "a Module of these whose forward torch.fx can trace (calls, relu/sigmoid/tanh/gelu/"
           "softmax/flatten functions, +)")


def from_torch(module: Any) -> Layer:
    """A `tinycomp.nn` model computing what `module` computes (eager output within float32 rounding).

    `module` is a `torch.nn.Module`: an `nn.Sequential` or a module tree of `Linear`, `ReLU`, `Sigmoid`,
    `Tanh`, `GELU` (exact and tanh forms, kept apart: `GELU(approximate="none")` compiles with
    tinycomp's erf kernel), `Softmax`, `Dropout`, `LayerNorm`, `Flatten`, `Identity`. Weights are
    copied (as float32, Linear's transposed to tinycomp's (in, out)); each layer takes the training
    flag of the module it comes from (a Dropout set to `eval()` in a training model stays off), so
    import a module in `eval()` mode for inference. Anything else raises
    `CompileError` naming the module's path and type. Needs PyTorch (`pip install 'tinycomp[torch]'`).
    """
    torch = require("torch", "from_torch", "torch", "PyTorch")
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch expects a torch.nn.Module; got {type(module).__name__}")
    with torch.no_grad():
        return _convert(torch, module, "")


def _array(t: Any) -> np.ndarray:
    return np.array(t.detach().cpu().float().numpy(), np.float32)


def _convert(torch: Any, m: Any, path: str) -> Layer:
    layer = _convert_module(torch, m, path)
    layer.training = bool(m.training)  # as torch runs it: a sub-module may be in eval() inside a training one
    return layer


def _convert_module(torch: Any, m: Any, path: str) -> Layer:
    nn = torch.nn
    if isinstance(m, nn.Sequential):
        return tnn.Sequential(*[_convert(torch, child, f"{path}.{name}" if path else name)
                                for name, child in m.named_children()])
    layer = _leaf(torch, m, path)
    if layer is not None:
        return layer
    if any(True for _ in m.children()):
        return _from_fx(torch, m, path)
    raise unsupported("module", path or TOP, type(m).__name__, MODULES)


def _leaf(torch: Any, m: Any, path: str) -> Layer | None:
    nn = torch.nn
    if type(m) is nn.Linear:
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
    return None


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


def _function_layer(torch: Any, node: Any) -> Layer | None:
    """The layer for an fx call_function / call_method node on one tensor, or None."""
    F = torch.nn.functional
    target, kwargs = node.target, dict(node.kwargs)
    extra = node.args[1:]
    if target in (torch.relu, F.relu, "relu") and not extra:
        return tnn.ReLU()
    if target in (torch.sigmoid, F.sigmoid, "sigmoid") and not extra:
        return tnn.Sigmoid()
    if target in (torch.tanh, F.tanh, "tanh") and not extra:
        return tnn.Tanh()
    if target is F.gelu and not extra:
        return tnn.GELU(approximate="tanh" if kwargs.get("approximate") == "tanh" else "none")
    if target in (F.softmax, torch.softmax, "softmax"):
        dim = extra[0] if extra else kwargs.get("dim")
        return tnn.Softmax(dim=int(dim)) if isinstance(dim, int) else None
    if target in (torch.flatten, "flatten"):
        start = extra[0] if extra else kwargs.get("start_dim", 0)
        end = extra[1] if len(extra) > 1 else kwargs.get("end_dim", -1)
        return tnn.Flatten(int(start), int(end)) if isinstance(start, int) and start != 0 else None
    return None


def _from_fx(torch: Any, m: Any, path: str) -> Layer:
    where = path or TOP
    try:
        gm = torch.fx.symbolic_trace(m)
    except Exception as exc:
        raise CompileError(f"cannot import module {where!r} of type {type(m).__name__}: torch.fx cannot trace its "
                           f"forward ({type(exc).__name__}: {exc})") from exc
    layers: dict[str, Layer] = {}
    steps: list[Step] = []
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise CompileError(f"cannot import module {where!r} of type {type(m).__name__}: its forward takes "
                           f"{len(inputs)} tensors, tinycomp models take one")
    output = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            output = node.args[0]
            break
        name = f"{where}: node {node.name}"
        if node.op == "call_module":
            key = layer_key(str(node.target), layers)
            sub_path = f"{path}.{node.target}" if path else str(node.target)
            arguments = (*node.args, *node.kwargs.values())  # self.fc(x) or self.fc(input=x)
            if len(arguments) != 1 or not isinstance(arguments[0], torch.fx.Node):
                raise unsupported("node", name, f"call_module {node.target}", MODULES,
                                  f"called with {len(arguments)} arguments; a layer takes one tensor")
            layers[key] = _convert(torch, gm.get_submodule(node.target), sub_path)
            steps.append(Step(node.name, (arguments[0].name,), layer=key))
        elif node.op in ("call_function", "call_method") and node.target in (operator.add, torch.add, "add") \
                and len(node.args) == 2 and all(isinstance(a, torch.fx.Node) for a in node.args) and not node.kwargs:
            steps.append(Step(node.name, (node.args[0].name, node.args[1].name), op="add"))
        elif node.op in ("call_function", "call_method") and node.args and isinstance(node.args[0], torch.fx.Node) \
                and (layer := _function_layer(torch, node)) is not None:
            key = layer_key(node.name, layers)
            layer.training = bool(m.training)
            layers[key] = layer
            steps.append(Step(node.name, (node.args[0].name,), layer=key))
        else:
            target = getattr(node.target, "__name__", str(node.target))
            raise unsupported("node", name, f"{node.op} {target}", MODULES)
    if not isinstance(output, torch.fx.Node):
        raise CompileError(f"cannot import module {where!r} of type {type(m).__name__}: its forward must return "
                           f"one tensor; it returns {type(output).__name__}")
    return chain_or_graph(layers, steps, inputs[0].name, output.name)
