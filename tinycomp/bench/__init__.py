"""`tinycomp bench`: NumPy, eager, compiled, ONNX Runtime and torch, each in its own process.

`bench_main(argv)` is what the CLI calls; `python -m tinycomp.bench.runner` is the per-engine worker.
"""

from .main import bench_main

__all__ = ["bench_main"]
