"""Instructions LLVM executes to generate a bench model's machine code: a compile-time measure that
the host's noise does not move.

    python benchmarks/codegen_instructions.py [model ...]     # default mlp; needs valgrind
    python benchmarks/codegen_instructions.py --per-function mlp  # and each function's share

On the shared hosts these benchmarks run on, the same module's emit time moves by up to ~50 %
between minutes (benchmarks/RESULTS.md, twenty-sixth session), more than most changes to the code
we generate. This compiles each model with the cache off (as `benchmarks/codegen_cost.py` does),
then emits its module whole, once, in a child process under valgrind's callgrind with collection
switched on only inside llvmlite's object emission (`LLVMPY_TargetMachineEmitToMemory`: LLVM's code
generator, most of a cold compile's LLVM time; parsing and the level-0 pipeline run outside it, as
in `runtime.engine`). With `--per-function`, also each function's count as `codegen_cost.py` takes
its time: its module with that body alone (the others declared) less the module with no bodies
(each figure then includes the ~10 M LLVM spends once on any module with a body: the subtarget from
the host's features, the pass pipeline; they rank, they do not add up). The child targets the
host's CPU by name and features, not by what it detects: valgrind's virtual CPU has no AVX-512.
The count is the same from run to run on the same code in the same environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile


def save_module(model: str, path: str) -> None:
    """Compile `model` (a bench model or a lone layer, as `bare_call.py` names them) with the disk
    cache off for this compile only, and save its module's IR with the host's CPU to `path`."""
    was = os.environ.get("TINYCOMP_CACHE")  # bare_call turns the cache off as it is imported
    try:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from bare_call import generated_ir

        from tinycomp.codegen.target import host

        os.environ["TINYCOMP_CACHE"] = "0"  # a module loaded from the cache has no IR to save
        llvm_ir = generated_ir(model)
    finally:
        if was is None:
            os.environ.pop("TINYCOMP_CACHE", None)
        else:
            os.environ["TINYCOMP_CACHE"] = was
    h = host()
    with open(path, "w") as f:
        json.dump({"ir": llvm_ir, "cpu": h.cpu, "features": h.features, "triple": h.triple}, f)


def emit_saved() -> None:
    """The child: the object code of the module saved on stdin, for its CPU, as
    `runtime.engine.emit_object` makes it."""
    import llvmlite.binding as llvm

    from tinycomp.codegen.target import CODEGEN_OPT, host_backend_options, optimize

    saved = json.load(sys.stdin)
    tm = llvm.Target.from_triple(saved["triple"]).create_target_machine(
        cpu=saved["cpu"], features=saved["features"], opt=CODEGEN_OPT, reloc="default", codemodel="jitdefault",
        jit=True)
    mod = llvm.parse_assembly(saved["ir"])
    mod.triple, mod.data_layout = saved["triple"], str(tm.target_data)
    optimize(mod, tm)
    with host_backend_options():
        tm.emit_object(mod)


# The child runs one thread: BLAS threads started as NumPy is imported made the count depend on how
# valgrind scheduled them (67.66-67.70 M with two busy processes beside it, 67.81 M without), and a
# fixed hash seed keeps Python's own allocations the same from run to run.
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def count(path: str) -> int:
    """The instructions of emitting the module saved at `path`. The module goes to the child on stdin:
    its command line is then the same for every module, and so, in one environment, is its memory
    layout, which LLVM's tables keyed by address follow (the same module named by a longer path
    counted ~0.1 % fewer; one more environment variable moves it by ~0.04 %)."""
    with open(path) as f:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", "--collect-atstart=no",
             "--toggle-collect=*TargetMachineEmitToMemory*", sys.executable, __file__, "--emit"],
            stdin=f, capture_output=True, text=True, check=True, env={**os.environ, **ONE_THREAD})
    return int(re.search(r"Collected : (\d+)", out.stderr).group(1))


def per_function(path: str) -> list[tuple[int, str]]:
    """(instructions, name) of each function of the saved module, most first (`codegen_cost.py`'s
    split: a body alone with every other function declared, less the module of declarations)."""
    from codegen_cost import declaration, split_functions

    with open(path) as f:
        saved = json.load(f)
    head, functions, tail = split_functions(saved["ir"])

    def instructions(text: str) -> int:
        part = path + ".part.json"
        with open(part, "w") as f:
            json.dump({**saved, "ir": text}, f)
        return count(part)

    empty = instructions(head + "".join(map(declaration, functions)) + tail)
    costs = []
    for i, body in enumerate(functions):
        others = "".join(declaration(f) for j, f in enumerate(functions) if j != i)
        name = re.search(r'@"?([\w.]+)"?\(', body).group(1)
        try:  # a layer's wrapper refers to its own config global by name: it needs the layer function
            costs.append((instructions(head + others + body.replace("define internal", "define", 1) + tail) - empty,
                          name))
        except subprocess.CalledProcessError:
            continue
    return sorted(costs, reverse=True)


def main(args: list[str]) -> None:
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    each = "--per-function" in args
    with tempfile.TemporaryDirectory() as tmp:
        for model in [a for a in args if a != "--per-function"] or ["mlp"]:
            path = os.path.join(tmp, f"{model.replace(':', '_')}.json")
            save_module(model, path)
            with open(path) as f:
                lines = json.load(f)["ir"].count("\n")
            print(f"{model}: {count(path) / 1e6:.1f} M instructions to emit its {lines} lines of IR")
            for n, name in per_function(path) if each else ():
                print(f"  {n / 1e6:7.1f} M  {name}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--emit"]:
        emit_saved()
    else:
        main(sys.argv[1:])
