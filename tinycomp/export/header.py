"""The C header of an export: one entry point, its sizes and shapes as macros, what the model is."""

from __future__ import annotations

from dataclasses import dataclass

from . import entry


@dataclass(frozen=True)
class HeaderInfo:
    name: str
    version: str  # tinycomp's
    target: str  # e.g. "aarch64-linux-gnu (aarch64-unknown-linux-gnu, generic)"
    model: str  # the model's repr
    layers: list[str]  # one line per node of the optimized graph
    parameters: int
    in_row: tuple[int, ...]
    out_row: tuple[int, ...]
    scratch_per_row: int  # bytes
    scratch_fixed: int  # bytes
    row_block: int  # rows the entry runs at a time (scratch holds at most this many rows); 0: all
    max_batch: int
    weights_bytes: int
    weights_file: str | None  # the .bin file of external weights, None when embedded
    # a forward() of several inputs: the shapes of those after x ((None, ...) batched, else shared)
    more_inputs: tuple[tuple, ...] = ()
    input_names: list[str] | None = None  # the entry's input parameters (default x, x1, ...)
    training: bool = False  # dropout active: the entry takes the stream position (seed, offset)
    dropout_layers: int = 0
    scratch_pack: int = 0  # bytes of the GEMMs' packing buffer, after the rest: calls of pack_rows rows or more
    pack_rows: int = 0


def _comment(text: str) -> str:
    """Text safe inside a C block comment (no `*/`, nor a `/*` -Wcomment warns of, nor a `??` trigraph
    -std=c99 reads as another character, which -Wtrigraphs warns of), one ` * ` line per line."""
    safe = text.replace("*/", "* /").replace("/*", "/ *").replace("??", "? ?")
    return "\n".join(f" * {line}".rstrip() for line in safe.splitlines())


def _shape_macros(prefix: str, what: str, row: tuple[int, ...]) -> list[str]:
    lines = [f"#define {prefix}_{what}_RANK {len(row) + 1}  /* (batch, {', '.join(map(str, row))}) */"]
    lines += [f"#define {prefix}_{what}_DIM{i} {d}" for i, d in enumerate(row, start=1)]
    floats = 1
    for d in row:
        floats *= d
    lines.append(f"#define {prefix}_{what}_ROW_FLOATS {floats}")
    return lines


def _more_input_macros(prefix: str, shapes: tuple[tuple, ...], names: list[str]) -> list[str]:
    """INPUT<i>_... for the inputs after x: a batched one as x's macros; a shared one (the same for
    every row) with its whole shape, no batch dimension, and BATCHED 0; for both FLOATS(batch), the
    floats the array holds at `batch` rows."""
    lines = [f"#define {prefix}_INPUTS {1 + len(shapes)}  /* {', '.join(names)} */"]
    for i, shape in enumerate(shapes, start=1):
        what = f"INPUT{i}"
        if shape[:1] == (None,):
            lines += [f"#define {prefix}_{what}_BATCHED 1  /* {names[i]} */", *_shape_macros(prefix, what, shape[1:]),
                      f"#define {prefix}_{what}_FLOATS(batch) ((int64_t)(batch) * {prefix}_{what}_ROW_FLOATS)"]
            continue
        floats = 1
        for d in shape:
            floats *= d
        lines += [f"#define {prefix}_{what}_BATCHED 0  /* {names[i]}: one array for every row */",
                  f"#define {prefix}_{what}_RANK {len(shape)}  /* ({', '.join(map(str, shape))}) */",
                  *[f"#define {prefix}_{what}_DIM{j} {d}" for j, d in enumerate(shape)],
                  f"#define {prefix}_{what}_FLOATS(batch) ((int64_t){floats})  /* any batch: a constant */"]
    return lines


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join("batch" if d is None else str(d) for d in shape) + ")"


def header_text(info: HeaderInfo) -> str:
    p, n = info.name.upper(), info.name
    names = info.input_names or ["x"] + [f"x{i}" for i in range(1, 1 + len(info.more_inputs))]
    params = ", ".join(f"const float *{m}" for m in names)
    call = ", ".join(names)
    stream_params = ", uint64_t seed, uint64_t offset" if info.training else ""
    training = [
        "",
        (f"Training mode: dropout is active in {info.dropout_layers} Dropout layer(s). seed is the 64-bit"
         if info.dropout_layers else "Training mode, but no Dropout layer draws a mask (none, or p = 0 or 1):"
         " seed and offset are taken and unused. seed is the 64-bit"),
        "Philox key (tinycomp.nn.dropout_key(s) is the key tinycomp.nn.manual_seed(s) sets) and offset the",
        "forward call number: the masks are those eager and compiled training draw on that call of each",
        "layer (call `offset` of a layer used once per forward), with the layer ids numbered at export.",
    ] if info.training else []
    more_text = [f"Input {m}: float32 {_shape_text(s)}, row-major" + ("" if s[:1] == (None,) else
                 ", the same for every row") + "." for m, s in zip(names[1:], info.more_inputs, strict=True)]
    guard = f"TINYCOMP_{p}_H"
    weights = (f"external: {info.weights_file} ({info.weights_bytes:,} bytes), bound with {n}_bind_weights()"
               if info.weights_file else f"embedded in {n}.o as read-only data ({info.weights_bytes:,} bytes)")
    about = "\n".join([
        f"{n}.h: a model exported by tinycomp {info.version} for {info.target}.",
        "",
        f"Parameters: {info.parameters:,} float32; weights {weights}.",
        f"Input{' ' + names[0] if info.more_inputs else ''}: float32 rows of shape "
        f"(batch, {', '.join(map(str, info.in_row))}), row-major; "
        f"output: (batch, {', '.join(map(str, info.out_row))}).",
        *more_text,
        "",
        "Model:",
        *[f"  {line}" for line in info.model.splitlines()],
        "Compiled layers (the optimized graph):",
        *[f"  {line}" for line in info.layers],
        "",
        f"{n}_forward({call}, y, batch, scratch{', seed, offset' if info.training else ''}) computes y for "
        "`batch` rows; scratch is caller-owned",
        f"memory of {p}_SCRATCH_BYTES(batch) bytes (any alignment a float has). No heap, no threads,",
        "nothing kept between calls: calls on different scratch buffers may run concurrently.",
        f"Returns {p}_OK, or {p}_ERR_ARGS (batch < 0 or > {p}_MAX_BATCH, a NULL or misaligned",
        "pointer, or y or scratch sharing memory with another buffer or with the bound weights: no call",
        f"runs in place) or {p}_ERR_WEIGHTS (no weights bound, also at batch 0) without touching y.",
        "A batch of 0 reads no buffer (its pointers may be NULL); scratch may be NULL when",
        f"{p}_SCRATCH_BYTES(batch) is 0.",
        *training,
    ])
    block = info.row_block
    rows = f"((batch) < {block} ? (batch) : {block})" if block else "(batch)"
    pack = f" + ((batch) >= {p}_SCRATCH_PACK_ROWS ? {p}_SCRATCH_BYTES_PACK : 0)" if info.scratch_pack else ""
    scratch = f"((int64_t){rows} * {p}_SCRATCH_BYTES_PER_ROW + {p}_SCRATCH_BYTES_FIXED{pack})"
    lines = [
        "/*", _comment(about), " */", f"#ifndef {guard}", f"#define {guard}", "", "#include <stdint.h>", "",
        "#ifdef __cplusplus", 'extern "C" {', "#endif", "",
        *_shape_macros(p, "INPUT", info.in_row),
        *_shape_macros(p, "OUTPUT", info.out_row),
        *(_more_input_macros(p, info.more_inputs, names) if info.more_inputs else []),
        f"#define {p}_PARAMETERS {info.parameters}",
        f"#define {p}_SCRATCH_BYTES_PER_ROW {info.scratch_per_row}",
        f"#define {p}_SCRATCH_BYTES_FIXED {info.scratch_fixed}",
    ]
    if info.scratch_pack:
        lines += [f"#define {p}_SCRATCH_BYTES_PACK {info.scratch_pack}  /* the packed weights, from: */",
                  f"#define {p}_SCRATCH_PACK_ROWS {info.pack_rows}  /* smaller batches never pack */"]
    if block:
        lines.append(f"#define {p}_ROW_BLOCK {block}  /* rows per block: scratch never holds more */")
    lines += [
        f"#define {p}_SCRATCH_BYTES(batch) {scratch}",
        f"#define {p}_MAX_BATCH INT64_C({info.max_batch})",
        f"#define {p}_WEIGHTS_BYTES {info.weights_bytes}",
        f"#define {p}_OK {entry.OK}",
        f"#define {p}_ERR_ARGS ({entry.ERR_ARGS})",
        f"#define {p}_ERR_WEIGHTS ({entry.ERR_WEIGHTS})",
        "",
        *([f"#define {p}_TRAINING 1  /* dropout active: the entry takes seed and offset */"] if info.training
          else []),
        f"int {n}_forward({params}, float *y, int64_t batch, void *scratch{stream_params});",
    ]
    if info.weights_file:
        lines += [
            f"#define {p}_WEIGHTS_EXTERNAL 1",
            f"/* weights: the whole contents of {info.weights_file} ({p}_WEIGHTS_BYTES bytes, 4-byte aligned),",
            f"   kept alive while {n}_forward runs; {p}_OK, or {p}_ERR_WEIGHTS if they are not that file's. */",
            f"int {n}_bind_weights(const void *weights);",
        ]
    lines += ["", "#ifdef __cplusplus", "}", "#endif", f"#endif /* {guard} */", ""]
    return "\n".join(lines)
