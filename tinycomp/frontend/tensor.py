"""`Tensor`: a float32 NumPy array with TinyTorch's API. Every op goes through `apply_op`.

`apply_op` either computes the op eagerly from the table in `ir/ops.py` or, when an operand is a
symbolic tensor being traced, hands the call to that tensor's tracer. One dispatch point means eager
execution and tracing can never disagree about what an op is.
"""

from __future__ import annotations

import numbers
import operator
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..aligned import aligned_float32, float32_copy
from ..errors import CompileError
from ..ir.ops import op_def
from ..ir.shapes import matmul_shape
from .indexing import AdvancedIndex, index_plan, key_text

Operand = Any  # Tensor | np.ndarray | Python/NumPy scalar
_FLOAT32 = np.dtype(np.float32)
class _Tracing(threading.local):
    """`.tracer`: the Tracer running on this thread, if any (frontend/tracer.py). A class attribute
    default makes `tracing.tracer` a plain read on every eager op (getattr with a default on a
    thread-local costs 7x more)."""

    tracer: Any = None


tracing = _Tracing()


def to_float32(data: Any) -> np.ndarray:
    """A fresh float32 copy of `data`, its first value on a cache line from 4 KB up (compiled code
    reads weights in place: `aligned.py`); TypeError for strings, objects and other non-numbers."""
    return aligned_float32(data.data) if isinstance(data, Tensor) else float32_copy(_without_tensors(data))


def _without_tensors(data: Any) -> Any:
    """Nested lists with each Tensor in them as its array: `Tensor([loss1, loss2])` of 0-D Tensors, as
    TinyTorch takes it (NumPy cannot tell a 0-D Tensor's number from a sequence)."""
    if isinstance(data, (list, tuple)) and any(isinstance(v, (Tensor, list, tuple)) for v in data):
        return [v.data if isinstance(v, Tensor) else _without_tensors(v) for v in data]
    return data


def _operand_array(x: Operand) -> np.ndarray | np.float32:
    if isinstance(x, Tensor):
        return x.data
    if type(x) is np.ndarray and x.dtype.kind in "biuf":
        return x.astype(np.float32, copy=False)
    if isinstance(x, np.ndarray):  # a subclass (masked, matrix) or a non-number: as Tensor(x) takes it
        return float32_copy(x)
    return np.float32(x)


Axis = Any  # None | int | tuple of ints


def _axis_attr(axis: Axis) -> int | tuple[int, ...] | None:
    """A reduction's `axis` as the op table takes it: None, an int, or a tuple of ints."""
    if axis is None:
        return None
    try:
        return operator.index(axis) if not isinstance(axis, (tuple, list)) else tuple(operator.index(a) for a in axis)
    except TypeError:
        raise TypeError(f"axis must be None, an int or a tuple of ints; got {axis!r}") from None


def kind_of(x: Any) -> str:
    """What an error message calls x: its type's name, but `Tensor` for a traced tensor, whose class
    (`SymbolicTensor`) is tinycomp's own and not something the user made."""
    return "Tensor" if getattr(x, "_tracer", None) is not None else type(x).__name__


def _is_operand(x: Any) -> bool:
    return isinstance(x, (Tensor, np.ndarray, numbers.Real, np.bool_))  # NumPy's bool is no numbers.Real


def check_operands(op: str, **operands: Any) -> None:
    """TypeError naming the first operand of `op` that is not a Tensor, array or number."""
    for name, x in operands.items():
        if not _is_operand(x):
            raise TypeError(f"{op}() takes Tensors, NumPy arrays or numbers; got {kind_of(x)} as {name}")


def _traced_parameter(t: Tensor) -> bool:
    """Is t a tensor of the model being traced on this thread (a `param` node, read live)?"""
    tracer = tracing.tracer
    return tracer is not None and tracer.owns_any((t,))


# (op name, operand shapes, attrs) that passed the op's shape rule: eager calls repeat the same few
# signatures, and the rule (Python over tuples) cost as much as the NumPy work at batch 1.
_valid_signatures: set[tuple] = set()


def _check_shapes(op: Any, arrays: Sequence[np.ndarray | np.float32], attrs: dict[str, Any]) -> None:
    """Run op's shape rule (the eager errors are the shape rule's errors), once per signature."""
    shapes = tuple(a.shape for a in arrays)
    try:
        key = (op.name, shapes, tuple(attrs.items())) if attrs else (op.name, shapes)
        if key in _valid_signatures:
            return
    except TypeError:  # an unhashable attribute: check every time
        op.shape(*shapes, **attrs)
        return
    op.shape(*shapes, **attrs)
    if len(_valid_signatures) > 4096:  # shapes that vary without end: keep the set bounded
        _valid_signatures.clear()
    _valid_signatures.add(key)


def apply_op(name: str, *operands: Operand, **attrs: Any) -> Tensor:
    """Run op `name` on the operands: traced if any operand is symbolic, else eagerly in NumPy."""
    for x in operands:
        if isinstance(x, Tensor) and x._tracer is not None:
            return x._tracer.record(name, operands, attrs)
    tracer = tracing.tracer
    if tracer is not None and tracer.owns_any(operands):
        # Arithmetic on the model's own tensors (e.g. `self.scale * 2`) is recorded, not run once:
        # a value computed at trace time would go stale when the parameter changes.
        return tracer.record(name, operands, attrs)
    op = op_def(name)
    if op.ref is None:
        raise TypeError(f"op {name!r} is a graph leaf, not something to apply to tensors")
    arrays = [x.data if type(x) is Tensor else _operand_array(x) for x in operands]
    _check_shapes(op, arrays, attrs)
    result = op.ref(*arrays, **attrs)
    if op.kind == "view" and any(np.may_share_memory(result, a) for a in arrays):
        result = np.array(result, np.float32, order="C")  # each op's result its own array, as TinyTorch's
    return wrap_result(result)


def wrap_result(array: Any) -> Tensor:
    """A Tensor adopting an op result without another copy (a fresh array; float32 if it is not):
    a plain function, as every eager op ends here."""
    if type(array) is not np.ndarray or array.dtype is not _FLOAT32:
        array = np.asarray(array, np.float32)
    t = _new(Tensor)
    t.data = array  # requires_grad and grad: the class defaults (False, None) until set
    return t


class Tensor:
    """A float32 array with `requires_grad` and `grad` slots (TinyTorch module 01).

    `Tensor(data)` copies `data` (a number, nested list or array; ints, bools and float64 become
    float32) into `.data`. Arithmetic (`+ - * /`, `@`) takes Tensors, arrays and numbers with NumPy
    broadcasting; `reshape`, `transpose`, `sum`/`mean`/`max` work as in NumPy. Inside a model's
    `forward` these operations are what `tinycomp.compile` traces.
    """

    __array_ufunc__ = None  # make `ndarray + Tensor` call Tensor.__radd__ instead of NumPy's add
    _tracer: Any = None  # set on symbolic tensors only (see frontend/tracer.py)
    # Defaults for op results, which set only `.data` (two attribute stores were a third of a wrap)
    requires_grad: bool = False
    grad: Tensor | None = None

    def __init__(self, data: Any, requires_grad: bool = False):
        tracer = tracing.tracer
        if tracer is None and type(data) is np.ndarray and data.dtype.kind in "biuf":
            self.data = aligned_float32(data)  # the common case, without to_float32's checks
        # while tracing, `Tensor(p)` of a parameter is a copy that stands for p: read live, not frozen
        elif tracer is None or not tracer.live.adopt_copy(self, data):
            self.data = to_float32(data)
        if requires_grad:  # otherwise the class defaults: requires_grad False, grad None
            self.requires_grad = True

    _wrap = staticmethod(wrap_result)  # the op-result constructor, as a method too

    @classmethod
    def _adopt(cls, array: np.ndarray) -> Tensor:
        """Adopt a fresh float32 ndarray as it is (the caller guarantees both)."""
        t = cls.__new__(cls)
        t.data = array
        return t

    # ------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape, as in NumPy."""
        return self.data.shape

    @property
    def size(self) -> int:
        """The number of elements."""
        return int(self.data.size)

    @property
    def ndim(self) -> int:
        """The number of dimensions."""
        return self.data.ndim

    @property
    def dtype(self) -> np.dtype:
        """float32: what every Tensor op makes; `.data` assigned an array of another dtype shows that one
        (ops and compiled models read it as float32)."""
        return self.data.dtype

    def numpy(self) -> np.ndarray:
        """The underlying float32 array (not a copy)."""
        return self.data

    def numel(self) -> int:
        """The number of elements (TinyTorch's and torch's name for `size`)."""
        return self.size

    def memory_footprint(self) -> int:
        """The bytes the elements take (TinyTorch's name for `data.nbytes`)."""
        return int(self.data.nbytes)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        tracer = tracing.tracer
        if tracer is not None:  # np.asarray(parameter) while tracing: a plain array the trace would freeze
            tracer.live.check_conversion(self)
        if dtype is not None and np.dtype(dtype) != self.data.dtype:
            if copy is False:
                raise ValueError(f"a float32 Tensor cannot become a {np.dtype(dtype)} array without a copy "
                                 "(copy=False was given)")
            return self.data.astype(dtype)
        return self.data.copy() if copy else self.data  # np.array(t) copies, as for an ndarray

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        body = np.array2string(np.asarray(self.data), precision=4, threshold=20, edgeitems=3, separator=", ")
        return f"Tensor(data={body}, shape={self.shape}{grad})"

    # ------------------------------------------------------------ arithmetic
    def _binary(self, name: str, other: Operand, reflected: bool = False) -> Tensor:
        if isinstance(other, (list, tuple)):  # `t + [1, 2]`: TinyTorch makes a Tensor of any other operand
            other = to_float32(other)
        if not _is_operand(other):
            return NotImplemented
        return apply_op(name, other, self) if reflected else apply_op(name, self, other)

    def __add__(self, other: Operand) -> Tensor:
        return self._binary("add", other)

    def __radd__(self, other: Operand) -> Tensor:
        return self._binary("add", other, reflected=True)

    def __sub__(self, other: Operand) -> Tensor:
        return self._binary("sub", other)

    def __rsub__(self, other: Operand) -> Tensor:
        return self._binary("sub", other, reflected=True)

    def __mul__(self, other: Operand) -> Tensor:
        return self._binary("mul", other)

    def __rmul__(self, other: Operand) -> Tensor:
        return self._binary("mul", other, reflected=True)

    def __truediv__(self, other: Operand) -> Tensor:
        return self._binary("div", other)

    def __rtruediv__(self, other: Operand) -> Tensor:
        return self._binary("div", other, reflected=True)

    # comparisons give 1.0 where they hold and 0.0 elsewhere (a mask for `where`); == and != stay
    # Python's identity tests (Tensors are dict keys and list members): tinycomp.nn.equal/not_equal
    def __lt__(self, other: Operand) -> Tensor:
        return self._binary("less", other)

    def __le__(self, other: Operand) -> Tensor:
        return self._binary("less_equal", other)

    def __gt__(self, other: Operand) -> Tensor:
        return self._binary("greater", other)

    def __ge__(self, other: Operand) -> Tensor:
        return self._binary("greater_equal", other)

    def __neg__(self) -> Tensor:
        return apply_op("neg", self)

    def __pow__(self, exponent: Any) -> Tensor:
        if isinstance(exponent, bool) or not isinstance(exponent, numbers.Real):
            hint = " (for a tensor exponent write (y * x.log()).exp(), x > 0)" if isinstance(exponent, Tensor) else ""
            raise TypeError(f"Tensor ** takes a number as the exponent (x ** 2, x ** 0.5); "
                            f"got {kind_of(exponent)}{hint}")
        return apply_op("pow", self, float(exponent))

    # ------------------------------------------------------------ elementwise math
    def exp(self) -> Tensor:
        """e ** x elementwise, as `np.exp` (inf for x above ~88.7)."""
        return apply_op("exp", self)

    def log(self) -> Tensor:
        """Natural logarithm elementwise, as `np.log` (-inf at 0, nan below)."""
        return apply_op("log", self)

    def sqrt(self) -> Tensor:
        """Square root elementwise, as `np.sqrt` (nan below 0)."""
        return apply_op("sqrt", self)

    def abs(self) -> Tensor:
        """|x| elementwise, as `np.abs`."""
        return apply_op("abs", self)

    def __abs__(self) -> Tensor:
        return self.abs()

    def clip(self, min: Operand = None, max: Operand = None) -> Tensor:  # noqa: A002 - NumPy's and torch's names
        """Each element limited to [min, max], as `np.clip`: maximum with min, then minimum with max
        (so max wins where min > max), NaN stays NaN; either bound may be None (no limit), not both."""
        if min is None and max is None:
            raise ValueError("clip() needs min or max (or both); got neither")
        check_operands("clip", **{k: v for k, v in (("min", min), ("max", max)) if v is not None})
        out = self if min is None else apply_op("maximum", self, min)
        return out if max is None else apply_op("minimum", out, max)

    # ------------------------------------------------------------ matmul
    def _validate_matmul_shapes(self, other: Any) -> None:
        """TinyTorch's check before a matmul: TypeError for an operand that is not a Tensor (a NumPy
        array counts as one: a layer's weight may be rebound to an array), ValueError for a 0-D
        operand or inner dimensions that differ. `matmul` itself checks the type only and leaves
        the shapes to `apply_op`'s shape rule (the same `matmul_shape`, so the same errors)."""
        _check_matmul_operand(other)
        if self._tracer is None and getattr(other, "_tracer", None) is None:  # traced: the graph's shape rule
            matmul_shape(self.shape, other.shape)

    def matmul(self, other: Tensor | np.ndarray) -> Tensor:
        """`self @ other` with NumPy's matmul rules; `other` a Tensor or an array (a weight rebound to an
        array works eagerly as it does compiled). ValueError names both shapes when they do not fit."""
        _check_matmul_operand(other)
        return apply_op("matmul", self, other)

    def __matmul__(self, other: Tensor | np.ndarray) -> Tensor:
        return self.matmul(other)

    def __rmatmul__(self, other: Any) -> Tensor:
        if not isinstance(other, np.ndarray):
            raise TypeError(f"Matrix multiplication requires Tensor, got {kind_of(other)}: matmul expects "
                            f"Tensor operands; got {kind_of(other)} @ Tensor")
        return apply_op("matmul", other, self)  # its shape rule is the matmul check

    # ------------------------------------------------------------ shape ops
    def reshape(self, *shape: Any) -> Tensor:
        """The same elements in a new shape, given as sizes or one tuple; one size may be -1 (inferred)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        try:  # operator.index, not int(): a size of 2.5 is an error, not a silent 2
            newshape = tuple(operator.index(d) for d in shape)
        except TypeError:
            raise TypeError(f"reshape sizes must be integers; got {shape}") from None
        return apply_op("reshape", self, newshape=newshape)

    def view(self, *shape: Any) -> Tensor:
        """`reshape`, by torch's name (TinyTorch's Tensor has both)."""
        return self.reshape(*shape)

    def contiguous(self) -> Tensor:
        """The tensor itself: every op's result is its own C-ordered array (torch's name, which
        attention code calls after a transpose)."""
        return self

    def masked_fill(self, mask: Operand, value: Operand) -> Tensor:
        """`value` where `mask` is nonzero, else this tensor's element (torch's and TinyTorch's
        masked_fill; `tinycomp.nn.where(mask, value, self)`)."""
        check_operands("masked_fill", mask=mask, value=value)
        return apply_op("where", mask, value, self)

    def transpose(self, dim0: int | None = None, dim1: int | None = None) -> Tensor:
        """Swap axes dim0 and dim1 (default: the last two; a 0-D or 1-D tensor is returned as a copy)."""
        if dim0 is None and dim1 is None:
            if self.ndim < 2:  # a copy; while tracing, a parameter stays itself: live, not frozen
                return self if _traced_parameter(self) else Tensor(self.data)
            dim0, dim1 = -2, -1
        elif dim0 is None or dim1 is None:
            raise ValueError("transpose takes both dim0 and dim1, or neither (last two dims)")
        return apply_op("transpose", self, dim0=dim0, dim1=dim1)

    def sum(self, axis: Axis = None, keepdims: bool = False) -> Tensor:
        """Sum over `axis` (None: all elements; an int or a tuple of ints), as `np.sum`."""
        return apply_op("sum", self, axis=_axis_attr(axis), keepdims=bool(keepdims))

    def mean(self, axis: Axis = None, keepdims: bool = False) -> Tensor:
        """Mean over `axis` (None: all elements; an int or a tuple of ints), as `np.mean`."""
        return apply_op("mean", self, axis=_axis_attr(axis), keepdims=bool(keepdims))

    def max(self, axis: Axis = None, keepdims: bool = False) -> Tensor:
        """Maximum over `axis` (None: all elements; an int or a tuple of ints), as `np.max`."""
        return apply_op("max", self, axis=_axis_attr(axis), keepdims=bool(keepdims))

    def __getitem__(self, key: Any) -> Tensor:
        """NumPy's indexing; in a traced forward only basic indexing (ints, slices with a positive
        step, `...`, None), recorded as `slice` ops: of a parameter, they follow later changes to it."""
        if _traced_parameter(self):
            return self._index(key, tracing.tracer)
        return Tensor(self.data[key])

    def _index(self, key: Any, tracer: Any) -> Tensor:
        """self[key] as slice ops and a reshape (frontend/indexing.py), refused with `tracer`'s place."""
        try:
            cuts, out = index_plan(_graph_shape(self), key)
        except AdvancedIndex as exc:
            raise CompileError(f"{tracer.where()} indexes [{key_text(key)}] with {exc}: compiled code takes ints, "
                               "slices with a positive step, ... and None (basic indexing)") from None
        except ValueError as exc:
            raise CompileError(f"{tracer.where()} indexes [{key_text(key)}]: {exc}") from None
        t = self
        for axis, start, stop, step in cuts:
            t = apply_op("slice", t, axis=axis, start=start, stop=stop, step=step)
        if _graph_shape(t) != out:
            t = t.reshape(*(-1 if d is None else d for d in out))
        return t


def _graph_shape(t: Tensor) -> tuple:
    """t's shape as the graph writes it: None for a traced batch size."""
    return tuple(d if isinstance(d, int) else None for d in t.shape)


_new = Tensor.__new__


def _check_matmul_operand(other: Any) -> None:
    """TypeError unless `other` is a Tensor or a NumPy array (TinyTorch's wording, and what to do)."""
    if not isinstance(other, (Tensor, np.ndarray)):
        raise TypeError(f"Matrix multiplication requires Tensor, got {kind_of(other)}: matmul expects a "
                        f"Tensor operand; got {kind_of(other)} (wrap it: Tensor(data))")


def as_tensor(x: Any) -> Tensor:
    """x itself if it is a Tensor, else `Tensor(x)` (a layer's forward taking an array or list)."""
    return x if isinstance(x, Tensor) else Tensor(x)
