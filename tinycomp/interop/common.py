"""What every importer shares: the lazy import of its framework, weights made into tinycomp layers,
and `GraphModel` for imported graphs whose values branch and join (residual adds)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from ..errors import CompileError
from ..frontend.layers import Layer, Linear, Sequential, parameters_of
from ..frontend.structural import InputShape
from ..frontend.tensor import Tensor, as_tensor
from .graph_layers import BINARY, UNARY


def require(module: str, importer: str, extra: str, what: str) -> ModuleType:
    """Import an optional framework, or raise ImportError naming the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{importer} needs {what} (`import {module}` failed: {exc}); install it with "
                          f"pip install -e '.[{extra}]' in the tinycomp checkout") from exc


def unsupported(kind: str, name: str, type_name: str, known: Sequence[str], detail: str = "") -> CompileError:
    """The error for a node or module an importer has no rule for: which one, its type, what is known."""
    more = f" ({detail})" if detail else ""
    return CompileError(f"cannot import {kind} {name!r} of type {type_name}{more}; supported: {', '.join(known)}")


T = TypeVar("T")


class NodeImporter:
    """What both graph readers (ONNX nodes, torch.fx nodes) share: `refuse` (each its own: how it names
    a node) and `check`, which applies one of `graph_layers`' rules."""

    def refuse(self, node: Any, detail: str = "") -> CompileError:
        raise NotImplementedError

    def check(self, node: Any, rule: Callable[..., T], *args: Any) -> T:
        """rule(*args), its ValueError made a refusal of `node`."""
        try:
            return rule(*args)
        except ValueError as exc:
            raise self.refuse(node, str(exc)) from exc


def float32_values(values: Any, what: str) -> np.ndarray:
    """`values` as float32, refusing numbers beyond float32's range: they would be infinities, and the
    model's outputs inf or NaN where the original's are finite."""
    wide = np.asarray(values)
    with np.errstate(over="ignore"):
        narrow = wide.astype(np.float32)
    overflow = np.isinf(narrow) & np.isfinite(wide) if wide.dtype.kind == "f" else np.zeros(narrow.shape, bool)
    if overflow.any():
        biggest = float(np.abs(wide[overflow]).max())
        raise CompileError(f"{what} holds {biggest:.3g}, beyond float32's range (3.4e38), in which tinycomp "
                           "computes: the model would give inf or NaN where the original gives numbers")
    return narrow


def linear_from(weight_in_out: np.ndarray, bias: np.ndarray | None, what: str = "a weight") -> Linear:
    """A Linear holding a float32 copy of `weight_in_out` (shape (in, out), tinycomp's layout) and bias."""
    w = float32_values(weight_in_out, what)
    if w.ndim != 2 or 0 in w.shape:
        raise CompileError(f"a Linear weight must be 2-D (in, out) with both sizes positive; got shape {w.shape}")
    layer = Linear(w.shape[0], w.shape[1], bias=bias is not None)
    layer.weight = Tensor(w)
    if bias is not None:
        b = float32_values(bias, f"the bias of {what}").reshape(-1)
        if b.shape != (w.shape[1],):
            raise CompileError(f"a Linear bias must have {w.shape[1]} values (out); got shape {b.shape}")
        layer.bias = Tensor(b)
    return layer


@dataclass(frozen=True)
class Step:
    """One value of an imported graph: `layer` applied to `inputs`, or `op` (a key of `graph_layers`'
    BINARY for two values, UNARY for one) of them."""

    output: str
    inputs: tuple[str, ...]
    layer: str | None = None  # a key of GraphModel.layers
    op: str | None = None


class GraphModel(Layer):
    """An imported model whose values branch and join: named layers run in a fixed dataflow order.

    `layers` maps a name to each layer (parameters are named `layers.<name>.weight` in the traced
    graph); `steps` say which layer (or binary op) makes which value from which; `output` names the
    value returned. Single-path models are imported as a `Sequential` instead."""

    def __init__(self, layers: dict[str, Layer], steps: Sequence[Step], input_name: str, output: str):
        self.layers = dict(layers)
        self.steps = tuple(steps)
        self.input_name, self.output = input_name, output
        self.input_check: InputShape | None = None  # set by an importer that fixed the input's sizes (`pinned`)

    def parameters(self) -> list[Tensor]:
        """Every layer's parameters, in the layers' order, each shared tensor once."""
        return parameters_of(self.layers.values())

    @property
    def first_layer(self) -> Layer | None:
        """`input_check`, or the layer of the first step when it takes the input alone (what
        `tc.summary` and the CLI read the input's shape from), else None."""
        if self.input_check is not None:
            return self.input_check
        first = self.steps[0] if self.steps else None
        return self.layers[first.layer] if first and first.layer and first.inputs == (self.input_name,) else None

    def forward(self, x: Tensor) -> Tensor:
        """Run every step in order on the input (once `input_check`, if set, has found its shape the
        import's); return the output value."""
        if self.input_check is not None:
            x = self.input_check(x)
        values: dict[str, Any] = {self.input_name: as_tensor(x)}  # steps call Tensor methods
        for step in self.steps:
            args = [values[name] for name in step.inputs]
            if step.layer is not None:
                values[step.output] = self.layers[step.layer](*args)
            else:
                values[step.output] = (BINARY if len(args) == 2 else UNARY)[step.op or ""](*args)
        return values[self.output]

    def __repr__(self) -> str:
        lines = [f"  {s.output} = {s.layer or s.op}({', '.join(s.inputs)})"
                 + (f"  # {self.layers[s.layer]!r}" if s.layer else "") for s in self.steps]
        check = f"  # {self.input_check!r}" if self.input_check is not None else ""
        return f"GraphModel({check}\n" + "\n".join(lines) + f"\n  return {self.output}\n)"


def chain_or_graph(layers: dict[str, Layer], steps: list[Step], input_name: str, output: str) -> Layer:
    """A Sequential when each step feeds only the next (the common case), else a GraphModel."""
    current = input_name
    chain: list[Layer] = []
    for step in steps:
        if step.layer is None or step.inputs != (current,):
            return GraphModel(layers, steps, input_name, output)
        chain.append(layers[step.layer])
        current = step.output
    if current != output:
        return GraphModel(layers, steps, input_name, output)
    return Sequential(*chain)


def layer_key(name: str, taken: dict[str, Layer]) -> str:
    """A key for GraphModel.layers from a framework's node or module name: no dots (paths use them)."""
    base = (name or "layer").replace(".", "_").replace("/", "_") or "layer"
    key, i = base, 1
    while key in taken:
        key, i = f"{base}_{i}", i + 1
    return key


def pinned(model: Layer, sample: tuple[int, ...] | None, feature_names: Any = None) -> Layer:
    """`model` checking each input with an `InputShape(*sample)` first: an importer that fixed sizes read
    from the input's shape (after the batch) returns a model that refuses any other shape instead of
    computing with the sizes of the import. The check is the model's `input_check` attribute, not one
    of its layers or steps: `model[0]`, the steps and the parameter paths are the import's own. A lone
    layer (an imported `nn.Linear`) is returned as it is: it read no size of the input but its own.
    `feature_names`: the columns, in order, a DataFrame given to the model must have."""
    if sample is None or not isinstance(model, (GraphModel, Sequential)):
        return model
    check = InputShape(*sample, feature_names=feature_names)
    check.training = model.training
    if isinstance(model, GraphModel):
        model.input_check = check
        return model
    out = ImportedSequential(*model.layers, input_check=check)
    out.training = model.training
    return out


class ImportedSequential(Sequential):
    """A `Sequential` an importer made at an input shape: `input_check` (an `InputShape`) checks each
    input before the layers run (`pinned`)."""

    def __init__(self, *layers: Any, input_check: InputShape):
        super().__init__(*layers)
        self.input_check = input_check

    @property
    def first_layer(self) -> Layer:
        """The check: what `tc.summary` and the CLI read the input's shape from."""
        return self.input_check

    def forward(self, x: Any, training: bool | None = None) -> Any:
        """The layers on x, once `input_check` has found its shape the import's."""
        return super().forward(self.input_check(x), training)

    def __repr__(self) -> str:
        return super().__repr__().replace("Sequential(", f"Sequential(  # {self.input_check!r}", 1)
