"""The loops around the GEMM tile kernels, once per module, and the kernel that packs W.

Every layer's function (`gemm.emit_linear`) is one call to `driver_function` with two structs: the
call's pointers (M, A, W, B, C, pack) and the layer's plan (sizes, block widths and the tile,
leftover, pack and epilogue functions to call). Panel counts, column counts and the tail masks are
run-time values, so the packed and the direct path share one copy of the loops, and every layer of
a module shares it: fewer functions is the main lever on compile time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from llvmlite import ir

from .cgutils import (
    F32,
    I1,
    I32,
    I64,
    PTR,
    column_masks,
    compile_as_glue,
    define_once,
    element_ptr,
    for_range,
    i64,
    index_min,
    index_udiv,
    internal_kernel,
    masked_load,
    masked_store,
    splat_value,
    vector_type,
)
from .gemm_kernels import ACCUMULATE, NEXT_A, TILE_ARGS, WHOLE_B, TileShape, prefetch_for_read

# Rows of W the pack kernel prefetches ahead: W's rows are N floats apart (4 KB for 1024 columns), a
# stride the hardware prefetchers do not follow. Measured with benchmarks/gemm_ab.py
# (`PACK_PREFETCH_ROWS 0,4,8`), min time against none: one 1024x1024 layer at 256 / 512 rows 1.00 /
# 0.99 with 4, 0.995 / 0.99 with 8; the wide model at batch 256 0.98 with 8.
PACK_PREFETCH_ROWS = 8


TILE_TY = ir.FunctionType(ir.VoidType(), [t for _, t in TILE_ARGS])
PACK_TY = ir.FunctionType(ir.VoidType(), [I64, I64, PTR, I64, PTR])
EPI_TY = ir.FunctionType(ir.VoidType(), [I64, PTR, I64, PTR, I64, I64, PTR])
FINISH_TY = ir.FunctionType(ir.VoidType(), [I64, PTR, PTR])
CALL_ARGS = (("M", I64), ("A", PTR), ("W", PTR), ("B", PTR), ("C", PTR), ("pack", PTR), ("R", PTR))
CONFIG_ARGS = (("K", I64), ("N", I64), ("relu", I64), ("nc", I64), ("direct_nc", I64), ("direct_max", I64),
               ("overlap_min", I64), ("direct_kc", I64), ("main_raw", ir.PointerType(TILE_TY)),
               ("main", ir.PointerType(TILE_TY)), ("main_rows", I64), ("main_nr", I64),
               ("pack_fn", ir.PointerType(PACK_TY)), ("tail", ir.PointerType(TILE_TY)), ("tail_nr", I64),
               ("k4", ir.PointerType(TILE_TY)), ("nr4", I64), ("k2", ir.PointerType(TILE_TY)), ("nr2", I64),
               ("k1", ir.PointerType(TILE_TY)), ("nr1", I64), ("epi", ir.PointerType(EPI_TY)),
               ("finish", ir.PointerType(FINISH_TY)), ("finish_tiles", I64))
CALL_TY = ir.LiteralStructType([t for _, t in CALL_ARGS])
CONFIG_TY = ir.LiteralStructType([t for _, t in CONFIG_ARGS])


def null_fn(fnty: ir.FunctionType) -> ir.Constant:
    return ir.Constant(ir.PointerType(fnty), None)


def driver_function(module: ir.Module, width: int, chunked: bool = False) -> ir.Function:
    """`void driver(ptr call, ptr config)`: the loops of every layer of the module (`_Driver`),
    reading the call's pointers and the layer's plan from two structs. The layers whose plan sums
    in K-chunks on the in-place path (`GemmPlan.direct_kc`) call a second one that also has those
    loops: the others' modules do not compile them (the reference MLP: ~3 ms)."""
    return define_once(module, f"tinycomp.gemm.driver{'.kc' if chunked else ''}.v{width}",
                       lambda name: _emit_driver(module, name, width, chunked))


def _emit_driver(module: ir.Module, name: str, width: int, chunked: bool) -> ir.Function:
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, PTR]), name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    compile_as_glue(fn)  # it only loops over tiles and calls kernels
    call, cfg = fn.args
    call.name, cfg.name = "call", "config"
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    args = {}
    for struct, ty, fields in ((call, CALL_TY, CALL_ARGS), (cfg, CONFIG_TY, CONFIG_ARGS)):
        for i, (nm, t) in enumerate(fields):
            at = builder.gep(struct, [ir.Constant(I32, 0), ir.Constant(I32, i)], source_etype=ty)
            args[nm] = builder.load(at, typ=t, name=nm)
    _Driver(builder, args, width).emit(chunked)
    builder.ret_void()
    return fn


class _Driver:
    """Emits the loops around the tile kernels; every size and kernel is a run-time argument."""

    def __init__(self, builder: ir.IRBuilder, args: dict, width: int):
        self.b, self.a, self.width = builder, args, width
        b = builder
        has_pack = b.icmp_unsigned("!=", args["pack_fn"], null_fn(PACK_TY))
        self.packed = b.and_(b.icmp_signed(">", args["M"], args["direct_max"]), has_pack, name="packed")
        self.has_bias = b.icmp_unsigned("!=", args["B"], ir.Constant(PTR, None))
        # Kernels need K >= 1; with K == 0 the epilogue alone writes act(bias).
        self.has_k = b.icmp_signed(">", args["K"], i64(0))
        self.epi_flags = b.or_(args["relu"], b.select(self.has_k, i64(0), i64(2)))

    def emit(self, chunked: bool) -> None:
        """With `chunked` (the driver only layers with K-chunks call: `driver_function`), the
        direct path in K-chunks (`_emit_chunked`); everything else whole (`_emit_whole`)."""
        if not chunked:
            self._emit_whole()
            return
        b = self.b
        with b.if_else(b.and_(b.not_(self.packed), self.has_k)) as (in_chunks, whole):
            with in_chunks:
                self._emit_chunked()
            with whole:
                self._emit_whole()

    def _emit_whole(self) -> None:
        """Full row tiles: for each L2-sized block of columns, pack it (packed path) or read it in
        place (direct path), and run every tile over it. Then the leftover rows (fewer than a tile).

        From `overlap_min` rows on, the leftover rows go through one more full tile per block, over
        the last rows of the batch, while the block is hot: it recomputes up to five finished rows
        (the same kernel on the same data: bit-identical, and the epilogue applied again to the raw
        sums gives the same values). Below that, they go through the leftover kernels, in place
        over all N, which read W once more: without the overlapping tile, a 1024x1024 layer took
        5,147 us at 256 rows against 4,963 at 258 (benchmarks/gemm_ab.py)."""
        b, a = self.b, self.a
        N, M = a["N"], a["M"]
        block_cols = b.select(self.packed, a["nc"], a["direct_nc"])
        n_blocks = index_udiv(b, b.add(N, b.sub(block_cols, i64(1))), block_cols)
        main_rows = a["main_rows"]
        n_tiles = index_udiv(b, M, main_rows)
        m_full = b.mul(n_tiles, main_rows)
        overlap = b.and_(b.icmp_signed(">", M, m_full), b.icmp_signed(">=", M, a["overlap_min"]), name="overlap")
        with b.if_then(b.icmp_signed(">", m_full, i64(0))):
            with for_range(b, 0, n_blocks, name="jb") as blocks:
                jb = blocks.index
                j0 = b.mul(jb, block_cols)
                cols = b.sub(N, j0)
                cols = index_min(b, cols, block_cols)
                with b.if_then(self.packed):
                    b.call(a["pack_fn"], [a["K"], N, element_ptr(b, a["W"], j0), cols, a["pack"]])
                last = b.select(overlap, b.add(n_tiles, i64(1)), n_tiles)
                with for_range(b, 0, last, name="r") as tiles:
                    t = tiles.index
                    r0 = b.select(b.icmp_signed("<", t, n_tiles), b.mul(t, main_rows), b.sub(M, main_rows))
                    self._panels(a["main"], main_rows, a["main_nr"], r0, j0, cols, may_pack=True,
                                 first_pass=b.icmp_signed("==", jb, i64(0)))
                    self._finish_tiles(t, r0, n_tiles)
        self._leftover_rows(b.select(overlap, M, m_full))

    def _finish_tiles(self, t, r0, n_tiles) -> None:
        """A costly activation on a layer narrower than a vector (`finish_tiles`, a power of two, > 0:
        see `gemm.FINISH_TILES`): its full row tiles store x + bias, which lie back to back in C, and
        after every `finish_tiles` of them `finish` applies the activation (and adds R) to their
        rows in whole vectors, where a tile would give it every row's vector, most lanes masked
        off. The overlapping tile (t == n_tiles) re-stored finished rows: its rows are a group of
        their own. With K == 0 no kernel ran and the tiles were finished already (`_panels`)."""
        b, a = self.b, self.a
        on = b.and_(b.icmp_signed(">", a["finish_tiles"], i64(0)), self.has_k)
        # a power of two: a mask, not a remainder (on 32-bit ARM, a call into a runtime library)
        low = b.sub(b.select(on, a["finish_tiles"], i64(1)), i64(1))
        t1 = b.add(t, i64(1))
        ends = b.or_(b.icmp_signed(">=", t1, n_tiles), b.icmp_signed("==", b.and_(t1, low), i64(0)))
        with b.if_then(b.and_(on, ends)):
            main_rows, N = a["main_rows"], a["N"]
            first = b.select(b.icmp_signed("<", t, n_tiles), b.mul(b.and_(t, b.not_(low)), main_rows), r0)
            at = b.mul(first, N)
            b.call(a["finish"], [b.mul(b.sub(b.add(r0, main_rows), first), N), element_ptr(b, a["C"], at),
                                 b.gep(a["R"], [at], source_etype=F32)])  # R may be null: not `inbounds`

    def _emit_chunked(self) -> None:
        """The direct path of a W whose rows are a multiple of 4 KB apart (`gemm.plan_gemm`): for
        each block of `direct_nc` columns (as wide as the one-row kernel), for each K-chunk of
        `direct_kc` rows, every row of the batch through the raw kernels (full tiles, then 4, 2
        and 1 rows), each chunk's sums added to the ones before it in C (flag ACCUMULATE); then the
        epilogue over the block. Each chunk of the block is read from memory once and stays in L2
        while the row tiles sweep it: in one piece a 1024-deep panel 4 KB-strided did not, and
        every row tile read it from L3 again. No overlapping last tile: it would add its rows' sums
        twice."""
        b, a = self.b, self.a
        N, M, K, kc, nc = a["N"], a["M"], a["K"], a["direct_kc"], a["direct_nc"]
        main_rows = a["main_rows"]
        n_tiles = index_udiv(b, M, main_rows)
        m_full = b.mul(n_tiles, main_rows)
        n_chunks = index_udiv(b, b.add(K, b.sub(kc, i64(1))), kc)
        with for_range(b, 0, index_udiv(b, N, nc), name="cb") as blocks:  # the plan has N % nc == 0
            j0 = b.mul(blocks.index, nc)
            with for_range(b, 0, n_chunks, name="kc") as chunks:
                k0 = b.mul(chunks.index, kc)
                left = b.sub(K, k0)
                part = (k0, index_min(b, left, kc),
                        b.select(b.icmp_signed(">", k0, i64(0)), i64(ACCUMULATE), i64(0)))

                def rows_of_chunk(kern, rows, nr, r0) -> None:
                    self._chunk_panels(kern, rows, nr, r0, j0, part)

                with for_range(b, 0, n_tiles, name="ct") as tiles:
                    rows_of_chunk(a["main_raw"], main_rows, a["main_nr"], b.mul(tiles.index, main_rows))
                self._leftover_rows(m_full, rows_of_chunk)
            bias = b.select(self.has_bias, b.gep(a["B"], [j0], source_etype=F32), ir.Constant(PTR, None))
            b.call(a["epi"], [M, element_ptr(b, a["C"], j0), N, bias, nc, self.epi_flags,
                              b.gep(a["R"], [j0], source_etype=F32)])  # R may be null: not `inbounds`

    def _chunk_panels(self, kern, rows, nr, r0, j0, part) -> None:
        """`kern` on rows r0..r0+rows, K-chunk `part` = (first row of W, rows, flags), over every
        panel of nr columns of the block of `direct_nc` columns at j0."""
        b, a = self.b, self.a
        K, N = a["K"], a["N"]
        k0, kk, flags = part
        A = element_ptr(b, a["A"], b.add(b.mul(r0, K), k0))
        w0 = element_ptr(b, a["W"], b.add(b.mul(k0, N), j0))
        c = element_ptr(b, a["C"], b.add(b.mul(r0, N), j0))
        with self._each_panel(a["direct_nc"], nr) as (col, cols_p):
            whole = b.select(b.icmp_signed("==", cols_p, nr), i64(WHOLE_B), i64(0))
            b.call(kern, [kk, A, K, element_ptr(b, w0, col), N, element_ptr(b, c, col), N, cols_p,
                          ir.Constant(PTR, None), b.or_(flags, whole), ir.Constant(PTR, None)])

    @contextlib.contextmanager
    def _each_panel(self, cols, nr) -> Iterator[tuple[ir.Value, ir.Value]]:
        """for col in range(0, cols, nr): the body with (col, the panel's columns, at most nr)."""
        b = self.b
        with for_range(b, 0, index_udiv(b, b.add(cols, b.sub(nr, i64(1))), nr), name="jp") as panels:
            col = b.mul(panels.index, nr)
            left = b.sub(cols, col)
            yield col, index_min(b, left, nr)

    def _leftover_rows(self, r0, run=None) -> None:
        """Rows r0..M (fewer than a tile): 4 and 2 rows through their kernels where the plan has
        them, then the rest one at a time; each group by `run(kernel, rows, nr, first row)`
        (default: in place over all N, K whole)."""
        b, a = self.b, self.a
        if run is None:
            def run(kern, rows, nr, first) -> None:
                self._panels(kern, rows, nr, first, i64(0), a["N"], may_pack=False)
        for rows, kern, nr in ((4, a["k4"], a["nr4"]), (2, a["k2"], a["nr2"])):
            step = b.and_(b.sub(a["M"], r0), i64(rows))
            step = b.select(b.icmp_unsigned("!=", kern, null_fn(TILE_TY)), step, i64(0))
            with b.if_then(b.icmp_signed("!=", step, i64(0))):
                run(kern, i64(rows), nr, r0)
            r0 = b.add(r0, step)
        with for_range(b, r0, a["M"], name="r1") as one:
            run(a["k1"], i64(1), a["nr1"], one.index)

    def _panels(self, kern, rows, nr, r0, j0, cols, *, may_pack: bool, first_pass: ir.Value | None = None) -> None:
        """Call `kern` on rows r0..r0+rows (an i64 value), every panel of nr columns of the block.
        The full row tiles (`may_pack`) have kernels that add the bias and apply the activation
        themselves (but a narrow layer's costly one: `_finish_tiles`), and a panel of at most
        `tail_nr` columns (the layer's last) goes to the tail kernel; the leftover rows' kernels
        store the raw tile, and the epilogue finishes it (as it does every tile when K == 0, where
        no kernel runs). Packed panel p sits at pack + p*K*nr, its rows
        nr apart (the last: its padded width); in place, at W + j0 + p*nr with rows N apart.
        `first_pass` (an i1; full row tiles only) is true in the first block of columns: its first
        panel's tile prefetches the next tile's rows of A (flag NEXT_A), which then stay in cache
        for the other panels and blocks or, in a batch too large for that, are fetched again by the
        hardware's prefetchers as the tiles sweep a warm cache."""
        b, a, w = self.b, self.a, self.width
        K, N = a["K"], a["N"]
        A = element_ptr(b, a["A"], b.mul(r0, K))
        at_tile = b.add(b.mul(r0, N), j0)
        c = element_ptr(b, a["C"], at_tile)
        # R (the residual, laid out as C) is null for a layer without one: not `inbounds`
        res = b.gep(a["R"], [at_tile], source_etype=F32)
        w_j0 = element_ptr(b, a["W"], j0)
        with self._each_panel(cols, nr) as (col, cols_p):
            b_p = element_ptr(b, w_j0, col)
            ldb = N
            if may_pack:
                packed_b = element_ptr(b, a["pack"], b.mul(K, col))  # panel p = col / nr at p * K * nr
                b_p = b.select(self.packed, packed_b, b_p)
                padded = b.mul(b.udiv(b.add(cols_p, i64(w - 1)), i64(w)), i64(w))
                ldb = b.select(self.packed, padded, ldb)
            # No GEP on a null bias: the epilogue tells "no bias" by the null pointer.
            bias_p = b.select(self.has_bias, b.gep(a["B"], [b.add(j0, col)], source_etype=F32),
                              ir.Constant(PTR, None))
            c_p = element_ptr(b, c, col)
            res_p = b.gep(res, [col], source_etype=F32)
            if may_pack:  # the full row tiles: the last panel may take the narrower tail kernel
                use_tail = b.and_(b.icmp_unsigned("!=", a["tail"], null_fn(TILE_TY)),
                                  b.icmp_signed("<=", cols_p, a["tail_nr"]))
                kern = b.select(use_tail, a["tail"], kern)
            epilogue = [rows, c_p, N, bias_p, cols_p, self.epi_flags, res_p]
            if may_pack:
                # B's rows may be read in whole vectors from a packed panel (zero-padded) or a full one in place
                whole = b.or_(self.packed, b.icmp_signed("==", cols_p, nr))
                flags = b.or_(a["relu"], b.select(whole, i64(WHOLE_B), i64(0)))
                if first_pass is not None:
                    first = b.and_(first_pass, b.icmp_signed("==", col, i64(0)))
                    flags = b.or_(flags, b.select(first, i64(NEXT_A), i64(0)))
                with b.if_else(self.has_k) as (kernel, no_k):
                    with kernel:
                        b.call(kern, [K, A, K, b_p, ldb, c_p, N, cols_p, bias_p, flags, res_p])
                    with no_k:
                        b.call(a["epi"], epilogue)
            else:
                with b.if_then(self.has_k):
                    b.call(kern, [K, A, K, b_p, ldb, c_p, N, cols_p, ir.Constant(PTR, None), i64(0), res_p])
                b.call(a["epi"], epilogue)


def pack_kernel(module: ir.Module, shape: TileShape) -> ir.Function:
    """`void pack(i64 K, i64 ldw, ptr w, i64 cols, ptr pack)`: copy the K x cols block at `w`
    (rows `ldw` apart) into panels of `shape.nr` columns: panel p at pack + p*K*nr holds rows
    k = 0..K-1 of its columns contiguously, so the tile kernel streams it with unit stride and no
    4K aliasing. The last panel is as wide as its columns rounded up to whole vectors,
    zero-padded. It prefetches PACK_PREFETCH_ROWS rows of W ahead. One function per panel width,
    shared by every layer of the module."""
    return define_once(module, f"tinycomp.gemm.pack{shape.nv}x{shape.width}",
                       lambda name: _emit_pack(module, name, shape))


def _emit_pack(module: ir.Module, name: str, shape: TileShape) -> ir.Function:
    fn = internal_kernel(module, name, (("K", I64), ("ldw", I64), ("w", PTR), ("cols", I64), ("pack", PTR)))
    K, ldw, w_ptr, cols, pack = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    nr, w, nv = shape.nr, shape.width, shape.nv
    vt = vector_type(w)
    full = b.udiv(cols, i64(nr))
    tail = b.sub(cols, b.mul(full, i64(nr)))
    tail_masks = column_masks(b, tail, nv, w)
    i1v = ir.VectorType(I1, w)
    tail_store = [splat_value(b, b.icmp_signed(">", tail, i64(v * w)), i1v) for v in range(nv)]
    tail_ld = b.mul(b.udiv(b.add(tail, i64(w - 1)), i64(w)), i64(w))
    panel_size = b.mul(K, i64(nr))
    tail_base = element_ptr(b, pack, b.mul(full, panel_size))
    ahead = b.mul(ldw, i64(PACK_PREFETCH_ROWS))
    # Every loop carries its source and destination pointers (the backend runs without loop
    # strength reduction, `target.HOST_LSR`: indices would cost multiplies per panel).
    with for_range(b, 0, K, name="pk", carry=[w_ptr, pack, tail_base]) as kloop:
        src, d_row, d_tail = kloop.carried
        with for_range(b, 0, full, name="pp", carry=[src, d_row]) as ploop:
            s, d = ploop.carried
            # rows a page apart: see the constant; past W's last row this prefetches, harmlessly, beyond it
            prefetch_for_read(b, b.gep(s, [ahead], source_etype=F32), nv, w)
            for v in range(nv):
                b.store(b.load(element_ptr(b, s, v * w), typ=vt, align=4), element_ptr(b, d, v * w), align=4)
            ploop.carry(element_ptr(b, s, nr), element_ptr(b, d, panel_size))
        with b.if_then(b.icmp_signed(">", tail, i64(0))):
            s = element_ptr(b, src, b.mul(full, i64(nr)))
            for v in range(nv):
                value = masked_load(b, element_ptr(b, s, v * w), tail_masks[v])
                masked_store(b, value, element_ptr(b, d_tail, v * w), tail_store[v])
        kloop.carry(element_ptr(b, src, ldw), element_ptr(b, d_row, nr), element_ptr(b, d_tail, tail_ld))
    b.ret_void()
    return fn
