"""The code generator's one error: the graph holds something it has no rule for."""


class LoweringError(NotImplementedError):
    """The graph holds something the code generator has no rule for (the compiler raises it to the
    user as a CompileError)."""
