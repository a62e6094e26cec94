"""The batch-1 call in one native step: check the inputs, check that nothing the compiled code depends
on changed, then run the entry, all in one call of a native builtin.

A compiled model's guarantee is that results are never stale: every call must notice a rebound
parameter, a replaced layer, a list that grew, an array reshaped in place. Checking that in Python
(identity of every object the model holds, layout of every parameter array) cost ~3 us a call, and
the call around it as much again. Here the same facts are watched as machine words instead:

- a dict (a layer's attributes, a dict of layers): CPython's per-dict version tag (PEP 509), which
  takes a new, never reused value on every change, however it is made (`setattr`, `vars(obj)[k] =`,
  `del`, `object.__setattr__`);
- a list: its length, its item array and every item pointer;
- a NumPy array: its data pointer, rank, dimensions and strides (through their arrays), dtype
  descriptor and flags: what `a.shape = ...`, `a.resize`, `a.dtype = ...` change in place.

Watching a word means reading it at an address recorded when the hot call was armed and comparing
it with the value then; the objects watched are held alive by the `NativeHotCall`, so the addresses
stay valid. A word at an address derived from another (an item of a list, a dimension of an array) is
listed after the word it derives from, and the scan stops at the first difference, so it never reads
through a pointer that moved. Any difference returns "changed": the caller then takes the full path
(which re-checks everything in Python, recompiles if it must, and arms a new hot call).

The helper (`tinycomp.hot_call`, compiled once per process) is a Python builtin (METH_FASTCALL, its
`self` a `Words`: the armed call's words as bytes, holding everything they point into): a ctypes
call converting five arguments cost ~0.5 us of the batch-1 call, a builtin's ~0.05. It checks each
argument before reading through it, whoever calls it. It is called with the GIL held, so no other
thread can change what it reads while it reads; it releases the GIL itself around the entry, as a
plain ctypes call does, so compiled code still runs in parallel threads.
The struct offsets and the version-tag behaviour are probed at import on this interpreter and NumPy;
if anything differs the native hot call is simply not offered (`AVAILABLE` is False).
"""

from __future__ import annotations

import ctypes
import functools
import gc
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from llvmlite import ir

from ..codegen.cgutils import I32, I64, PTR, as_i64, for_range, i64
from ..codegen.scratch import Extent, emit_floats
from .engine import JitEngine

# CPython 3.x object layout: PyObject_HEAD is two words (the refcount, then the type); a dict's
# version tag follows `ma_used`; a list's `ob_size` (PyVarObject) then `ob_item`. NumPy's
# PyArrayObject_fields: data, nd, dimensions, strides, base, descr, flags after the head.
OBJECT_TYPE, DICT_VERSION, LIST_SIZE, LIST_ITEMS = 8, 24, 16, 24
# CPython 3.11/3.12 keep the __dict__ of an instance of a class without __slots__ ("managed dict",
# Py_TPFLAGS_MANAGED_DICT) in the word three before the object
MANAGED_DICT_FLAG, MANAGED_DICT_AT = 1 << 4, -24
ARRAY_DATA, ARRAY_ND, ARRAY_DIMS, ARRAY_STRIDES, ARRAY_DESCR, ARRAY_FLAGS = 16, 24, 32, 40, 56, 64
BYTES_DATA = 32  # PyBytesObject: ob_size, ob_shash, then the bytes inline
C_CONTIGUOUS_ALIGNED = 0x0001 | 0x0100  # NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED

CHANGED, INPUT_NOT_NATIVE = 1, 2  # statuses besides 0 = ran
_F32 = np.dtype(np.float32)


class Words(bytes):
    """An armed call's words (the builtin's `self`, read by the helper at BYTES_DATA) holding what
    they point into: the builtin then keeps its method definition, the helper's code and the
    call's tables alive for as long as anything can call it."""

    keep: Any


def _word(address: int) -> int:
    return ctypes.c_uint64.from_address(address).value


def _int32(address: int) -> int:
    return ctypes.c_int32.from_address(address).value


def class_dict(cls: type) -> dict:
    """The dict behind `vars(cls)` (a read-only proxy): the one `setattr(cls, ...)` changes."""
    held = gc.get_referents(vars(cls))
    if len(held) != 1 or type(held[0]) is not dict:
        raise TypeError(f"the attribute proxy of {cls.__name__} holds {held!r}, not one dict")
    return held[0]


def dict_pointer_words(obj: Any) -> list[int] | None:
    """The word holding obj's __dict__ pointer: `obj.__dict__ = {...}` moves it and nothing else (the
    old dict's version tag stays). None where this interpreter keeps it somewhere else."""
    t = type(obj)
    d = vars(obj)  # made now if the object had none yet: then the word holds it
    if t.__flags__ & MANAGED_DICT_FLAG:
        address = id(obj) + MANAGED_DICT_AT
    elif t.__dictoffset__ > 0:
        address = id(obj) + t.__dictoffset__
    else:
        return None
    return [address] if _word(address) == id(d) else None


def _probe() -> bool:
    """Do this interpreter's dicts, lists and NumPy's arrays look and behave as assumed above?"""
    if sys.implementation.name != "cpython" or ctypes.sizeof(ctypes.c_void_p) != 8:
        return False

    class Probe:
        a: int
        b: int

    obj = Probe()
    obj.a = 1
    d = vars(obj)
    tags = [_word(id(d) + DICT_VERSION)]
    for change in (lambda: setattr(obj, "a", 2), lambda: d.__setitem__("a", 3), lambda: setattr(obj, "b", 1),
                   lambda: delattr(obj, "b"), lambda: object.__setattr__(obj, "a", 4)):
        change()
        tags.append(_word(id(d) + DICT_VERSION))
    _ = obj.a, d["a"]  # reads change nothing
    if len(set(tags)) != len(tags) or _word(id(d) + DICT_VERSION) != tags[-1]:
        return False
    try:  # a class's dict, behind its proxy, takes a new tag when the class is given an attribute
        cd = class_dict(Probe)
    except TypeError:
        return False
    before = _word(id(cd) + DICT_VERSION)
    Probe.c = 1  # type: ignore[attr-defined]
    if _word(id(cd) + DICT_VERSION) == before:
        return False
    pointer = dict_pointer_words(obj)  # where this interpreter keeps it: managed (3.11+) or at __dictoffset__
    if pointer is None:
        return False
    obj.__dict__ = dict(vars(obj))  # a new dict: the pointer word follows it
    if _word(pointer[0]) != id(vars(obj)):
        return False

    class Other(Probe):
        pass

    if _word(id(obj) + OBJECT_TYPE) != id(Probe):
        return False
    obj.__class__ = Other
    if _word(id(obj) + OBJECT_TYPE) != id(Other):
        return False
    items = ["x", "y", "z"]
    if _word(id(items) + LIST_SIZE) != 3 or _word(_word(id(items) + LIST_ITEMS) + 8) != id(items[1]):
        return False
    words = Words(bytes(range(1, 25)))
    words.keep = None
    if ctypes.string_at(id(words) + BYTES_DATA, len(words)) != bytes(range(1, 25)):
        return False
    a = np.zeros((3, 5), np.float32)[:, 1:]
    dims, strides = _word(id(a) + ARRAY_DIMS), _word(id(a) + ARRAY_STRIDES)
    return (_word(id(a) + ARRAY_DATA) == a.__array_interface__["data"][0] and _int32(id(a) + ARRAY_ND) == 2
            and [_word(dims + 8 * i) for i in range(2)] == [3, 4]
            and [_word(strides + 8 * i) for i in range(2)] == [20, 4]
            and _word(id(a) + ARRAY_DESCR) == id(np.dtype(np.float32))
            and (_int32(id(a) + ARRAY_FLAGS) & C_CONTIGUOUS_ALIGNED) == 0x0100)  # aligned, not contiguous


AVAILABLE = _probe()


# ---------------------------------------------------------------- what to watch

def type_words(obj: Any) -> list[int]:
    """The object's type pointer: `obj.__class__ = Other` changes it and nothing else."""
    return [id(obj) + OBJECT_TYPE]


def dict_words(d: dict) -> list[int]:
    return [id(d) + DICT_VERSION]


def list_words(items: list) -> list[int]:
    """Length and item array first: the item words are read only while those still match."""
    base = _word(id(items) + LIST_ITEMS)
    return [id(items) + LIST_SIZE, id(items) + LIST_ITEMS, *(base + 8 * i for i in range(len(items)))]


def array_words(a: np.ndarray) -> list[int]:
    """Everything of `a` that can change in place while it stays the same object."""
    dims, strides = _word(id(a) + ARRAY_DIMS), _word(id(a) + ARRAY_STRIDES)
    return [id(a) + ARRAY_DATA, id(a) + ARRAY_ND, id(a) + ARRAY_DESCR, id(a) + ARRAY_FLAGS,
            id(a) + ARRAY_DIMS, *(dims + 8 * i for i in range(a.ndim)),
            id(a) + ARRAY_STRIDES, *(strides + 8 * i for i in range(a.ndim))]


# ---------------------------------------------------------------- the helper

# ctx words (the builtin's `self`, a `Words`): entry, parameter table, watched addresses, their
# values, how many, PyEval_SaveThread, PyEval_RestoreThread, the float32 descriptor, the ndarray type,
# the input's rank; for a model of several inputs then: how many more, their ranks (an int64 array),
# how many dimensions to check and those checks (an int64 array of (input, dimension, size) triples,
# size -1: the batch); then None, PyLong_FromLong (the status returned) and the tuple type; the most
# rows a call takes, and on the helper's stack; the scratch a call of r rows needs, min(r, cap) *
# per_row + fixed floats and pack more from pack_rows rows on (`codegen.scratch.Extent`), as
# (fixed, per_row, cap, pack, pack_rows); the output's rank; and last the first input's
# dimensions after the first, then the output's.
CTX_FIXED = 26
CTX_ENTRY, CTX_TABLE, CTX_WORDS, CTX_EXPECT, CTX_NWORDS, CTX_SAVE, CTX_RESTORE, CTX_F32, CTX_NDARRAY, CTX_NDIM, \
    CTX_NMORE, CTX_RANKS, CTX_NDIMCHECKS, CTX_DIMCHECKS, CTX_NONE, CTX_LONG, CTX_TUPLE, CTX_HOT_ROWS, \
    CTX_STACK_ROWS, CTX_SCRATCH_FIXED, CTX_SCRATCH_PER_ROW, CTX_SCRATCH_CAP, CTX_SCRATCH_PACK, CTX_PACK_ROWS, \
    CTX_OUT_NDIM, CTX_OUT_DIMS = range(CTX_FIXED)
# A model of up to this many inputs after the first is offered the native call: their data pointers
# go in a table on the helper's stack.
MAX_MORE_INPUTS = 32
# A null scratch pointer asks for this much of the helper's own stack instead (64-byte aligned):
# batch-1 calls then skip the per-thread scratch lookup (the reference MLP's needs 1.5 KB). Small
# enough for any thread's stack: 32 KB crashed threads given Python's smallest stack (32 KiB,
# `threading.stack_size`), whose own frames use ~12 KB of it by the time of the native call.
STACK_SCRATCH = 8 << 10
TUPLE_SIZE, TUPLE_ITEMS = 16, 24  # PyTupleObject: ob_size, then the item pointers inline


def _emit_helper() -> str:
    """Two METH_FASTCALL builtins over the same checks, `self` the ctx words:
    `tinycomp.hot_call(x, out, scratch)` for a model of one input, and `tinycomp.hot_call_more(x,
    out, scratch, more)` for one of several, the inputs after the first in a tuple. `scratch` is None
    (the helper's stack) or an ndarray; each returns its status as an int."""
    mod = ir.Module(name="tinycomp_hot_call")
    _emit_hot_call(mod, "tinycomp.hot_call", several=False)
    _emit_hot_call(mod, "tinycomp.hot_call_more", several=True)
    return str(mod)


def _emit_hot_call(mod: ir.Module, name: str, several: bool) -> None:
    fn = ir.Function(mod, ir.FunctionType(PTR, [PTR, PTR, I64]), name)
    words_object, argv, nargs = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    stack = b.alloca(ir.ArrayType(ir.IntType(8), STACK_SCRATCH))  # in the entry block: a fixed frame slot
    stack.align = 64
    # several inputs: their data pointers, the entry's `inputs` table
    inputs = b.alloca(ir.ArrayType(PTR, MAX_MORE_INPUTS)) if several else None
    changed, not_native = (fn.append_basic_block(n) for n in ("changed", "not_native"))
    ctx = b.gep(words_object, [i64(BYTES_DATA)], source_etype=ir.IntType(8))
    long_ty = ir.PointerType(ir.FunctionType(PTR, [I64]))

    def status(code: int) -> None:
        b.ret(b.call(item(ctx, CTX_LONG, long_ty), [i64(code)]))

    def at(base: ir.Value, offset: int | ir.Value, typ: ir.Type) -> ir.Value:
        return b.load(b.gep(base, [as_i64(offset)], source_etype=ir.IntType(8)), typ=typ)

    def item(base: ir.Value, i: ir.Value | int, typ: ir.Type = I64) -> ir.Value:
        """Word i of the word array at `base`; a function pointer is loaded typed, which the builder can call."""
        return b.load(b.gep(base, [as_i64(i)], source_etype=I64), typ=typ)

    def check(cond: ir.Value, fail: ir.Block) -> None:
        _check(b, fn, cond, fail)

    def native_array(a: ir.Value, ndim: ir.Value) -> ir.Value:
        """Is array `a` float32 of rank `ndim`, C-contiguous and aligned? (its type checked before)"""
        flags = b.and_(at(a, ARRAY_FLAGS, I32), ir.Constant(I32, C_CONTIGUOUS_ALIGNED))
        return b.and_(b.and_(b.icmp_unsigned("==", at(a, ARRAY_DESCR, I64), item(ctx, CTX_F32)),
                             b.icmp_signed("==", b.sext(at(a, ARRAY_ND, I32), I64), ndim)),
                      b.icmp_unsigned("==", flags, ir.Constant(I32, C_CONTIGUOUS_ALIGNED)))

    def is_array(a: ir.Value) -> ir.Value:
        return b.icmp_unsigned("==", at(a, OBJECT_TYPE, I64), item(ctx, CTX_NDARRAY))

    def dims_match(a: ir.Value, ndim: ir.Value, first: ir.Value) -> None:
        """Dimensions 1.. of array `a` (of rank `ndim`) are ctx's words from `first` on."""
        dims = at(a, ARRAY_DIMS, PTR)
        _loop(b, fn, i64(1), ndim, lambda i: b.icmp_signed(
            "==", item(dims, i), item(ctx, b.add(i, b.sub(first, i64(1))))), not_native)

    # Whatever a caller passes is checked before anything is read through it (the Python side,
    # `NativeHotCall.__call__`, passes what it checked and made; a builtin can be called otherwise).
    check(b.icmp_signed("==", nargs, i64(4 if several else 3)), not_native)
    x, out, scratch = (b.load(b.gep(argv, [i64(i)], source_etype=PTR), typ=PTR) for i in range(3))
    # the input: an ndarray, float32, of the compiled rank and feature dimensions, C-contiguous,
    # aligned, of 1 to hot_rows rows
    ndim = item(ctx, CTX_NDIM)
    check(is_array(x), not_native)
    check(native_array(x, ndim), not_native)
    rows = b.load(at(x, ARRAY_DIMS, PTR), typ=I64)
    check(b.and_(b.icmp_signed(">", rows, i64(0)), b.icmp_signed("<=", rows, item(ctx, CTX_HOT_ROWS))), not_native)
    dims_match(x, ndim, i64(CTX_FIXED))
    # the output: the same of the compiled output row, of `rows` rows
    out_ndim = item(ctx, CTX_OUT_NDIM)
    check(is_array(out), not_native)
    check(native_array(out, out_ndim), not_native)
    check(b.icmp_signed("==", b.load(at(out, ARRAY_DIMS, PTR), typ=I64), rows), not_native)
    dims_match(out, out_ndim, item(ctx, CTX_OUT_DIMS))
    # the scratch: None (the helper's stack, for up to stack_rows rows) or a float32 vector of what
    # `rows` rows need
    on_stack = b.icmp_unsigned("==", b.ptrtoint(scratch, I64), item(ctx, CTX_NONE))
    with b.if_else(on_stack) as (stack_case, array_case):
        with stack_case:
            check(b.icmp_signed("<=", rows, item(ctx, CTX_STACK_ROWS)), not_native)
            stack_end = b.block
        with array_case:
            check(is_array(scratch), not_native)
            check(native_array(scratch, i64(1)), not_native)
            need = emit_floats(b, rows, *(item(ctx, w) for w in (CTX_SCRATCH_CAP, CTX_SCRATCH_PER_ROW,
                                                                  CTX_SCRATCH_FIXED, CTX_SCRATCH_PACK, CTX_PACK_ROWS)))
            check(b.icmp_signed(">=", b.load(at(scratch, ARRAY_DIMS, PTR), typ=I64), need), not_native)
            array_data, array_end = at(scratch, ARRAY_DATA, PTR), b.block
    scratch_data = b.phi(PTR)
    scratch_data.add_incoming(stack, stack_end)
    scratch_data.add_incoming(array_data, array_end)

    if several:  # each of the tuple's items an ndarray as compiled, its data pointer in a table
        more = b.load(b.gep(argv, [i64(3)], source_etype=PTR), typ=PTR)
        check(b.icmp_unsigned("==", at(more, OBJECT_TYPE, I64), item(ctx, CTX_TUPLE)), not_native)
        n_more = item(ctx, CTX_NMORE)
        check(b.icmp_signed("==", at(more, TUPLE_SIZE, I64), n_more), not_native)

        def more_item(i: ir.Value) -> ir.Value:
            return at(more, b.add(i64(TUPLE_ITEMS), b.mul(i, i64(8))), PTR)

        # the type first: the array fields are read only from what is an ndarray
        _loop(b, fn, i64(0), n_more, lambda i: b.icmp_unsigned(
            "==", at(more_item(i), OBJECT_TYPE, I64), item(ctx, CTX_NDARRAY)), not_native)
        ranks = item(ctx, CTX_RANKS, PTR)
        _loop(b, fn, i64(0), n_more, lambda i: native_array(more_item(i), item(ranks, i)), not_native)
        checks = item(ctx, CTX_DIMCHECKS, PTR)

        def dim_as_compiled(c: ir.Value) -> ir.Value:
            at3 = b.mul(c, i64(3))
            a, d, size = (item(checks, b.add(at3, i64(k))) for k in range(3))
            want = b.select(b.icmp_signed("<", size, i64(0)), rows, size)
            return b.icmp_signed("==", item(at(more_item(a), ARRAY_DIMS, PTR), d), want)

        _loop(b, fn, i64(0), item(ctx, CTX_NDIMCHECKS), dim_as_compiled, not_native)

        with for_range(b, 0, n_more, name="data") as loop:
            b.store(at(more_item(loop.index), ARRAY_DATA, PTR), b.gep(inputs, [i64(0), loop.index]))

    # every watched word as it was
    words, expect = item(ctx, CTX_WORDS, PTR), item(ctx, CTX_EXPECT, PTR)
    _loop(b, fn, i64(0), item(ctx, CTX_NWORDS), lambda i: b.icmp_unsigned(
        "==", b.load(b.load(b.gep(words, [i], source_etype=PTR), typ=PTR), typ=I64),
        b.load(b.gep(expect, [i], source_etype=I64), typ=I64)), changed)

    # run the entry without the GIL, as a plain ctypes call would
    save_ty = ir.FunctionType(PTR, [])
    restore_ty = ir.FunctionType(ir.VoidType(), [PTR])
    entry_ty = ir.FunctionType(ir.VoidType(), [I64, PTR, PTR, PTR, PTR] + [PTR] * several)
    state = b.call(item(ctx, CTX_SAVE, ir.PointerType(save_ty)), [])
    args = [rows, at(x, ARRAY_DATA, PTR), at(out, ARRAY_DATA, PTR), scratch_data, item(ctx, CTX_TABLE, PTR)]
    b.call(item(ctx, CTX_ENTRY, ir.PointerType(entry_ty)), args + ([inputs] if inputs is not None else []))
    b.call(item(ctx, CTX_RESTORE, ir.PointerType(restore_ty)), [state])
    status(0)

    for block, code in ((changed, CHANGED), (not_native, INPUT_NOT_NATIVE)):
        b.position_at_end(block)
        status(code)


def _check(b: ir.IRBuilder, fn: ir.Function, cond: ir.Value, fail: ir.Block) -> None:
    """`if not cond: goto fail`; the builder goes on where it holds."""
    ok = fn.append_basic_block("ok")
    b.cbranch(cond, ok, fail)
    b.position_at_end(ok)


def _loop(b: ir.IRBuilder, fn: ir.Function, start: ir.Value, stop: ir.Value, ok: Any, fail: ir.Block) -> None:
    """`for i in range(start, stop): if not ok(i): goto fail`; the builder ends after the loop."""
    with for_range(b, start, stop, name="check") as loop:
        _check(b, fn, ok(loop.index), fail)


METH_FASTCALL = 0x0080


class _MethodDef(ctypes.Structure):
    _fields_ = [("ml_name", ctypes.c_char_p), ("ml_meth", ctypes.c_void_p), ("ml_flags", ctypes.c_int),
                ("ml_doc", ctypes.c_char_p)]


_new_builtin = ctypes.pythonapi.PyCFunction_NewEx
_new_builtin.restype, _new_builtin.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.py_object, ctypes.c_void_p]


@functools.lru_cache(maxsize=1)
def helper() -> tuple[JitEngine, _MethodDef, _MethodDef]:
    """The process's hot-call helpers: their engine and method definitions, kept alive here, for one
    input and for several (`builtin` makes a callable of one over an armed call's words)."""
    engine = JitEngine(_emit_helper())

    def method(name: str) -> _MethodDef:
        return _MethodDef(name.encode(), engine.address(name), METH_FASTCALL, None)

    return engine, method("tinycomp.hot_call"), method("tinycomp.hot_call_more")


def builtin(method: _MethodDef, words: Sequence[int], keep: Any) -> Callable[..., int]:
    """The helper `method` as a Python builtin whose `self` is `words` packed as 64-bit words,
    holding `method` and `keep` (what the method's code and the words point into)."""
    packed = Words(bytes((ctypes.c_uint64 * len(words))(*words)))
    packed.keep = (method, keep)
    return _new_builtin(ctypes.addressof(method), packed, None)


def _most_rows_within(size: Extent, floats: int, most: int) -> int:
    """The most rows, up to `most`, whose scratch (`size.floats`, which never shrinks as rows grow)
    fits `floats`: 0 if not even one row's does."""
    lo, hi = 0, most
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if size.floats(mid) <= floats else (lo, mid - 1)
    return lo


def _c_address(fn: Any) -> int:
    return ctypes.cast(fn, ctypes.c_void_p).value or 0


class NativeHotCall:
    """One armed hot call: the entry, its parameter table, and the words that must not have moved.

    `keep` holds every object whose words are watched and the arrays the table points into: while
    this object lives, each recorded address stays valid. Built after a full call found the model
    and its parameters as compiled; any later change makes `__call__` return None (the caller then
    takes the full path, which arms a new one).
    """

    def __init__(self, entry: int, table: ctypes.Array, features: Sequence[int], out_row: Sequence[int],
                 hot_rows: int, scratch: Any, scratch_size: Extent,
                 watched: Iterable[int], keep: Any, armed_for: Any = None, more_inputs: Sequence[tuple] = ()):
        if len(more_inputs) > MAX_MORE_INPUTS:
            raise ValueError(f"the native hot call takes up to {MAX_MORE_INPUTS} inputs after the first; "
                             f"got {len(more_inputs)}")
        self.armed_for, self.stale = armed_for, False  # stale: a watched word moved since arming
        self.n_more = len(more_inputs)
        words = list(watched)
        self._words = (ctypes.c_void_p * max(1, len(words)))(*words)
        self._expect = (ctypes.c_uint64 * max(1, len(words)))(*(_word(w) for w in words))
        self.features, self.out_shape_tail = tuple(features), tuple(out_row)
        self._one_row = (1, *self.out_shape_tail)
        # The scratch a call of `rows` needs (`ModulePlan.scratch`: one row block's at most, the
        # pack buffer only from its rows on). Leased for every row, 50,000 rows reserved 220 MB for
        # a plan that uses 0.5 MB.
        self._scratch = scratch_size
        # batches whose scratch fits the helper's stack buffer pass None for the scratch
        self._stack_rows = _most_rows_within(scratch_size, STACK_SCRATCH // 4, hot_rows)
        self.hot_rows, self.scratch = hot_rows, scratch
        # the inputs after the first: each one's rank, and (input, dimension, size) per dimension (-1: the batch)
        self._ranks = (ctypes.c_int64 * max(1, self.n_more))(*(len(s) for s in more_inputs))
        checks = [w for i, s in enumerate(more_inputs) for d, n in enumerate(s) for w in (i, d, -1 if n is None else n)]
        self._dim_checks = (ctypes.c_int64 * max(1, len(checks)))(*checks)
        ctx = [entry, ctypes.addressof(table), ctypes.addressof(self._words), ctypes.addressof(self._expect),
               len(words), _c_address(ctypes.pythonapi.PyEval_SaveThread),
               _c_address(ctypes.pythonapi.PyEval_RestoreThread), id(np.dtype(np.float32)), id(np.ndarray),
               1 + len(self.features), self.n_more, ctypes.addressof(self._ranks), len(checks) // 3,
               ctypes.addressof(self._dim_checks), id(None), _c_address(ctypes.pythonapi.PyLong_FromLong), id(tuple),
               hot_rows, self._stack_rows, scratch_size.fixed, scratch_size.per_row, scratch_size.row_block or hot_rows,
               scratch_size.pack, scratch_size.pack_rows, 1 + len(self.out_shape_tail),
               CTX_FIXED + len(self.features), *self.features, *self.out_shape_tail]
        assert len(ctx) == CTX_FIXED + len(self.features) + len(self.out_shape_tail)
        helpers = helper()
        # the builtin keeps what its code and words point into: the helper's engine, the entry's
        # code (armed_for, the compiled artifact), the parameter table and watched objects, and this
        # call's word arrays
        self._fn = builtin(helpers[2] if more_inputs else helpers[1], ctx,
                           (helpers, armed_for, keep, table, self._words, self._expect, self._ranks, self._dim_checks))

    def __call__(self, a: Any, more: tuple = ()) -> np.ndarray | None:
        """The model on batch `a` (float32, C-contiguous, (rows, *features), 0 < rows <= hot_rows)
        and, for a model of several inputs, the tuple `more` of the others (arrays as compiled, of
        `rows` rows where batched), or None: another input, or something the compiled code depends on
        changed. The helper checks every argument's type, dtype, layout and dimensions; only what
        allocating the output and choosing the scratch need is looked at here."""
        if type(a) is not np.ndarray or len(more) != self.n_more or type(more) is not tuple:
            return None
        try:
            rows = len(a)  # the rank and every dimension are the helper's to check
        except TypeError:  # 0-D
            return None
        if not 0 < rows <= self.hot_rows:
            return None
        out = np.empty(self._one_row if rows == 1 else (rows, *self.out_shape_tail), _F32)
        # the lease is held until the call returns (`ScratchPool.lease`)
        scratch = None if rows <= self._stack_rows else self.scratch.lease(self._scratch.floats(rows))
        buffer = None if scratch is None else scratch[0]
        status = self._fn(a, out, buffer, more) if self.n_more else self._fn(a, out, buffer)
        if status == 0:
            return out
        if status == CHANGED:
            self.stale = True
        return None
