"""Ahead-of-time export: a model as a C library for the host, 64-bit ARM, a Cortex-M or WebAssembly.

    tc.export(model, "build", input_shape=(None, 784), target="aarch64-linux-gnu")

writes `build/model.o` and `build/model.h` (plus `libmodel.so` for the host, `model.wasm` for
wasm32, `model.bin` with `weights="external"`). The code is the JIT's: the same trace, passes and
lowering, for the target's triple, CPU, vector width and register budget (`codegen.target`).
"""

from __future__ import annotations

import keyword
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..binding import DropoutDraws
from ..codegen.scratch import Extent
from ..codegen.target import Target, target_named
from ..driver import lower, optimized_graph
from ..errors import CompileError
from ..frontend import streams
from ..frontend.inputs import compile_input_spec
from ..frontend.layers import model_lock
from ..frontend.walk import warn_if_dropout_active
from ..ir.graph import Graph
from ..ir.printer import format_graph
from . import entry, files, toolchain
from .header import HeaderInfo, header_text

WEIGHTS = ("embedded", "external")
C_KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if inline int long "
    "register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while "
    "_Bool _Complex _Imaginary".split())
# What an input's C parameter name must also not be: the later C standards' and C++'s keywords (the
# header is for both), and the type names the prototype itself uses (a parameter named int64_t hides
# the type of `int64_t batch` after it).
NOT_PARAMETER_NAMES = C_KEYWORDS | frozenset(
    "_Alignas _Alignof _Atomic _Generic _Noreturn _Static_assert _Thread_local _BitInt _Decimal32 _Decimal64 "
    "_Decimal128 alignas alignof bool constexpr false nullptr static_assert thread_local true typeof "
    "typeof_unqual and and_eq asm bitand bitor catch char8_t char16_t char32_t class co_await co_return "
    "co_yield compl concept const_cast consteval constinit decltype delete dynamic_cast explicit export "
    "friend mutable namespace new noexcept not not_eq operator or or_eq private protected public "
    "reinterpret_cast requires static_cast template this throw try typeid typename using virtual wchar_t xor "
    "xor_eq int64_t uint64_t NULL "
    # lowercase object-like macros: gcc's and clang's in their default GNU modes, and the C library's
    # (<complex.h>, <stdio.h>, <errno.h>, <stdnoreturn.h>, <math.h>) that a program includes beside ours
    "linux unix i386 mips sparc sun vax complex imaginary stdin stdout stderr errno noreturn "
    "math_errhandling".split())


@dataclass
class ExportResult:
    """What `export` wrote, and the sizes a deployment plans memory with."""

    target: Target
    files: dict[str, Path]  # "object", "header", and "shared_library", "wasm", "weights" where written
    object_bytes: int
    weights_bytes: int  # float32 data (params and constants), in the object or the .bin
    scratch_bytes_per_row: int
    scratch_bytes_fixed: int
    row_block: int
    max_batch: int  # larger batches are refused (ERR_ARGS): their byte offsets would not fit a pointer
    in_row: tuple[int, ...]
    out_row: tuple[int, ...]
    parameters: int
    # forward(x, mask, ...): the shapes of the inputs after x, (None, features...) for one with the
    # batch dimension, (features...) for one shared by every row; the C entry takes them after x
    more_inputs: tuple[tuple, ...] = ()
    dropout_layers: int = 0  # training=True: the Dropout layers whose masks the entry draws (seed, offset)
    exported_symbols: list[str] = field(default_factory=list)
    scratch_bytes_pack: int = 0  # the GEMMs' packing buffer, which calls of `pack_rows` rows or more need
    pack_rows: int = 0

    def scratch_bytes(self, batch: int) -> int:
        """Bytes of scratch a call on `batch` rows needs (`<NAME>_SCRATCH_BYTES(batch)` in the header)."""
        return Extent(self.scratch_bytes_per_row, self.scratch_bytes_fixed, self.row_block, self.scratch_bytes_pack,
                      self.pack_rows).floats(batch)  # (an Extent counts in any unit: bytes here)


def export(model: Any, path: Any, *, input_shape: Any, target: str = "host", name: str = "model",
           training: bool = False, weights: str = "embedded") -> ExportResult:
    """Compile `model` ahead of time for `target` and write a C library for it into folder `path`.

    Targets: "host", "aarch64-linux-gnu", "thumbv7em-none-eabihf" (Cortex-M4F/M7), "wasm32".
    `input_shape` is compile()'s: `(None, 784)`, or for a forward() of several inputs one shape per
    input in its parameter order, `[(None, 16), (None, 16)]` (an input after the first given without
    the leading None is shared by every row); the C entry then takes one `const float *` per input.
    `weights="external"` writes them to `<name>.bin` (bound at run time with `<name>_bind_weights`)
    instead of embedding them. `training=True` keeps dropout active: the entry then takes
    `uint64_t seed, uint64_t offset` last, the Philox key (`tinycomp.nn.dropout_key(s)` is the key
    `manual_seed(s)` sets) and the forward call number, and draws the masks eager and compiled
    training draw on that call of every Dropout layer (layer ids as numbered when exporting).
    The weights are those of `model` now: export again after training. Exporting again into the
    same folder under the same name replaces the files, and removes this name's files the new
    export does not write (another target's `lib<name>.so` or `<name>.wasm`, external weights).
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name) or name in C_KEYWORDS \
            or keyword.iskeyword(name):
        raise ValueError(f"name must be a C identifier of at most 63 characters (letters, digits, _; not a keyword), "
                         f"used as the prefix of the exported symbols and, in capitals, of the header's macros "
                         f"(so two names in one program must differ by more than case); got {name!r}")
    if not isinstance(training, bool):
        raise TypeError(f"training must be True or False; got {training!r}")
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}; got {weights!r}")
    t = target_named(target)  # ValueError naming the targets for an unknown one
    if not callable(model):
        raise TypeError(f"export() expects a Layer (or callable model); got {type(model).__name__}")
    features, more = compile_input_spec(input_shape)
    folder = Path(path)
    files.check_folder(folder)  # before the compile, not after it
    if not training:
        warn_if_dropout_active(model, "export")
    # the tools first: nothing is written for an export that cannot be finished
    if t.name == "host":
        toolchain.find_tool(toolchain.HOST_CC, "the host shared library", "apt-get install gcc")
    elif t.name == "wasm32":
        toolchain.find_tool(toolchain.WASM_LD, "a wasm32 export", "apt-get install lld-19")

    with model_lock(model):  # tracing walks the model, as compile does
        traced, graph, _ = optimized_graph(model, features, passes=None, training=training, more_inputs=more)
        plan = lower(graph, t)  # the tracer refuses outputs without a leading batch dimension
        dropouts = dropout_streams(model, traced, plan.dropouts) if plan.dropouts else []
    out_row = tuple(plan.out_shape[1:])
    params = [np.asarray(graph[p]["value"].data, dtype=np.float32) for p in plan.params]
    layout = entry.WeightsLayout.of([a.shape for a in params] + [c.shape for c in plan.consts])
    blob = layout.blob(params + plan.consts)
    exported = [f"{name}_forward"] + ([f"{name}_bind_weights"] if weights == "external" else [])
    # what x, the inputs after it (a shared one: a fixed size), y and scratch span for a batch
    extents = [Extent(math.prod(features)),
               *(Extent(math.prod(s[1:])) if s[:1] == (None,) else Extent(0, math.prod(s)) for s in more),
               Extent(math.prod(out_row)), plan.scratch]
    limit = entry.max_batch(t, max(e.per_row for e in extents), plan.scratch.most_fixed)
    wrapper = entry.entry_module(t, plan.entry, layout, name=name, blob=blob if weights == "embedded" else None,
                                 batch_limit=limit, extents=extents,
                                 more_inputs=len(more), dropouts=dropouts,
                                 training=training)
    obj = toolchain.emit_object(t, [plan.llvm_ir, wrapper], exported)
    _check_self_contained(obj, t)

    result = ExportResult(
        target=t, files={}, object_bytes=len(obj), weights_bytes=len(blob),
        scratch_bytes_per_row=4 * plan.scratch_per_row, scratch_bytes_fixed=4 * plan.scratch_fixed,
        row_block=plan.row_block, scratch_bytes_pack=4 * plan.scratch_pack, pack_rows=plan.pack_rows,
        max_batch=limit, in_row=features, out_row=out_row,
        parameters=sum(a.size for a in params), exported_symbols=exported, more_inputs=more,
        dropout_layers=len({layer for layer, _, _ in dropouts}))
    header = header_text(_header_info(result, model, graph, name, weights, plan.inputs, training))
    result.files = files.publish(folder, name, lambda into: _write_files(
        into, name, t, obj, header, exported, layout.header() + blob if weights == "external" else None),
        _optional_files(name))
    return result


def _optional_files(name: str) -> dict[str, str]:
    """The files an export writes only for some targets or options, by kind. An export removes those
    it does not write: another target's library left beside a new header would run silently with
    the old model's sizes."""
    return {"weights": f"{name}.bin", "shared_library": f"lib{name}.so", "wasm": f"{name}.wasm"}


def _write_files(into: Path, name: str, t: Target, obj: bytes, header: str, exported: list[str],
                 weights: bytes | None) -> dict[str, Path]:
    """The export's files in a new folder `into`, by kind: the object, header, weights and linked
    library."""
    into.mkdir()
    optional = _optional_files(name)
    files = {"object": into / f"{name}.o", "header": into / f"{name}.h"}
    files["object"].write_bytes(obj)
    files["header"].write_text(header)
    if weights is not None:
        files["weights"] = into / optional["weights"]
        files["weights"].write_bytes(weights)
    if t.name == "host":
        files["shared_library"] = into / optional["shared_library"]
        toolchain.link_shared_library(files["object"], files["shared_library"])
    elif t.name == "wasm32":
        files["wasm"] = into / optional["wasm"]
        toolchain.link_wasm(files["object"], files["wasm"], exported)
    return files


def _check_self_contained(obj: bytes, t: Target) -> None:
    """Refuse an object that would need a runtime library besides memcpy/memset (the Cortex-M4F has
    no float64 hardware: code computing in float64 would call libgcc's soft-float routines)."""
    missing = sorted((toolchain.undefined_symbols(obj) or set()) - toolchain.ALLOWED_UNDEFINED)
    if missing:
        why = (" (float64 arithmetic, which this target has no hardware for)"
               if any(s.startswith(("__aeabi_d", "__aeabi_f2d")) for s in missing) else "")
        raise CompileError(f"this model's code for {t.name} would call {', '.join(missing)} from a runtime "
                           f"library{why}; an export links nothing but memcpy/memset: leave that op out")


def dropout_streams(model: Any, traced: Graph, nodes: list[str]) -> list[tuple[int, int, int]]:
    """Per training dropout node of the plan: (its layer's stream id, the layer's calls per forward,
    which of them the node is), so that forward call number `offset` of the C entry draws what the
    layer's call `offset * calls + k` draws in eager and compiled training (`binding.DropoutDraws`)."""
    draws = DropoutDraws(model, traced, nodes)
    return [(streams.layer_id(draws.layers[i]), draws.calls[i], k) for i, k in draws.slots]


def c_input_names(nodes: list[str]) -> list[str]:
    """C parameter names of the entry's inputs: the input nodes' (forward()'s own names) where they
    are C identifiers clashing with nothing else the entry takes, nor with a keyword of C or C++ or a
    macro (a name in capitals may be one: INT64_MAX, MODEL_OK; the lowercase ones compilers and C
    libraries define are listed: linux, complex, stdin...), else x1, x2... by position."""
    taken = {"y", "batch", "scratch", "seed", "offset"}
    names = [n if re.fullmatch(r"[a-z][A-Za-z0-9_]{0,30}", n) and n not in NOT_PARAMETER_NAMES and n not in taken
             else ("x" if i == 0 else f"x{i}") for i, n in enumerate(nodes)]
    return names if len(set(names)) == len(names) else ["x"] + [f"x{i}" for i in range(1, len(names))]


def _header_info(result: ExportResult, model: Any, graph: Graph, name: str, weights: str,
                 input_nodes: list[str], training: bool) -> HeaderInfo:
    from .. import __version__  # here: the package imports this module before it defines its version

    t = result.target
    layers = [line for line in format_graph(graph).splitlines() if line.strip()]
    return HeaderInfo(
        name=name, version=__version__, target=f"{t.name} ({t.triple}, cpu {t.cpu})", model=repr(model),
        layers=layers, parameters=result.parameters, in_row=result.in_row, out_row=result.out_row,
        more_inputs=result.more_inputs, input_names=c_input_names(input_nodes),
        dropout_layers=result.dropout_layers, training=training,
        scratch_per_row=result.scratch_bytes_per_row, scratch_fixed=result.scratch_bytes_fixed,
        row_block=result.row_block, max_batch=result.max_batch, scratch_pack=result.scratch_bytes_pack,
        pack_rows=result.pack_rows,
        weights_bytes=result.weights_bytes + (entry.HEADER_BYTES if weights == "external" else 0),
        weights_file=f"{name}.bin" if weights == "external" else None)
