"""Targets: the host (JIT and export) and the cross targets `tc.export` writes objects for.

A `Target` is everything the code generator needs to know about a CPU: triple, CPU name, features,
vector width (float32 lanes per register), the vector register budget the GEMM tiles are sized for,
whether multiply-add is fused in hardware and the pointer width. The kernels are generic LLVM IR
over `<width x float>`; LLVM's backends lower it for each target (NEON on aarch64, scalar FPv4 on
Cortex-M, SIMD128 on WebAssembly).

Every JIT engine takes ownership of its target machine (llvmlite's `create_mcjit_compiler`), so
`host_target_machine()` builds a fresh one on each call instead of handing out a shared instance;
the machines that only emit object code are kept (`emit_target_machine`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import llvmlite.binding as llvm

# Registering the host target and its assembly printer is idempotent and cheap.
llvm.initialize_native_target()
llvm.initialize_native_asmprinter()


# Per core on AMD Zen 4, where the GEMM plans were tuned (`gemm.L2_BYTES`): the L2 a Target assumes
# unless the host reports its own, and the size below which a core's L2 counts as small
# (`aliased_direct_max_rows`, `gemm._aliased`).
TUNED_L2_BYTES = 1 << 20


@dataclass(frozen=True)
class CacheLimits:
    """What the GEMM plans take from the host (`Target.cache_limits`): its row limit for an aliased W
    (`Target.aliased_direct_max_rows`, 0 for none: `gemm.direct_max_rows`) and its L2 per core
    (`gemm._aliased`). One value, so that every plan made of a layer (its kernel's, its pack
    buffer's rows) comes from the same host."""

    aliased_max_rows: int = 0
    l2_bytes: int = TUNED_L2_BYTES


NO_LIMITS = CacheLimits()


@dataclass(frozen=True)
class Target:
    """What the code generator needs to know about the CPU it emits code for."""

    name: str  # "host" or a key of CROSS_TARGETS
    triple: str
    cpu: str
    features: str
    vector_width: int  # float32 lanes per vector register: 16 (AVX-512), 8 (AVX2), 4 (SSE, NEON, SIMD128), 1
    vector_registers: int  # registers the GEMM's accumulator tiles may fill (32 or 16)
    # multiply-adds as `llvm.fma` (one rounding: in hardware, or libm's fmaf on an x86 host without
    # FMA); False: as `llvm.fmuladd`, which a target without fused multiply-add splits into mul + add
    fused_multiply_add: bool = True
    pointer_bits: int = 64
    float64_hardware: bool = True  # False: pow computes in float32 (codegen/vecpow32.py), no soft-float calls
    reloc: str = "pic"  # relocation model of exported objects
    # GEMM: the most rows that still read a W larger than L2 in place when its rows lie a multiple
    # of 4 KB apart (or 2 KB with less L2, `gemm._aliased`; 0: no such limit, `gemm.direct_max_rows`);
    # set for the hosts where it was measured
    aliased_direct_max_rows: int = 0
    l2_bytes: int = TUNED_L2_BYTES  # per core: whole-graph row blocks are sized to stay in it (`scratch.row_block`)

    @property
    def cache_fields(self) -> tuple[str, ...]:
        return (self.triple, self.cpu, self.features, str(self.vector_width), str(self.vector_registers),
                str(self.aliased_direct_max_rows), str(self.l2_bytes))

    @property
    def cache_limits(self) -> CacheLimits:
        return CacheLimits(self.aliased_direct_max_rows, self.l2_bytes)


def default_registers(width: int) -> int:
    """The register budget of an x86 host with this vector width: 32 zmm with AVX-512, else 16."""
    return 32 if width >= 16 else 16


def _read_features() -> str:
    try:
        return llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # some hosts / VMs cannot report features: let LLVM pick from the CPU name
        return ""


def enabled_features(features: str) -> frozenset[str]:
    """The names a feature string turns on: "+avx512f,-avx512fp16" -> {"avx512f"}."""
    return frozenset(f[1:] for f in features.split(",") if f.startswith("+"))


def _lanes(features: str) -> int:
    enabled = enabled_features(features)
    if "avx512f" in enabled:
        return 16
    if "avx2" in enabled and "fma" in enabled:
        return 8
    return 4


# Intel cores (measured on a Sapphire Rapids-class Xeon, 2 MB L2): W's rows 4 KB apart put every
# row of a column block in the same few cache sets, so a 256 KB block of a 1024 x 1024 W no longer
# stayed in L2 while the row tiles swept it: read in place in one piece it took 1.3 x as long as
# packed at 32 rows, 1.8 x at 64 and 2.9 x at 128. Such a layer now reads W in place in K-chunks
# (`gemm_driver._emit_chunked`), which beat packing up to 40-56 rows
# (`benchmarks/gemm_ab.py ALIASED_MAX_ROWS 0,16,128 --layer 1024x1024`; 512x2048 up to 32-48),
# and packs it above (benchmarks/RESULTS.md, eighth session). AMD Zen 4 read the same layer in
# place, in one piece, fastest up to ~128 rows.
INTEL_ALIASED_DIRECT_MAX_ROWS = 40
# Cores with less than 1 MB of L2 (AMD Zen 3: 512 KB, 8-way, 1,024 sets): a 1024 x 1024 W read in
# place took 2.0 x as long as packed at 32 rows, 2.6 x at 64 and 2.8 x at 128; in K-chunks at 16
# rows as long as in one piece (`benchmarks/gemm_ab.py ALIASED_MAX_ROWS 0,16,40 --layer 1024x1024
# --rows 16,32,64,128`, twenty-ninth session). There a two-thread call of the `wide` model, 128 rows
# a thread, read its Ws in place, and ran 0.88-0.90 x as fast as one thread on 256 rows (packed).
SMALL_L2_ALIASED_DIRECT_MAX_ROWS = 16


def aliased_direct_max_rows(vendor: str, l2_bytes: int) -> int:
    """The host's limit for a W whose rows are a multiple of 4 KB apart (`gemm.direct_max_rows`),
    0 for none: measured on Intel, and on AMD cores with less L2 than Zen 4's 1 MB."""
    if vendor == "GenuineIntel":
        return INTEL_ALIASED_DIRECT_MAX_ROWS
    return SMALL_L2_ALIASED_DIRECT_MAX_ROWS if l2_bytes < TUNED_L2_BYTES else 0


def cpuinfo(key: str) -> str:
    """The first CPU's `key` in /proc/cpuinfo ("vendor_id", "model name", "flags", ...), "" where
    Linux does not say."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return ""


def _l2_bytes(default: int = TUNED_L2_BYTES) -> int:
    """The first core's level-2 cache in bytes, as Linux reports it (`default` where it does not):
    1 MB on the Zen 4 of the first sessions, 2 MB on the Intel Xeon of the later ones."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for index in sorted(os.listdir(root)):
            with open(os.path.join(root, index, "level"), encoding="ascii") as f:
                if f.read().strip() != "2":
                    continue
            with open(os.path.join(root, index, "size"), encoding="ascii") as f:
                size = f.read().strip()
            scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
            return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return default


@functools.lru_cache(maxsize=1)
def host() -> Target:
    features = _read_features()
    width = _lanes(features)
    if width == 16:
        # LLVM prefers 256-bit vectors on AVX-512 parts unless told otherwise; our kernels are
        # written for 512-bit registers and measured faster with them.
        features += ",-prefer-256-bit"
    triple = llvm.get_process_triple()
    arm64 = triple.startswith(("aarch64", "arm64"))  # 32 NEON registers
    l2_bytes = _l2_bytes()
    return Target(
        name="host",
        triple=triple,
        cpu=llvm.get_host_cpu_name(),
        features=features,
        vector_width=width,
        vector_registers=32 if arm64 else default_registers(width),
        pointer_bits=64 if "64" in triple.split("-")[0] else 32,
        aliased_direct_max_rows=aliased_direct_max_rows(cpuinfo("vendor_id"), l2_bytes),
        l2_bytes=l2_bytes,
    )


# The export targets besides the host. Register budgets: AArch64 has 32 128-bit NEON registers;
# Cortex-M4F/M7 have no float SIMD but 32 single-precision FPU registers (s0-s31), so its "vector"
# is one float; WebAssembly engines map SIMD128 values to the host's registers, 16 on x86-64.
# WebAssembly has no fused multiply-add (outside relaxed SIMD): `llvm.fma` there would become calls
# to libm's fmaf, so its kernels multiply and add separately (`llvm.fmuladd`, two roundings).
CROSS_TARGETS: dict[str, Target] = {
    "aarch64-linux-gnu": Target("aarch64-linux-gnu", "aarch64-unknown-linux-gnu", "generic", "+neon",
                                vector_width=4, vector_registers=32),
    "thumbv7em-none-eabihf": Target("thumbv7em-none-eabihf", "thumbv7em-unknown-none-eabihf", "cortex-m4", "",
                                    vector_width=1, vector_registers=32, pointer_bits=32, reloc="static",
                                    float64_hardware=False),
    "wasm32": Target("wasm32", "wasm32-unknown-unknown", "generic", "+simd128,+bulk-memory",
                     vector_width=4, vector_registers=16, fused_multiply_add=False, pointer_bits=32, reloc="static"),
}
TARGET_NAMES = ("host", *CROSS_TARGETS)


def target_named(name: str) -> Target:
    """The target called `name` (one of TARGET_NAMES); ValueError naming them for anything else."""
    if isinstance(name, str):
        if name == "host":
            return host()
        if name in CROSS_TARGETS:
            return CROSS_TARGETS[name]
    raise ValueError(f"unknown target {name!r}; targets are {', '.join(TARGET_NAMES)}")


def with_width(width: int) -> Target:
    """The host target with another vector width (tests and benchmarks lower for several widths)."""
    h = host()
    if width == h.vector_width:
        return h
    return dataclasses.replace(h, vector_width=width, vector_registers=default_registers(width))


def for_triple(triple: str) -> Target:
    """The target a module was lowered for, by its triple (an empty triple: the host)."""
    for t in CROSS_TARGETS.values():
        if t.triple == triple:
            return t
    return host()


# LLVM's backend optimization level for our object code. Measured on the reference MLP: level 2 emits
# in 40 ms against 52 ms at level 3 with the same run time at batch 1, 32 and 512 (the IR is
# vectorized by hand); level 1 is no faster to emit and runs the GEMM 20% slower.
CODEGEN_OPT = 2


# LLVM's loop strength reduction (LSR) in the host backend. Off: it cost ~11 of the reference MLP's
# ~49 ms of code generation (with its induction-variable analysis), and the kernels already step
# their loops the way it would (pointers carried from one iteration to the next where an index
# would need a multiply); with it off they run as fast as with it on (README, "Compile time").
HOST_LSR = False


@contextlib.contextmanager
def host_backend_options() -> Iterator[None]:
    """LLVM's command-line options for one host code generation (callers hold the LLVM lock). They
    are process-wide, so they are set around each emit and put back to LLVM's defaults after:
    other llvmlite users in the process (numba) and the cross targets of `tc.export` keep them."""
    if HOST_LSR:
        yield
        return
    llvm.set_option("", "-disable-lsr=true")
    try:
        yield
    finally:
        llvm.set_option("", "-disable-lsr=false")


def host_target_machine(opt: int = CODEGEN_OPT) -> llvm.TargetMachine:
    """A new target machine for the host; callers that hand it to an engine give up ownership."""
    h = host()
    target = llvm.Target.from_triple(h.triple)
    return target.create_target_machine(
        cpu=h.cpu, features=h.features, opt=opt, reloc="default", codemodel="jitdefault", jit=True
    )


# Host target machines that emit object code, one per part of a module compiled at once
# (`runtime.engine`; its callers hold its lock, so no two threads share one), kept from compile to
# compile for the host they were made for: a new one cost ~1.1 ms a part (making it, ~0.3 ms, and at
# its first emit the subtarget parsed from the host's ~115 features: a trivial module emitted in
# 1.85 ms with a new machine, 1.04 with one used before).
_EMIT_MACHINES: dict[tuple[int, tuple[str, ...]], llvm.TargetMachine] = {}
_FORKED_MACHINES: list[llvm.TargetMachine] = []


def _fresh_machines_after_fork() -> None:
    """A child makes machines of its own: it may have been forked while a part's thread emitted with
    one (a fork waits for them only so long, `engine.PARTS_WAIT_SECONDS`). The parent's are kept,
    never disposed of: LLVM's state in one may be half changed."""
    _FORKED_MACHINES.extend(_EMIT_MACHINES.values())
    _EMIT_MACHINES.clear()


os.register_at_fork(after_in_child=_fresh_machines_after_fork)


def emit_target_machine(part: int = 0) -> llvm.TargetMachine:
    """The host target machine that emits part `part` of a module (kept: not for an engine to own)."""
    key = (part, host().cache_fields)
    tm = _EMIT_MACHINES.get(key)
    if tm is None:
        if len(_EMIT_MACHINES) >= 8:  # made for other hosts (tests stand in other CPUs): let them go
            _EMIT_MACHINES.clear()
        tm = _EMIT_MACHINES[key] = host_target_machine()
    return tm


def object_target_machine(t: Target, opt: int = CODEGEN_OPT) -> llvm.TargetMachine:
    """A target machine that writes relocatable objects for `t` (exported code, not the JIT)."""
    if t.name != "host":
        _initialize_cross_targets()
    return llvm.Target.from_triple(t.triple).create_target_machine(
        cpu=t.cpu, features=t.features, opt=opt, reloc=t.reloc, codemodel="default")


@functools.lru_cache(maxsize=1)
def _initialize_cross_targets() -> None:
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()


def parse_module(llvm_ir: str, tm: llvm.TargetMachine, context: llvm.ContextRef | None = None) -> llvm.ModuleRef:
    """Parse and verify textual IR, stamped with the target's triple and data layout (in `context`,
    by default LLVM's global one)."""
    mod = llvm.parse_assembly(llvm_ir, context)
    with closed_on_error(mod):
        mod.triple = tm.triple
        mod.data_layout = str(tm.target_data)
        mod.verify()
    return mod


@contextlib.contextmanager
def closed_on_error(mod: llvm.ModuleRef) -> Iterator[llvm.ModuleRef]:
    """Close `mod` at once if the block raises: left to the traceback that holds it, it would be
    freed whenever that is collected, perhaps after its context is gone (a crash)."""
    try:
        yield mod
    except BaseException:
        mod.close()
        raise


def optimize(mod: llvm.ModuleRef, tm: llvm.TargetMachine, speed_level: int = 0) -> None:
    """Run the new-pass-manager pipeline in place.

    Our kernels are vectorized by hand, so level 0 (the default here) runs as fast as level 3 and
    compiles about 4x faster; loop and SLP vectorizers stay on for the scalar tails.
    """
    pto = llvm.create_pipeline_tuning_options(speed_level=speed_level)
    pto.loop_vectorization = speed_level > 0
    pto.slp_vectorization = speed_level > 0
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
