"""The native dropout kernel (codegen/philox.py) against the NumPy reference (ir/philox.py), bit for
bit, at every vector width, for element ranges that start and end anywhere inside a Philox block."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from tests.codegen.jit_util import jit, new_module
from tinycomp.codegen.philox import emit_dropout
from tinycomp.ir.philox import DropoutStream, keep_scale, keep_threshold, random_words

PAD = 8  # floats of guard on each side: the kernel must not touch them
STREAM = DropoutStream(0xDEADBEEF, 0x01234567, 0xFFFFFFFE, 3)


def dropout_kernel(p: float, width: int):
    module = new_module()
    emit_dropout(module, "drop", p, width).linkage = ""  # callable from the test
    engine, addresses = jit(module, "drop")
    proto = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                             *([ctypes.c_uint32] * 4))
    return engine, proto(addresses["drop"])


@pytest.mark.parametrize("width", [4, 8, 16])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kernel_matches_numpy_bit_for_bit(width, p):
    engine, drop = dropout_kernel(p, width)
    rng = np.random.default_rng(width)
    for first, count in [(0, 1), (0, 4 * width), (3, 1), (5, 257), (2, 4 * width + 3), ((1 << 34) + 1, 77),
                         (13, 0)]:
        x = rng.standard_normal(count + 2 * PAD).astype(np.float32)
        x[PAD:PAD + count:7], x[PAD + 1:PAD + count:11] = np.inf, np.nan  # dropped: nan, as eager x * 0
        out = np.full(count + 2 * PAD, 99.0, np.float32)
        drop(count, out.ctypes.data + 4 * PAD, x.ctypes.data + 4 * PAD, first, *STREAM)
        words = random_words(STREAM, first, count)
        with np.errstate(invalid="ignore"):  # inf * 0
            want = x[PAD:PAD + count] * np.where(words >= keep_threshold(p), keep_scale(p), np.float32(0))
        np.testing.assert_array_equal(out[PAD:PAD + count], want, err_msg=f"first={first} count={count}")
        assert np.all(out[:PAD] == 99) and np.all(out[PAD + count:] == 99), "wrote outside its range"
    del engine


def test_p_outside_the_open_interval_has_no_kernel():
    for p in (0.0, 1.0):
        with pytest.raises(ValueError, match="0 < p < 1"):
            emit_dropout(new_module(), "drop", p, 8)
