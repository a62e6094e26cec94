"""What each function of a compiled model costs LLVM's code generator (the bulk of a cold compile).

    python benchmarks/codegen_cost.py [model]      # a `tinycomp bench` model, default mlp
    python benchmarks/codegen_cost.py softmax:1024  # a lone layer, as benchmarks/bare_call.py names it
    python benchmarks/codegen_cost.py linear:128x10  # the reference MLP's last layer (narrow kernels)

Compiles the model with the cache off, then emits its module's object code once whole, once in the
parts a compile emits at once (`codegen.split`, one per core) and once per
function: that function's body with every other function declared only. A function's cost is its
module's time minus the time of the module with no bodies at all (best of 3 each, one thread).
The per-function figures do not add up to the whole exactly (LLVM's per-module work is counted
once per function there), but they rank where the time goes.
"""

from __future__ import annotations

import os
import re
import sys
import time

os.environ["TINYCOMP_CACHE"] = "0"

from bare_call import generated_ir  # noqa: E402 - this folder's script: bench models and lone layers

from tinycomp.codegen.split import split_module  # noqa: E402
from tinycomp.runtime.engine import codegen_jobs, emit_object, emit_objects  # noqa: E402


def best_ms(llvm_ir: str, repeat: int = 3, emit=emit_object) -> float:
    emit(llvm_ir)  # warm
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        emit(llvm_ir)
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def declaration(definition: str) -> str:
    signature = definition.split("{", 1)[0].replace("define ", "declare ", 1)
    return re.sub(r"declare (internal |private )", "declare ", signature) + "\n"


def split_functions(llvm_ir: str) -> tuple[str, list[str], str]:
    """(globals and declarations, one text per function definition, attribute groups after them)."""
    head, *functions = re.split(r"(?m)^(?=define )", llvm_ir)
    end = functions[-1].find("\n}\n") + 3
    functions[-1], tail = functions[-1][:end], functions[-1][end:]
    return head, functions, tail


def main(model: str = "mlp") -> None:
    llvm_ir = generated_ir(model)
    head, functions, tail = split_functions(llvm_ir)
    names = [re.search(r'@"?([\w.]+)"?\(', f).group(1) for f in functions]
    parts = len(split_module(llvm_ir, codegen_jobs()))
    print(f"{model}: whole module {best_ms(llvm_ir):.1f} ms; in {parts} part{'s' * (parts != 1)} at once "
          f"(what a compile does) {best_ms(llvm_ir, emit=emit_objects):.1f} ms")
    empty = best_ms(head + "".join(map(declaration, functions)) + tail)
    costs = []
    for i, body in enumerate(functions):
        others = "".join(declaration(f) for j, f in enumerate(functions) if j != i)
        try:  # a layer's wrapper refers to its own config global by name: it needs the layer function
            costs.append((best_ms(head + others + body.replace("define internal", "define", 1) + tail) - empty,
                          names[i]))
        except RuntimeError:
            continue
    for ms, name in sorted(costs, reverse=True):
        print(f"{ms:6.1f} ms  {name}")


if __name__ == "__main__":
    main(*sys.argv[1:])
