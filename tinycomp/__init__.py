"""tinycomp: compile TinyTorch-style layer models to native code with llvmlite."""

__version__ = "0.1.0"
