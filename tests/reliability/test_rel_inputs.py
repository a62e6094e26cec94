"""Issue 7: the bad-input matrix for `fast(x)`. Errors name what was expected and what was given;
odd but valid arrays give the eager result; nothing crashes the process."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import tinycomp as tc
from tests.models import CASES, eager_eval
from tests.reliability.rel_helpers import assert_matches_eager
from tinycomp.nn import Tensor

IN = 784
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")



@pytest.fixture(scope="module")
def mlp():
    model = CASES["reference_mlp"].build(seed=7)
    return model, tc.compile(model, input_shape=(None, IN))


def sample(batch=5, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, IN)).astype(np.float32)


# ---------------------------------------------------------------- errors that name expected and given
@pytest.mark.parametrize("x, error, words", [
    (np.zeros((3, 100), np.float32), ValueError, ["(batch, 784)", "(3, 100)"]),
    (np.zeros((3, 785), np.float32), ValueError, ["(batch, 784)", "(3, 785)"]),
    (np.zeros((784, 3), np.float32), ValueError, ["(batch, 784)", "(784, 3)"]),
    (np.zeros((5,), np.float32), ValueError, ["(batch, 784)", "(5,)"]),
    (np.float32(1.0), ValueError, ["0-D", "batch"]),
    (np.array(2.0), ValueError, ["0-D", "batch"]),
    (3.0, ValueError, ["0-D", "batch"]),
    ("a string", TypeError, ["Tensor, a NumPy array or a (nested) list of numbers", "str"]),
    (b"bytes", TypeError, ["list of numbers", "bytes"]),
    (object(), TypeError, ["numbers", "object"]),
    (None, TypeError, ["numbers", "NoneType"]),
    (np.array([["a"] * IN]), TypeError, ["bool, int or float", "<U1"]),
    (np.array([[object()] * IN]), TypeError, ["bool, int or float", "object"]),
    (np.zeros((2, IN), np.complex64), TypeError, ["bool, int or float", "complex64"]),
    ([[1.0, 2.0], [3.0]], TypeError, ["rectangular", "list"]),
], ids=["few-features", "one-too-many", "transposed", "rank1-wrong", "0-D-numpy", "0-D-array", "0-D-float",
        "str", "bytes", "object", "None", "str-array", "object-array", "complex", "ragged-list"])
def test_bad_input_names_expected_and_given(mlp, x, error, words):
    _, fast = mlp
    with pytest.raises(error) as info:
        fast(x)
    for word in words:
        assert word in str(info.value), f"{word!r} missing from: {info.value}"
    assert fast(sample(2)).shape == (2, 10)  # still works afterwards


def test_wrong_rank_for_multi_dimensional_features():
    from tinycomp.nn import Linear, Sequential

    model = Sequential(Linear(4, 3))
    fast = tc.compile(model, input_shape=(None, 4))
    with pytest.raises(ValueError, match=r"\(batch, 4\).*got shape \(2, 5\)"):
        fast(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"\(batch, 4\).*got shape \(4, 2\)"):
        fast(np.zeros((4, 2), np.float32))


# ---------------------------------------------------------------- empty batch, one sample, leading dims
def test_empty_batch_returns_zero_rows(mlp):
    _, fast = mlp
    y = fast(np.zeros((0, IN), np.float32))
    assert isinstance(y, Tensor) and y.shape == (0, 10) and y.dtype == np.float32
    assert fast(np.zeros((0, IN), np.float64)).shape == (0, 10)


def test_one_sample_and_leading_dimensions_shaped_as_eager(mlp):
    model, fast = mlp
    x = sample(6)
    for arr in (x[0], x.reshape(2, 3, IN), x.reshape(1, 1, 6, IN)):
        assert_matches_eager(fast(arr).data.reshape(-1, 10), model, arr.reshape(-1, IN))
        assert fast(arr).shape == model.eval()(Tensor(arr)).shape


# ---------------------------------------------------------------- every dtype and memory layout is read right
def _layouts(x):
    f64 = x.astype(np.float64)
    buf = np.zeros(x.nbytes + 4, np.uint8)
    unaligned4 = buf[4:].view(np.float32).reshape(x.shape)  # float-aligned, not 16/64-aligned
    unaligned4[...] = x
    buf1 = np.zeros(x.nbytes + 1, np.uint8)
    unaligned1 = np.ndarray(x.shape, np.float32, buffer=buf1.data, offset=1)  # not even float-aligned
    unaligned1[...] = x
    readonly = x.copy()
    readonly.setflags(write=False)
    wide = np.zeros((x.shape[0] * 2, IN * 2), np.float32)
    wide[::2, ::2] = x
    flipped = x[::-1, ::-1].copy()
    big_endian = x.astype(">f4")
    return {
        "float64": f64, "float16": x.astype(np.float16), "int32": np.round(x * 3).astype(np.int32),
        "int64": np.round(x * 3).astype(np.int64), "uint8": (np.abs(x) * 50).astype(np.uint8),
        "bool": x > 0, "fortran": np.asfortranarray(x), "negative-stride": flipped[::-1, ::-1],
        "sliced": wide[::2, ::2], "column-slice": np.concatenate([x, x], axis=1)[:, :IN],
        "unaligned-offset-4": unaligned4, "unaligned-offset-1": unaligned1, "read-only": readonly,
        "big-endian": big_endian, "list": x.tolist(), "Tensor": Tensor(x), "Tensor-of-float64": Tensor(f64),
        "broadcast-view": np.broadcast_to(x[:1], x.shape),
    }


@pytest.mark.parametrize("name", list(_layouts(np.zeros((2, IN), np.float32))))
def test_dtype_and_layout_give_eager_result(mlp, name):
    model, fast = mlp
    x = sample(9, seed=3)
    arr = _layouts(x)[name]
    as_tensor = np.asarray(Tensor(arr).data)  # the cast the eager model applies
    before = np.array(arr.data if isinstance(arr, Tensor) else arr, copy=True)
    y = fast(arr).data
    assert_matches_eager(y, model, as_tensor)
    after = arr.data if isinstance(arr, Tensor) else arr
    np.testing.assert_array_equal(np.asarray(after), before)  # input never written


def test_input_tensor_data_reassigned_to_list(mlp):
    model, fast = mlp
    t = Tensor(sample(2))
    t.data = sample(2, seed=5).tolist()
    assert_matches_eager(fast(t).data, model, np.asarray(t.data, np.float32))


# ---------------------------------------------------------------- non-finite and extreme values
@pytest.mark.parametrize("case", ["reference_mlp", "softmax_head", "activation_first", "residual_net",
                                  "list_dict_layer", "scalar_arith"])
def test_nan_and_inf_propagate_exactly_as_eager(case):
    c = CASES[case]
    model = c.build(seed=11)
    fast = tc.compile(model)
    x = c.sample(12, seed=4)
    x[0, 0] = np.nan
    x[1, :] = np.nan
    x[2, 1] = np.inf
    x[3, 2] = -np.inf
    x[4, :3] = [np.inf, -np.inf, np.nan]
    x[5, :] = np.inf
    x[6, :] = -np.inf
    assert_matches_eager(fast(x).data, model, x)


@pytest.mark.parametrize("case", ["reference_mlp", "softmax_head", "activation_first", "list_dict_layer"])
@pytest.mark.parametrize("scale", [1e-45, 1e-38, 1e4, 1e19, 3e38])
def test_values_near_float32_limits(case, scale):
    c = CASES[case]
    model = c.build(seed=2)
    fast = tc.compile(model)
    x = (c.sample(8, seed=9) * scale).astype(np.float32)
    x[0, :2] = [np.finfo(np.float32).max, -np.finfo(np.float32).max]
    x[1, :2] = [np.finfo(np.float32).tiny, np.finfo(np.float32).smallest_subnormal]
    with np.errstate(all="ignore"):
        assert_matches_eager(fast(x).data, model, x)


# ---------------------------------------------------------------- too large to allocate
def test_too_large_batch_is_a_clear_memory_error(mlp):
    _, fast = mlp
    rows = 10**12
    huge = np.broadcast_to(np.float32(0), (rows, IN))  # a view: costs nothing to make
    with pytest.raises(MemoryError) as info:
        fast(huge)
    message = str(info.value)
    assert "1,000,000,000,000 rows" in message and "bytes" in message and "available" in message
    huge64 = np.broadcast_to(np.float64(0), (10**9, IN))  # needs a 3 TB float32 copy first
    with pytest.raises(MemoryError, match="1,000,000,000 rows"):
        fast(huge64)
    assert fast(sample(3)).shape == (3, 10)


def test_the_memory_check_counts_scratch_for_one_row_block_per_thread(monkeypatch):
    """A call's scratch holds one row block per thread, but the check counted it for every row: a
    batch needing ~26 MB was refused as needing over 800 MB (24 GiB on a 23 GiB host for
    Linear(8, 4096) at 1.6M rows). With 100 MB free it runs; a float64 input, which needs a
    float32 copy too, and a batch whose output alone is too large are refused, naming the sizes."""
    from tinycomp.nn import Linear, ReLU, Sequential
    from tinycomp.runtime import buffers

    model = Sequential(Linear(8, 512), ReLU(), Linear(512, 8)).eval()
    fast = tc.compile(model, threads=1)
    x = np.random.default_rng(3).standard_normal((400_000, 8)).astype(np.float32)
    fast(x[:2])
    monkeypatch.setattr(buffers, "CHECK_ABOVE", 1 << 20)  # checked from 256 MB: this batch at MB scale
    monkeypatch.setattr(buffers, "available_bytes", lambda: 100 << 20)
    y = fast(x).data
    np.testing.assert_allclose(y[-3:], eager_eval(model, x[-3:]), rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(buffers, "available_bytes", lambda: 20 << 20)
    fast(x)  # the output, 12.2 MiB, and the scratch
    with pytest.raises(MemoryError, match=r"a batch of 400,000 rows .* needs 24.\d MiB .* but only 20.0 MiB"):
        fast(x.astype(np.float64))  # and the float32 copy of the input
    monkeypatch.setattr(buffers, "available_bytes", lambda: 10 << 20)
    with pytest.raises(MemoryError, match=r"needs 12.\d MiB"):
        fast(x)


def test_too_large_batch_leaves_the_process_alive(tmp_cache):
    """In a child process, so a crash would show as a signal instead of killing the test run."""
    code = (
        "import numpy as np, tinycomp as tc\n"
        "from tinycomp.nn import Linear, Sequential\n"
        "fast = tc.compile(Sequential(Linear(4, 3)))\n"
        "try:\n"
        "    fast(np.broadcast_to(np.float32(1), (2**40, 4)))\n"
        "except MemoryError as e:\n"
        "    print('MemoryError:', e)\n"
        "print(fast(np.ones((2, 4), np.float32)).shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "MemoryError:" in done.stdout and "(2, 3)" in done.stdout


def test_eager_eval_helper_agrees(mlp):
    model, fast = mlp
    x = sample(4)
    np.testing.assert_allclose(fast(x).data, eager_eval(model, x), rtol=1e-4, atol=1e-5)
