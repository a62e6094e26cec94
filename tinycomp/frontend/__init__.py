"""The user-facing eager layers (TinyTorch modules 01-03 semantics) and the tracer."""
