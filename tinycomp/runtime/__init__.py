"""Running generated code: JIT engines, validated native calls, buffers, threads. Arrays only."""
