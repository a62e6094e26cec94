"""LLVM IR generation: graph in, llvmlite module out. Never imports frontend or runtime."""
