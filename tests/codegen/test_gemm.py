"""emit_linear: C = act(A @ W + B) against a float64 NumPy reference, on every path and tail."""

from __future__ import annotations

import ctypes
import dataclasses
import mmap
import threading

import numpy as np
import pytest
from llvmlite import ir

from tinycomp.codegen.gemm import emit_linear, narrow_small_rows, pack_floats, pack_min_rows, plan_narrow
from tinycomp.codegen.target import NO_LIMITS, CacheLimits, Target, host
from tinycomp.runtime.engine import JitEngine

WIDTH = 16
SIG = ctypes.CFUNCTYPE(None, ctypes.c_int64, *[ctypes.c_void_p] * 5)
SIG_RESIDUAL = ctypes.CFUNCTYPE(None, ctypes.c_int64, *[ctypes.c_void_p] * 6)  # ... and R
PROT_NONE = 0  # mprotect: no access (the mmap module names only PROT_READ, PROT_WRITE, PROT_EXEC)
GUARD = 64  # floats of sentinel after every output / scratch buffer, to catch overruns

REFERENCE_ACT = {
    None: lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "tanh": np.tanh,
    "gelu": lambda x: x / (1.0 + np.exp(-1.702 * x)),
}

# (K, N, bias, activation): the reference MLP, square and odd layers, and the odd widths.
LAYERS = [
    (784, 256, True, "relu"), (256, 128, True, "relu"), (128, 10, True, None),
    (1024, 1024, False, None), (128, 128, True, "relu"), (100, 37, True, "relu"), (37, 10, False, "relu"),
    *[(37, n, True, "relu") for n in (1, 3, 15, 16, 17, 100, 257, 1024)],
    (64, 100, False, None), (3, 5, True, None),
    (784, 200, True, "relu"),  # in-place W in blocks of 64 columns, the last block 8 columns
    # 3 vectors: the 8 x 3 tile (one lane of the third vector, a full third vector); 5, 6, 7 and 17
    # vectors: 6 x 4 panels then a 6 x 1 / 6 x 2 / 6 x 3 tail panel (whole, or one lane of it).
    (64, 33, True, "relu"), (100, 48, False, None), (50, 80, True, "relu"), (130, 96, True, None),
    (300, 97, True, "relu"), (40, 112, False, None), (30, 257, True, None),
    (2500, 40, True, "relu"),  # summed in chunks of 512 (gemm_kernels.LONG_SUM_K), the last of 452
    (1100, 37, False, "relu"),  # the 8 x 3 tile summing chunks of 512, 512 and 76
]
# Every leftover of the 6- and 8-row tiles (0..7), both paths, through the leftover kernels or one
# overlapping full tile (gemm.OVERLAP_MIN_ROWS): the latter on the packed path (129, 131, 133, 137,
# 200, 1000) and, for the 1024 x 1024 layer (W larger than L2), on the direct one (67 .. 100).
MS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 14, 31, 33, 35, 67, 70, 71, 75, 100, 129, 131, 133, 137, 200, 1000]


def layer_name(K, N, bias, act, residual=False):
    return f"lin_{K}_{N}_{int(bias)}_{act or 'id'}" + ("_res" if residual else "")


class Compiled:
    """All test layers in one module: one JIT compile for the whole file."""

    def __init__(self, layers, width=WIDTH, cache=NO_LIMITS):
        mod = ir.Module(name="test_gemm")
        for K, N, bias, act, *res in layers:  # (K, N, bias, act[, residual])
            emit_linear(mod, layer_name(K, N, bias, act, *res), K=K, N=N, bias=bias, activation=act, width=width,
                        residual=bool(res and res[0]), cache=cache)
        self.llvm_ir = str(mod)
        self.engine = JitEngine(self.llvm_ir)
        self.width = width
        self.fns = {layer_name(*ly): (SIG_RESIDUAL if ly[4:5] == (True,) else SIG)(self.engine.address(layer_name(*ly)))
                    for ly in layers}

    def run(self, layer, A, W, B, C=None, pack=None, R=None):
        """act(A @ W + B) for a (K, N, bias, act) layer, + R for a (K, N, bias, act, True) one."""
        K, N, bias, act, *_ = layer
        M = A.shape[0]
        out = np.full(M * N + GUARD, 7.0, np.float32) if C is None else C
        scratch = np.full(pack_floats(K, N, self.width) + GUARD, 7.0, np.float32) if pack is None else pack
        b_ptr = B.ctypes.data if bias else None
        res = [R.ctypes.data] if R is not None else []
        self.fns[layer_name(*layer)](M, A.ctypes.data, W.ctypes.data, b_ptr, out.ctypes.data, scratch.ctypes.data, *res)
        assert np.all(out[M * N:] == 7.0), "kernel wrote past the end of C"
        assert np.all(scratch[len(scratch) - GUARD:] == 7.0), "kernel wrote past pack_floats()"
        return out[: M * N].reshape(M, N)


@pytest.fixture(scope="module")
def compiled():
    return Compiled(LAYERS + [(64, 40, True, a) for a in ("sigmoid", "tanh", "gelu")] + OTHER_ACT_LAYERS)


# Costly activations on tiles as wide as C (one contiguous run per tile) and on column panels.
OTHER_ACT_LAYERS = [(100, 37, True, "tanh"), (64, 100, True, "tanh"), (37, 17, False, "sigmoid"),
                    (50, 257, True, "gelu")]


def make_inputs(rng, M, K, N):
    A = rng.standard_normal((M, K), dtype=np.float32)
    W = (rng.standard_normal((K, N)) / np.sqrt(K)).astype(np.float32)
    B = rng.standard_normal(N, dtype=np.float32)
    return A, W, B


def check(out, A, W, B, bias, act):
    """Compiled error within 2x NumPy float32's error against float64, plus a tiny atol."""
    pre64 = A.astype(np.float64) @ W.astype(np.float64) + (B if bias else 0.0)
    pre32 = (A @ W + (B if bias else np.float32(0))).astype(np.float64)
    ref = REFERENCE_ACT[act](pre64)
    np_err = np.abs(REFERENCE_ACT[act](pre32) - ref).max(initial=0.0)
    scale = max(1.0, np.abs(ref).max(initial=0.0))
    err = np.abs(out.astype(np.float64) - ref).max(initial=0.0)
    assert err <= 2 * np_err + 1e-6 * scale, f"error {err:.3g} vs numpy float32 {np_err:.3g}"


@pytest.mark.parametrize("layer", LAYERS, ids=lambda ly: layer_name(*ly))
def test_matches_float64_reference(compiled, layer):
    K, N, bias, act = layer
    rng = np.random.default_rng(K * 1000 + N)
    for M in MS:
        if M * K * N > 2.5e8:  # keep the file fast: 1024 x 1024 only up to M = 200 (packed)
            continue
        A, W, B = make_inputs(rng, M, K, N)
        check(compiled.run(layer, A, W, B), A, W, B, bias, act)


@pytest.mark.parametrize("layer", [ly for ly in LAYERS + OTHER_ACT_LAYERS + [(64, 40, True, "gelu")]
                                   if plan_narrow(ly[0], ly[1], WIDTH) is None], ids=lambda ly: layer_name(*ly))
def test_a_row_does_not_depend_on_the_batch_around_it(compiled, layer):
    """Every tiled kernel sums over k in the same order, and the main tiles' epilogue in registers
    does what the leftover rows' epilogue pass does, so a row's result is bit-identical whichever
    path, tile or leftover kernel computes it, and whether an overlapping last tile computed it
    twice."""
    K, N, bias, act = layer
    rng = np.random.default_rng(7)
    A, W, B = make_inputs(rng, 140, K, N)
    alone = np.concatenate([compiled.run(layer, A[i:i + 1], W, B) for i in range(A.shape[0])])
    for M in (5, 7, 62, 64, 67, 126, 128, 129, 131, 137, 140):
        np.testing.assert_array_equal(compiled.run(layer, A[:M], W, B), alone[:M], err_msg=f"M={M}")


def ending_at_a_guard_page(values: np.ndarray, keep: list) -> np.ndarray:
    """A copy of `values` whose last byte is the last before a page that may not be read: a
    kernel reading one float past the array faults (`keep` holds the mapping)."""
    page = mmap.PAGESIZE
    size = -(-values.nbytes // page) * page + page
    buf = mmap.mmap(-1, size, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    assert libc.mprotect(base + size - page, page, PROT_NONE) == 0, ctypes.get_errno()
    keep.append(buf)
    out = np.frombuffer(buf, np.float32, count=values.size, offset=size - page - values.nbytes).reshape(values.shape)
    out[...] = values
    return out


@pytest.mark.parametrize("layer", [(784, 200, True, "relu"), (300, 97, True, "relu"), (30, 257, True, None),
                                   (100, 48, False, None), (64, 100, True, "tanh")], ids=lambda ly: layer_name(*ly))
def test_w_is_never_read_past_its_end(compiled, layer):
    """The full row tiles read B's rows in whole vectors only from a zero-padded packed panel or a
    panel of W as wide as the tile (flag WHOLE_B); a last, partial panel of W read in place takes
    masked loads. W ends at an unreadable page, on the direct (6, 100 rows) and packed (200) paths."""
    K, N, bias, act = layer
    rng = np.random.default_rng(3)
    keep: list = []
    for M in (6, 13, 100, 200):
        A, W, B = make_inputs(rng, M, K, N)
        check(compiled.run(layer, A, ending_at_a_guard_page(W, keep), B), A, W, B, bias, act)


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "gelu"])
def test_other_activations(compiled, act):
    layer = (64, 40, True, act)
    rng = np.random.default_rng(1)
    for M in (1, 7, 50):
        A, W, B = make_inputs(rng, M, 64, 40)
        check(compiled.run(layer, A, W, B), A, W, B, True, act)


@pytest.mark.parametrize("layer", OTHER_ACT_LAYERS, ids=lambda ly: layer_name(*ly))
def test_costly_activation_epilogue_whole_rows_and_panels(compiled, layer):
    """act over a whole-width tile as one run of rows * N floats (the masked lanes of each row's
    last vector skipped) or row by row on a column panel: same values, nothing written past C, a
    NaN stays in its row."""
    K, N, bias, act = layer
    rng = np.random.default_rng(K + N)
    for M in (1, 2, 3, 6, 7, 8, 9, 15, 16, 50, 137, 200):
        A, W, B = make_inputs(rng, M, K, N)
        check(compiled.run(layer, A, W, B), A, W, B, bias, act)
    A[4, 1] = np.nan
    out = compiled.run(layer, A, W, B)
    assert np.isnan(out[4]).all() and not np.isnan(np.delete(out, 4, axis=0)).any()


def test_batch_zero_writes_nothing(compiled):
    layer = (784, 256, True, "relu")
    A, W, B = make_inputs(np.random.default_rng(2), 0, 784, 256)
    C = np.full(GUARD, 7.0, np.float32)
    compiled.run(layer, A, W, B, C=C)
    assert np.all(C == 7.0)


@pytest.mark.parametrize("M", [1, 8, 100, 200])  # streaming, direct and packed paths
def test_new_weights_are_never_stale(compiled, M):
    layer = (256, 128, True, "relu")
    rng = np.random.default_rng(3)
    A, W, B = make_inputs(rng, M, 256, 128)
    pack = np.full(pack_floats(256, 128, WIDTH) + GUARD, 7.0, np.float32)
    compiled.run(layer, A, W, B, pack=pack)
    W[...] = rng.standard_normal(W.shape, dtype=np.float32)  # in place: same address
    B[...] = rng.standard_normal(B.shape, dtype=np.float32)
    check(compiled.run(layer, A, W, B, pack=pack), A, W, B, True, "relu")


def test_nan_propagates_like_numpy(compiled):
    layer = (128, 128, True, "relu")
    A, W, B = make_inputs(np.random.default_rng(4), 40, 128, 128)
    A[3, 5] = np.nan
    out = compiled.run(layer, A, W, B)
    assert np.isnan(out[3]).all() and not np.isnan(np.delete(out, 3, axis=0)).any()


def test_concurrent_calls_on_disjoint_rows(compiled):
    """The runtime splits the batch across threads, each with its own pack buffer."""
    layer = (784, 256, True, "relu")
    K, N = 784, 256
    A, W, B = make_inputs(np.random.default_rng(5), 403, K, N)
    C = np.zeros((403, N), np.float32)
    fn = compiled.fns[layer_name(*layer)]
    bounds = [0, 7, 150, 151, 403]

    def work(lo, hi):
        pack = np.empty(pack_floats(K, N, WIDTH), np.float32)
        for _ in range(3):
            fn(hi - lo, A[lo:].ctypes.data, W.ctypes.data, B.ctypes.data, C[lo:].ctypes.data, pack.ctypes.data)

    threads = [threading.Thread(target=work, args=lh) for lh in zip(bounds, bounds[1:], strict=False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(C, A, W, B, True, "relu")


def test_ir_uses_explicit_zmm_vectors_and_fma(compiled):
    assert "<16 x float>" in compiled.llvm_ir
    assert "llvm.fma.v16f32" in compiled.llvm_ir
    assert "fast" not in compiled.llvm_ir.split()  # no fast-math flags


def test_avx2_width_is_correct_too():
    layers = [(784, 256, True, "relu"), (37, 17, False, None), (100, 37, True, "tanh"), (200, 40, True, None)]
    c8 = Compiled(layers, width=8)
    assert "llvm.fma.v8f32" in c8.llvm_ir
    rng = np.random.default_rng(6)
    for layer in layers:
        K, N, bias, act = layer
        for M in (1, 5, 40):
            A, W, B = make_inputs(rng, M, K, N)
            check(c8.run(layer, A, W, B), A, W, B, bias, act)


def test_zero_inner_dimension_gives_activation_of_bias():
    """K == 0: no kernel runs (they need K >= 1); the epilogue alone writes act(0 + bias)."""
    layers = [(0, 20, True, "relu"), (0, 20, False, None), (0, 20, True, "tanh"), (0, 20, False, "tanh")]
    c = Compiled(layers)
    rng = np.random.default_rng(7)
    B = rng.standard_normal(20, dtype=np.float32)
    for layer in layers:
        for M in (1, 8, 40):
            A = np.zeros((M, 0), np.float32)
            W = np.zeros((0, 20), np.float32)
            out = c.run(layer, A, W, B)
            want = B if layer[2] else np.zeros(20, np.float32)
            if layer[3] == "tanh":
                np.testing.assert_allclose(out, np.broadcast_to(np.tanh(want), (M, 20)), rtol=1e-6, atol=0)
            else:
                want = np.maximum(want, 0) if layer[3] == "relu" else want
                np.testing.assert_array_equal(out, np.broadcast_to(want, (M, 20)))


# ------------------------------------------------------------------ narrow layers (N < width)

NARROW_LAYERS = [
    (64, 1, False, "sigmoid"), (784, 1, True, "relu"), (17, 1, True, None), (16, 1, True, None),
    (64, 2, False, "sigmoid"), (784, 2, True, None), (33, 2, True, "relu"),
    (64, 3, True, "relu"), (100, 3, False, None), (47, 3, True, "tanh"),
    (128, 10, True, None), (784, 10, True, "relu"), (32, 10, False, None), (47, 10, True, "gelu"),
    (33, 4, True, None), (65, 5, True, "relu"), (32, 6, False, None), (48, 7, True, None), (80, 8, True, "relu"),
    (49, 12, True, None), (96, 15, True, "relu"), (34, 15, True, None),
    (9, 2, False, None), (1, 1, True, None), (31, 10, True, "relu"),  # short sums: the tiled path
]
# Every leftover of the 4- and 2-row blocks, both sides of every small-batch threshold.
NARROW_MS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 17, 26, 27, 28, 33, 63, 64, 65, 100, 288]


@pytest.fixture(scope="module")
def narrow():
    return Compiled(NARROW_LAYERS + [(0, 3, True, "relu"), (0, 1, False, None)])


def test_narrow_plan_covers_exactly_the_layers_below_one_vector():
    assert all(plan_narrow(32, n, 16) is not None for n in range(1, 16))
    assert plan_narrow(64, 16, 16) is None and plan_narrow(64, 8, 8) is None and plan_narrow(64, 7, 8) is not None
    # Short sums keep the tiled path (OpenBLAS's order there); one column from one full vector on.
    assert plan_narrow(31, 2, 16) is None and plan_narrow(15, 1, 16) is None and plan_narrow(16, 1, 16) is not None
    for n in range(1, 16):
        s = plan_narrow(64, n, 16)
        assert s.rows * n * s.unroll <= 24  # no spills
    assert pack_floats(784, 1, 16) == 0  # one column: W is read in place
    assert pack_floats(784, 10, 16) == 10 * 784 and pack_floats(33, 5, 16) == 5 * 48
    assert pack_floats(33, 3, 16) == 3 * 48  # (a small batch reads W of up to 4 columns in place)


# packing and never-packing tiled layers (1 to 3 vectors of columns), narrow ones transposing W
# from IN_PLACE_ROWS or from narrow_small_rows, and one column (never)
PACK_LAYERS = [(784, 256, True, "relu"), (100, 37, True, "relu"), (37, 17, False, "sigmoid"), (64, 3, True, "relu"),
               (128, 10, True, None), (96, 15, True, "relu"), (784, 1, True, "relu")]


@pytest.mark.parametrize("layer", PACK_LAYERS, ids=lambda ly: layer_name(*ly))
def test_pack_is_written_from_pack_min_rows_on_only(compiled, narrow, layer):
    """A call on fewer than `pack_min_rows` rows never touches `pack` (a module then passes a pointer
    past its scratch's end: `ModulePlan.scratch_floats`); one on that many writes it, so the bound
    is also as small as it can be. Results match float64 on both sides."""
    K, N, bias, act = layer
    fns = compiled if plan_narrow(K, N, WIDTH) is None else narrow
    least = pack_min_rows(K, N, WIDTH)
    rng = np.random.default_rng(K * N)
    no_pack = np.full(GUARD, 7.0, np.float32)  # only the guard
    if least is None:
        A, W, B = make_inputs(rng, 300, K, N)
        check(fns.run(layer, A, W, B, pack=no_pack), A, W, B, bias, act)
        return
    A, W, B = make_inputs(rng, least - 1, K, N)
    check(fns.run(layer, A, W, B, pack=no_pack), A, W, B, bias, act)
    pack = np.full(pack_floats(K, N, WIDTH) + GUARD, 7.0, np.float32)
    A, W, B = make_inputs(rng, least, K, N)
    check(fns.run(layer, A, W, B, pack=pack), A, W, B, bias, act)
    assert (pack[:-GUARD] != 7.0).any()


@pytest.mark.parametrize("layer", NARROW_LAYERS, ids=lambda ly: layer_name(*ly))
def test_narrow_matches_float64_reference(narrow, layer):
    K, N, bias, act = layer
    rng = np.random.default_rng(K * 1000 + N)
    for M in NARROW_MS:
        A, W, B = make_inputs(rng, M, K, N)
        check(narrow.run(layer, A, W, B), A, W, B, bias, act)


@pytest.mark.parametrize("layer", [ly for ly in NARROW_LAYERS if ly[0] >= (16 if ly[1] == 1 else 32)],
                         ids=lambda ly: layer_name(*ly))
def test_narrow_rows_come_out_the_same_in_any_batch(narrow, layer):
    """The in-place kernel (small batches) sums in the dot kernel's order: a row's outputs are the
    same bits alone, in a small batch or in a large one (they took two orders, so threads=1 and
    threads=None differed in the last bit where a thread's share left a few rows). So do the rows
    the dot kernel runs one at a time after its blocks of several."""
    K, N, _, _ = layer
    rng = np.random.default_rng(K * 7 + N)
    A, W, B = make_inputs(rng, 100, K, N)
    whole = narrow.run(layer, A, W, B)
    assert N == 1 or narrow_small_rows(N, WIDTH) > 1  # both kernels take part
    for M in (1, 2, 3, 5, 9, 17, 27):
        parts = np.concatenate([narrow.run(layer, A[i:i + M], W, B) for i in range(0, 100, M)])
        np.testing.assert_array_equal(parts, whole, err_msg=f"in batches of {M}")


def test_narrow_zero_inner_dimension_and_zero_batch(narrow):
    rng = np.random.default_rng(8)
    B = rng.standard_normal(3, dtype=np.float32)
    for M in (1, 5, 40):
        out = narrow.run((0, 3, True, "relu"), np.zeros((M, 0), np.float32), np.zeros((0, 3), np.float32), B)
        np.testing.assert_array_equal(out, np.broadcast_to(np.maximum(B, 0), (M, 3)))
        out = narrow.run((0, 1, False, None), np.zeros((M, 0), np.float32), np.zeros((0, 1), np.float32), B)
        np.testing.assert_array_equal(out, np.zeros((M, 1), np.float32))
    for layer in ((784, 10, True, "relu"), (64, 1, False, "sigmoid")):
        A, W, B = make_inputs(rng, 0, layer[0], layer[1])
        C = np.full(GUARD, 7.0, np.float32)
        narrow.run(layer, A, W, B, C=C)
        assert np.all(C == 7.0)


@pytest.mark.parametrize("M", [1, 8, 26, 27, 100])  # in place (small batches) and transposed
@pytest.mark.parametrize("N", [1, 3, 10])
def test_narrow_new_weights_are_never_stale(narrow, M, N):
    layer = next(ly for ly in NARROW_LAYERS if ly[1] == N and ly[2])
    K = layer[0]
    rng = np.random.default_rng(9)
    A, W, B = make_inputs(rng, M, K, N)
    pack = np.full(pack_floats(K, N, WIDTH) + GUARD, 7.0, np.float32)
    narrow.run(layer, A, W, B, pack=pack)
    W[...] = rng.standard_normal(W.shape, dtype=np.float32)  # in place: same address
    B[...] = rng.standard_normal(B.shape, dtype=np.float32)
    check(narrow.run(layer, A, W, B, pack=pack), A, W, B, True, layer[3])


def test_narrow_nan_stays_in_its_row(narrow):
    for layer in ((128, 10, True, None), (64, 3, True, "relu"), (784, 1, True, "relu")):
        K, N = layer[0], layer[1]
        for M in (5, 40):
            A, W, B = make_inputs(np.random.default_rng(10), M, K, N)
            A[3, K - 1] = np.nan  # in the K tail where there is one
            out = narrow.run(layer, A, W, B)
            assert np.isnan(out[3]).all() and not np.isnan(np.delete(out, 3, axis=0)).any()


def cancellation_ratio(fn_out, K, N, seed, M=288):
    """max |ours - ref| / max |NumPy float32 - ref| for inputs ~1e4 whose outputs are ~1."""
    rng = np.random.default_rng(seed)
    A = (1e4 * rng.standard_normal((M, K))).astype(np.float32)
    W = (rng.standard_normal((K, N)) / np.sqrt(K)).astype(np.float32)
    ref = A.astype(np.float64) @ W.astype(np.float64)
    return np.abs(fn_out(A, W) - ref).max() / np.abs(A @ W - ref).max()


@pytest.mark.parametrize("K", [64, 784])
@pytest.mark.parametrize("N", [1, 2, 3, 10])
def test_narrow_accuracy_under_cancellation_is_numpys(narrow, K, N):
    """A sequential sum over K in one lane (the old 6 x 1 tile) was 2.4-5.6x NumPy's error here
    (median over seeds); dot products over K-vectorized partial sums are at or below NumPy's.
    Both the transposed (all rows at once) and the in-place small-batch kernel are checked."""
    from threadpoolctl import threadpool_limits

    layer = (K, N, False, None)
    c = narrow if layer in NARROW_LAYERS else Compiled([layer])
    small = max(1, narrow_small_rows(N, WIDTH) - 1)
    zero_b = np.zeros(N, np.float32)

    def in_slices(A, W):  # every call below the small-batch threshold
        return np.concatenate([c.run(layer, A[i:i + small], W, zero_b) for i in range(0, len(A), small)])

    with threadpool_limits(1):
        for fn_out in (lambda A, W: c.run(layer, A, W, zero_b), in_slices):
            ratios = [cancellation_ratio(fn_out, K, N, seed) for seed in range(7)]
            assert np.median(ratios) <= 1.5 and max(ratios) <= 2.0, ratios


@pytest.mark.parametrize("K", [1536, 2048, 4096, 8192, 32768])
def test_long_sums_keep_to_the_parity_rule(K):
    """A tile summing all K products in its registers erred up to 10x NumPy's blocked sums (K = 32768,
    1.8e-5 against 1.6e-6) and failed the parity rule now and then from K = 1536, mostly from 4096;
    in chunks of K_CHUNK it keeps to it, in every tile and leftover kernel (rows 1 .. 13) and column
    layout (one vector, four). The K = 2048 case fails with whole-K sums."""
    from tinycomp.parity import check_parity

    layers = [(K, 16, True, None), (K, 64, False, None)]
    c = Compiled(layers)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        for layer in layers:
            A, W, B = make_inputs(rng, 13, K, layer[1])
            B = B if layer[2] else np.zeros_like(B)
            ref = A.astype(np.float64) @ W.astype(np.float64) + B
            for M in (1, 2, 3, 5, 8, 13):
                report = check_parity(c.run(layer, A[:M], W, B), A[:M] @ W + B, ref[:M])
                assert report.ok, f"{layer_name(*layer)} M={M} seed={seed}: {report}"


def test_direct_path_sweeps_l2_sized_column_blocks():
    """Batches read W in place one block of columns at a time: a 784-row W in 64-column panels
    (200 KB each), a 256-row W in one block of all its 128 columns."""
    from tinycomp.codegen.gemm import DIRECT_BLOCK_BYTES, plan_gemm

    assert plan_gemm(784, 256, WIDTH).direct_nc == 64
    assert plan_gemm(784, 200, WIDTH).direct_nc == 64
    assert plan_gemm(256, 128, WIDTH).direct_nc == 128
    for K, N in ((784, 256), (256, 128), (1024, 1024), (37, 17)):
        plan = plan_gemm(K, N, WIDTH)
        assert plan.direct_nc % plan.main.nr == 0
        assert 4 * K * plan.direct_nc <= DIRECT_BLOCK_BYTES or plan.direct_nc == plan.main.nr


def test_tiles_match_the_layer_width():
    """A layer's full row tiles compute no whole masked-off vector: 3 vectors take one 8 x 3 panel;
    wider layers whose vectors are not a multiple of 4 end in a 6-row tail panel exactly as wide as
    their last vectors. Layers of a multiple of 4 vectors (the reference MLP) get no tail kernel,
    so their module keeps the same few kernels (compile time)."""
    from tinycomp.codegen.gemm import plan_gemm
    from tinycomp.codegen.gemm_kernels import TileShape

    def shapes(K, N, width=WIDTH):
        p = plan_gemm(K, N, width)
        return (p.main.mr, p.main.nv), (p.tail.mr, p.tail.nv) if p.tail else None

    assert shapes(100, 37) == ((8, 3), None)
    assert shapes(64, 48) == ((8, 3), None)
    assert shapes(64, 32) == ((6, 2), None) and shapes(37, 17) == ((6, 2), None)
    assert shapes(1024, 100) == ((6, 4), (6, 3))
    assert shapes(784, 257) == ((6, 4), (6, 1))
    assert shapes(784, 200) == ((6, 4), (6, 1))
    assert shapes(50, 96) == ((6, 4), (6, 2))
    for K, N in ((784, 256), (256, 128), (1024, 1024), (128, 128), (64, 64)):
        assert shapes(K, N) == ((6, 4), None)
    assert shapes(100, 37, 8) == ((6, 2), (6, 1)) and shapes(784, 256, 8) == ((6, 2), None)
    # the packed blocks stay whole panels of the main tile; the tail panel is only ever the last
    for K, N in ((1024, 100), (784, 257), (784, 200), (30, 257)):
        plan = plan_gemm(K, N, WIDTH)
        assert plan.nc % plan.main.nr == 0 and plan.direct_nc % plan.main.nr == 0
        assert -(-(N % plan.main.nr) // WIDTH) == plan.tail.nv
    mlp = Compiled([(784, 256, True, "relu"), (256, 128, True, "relu")])
    assert "tile6x1" not in mlp.llvm_ir and "tile6x2" not in mlp.llvm_ir and "tile6x3" not in mlp.llvm_ir
    assert TileShape(8, 3, WIDTH).nr == 48


def test_only_the_full_row_tiles_prefetch_the_next_tiles_a_in_a_loop_of_their_own():
    """The main tile runs three copies of its k-loop: masked B, whole B, and whole B prefetching
    the next row tile's six rows of A (flag NEXT_A, the first pass over A; one prefetch a step walks
    them), each copy prefetching B's four vectors ahead; an exact one (every panel whole: 256
    columns) has no masked copy. The leftover kernels never prefetch A; each prefetches B in its one
    loop, PREFETCH_ROWS ahead (the 4-row one too: without it, batch 4 took longer than batch 6)."""
    import re

    def prefetches(layer) -> dict[str, int]:
        bodies = dict(re.findall(r'define internal void @"(tinycomp\.gemm\.tile[^"]+)"\(.*?\)[^{]*\{(.*?)\n\}',
                                 Compiled([layer]).llvm_ir, re.S))
        return {name: body.count('call void @"llvm.prefetch.p0"') for name, body in bodies.items()}

    assert prefetches((784, 250, True, "relu")) == {
        "tinycomp.gemm.tile6x4p8n.lin": 3 * 4 + 1,  # one walks the next tile's A
        "tinycomp.gemm.tile2x8p8": 8,  # B's eight vectors, one loop
        "tinycomp.gemm.tile1x16p8": 16,
        "tinycomp.gemm.tile4x4p8": 4}
    assert prefetches((784, 256, True, "relu")) == {
        "tinycomp.gemm.tile6x4p8xn.lin": 2 * 4 + 1, "tinycomp.gemm.tile2x8p8x": 8, "tinycomp.gemm.tile1x16p8x": 16,
        "tinycomp.gemm.tile4x4p8x": 4}


@pytest.mark.parametrize("width", [16, 8, 4])
def test_a_module_compiles_each_tile_once_exact_or_masked(width):
    """A tile whose panels are all whole is exact (no lane masks) unless another GEMM of the module
    needs it masked: then the masked kernel serves both (`gemm.masked_tiles`). With 8 lanes the
    reference MLP's 10-column head is a GEMM whose 6 x 2 main tile is masked; the 256- and 128-column
    layers share it instead of compiling an exact copy."""
    import re

    from tests.codegen.test_split import reference_mlp_graph
    from tinycomp.codegen.module import lower_graph

    llvm_ir = lower_graph(reference_mlp_graph(), width).llvm_ir
    tiles = re.findall(r'define internal void @"tinycomp\.gemm\.tile([^"]+)"', llvm_ir)
    shapes = [re.sub(r"x(?=[.a-z]|$)", "", t) for t in tiles]  # the name less the exact mark
    assert len(shapes) == len(set(shapes)), tiles
    if width == 16:  # its head is narrow (dot products): the GEMMs' tiles are all whole
        assert {"6x4p8xn.lin", "4x4p8x", "2x8p8x"} <= set(tiles)


def test_tail_panel_with_new_weights_and_nan(compiled):
    """The tail panel (packed and in place) reads the current W and keeps a NaN in its own row."""
    layer = (300, 97, True, "relu")
    rng = np.random.default_rng(8)
    for M in (14, 200):
        A, W, B = make_inputs(rng, M, 300, 97)
        pack = np.full(pack_floats(300, 97, WIDTH) + GUARD, 7.0, np.float32)
        compiled.run(layer, A, W, B, pack=pack)
        W[:, 90:] = rng.standard_normal((300, 7), dtype=np.float32)
        check(compiled.run(layer, A, W, B, pack=pack), A, W, B, True, "relu")
        A[5, 7] = np.nan
        out = compiled.run(layer, A, W, B, pack=pack)
        assert np.isnan(out[5]).all() and not np.isnan(np.delete(out, 5, axis=0)).any()


def test_aliased_w_larger_than_l2_is_read_in_place_only_up_to_the_host_limit():
    """A host limit (`Target.aliased_direct_max_rows`) applies to W larger than L2 whose rows are a
    multiple of 4 KB apart, and only there, whose in-place path then sums in K-chunks; a host
    without one keeps DIRECT_MAX_ROWS and whole sums everywhere."""
    from tinycomp.codegen.gemm import DIRECT_BLOCK_BYTES, DIRECT_MAX_ROWS, L2_BYTES, direct_max_rows, plan_gemm

    assert 4 * 1024 * 1024 > L2_BYTES >= 4 * 256 * 1024  # the layers below sit on either side
    limit = CacheLimits(16)
    assert direct_max_rows(1024, 1024, limit) == direct_max_rows(512, 2048, limit) == 16
    aliased = plan_gemm(1024, 1024, WIDTH, cache=limit)
    # in place it sums in K-chunks of DIRECT_BLOCK_BYTES, in blocks as wide as the one-row kernel
    assert aliased.direct_max_rows == 16 and aliased.direct_nc == aliased.leftover[-1].nr == 256
    assert 4 * aliased.direct_kc * aliased.direct_nc == DIRECT_BLOCK_BYTES
    for K, N in ((1024, 1000), (256, 1024), (1100, 256), (784, 256)):  # rows not 4 KB apart, or W within L2
        assert direct_max_rows(K, N, limit) == DIRECT_MAX_ROWS
        assert plan_gemm(K, N, WIDTH, cache=limit).direct_kc == 0
    assert direct_max_rows(1024, 1024) == plan_gemm(1024, 1024, WIDTH).direct_max_rows == DIRECT_MAX_ROWS
    assert plan_gemm(1024, 1024, WIDTH).direct_kc == 0


def test_w_whose_panels_outgrow_l2_is_packed_from_a_few_dozen_rows():
    """Read in place, a W larger than L2 whose K x 64 panels are too large to stay in it (or rows
    2 KB apart) was re-read from L3 by every row tile: Linear(8000, 8000) at 128 rows took 345 ms,
    184 ms packed (NumPy ~130). The small layers of the benchmark models keep DIRECT_MAX_ROWS."""
    from tinycomp.codegen.gemm import DIRECT_MAX_ROWS, STREAMED_MAX_ROWS, direct_max_rows, plan_gemm

    for K, N in ((3000, 3000), (2000, 2000), (8000, 8000), (1536, 1536), (2048, 512), (4096, 128)):
        assert direct_max_rows(K, N) == plan_gemm(K, N, WIDTH).direct_max_rows == STREAMED_MAX_ROWS
    for K, N in ((784, 256), (256, 128), (512, 512), (128, 512), (512, 128), (2048, 64), (2500, 100)):
        assert direct_max_rows(K, N) == DIRECT_MAX_ROWS
    import tinycomp as tc
    from tinycomp.nn import Linear, Tensor
    layer = Linear(2048, 512)
    fast = tc.compile(layer, threads=1)
    x = np.random.default_rng(0).standard_normal((40, 2048)).astype(np.float32)
    packed, alone = fast(x).data, fast(x[:1]).data  # 40 rows packed, 1 read in place: the same sums
    np.testing.assert_array_equal(packed[:1], alone)
    np.testing.assert_allclose(packed, layer(Tensor(x)).data, rtol=1e-4, atol=1e-4)


def test_a_core_with_less_l2_also_limits_w_with_rows_2_kb_apart():
    """On a core with less L2 than L2_BYTES (Zen 3's 512 KB), a W larger than that L2 with rows a
    multiple of SMALL_L2_ALIASED_STRIDE (2 KB) apart is aliased too: lnmlp's 512 x 512 and 256 x 1024
    (1 MB). A W within that L2, or with rows 1 KB or 3 KB apart, keeps DIRECT_MAX_ROWS; and the
    same layers on a core with 1 MB keep it as well."""
    from tinycomp.codegen.gemm import DIRECT_MAX_ROWS, direct_max_rows, plan_gemm

    small, large = CacheLimits(16, 512 * 1024), CacheLimits(16, 1 << 20)
    for K, N in ((512, 512), (256, 1024), (1024, 512), (512, 1536), (2048, 512)):
        assert direct_max_rows(K, N, small) == plan_gemm(K, N, WIDTH, cache=small).direct_max_rows == 16
        assert plan_gemm(K, N, WIDTH, cache=small).direct_kc > 0
        assert direct_max_rows(K, N, CacheLimits(0, 512 * 1024)) != 16  # no host limit: no K-chunks
    for K, N in ((512, 512), (256, 1024), (1024, 512)):
        assert direct_max_rows(K, N, large) == DIRECT_MAX_ROWS and plan_gemm(K, N, WIDTH, cache=large).direct_kc == 0
    for K, N in ((256, 512), (784, 256), (1024, 256), (1024, 768)):  # within 512 KB, or 1 KB / 3 KB apart
        assert direct_max_rows(K, N, small) == DIRECT_MAX_ROWS and plan_gemm(K, N, WIDTH, cache=small).direct_kc == 0


# Aliased layers (W larger than L2, rows a multiple of 4 KB apart; on the 512 KB L2 these layers are
# planned for, also 2 KB) with a host limit: K-chunked in-place path up to it, packed above. 1100
# rows: a last K-chunk of 76; 2048 x 1024 with gelu and a residual: the finishing epilogue after the
# chunks; 1024 x 2048 without a bias; 512 x 512 and 256 x 1024: aliased only on the small L2.
ALIASED = [(1024, 1024, True, "relu"), (1100, 1024, True, None), (2048, 1024, True, "gelu"),
           (1024, 2048, False, "relu"), (512, 512, True, "gelu"), (256, 1024, False, None)]


@pytest.fixture(scope="module")
def aliased():
    with_r = [ly + (True,) for ly in ALIASED if ly[3] == "gelu"]  # and the gelu layers + R
    c = Compiled(ALIASED + with_r, cache=CacheLimits(16, 512 * 1024))
    assert f"tinycomp.gemm.driver.kc.v{WIDTH}" in c.llvm_ir  # the driver with the K-chunked loops
    return c


@pytest.mark.parametrize("layer", ALIASED, ids=lambda ly: layer_name(*ly))
@pytest.mark.parametrize("M", [1, 3, 5, 6, 7, 11, 16, 17, 24, 67])
def test_aliased_layer_in_k_chunks_and_packed_matches_the_reference(aliased, layer, M):
    """With the host limit set, an aliased layer reads W in place up to 16 rows, summing in
    K-chunks (it never touches the pack buffer), and packs W from 17 on (it fills it); every
    leftover of the 6-row tiles; both match float64 NumPy."""
    K, N, bias, act = layer
    rng = np.random.default_rng(M)
    A, W, B = make_inputs(rng, M, K, N)
    pack = np.full((pack_floats(K, N, WIDTH) if M > 16 else 0) + GUARD, 7.0, np.float32)
    out = aliased.run(layer, A, W, B, pack=pack)
    check(out, A, W, B, bias, act)
    assert np.any(pack[:-GUARD] != 7.0) == (M > 16)
    if act == "gelu":  # + R: the same sums, R added last
        R = rng.standard_normal((M, N), dtype=np.float32)
        np.testing.assert_array_equal(aliased.run(layer + (True,), A, W, B, R=R), out + R)


# Target fields the cache key leaves out: a name is only a label, and the rest follow from the triple
# and the CPU features, which it holds.
NOT_IN_KEY = {"name", "fused_multiply_add", "pointer_bits", "float64_hardware", "reloc"}


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Target) if f.name not in NOT_IN_KEY])
def test_every_host_fact_the_plans_read_is_part_of_the_cache_key(field):
    """Object code built for another L2 size or host limit (row blocks, K-chunks) must not load."""
    h = host()
    value = getattr(h, field)
    other = dataclasses.replace(h, **{field: value + (8 if isinstance(value, int) else "-other")})
    assert h.cache_fields != other.cache_fields


@pytest.mark.parametrize("layer", ALIASED, ids=lambda ly: layer_name(*ly))
def test_an_aliased_row_does_not_depend_on_the_batch_around_it(aliased, layer):
    """The K-chunked in-place path adds each chunk's sums to C in the order the packed path's
    kernels add them in registers (`plan_gemm` gives every kernel of the layer its chunk): a row
    is bit-identical alone, in a batch summed in K-chunks (up to the limit, 16 here) and in a
    packed one."""
    K, N, bias, act = layer
    rng = np.random.default_rng(11)
    A, W, B = make_inputs(rng, 45, K, N)
    alone = np.concatenate([aliased.run(layer, A[i:i + 1], W, B) for i in range(A.shape[0])])
    for M in (5, 7, 16, 17, 45):
        np.testing.assert_array_equal(aliased.run(layer, A[:M], W, B), alone[:M], err_msg=f"M={M}")


# Layers narrower than a vector whose sums are too short for the dot-product kernels (`plan_narrow`),
# with costly activations: their full row tiles store x + bias and `finish` applies the activation
# to 16 tiles' rows at once (96 rows of the 6-row tile), the overlapping last tile's on their own.
FINISHED_LAYERS = [(4, 1, True, "tanh"), (3, 5, True, "sigmoid"), (10, 15, False, "gelu"), (12, 4, True, "tanh"),
                   (0, 5, True, "sigmoid")]
FINISHED_MS = [0, 1, 5, 6, 7, 95, 96, 97, 101, 128, 129, 133, 192, 193, 1000, 1001]


@pytest.fixture(scope="module")
def finished():
    return Compiled([ly + (res,) for ly in FINISHED_LAYERS for res in (False, True)])


def test_narrow_tiles_leave_a_costly_activation_to_finish(finished):
    """A tile one vector wide gave the activation each row's vector, N of its 16 lanes used:
    Linear(4, 1) + tanh took 8 x eager's time at 65,536 rows."""
    for K, N, *_ in FINISHED_LAYERS:
        assert plan_narrow(K, N, WIDTH) is None
    tile = finished.llvm_ir.split('@"tinycomp.gemm.tile6x1p8n.lin"(', 1)[1].split("\n}\n", 1)[0]
    assert "tinycomp.gemm.tanh" not in tile and "tinycomp.gemm.sigmoid" not in tile
    for act in ("tanh", "sigmoid", "gelu"):
        assert f'define internal void @"tinycomp.gemm.finish.{act}.v16"' in finished.llvm_ir


@pytest.mark.parametrize("layer", FINISHED_LAYERS, ids=lambda ly: layer_name(*ly))
def test_finished_narrow_tiles_match_the_reference_in_any_batch(finished, layer):
    """Whether a row's activation ran in a group of tiles, after the overlapping tile or in the
    leftover rows' epilogue, it is the float64 reference's within rounding and bit-identical to
    the row computed alone; + R is exactly the layer plus R; a NaN stays in its row."""
    K, N, bias, act = layer
    rng = np.random.default_rng(K + 31 * N)
    A, W, B = make_inputs(rng, max(FINISHED_MS), K, N)
    alone = np.concatenate([finished.run(layer + (False,), A[i:i + 1], W, B) for i in range(200)])
    for M in FINISHED_MS:
        out = finished.run(layer + (False,), A[:M], W, B)
        check(out, A[:M], W, B, bias, act)
        np.testing.assert_array_equal(out[:200], alone[:M], err_msg=f"M={M}")
        R = rng.standard_normal((M, N), dtype=np.float32)
        np.testing.assert_array_equal(finished.run(layer + (True,), A[:M], W, B, R=R), out + R, err_msg=f"M={M}")
    if K:
        A[150, 0] = np.nan
        out = finished.run(layer + (False,), A[:193], W, B)
        assert np.isnan(out[150]).all() and not np.isnan(np.delete(out, 150, axis=0)).any()
