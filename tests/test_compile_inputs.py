"""Issue 15: a forward() of several Tensor inputs compiles to one `input` node per argument;
`fast(x, mask)` runs it, every input checked like x (shape, dtype, batch agreement), against the eager
model and float64 formulas written here, at batch 0, 1, 7 and 129 and split across threads."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

import tinycomp as tc
from tinycomp.nn import Layer, Linear, Sequential, Softmax, Tensor, manual_seed
from tinycomp.parity import check_parity

F64 = np.float64
RNG = np.random.default_rng(21)


class Gated(Layer):
    """forward(x, mask): a Linear gated by a per-sample mask, plus a reduction mixing both."""

    def __init__(self):
        manual_seed(3)
        self.fc = Linear(5, 3)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.fc(x) * mask + (x.sum(axis=-1, keepdims=True) - mask).mean(axis=-1, keepdims=True)


def gated64(m: Gated, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    y = x @ F64(m.fc.weight.data) + F64(m.fc.bias.data)
    return y * mask + (x.sum(-1, keepdims=True) - mask).mean(-1, keepdims=True)


class SquaredError(Layer):
    """forward(logits, targets) -> one loss per sample."""

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return ((logits - targets) ** 2).mean(axis=-1)


class MaskedAttention(Layer):
    """Single-head attention whose blocked scores (mask 0) get -1e9, as TinyTorch's module 12 does."""

    def __init__(self, dim: int):
        rng = np.random.default_rng(4)
        self.wq, self.wk = (Tensor(rng.standard_normal((dim, dim)) / np.sqrt(dim)) for _ in range(2))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        scores = (x @ self.wq) @ (x @ self.wk).transpose(-2, -1) + (1 - mask) * -1e9
        return Softmax()(scores, dim=-1) @ x


def masked_attention64(m: MaskedAttention, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    s = (x @ F64(m.wq.data)) @ np.swapaxes(x @ F64(m.wk.data), -1, -2) + (1 - mask) * F64(np.float32(-1e9))
    e = np.exp(s - s.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)) @ x


def assert_matches(fast, model, reference, *inputs):
    out = fast(*inputs)
    eager = model(*map(Tensor, inputs)).data
    ref = reference(model, *(np.asarray(a, F64) for a in inputs))
    assert out.shape == eager.shape == ref.shape
    report = check_parity(out.data, eager, ref)
    assert report.ok, str(report)
    return out.data


@pytest.mark.parametrize("batch", [0, 1, 7, 129])
def test_forward_of_x_and_mask(batch):
    model = Gated()
    fast = tc.compile(model)
    x, mask = np.float32(RNG.standard_normal((batch, 5))), np.float32(RNG.integers(0, 2, (batch, 3)))
    assert_matches(fast, model, gated64, x, mask)
    assert fast.graph.inputs == ["x", "mask"]


def test_one_kernel_serves_every_batch_of_several_inputs():
    model = Gated()
    fast = tc.compile(model, check=True)  # check=True runs the eager model on both inputs too
    for batch in (0, 1, 7, 129, 5000):
        x, mask = np.float32(RNG.standard_normal((batch, 5))), np.float32(RNG.standard_normal((batch, 3)))
        assert_matches(fast, model, gated64, x, mask)
    assert fast.stats.compiles == 1


@pytest.mark.parametrize("batch", [0, 1, 7, 129])
def test_forward_of_logits_and_targets(batch):
    model = SquaredError()
    logits, targets = np.float32(RNG.standard_normal((batch, 4, 9))), np.float32(RNG.standard_normal((batch, 4, 9)))
    out = assert_matches(tc.compile(model), model, lambda m, a, b: ((a - b) ** 2).mean(-1), logits, targets)
    assert out.shape == (batch, 4)


@pytest.mark.parametrize("batch", [1, 7, 129])
def test_a_mask_shared_by_every_sample_is_given_without_the_batch(batch):
    model = MaskedAttention(8)
    causal = np.tril(np.ones((6, 6), np.float32))
    fast = tc.compile(model, input_shape=[(None, 6, 8), (6, 6)])
    assert_matches(fast, model, masked_attention64, np.float32(RNG.standard_normal((batch, 6, 8))), causal)
    assert fast.graph.shape("mask") == (6, 6)


def test_threads_split_every_batched_input_at_the_same_rows():
    model = Gated()
    x, mask = np.float32(RNG.standard_normal((4099, 5))), np.float32(RNG.standard_normal((4099, 3)))
    one, two = tc.compile(model, threads=1), tc.compile(model, threads=2)
    np.testing.assert_array_equal(one(x, mask).data, two(x, mask).data)
    np.testing.assert_array_equal(two(x[5:38], mask[5:38]).data, one(x, mask).data[5:38])


def test_inputs_are_cast_like_tensors():
    model = Gated()
    fast = tc.compile(model)
    x = RNG.standard_normal((4, 5))
    got = fast(x.tolist(), np.ones((4, 3), np.int64)).data  # a list and int64: cast to float32 as Tensor does
    np.testing.assert_array_equal(got, fast(np.float32(x), np.ones((4, 3), np.float32)).data)


@pytest.mark.parametrize("inputs, error, match", [
    (lambda: (np.ones((3, 5)),), TypeError, r"missing 1 required positional argument: 'mask'"),  # as eager
    (lambda: (np.ones((3, 5)), np.ones((3, 3)), np.ones(3)), TypeError, "does not take 3 positional inputs"),
    (lambda: (np.ones((3, 5)), np.ones((4, 3))), ValueError, "input 'mask' has 4 rows, input 'x' 3"),
    (lambda: (np.ones((3, 5)), "mask"), TypeError, "input 'mask' must be a Tensor, .* str"),
    (lambda: (np.ones((3, 5)), np.array([["a"] * 3] * 3, object)), TypeError, "input 'mask' must hold .* dtype object"),
    (lambda: (np.ones((3, 5), complex), np.ones((3, 3))), TypeError, "input 'x' must hold .* dtype complex128"),
])
def test_every_input_is_checked_like_x(inputs, error, match):
    fast = tc.compile(Gated())
    fast(np.ones((2, 5)), np.ones((2, 3)))
    with pytest.raises(error, match=match):
        fast(*inputs())


class OptionalMask(Layer):
    """forward(x, mask=None), as attention layers take it."""

    def __init__(self):
        manual_seed(2)
        self.fc = Linear(5, 3)

    def forward(self, x, mask=None):
        y = self.fc(x)
        return y if mask is None else y * mask


def test_an_optional_input_given_or_not_follows_the_call():
    model = OptionalMask()
    fast = tc.compile(model)
    x, mask = np.float32(RNG.standard_normal((4, 5))), np.float32(RNG.integers(0, 2, (4, 3)))
    for inputs in [(x,), (x, mask), (x,)]:  # each change of the inputs compiles again, as a new width does
        np.testing.assert_allclose(fast(*inputs).data, model(*map(Tensor, inputs)).data, rtol=1e-6, atol=1e-6)
    assert fast.stats.compiles == 3
    pinned = tc.compile(model, input_shape=[(None, 5), (None, 3)])
    with pytest.raises(TypeError, match=r"takes 2 input\(s\) \(x, mask\), as compile\(\) was given "
                                        r"input_shape=\[\(None, 5\), \(None, 3\)\]; got 1"):
        pinned(x)


class TwoOptional(Layer):
    def __init__(self):
        manual_seed(5)
        self.fc = Linear(5, 3)

    def forward(self, x, mask=None, shift=None, *, scale=1.0):
        y = self.fc(x) * scale
        y = y if mask is None else y * mask
        return y if shift is None else y + shift


def test_inputs_given_by_name_run_as_forward_orders_them():
    """`fast(x, mask=m)` is `fast(x, m)`, as the eager call takes it; a gap before a given input or
    a keyword-only argument is a TypeError naming forward()'s signature."""
    model = TwoOptional()
    fast = tc.compile(model)
    x, mask, shift = (np.float32(RNG.standard_normal(s)) for s in ((4, 5), (4, 3), (4, 3)))
    cases = [((), {"mask": mask}, (mask,)), ((), {"shift": shift, "mask": mask}, (mask, shift)),
             ((mask,), {"shift": shift}, (mask, shift))]
    for args, named, in_order in cases:
        eager = model(Tensor(x), *map(Tensor, args), **{k: Tensor(v) for k, v in named.items()}).data
        np.testing.assert_allclose(fast(x, *args, **named).data, eager, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(fast(x, *args, **named).data, fast(x, *in_order).data)
    with pytest.raises(TypeError, match=r"TwoOptional.forward\(x, mask=None, shift=None, \*, scale=1.0\) was given "
                                        r"x, shift but not mask: a compiled model takes its inputs in forward\(\)'s "
                                        r"order"):
        fast(x, shift=shift)
    with pytest.raises(TypeError, match=r"was given scale by keyword only"):
        fast(x, mask, scale=2.0)
    with pytest.raises(TypeError, match=r"TwoOptional.forward\(.*\): got an unexpected keyword argument 'bias'"):
        fast(x, bias=shift)


def test_none_for_an_input_defaulting_to_none_is_the_call_without_it():
    """`fast(x, None)` / `fast(x, mask=None)` are `fast(x)`, as `model(x, None)` is `model(x)`
    (the None reached as_input_array: "got NoneType"); a None before a given input is refused."""
    model = TwoOptional()
    fast = tc.compile(model)
    x, shift = np.float32(RNG.standard_normal((4, 5))), np.float32(RNG.standard_normal((4, 3)))
    alone = fast(x).data
    for args, named in [((None,), {}), ((None, None), {}), ((), {"mask": None}), ((), {"shift": None, "mask": None})]:
        np.testing.assert_array_equal(fast(x, *args, **named).data, alone)
    assert fast.stats.compiles == 1
    with pytest.raises(TypeError, match=r"TwoOptional.forward\(x, mask=None, shift=None, \*, scale=1.0\) was given "
                                        r"None for mask: a compiled model takes None only for its last inputs"):
        fast(x, None, shift)


class Scaled(Layer):
    def __init__(self):
        self.w = Tensor(np.ones(3, np.float32))

    def forward(self, x, scale=2.0):
        return x * self.w * scale


def test_a_number_for_an_input_is_named_and_one_shape_for_two_inputs_says_so():
    """`fast(x, 3.0)` said "got a 0-D value array(3., dtype=float32)" without naming the input;
    input_shape of one shape for forward(x, mask) ended in Python's bare TypeError."""
    fast = tc.compile(Scaled())
    x = np.ones((2, 3), np.float32)
    for call in (lambda: fast(x, 3.0), lambda: fast(x, scale=np.float32(3))):
        with pytest.raises(TypeError, match=r"^Scaled.forward\(x, scale=2.0\) was given the number 3.0 for scale: a "
                                            r"compiled model's inputs are arrays with the batch first; a number that "
                                            r"configures the model belongs in a layer attribute"):
            call()
    np.testing.assert_array_equal(fast(x).data, np.full((2, 3), 2.0, np.float32))
    with pytest.raises(TypeError, match=r"^Gated.forward\(x, mask\) missing 1 required positional argument: 'mask': "
                                        r"a call passes each input \(fast\(x, mask\)\), and compile\(\)'s input_shape "
                                        r"one shape per input"):
        tc.compile(Gated(), input_shape=(None, 5))


def test_a_parameter_that_no_longer_fits_is_not_blamed_on_an_input_shape():
    """Compiled without input_shape, then a weight of another shape: the message advised compiling
    "with the input shape the model takes now", which the user never gave and which cannot help."""
    model = Scaled()
    fast = tc.compile(model)
    x = np.ones((2, 3), np.float32)
    fast(x)
    model.w = Tensor(np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"^the model changed since it was compiled and can no longer be compiled "
                                         r"for its input of shape \(2, 3\): ") as err:
        fast(x)
    assert "input_shape" not in str(err.value)


def test_sequential_training_argument_is_not_an_input():
    """Sequential.forward(x, training=None): `fast(x, None)` is `fast(x)` as `model(x, None)` is, and
    `fast(x, training=True)` says a compiled model's mode is fixed when compiled."""
    model = Sequential(Linear(5, 3))
    model.eval()
    fast = tc.compile(model)
    x = np.float32(RNG.standard_normal((4, 5)))
    np.testing.assert_array_equal(fast(x, None).data, fast(x).data)
    with pytest.raises(TypeError, match=r"was given training=True: a compiled model's mode is fixed when it is "
                                        r"compiled \(compile\(model, training=True\) keeps dropout\)"):
        fast(x, training=True)


def test_a_shared_mask_without_input_shape_is_refused_saying_how_to_give_it():
    manual_seed(0)
    block = tc.nn.TransformerBlock(12, 3)
    x, mask = np.float32(RNG.standard_normal((4, 6, 12))), np.tril(np.ones((6, 6), np.float32))
    with pytest.raises(tc.CompileError, match=r"without input_shape every input is taken to carry the batch "
                                              r"first, here \(N, 6, 12\), \(N, 6\); an input shared by every sample"):
        tc.compile(block)(x, mask)
    fast = tc.compile(block, input_shape=[(None, 6, 12), (6, 6)])
    np.testing.assert_allclose(fast(x, mask).data, block(Tensor(x), Tensor(mask)).data, rtol=1e-4, atol=1e-4)


def test_a_shared_input_that_fails_a_shape_rule_gets_the_same_hint():
    """A (4,) scale shared by every sample, multiplied in: the trace's broadcasting ValueError came
    without the hint the CompileError path gives."""
    class Scaled(tc.nn.Layer):
        def __init__(self):
            self.lin = Linear(8, 4)

        def forward(self, x, scale=None):
            y = self.lin(x)
            return y if scale is None else y * scale

    model = Scaled()
    x, scale = np.float32(RNG.standard_normal((3, 8))), np.float32([1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"cannot broadcast (.|\n)*without input_shape every input is taken to carry "
                                         r"the batch first, here \(N, 8\), \(N,\)"):
        tc.compile(model)(x, scale)
    fast = tc.compile(model, input_shape=[(None, 8), (4,)])
    np.testing.assert_allclose(fast(x, scale).data, model(Tensor(x), Tensor(scale)).data, rtol=1e-5, atol=1e-6)


class _ShapeError(ValueError):
    def __init__(self, layer, width):
        super().__init__(f"{layer}: bad width {width}")


class _Picky(tc.nn.Layer):
    def forward(self, x, scale):
        if scale.shape[-1] != 4:
            raise _ShapeError("Picky", scale.shape[-1])
        return x * scale


def test_the_users_own_error_keeps_its_type_and_gets_the_hint_as_a_note():
    """Rebuilt as type(exc)(message), an exception whose __init__ takes other arguments became a
    TypeError about its missing argument."""
    with pytest.raises(_ShapeError, match="Picky: bad width 3") as info:
        tc.compile(_Picky())(np.ones((2, 3), np.float32), np.ones((2, 3), np.float32))
    assert sys.version_info < (3, 11) or any("without input_shape every input is taken to carry the batch first"
                                             in note for note in info.value.__notes__)


def test_a_shared_1_s_s_mask_keeps_the_row_blocks_of_an_s_s_one():
    """TinyTorch's (1, S, S) causal mask is reshaped for the heads, a view without the batch: it
    counted as a value every row block would compute again, so the entry ran the whole batch at
    once, its scratch growing with the batch (1000 MiB at batch 4,000 against 0.6)."""
    manual_seed(2)
    block = tc.nn.TransformerBlock(16, 4)
    # more samples than a row block holds: the view is used in several blocks
    x, causal = np.float32(RNG.standard_normal((300, 6, 16))), np.tril(np.ones((6, 6), np.float32))
    plans, outs = [], []
    for mask in (causal, causal[None]):
        fast = tc.compile(block, input_shape=[(None, 6, 16), mask.shape], threads=1)
        outs.append(fast(x, mask).data)
        plans.append(fast._require("plan").plan)
    assert 0 < plans[1].row_block == plans[0].row_block < len(x)
    assert plans[1].scratch_floats(4000) == plans[0].scratch_floats(4000)
    np.testing.assert_array_equal(outs[1], outs[0])
    np.testing.assert_allclose(outs[1], block(Tensor(x), Tensor(causal[None])).data, rtol=1e-5, atol=1e-5)


def test_a_per_sample_2d_mask_is_named_as_eager_names_it():
    """A (batch, seq) mask, which no attention form takes: the trace reported comparing the batch size
    N; it now lists the mask forms, as eager's ValueError does, and the input_shape hint follows."""
    manual_seed(0)
    block = tc.nn.TransformerBlock(12, 3)
    x, mask = np.float32(RNG.standard_normal((4, 6, 12))), np.ones((4, 6), np.float32)
    forms = r"attention mask must have shape \(6, 6\), \(batch or 1, 6, 6\) or \(batch or 1, heads or 1, 6, 6\); got "
    with pytest.raises(ValueError, match=forms + r"\(4, 6\)"):
        block(Tensor(x), Tensor(mask))
    with pytest.raises(tc.CompileError, match=forms + r"\(N, 6\), a 2-D mask traced with the batch first\n"
                                              r"\(without input_shape every input"):
        tc.compile(block)(x, mask)


def test_a_mask_added_after_compiling_names_the_inputs_not_a_changed_model():
    """The model compiled for x alone, then called with x and a shared mask: the error says which
    inputs were compiled for and which were passed (the model itself did not change)."""
    manual_seed(0)
    block = tc.nn.TransformerBlock(12, 3)
    x, mask = np.float32(RNG.standard_normal((4, 6, 12))), np.tril(np.ones((6, 6), np.float32))
    fast = tc.compile(block)
    np.testing.assert_allclose(fast(x).data, block(Tensor(x)).data, rtol=1e-4, atol=1e-4)
    with pytest.raises(tc.CompileError, match=r"^compiled model takes 1 input\(s\) of shapes \(N, 6, 12\) \(N: the "
                                              r"batch\) as compiled before; this call passes 2 of shapes \(N, 6, 12\), "
                                              r"\(N, 6\), and the model cannot be compiled for those: ") as err:
        fast(x, mask)
    assert "changed since it was compiled" not in str(err.value)
    np.testing.assert_allclose(fast(x).data, block(Tensor(x)).data, rtol=1e-4, atol=1e-4)  # still runs x alone


def test_an_input_of_the_wrong_width_names_the_shapes():
    fast = tc.compile(Gated(), input_shape=[(None, 5), (None, 3)])
    with pytest.raises(ValueError, match=r"input 'mask' must have shape \(batch, 3\); got shape \(2, 4\)"):
        fast(np.ones((2, 5)), np.ones((2, 4)))
    shared = tc.compile(MaskedAttention(8), input_shape=[(None, 6, 8), (6, 6)])
    with pytest.raises(ValueError, match=r"input 'mask' must have shape \(6, 6\); got shape \(2, 6, 6\)"):
        shared(np.ones((2, 6, 8)), np.ones((2, 6, 6)))


def test_trace_takes_one_shape_per_input_and_checks_the_count():
    g = tc.trace(Gated(), [(None, 5), (None, 3)])
    assert g.inputs == ["x", "mask"] and [g.shape(n) for n in g.inputs] == [(None, 5), (None, 3)]
    with pytest.raises(TypeError, match="does not take 3 positional inputs"):
        tc.trace(Gated(), [(None, 5), (None, 3), (None, 1)])


def test_a_compiled_model_of_several_inputs_pickles():
    model = Gated()
    fast = tc.compile(model, input_shape=[(None, 5), (None, 3)])
    again = pickle.loads(pickle.dumps(fast))
    x, mask = np.float32(RNG.standard_normal((3, 5))), np.float32(RNG.standard_normal((3, 3)))
    np.testing.assert_array_equal(again(x, mask).data, fast(x, mask).data)


@pytest.mark.parametrize("input_shape", [(None, 5), [None, 5], [(None, 5)], ((None, 5),)])
def test_trace_and_compile_read_input_shape_alike(input_shape):
    # one reader of input_shape (frontend/inputs.py) serves both: one shape, or a list of one per input
    manual_seed(4)
    model = Linear(5, 3)
    g = tc.trace(model, input_shape=input_shape)
    assert [d["shape"] for _, d in g.nx.nodes(data=True) if d["op"] == "input"] == [(None, 5)]
    fast = tc.compile(model, input_shape=input_shape)
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    assert_matches(fast, model, lambda m, x64: x64 @ F64(m.weight.data) + F64(m.bias.data), x)
    assert fast.stats.compiles == 1


@pytest.mark.parametrize("input_shape, words", [
    ([(None, 5), (None, 0)], r"input_shape\[1\] must be \(None, features...\)"),
    ([(None, 5), ()], r"input_shape\[1\] must be"),
    ([(None,), (None, 5)], r"input_shape must be \(batch, features...\).*got \(None,\)"),
])
def test_compile_refuses_what_it_cannot_run_naming_the_shape(input_shape, words):
    with pytest.raises(ValueError, match=words):
        tc.compile(Gated(), input_shape=input_shape)


def test_a_shared_mask_at_another_batch_is_told_the_input_shape_that_takes_it():
    """TinyTorch's create_causal_mask is (1, S, S), for every sample: compiled without input_shape
    every input carries the batch, and the message now spells out the input_shape to give."""
    manual_seed(1)
    block = tc.nn.TransformerBlock(16, 4)
    x, mask = np.float32(RNG.standard_normal((3, 6, 16))), np.triu(np.ones((6, 6), np.float32), 1)[None]
    hint = r"to give 'mask' as one array for every sample, compile with input_shape=\[\(None, 6, 16\), \(1, 6, 6\)\]"
    with pytest.raises(ValueError, match=r"input 'mask' has 1 rows, input 'x' 3 .*" + hint):
        tc.compile(block)(x, mask)
    fast = tc.compile(block, input_shape=[(None, 6, 16), (1, 6, 6)])
    np.testing.assert_allclose(fast(x, mask).data, block(Tensor(x), Tensor(mask)).data, rtol=1e-5, atol=1e-5)
    # a mask of another batch is not one for every sample: that input_shape would fail to trace
    with pytest.raises(ValueError, match=r"input 'mask' has 4 rows, input 'x' 3 \(every input \(batch, 6, 6\) "
                                         r"carries the batch first\)$"):
        tc.compile(block)(x, np.repeat(mask, 4, axis=0))
