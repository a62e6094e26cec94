"""User-facing errors, in a leaf module so every layer of tinycomp can raise them."""


class CompileError(Exception):
    """The model cannot be compiled as written (e.g. its forward() reads a traced tensor's data)."""


class ParityError(AssertionError):
    """Compiled output differs from the eager model beyond the parity rule (`tinycomp/parity.py`;
    README, "Numerics and weights")."""
