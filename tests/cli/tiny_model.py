"""Factories the CLI tests load as `path/to/tiny_model.py:factory`."""

from tinycomp.nn import Dropout, Linear, ReLU, Sequential, Softmax, manual_seed


def tiny():
    manual_seed(3)
    return Sequential(Linear(12, 16), ReLU(), Dropout(0.2), Linear(16, 5), Softmax())


def not_a_layer():
    return "a string, not a Layer"


def broken():
    raise RuntimeError("factory exploded")


def starts_with_relu():
    return Sequential(ReLU(), Linear(12, 4))


def nested():
    manual_seed(4)
    return Sequential(Sequential(Linear(9, 6), ReLU()), Linear(6, 2))


def dropout_mlp():
    manual_seed(7)
    return Sequential(Linear(12, 16), ReLU(), Dropout(0.5), Linear(16, 5))


def sized(width):
    """A factory that needs an argument: the CLI cannot call it."""
    return Sequential(Linear(width, 4))
