"""Build small llvmlite modules, JIT them with the project's engine and call them via ctypes."""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import numpy as np
from llvmlite import ir

from tinycomp.codegen.cgutils import F32, I64, PTR, element_ptr, for_range, vector_type
from tinycomp.runtime.engine import JitEngine


def new_module(name: str = "test") -> ir.Module:
    return ir.Module(name=name)


def jit(module: ir.Module, *names: str) -> tuple[JitEngine, dict[str, int]]:
    """Compile `module`; return the engine (keep it alive while calling) and function addresses."""
    engine = JitEngine(str(module))
    return engine, {n: engine.address(n) for n in names}


def f32_ptr(a: np.ndarray) -> ctypes.c_void_p:
    assert a.dtype == np.float32 and a.flags.c_contiguous
    return ctypes.c_void_p(a.ctypes.data)


def c_function(address: int, n_pointers: int) -> Callable:
    """A ctypes callable for `void f(i64, ptr * n_pointers)`."""
    proto = ctypes.CFUNCTYPE(None, ctypes.c_int64, *([ctypes.c_void_p] * n_pointers))
    return proto(address)


def emit_map_kernel(module: ir.Module, name: str, width: int, apply) -> ir.Function:
    """`void name(i64 n, ptr out, ptr x)`: out[i:i+W] = apply(builder, module, x[i:i+W]).

    n must be a multiple of `width`; `apply` emits the vector function under test.
    """
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64, PTR, PTR]), name)
    n, out, x = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    vt = vector_type(width)
    with for_range(builder, 0, n, step=width) as loop:
        i = loop.index
        v = builder.load(element_ptr(builder, x, i), typ=vt, align=4)
        builder.store(apply(builder, module, v), element_ptr(builder, out, i), align=4)
    builder.ret_void()
    return fn


def run_map(address: int, x: np.ndarray, width: int) -> np.ndarray:
    """Run a map kernel over float32 `x` (padded up to a multiple of `width`)."""
    n = -(-x.size // width) * width
    padded = np.zeros(n, np.float32)
    padded[: x.size] = x
    out = np.empty(n, np.float32)
    c_function(address, 2)(n, f32_ptr(out), f32_ptr(padded))
    return out[: x.size]


# MXCSR's sticky flags: a result rounded into the subnormals (underflow), a subnormal operand (denormal)
UNDERFLOW_OR_DENORMAL = 0x10 | 0x02


def mxcsr_functions(module: ir.Module) -> None:
    """`void clear_fp_flags()` and `i32 fp_flags()`: the x86 MXCSR's sticky exception flags (bits 0-5)."""
    i32, ptr = ir.IntType(32), ir.PointerType(ir.IntType(8))
    st = ir.Function(module, ir.FunctionType(ir.VoidType(), [ptr]), "llvm.x86.sse.stmxcsr")
    ld = ir.Function(module, ir.FunctionType(ir.VoidType(), [ptr]), "llvm.x86.sse.ldmxcsr")
    for name in ("clear_fp_flags", "fp_flags"):
        fn = ir.Function(module, ir.FunctionType(ir.VoidType() if name.startswith("clear") else i32, []), name)
        b = ir.IRBuilder(fn.append_basic_block())
        slot = b.alloca(i32)
        b.call(st, [b.bitcast(slot, ptr)])
        if name.startswith("clear"):
            b.store(b.and_(b.load(slot), ir.Constant(i32, ~0x3F)), slot)
            b.call(ld, [b.bitcast(slot, ptr)])
            b.ret_void()
        else:
            b.ret(b.and_(b.load(slot), ir.Constant(i32, 0x3F)))


__all__ = ["F32", "UNDERFLOW_OR_DENORMAL", "c_function", "emit_map_kernel", "f32_ptr", "jit", "mxcsr_functions",
           "new_module", "run_map"]
