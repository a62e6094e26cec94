import re

import numpy as np
import pytest

import tinycomp as tc
from tests.models import CATALOGUE, eager_eval, list_dict_layer, reference_mlp, residual_net, shared_linear
from tinycomp.errors import CompileError
from tinycomp.frontend.tensor import apply_op
from tinycomp.frontend.tracer import SymbolicTensor, resolve_path, trace
from tinycomp.ir.interpret import interpret
from tinycomp.ir.passes import run_pipeline
from tinycomp.nn import Dropout, Layer, Linear, ReLU, Sequential, Tensor, manual_seed


@pytest.fixture(autouse=True)
def _seed():
    manual_seed(0)


# ---------------------------------------------------------------- what a trace records

def test_reference_mlp_graph():
    model = reference_mlp()
    g = trace(model, (None, 784))
    counts = g.op_counts()
    assert (counts["matmul"], counts["add"], counts["relu"], counts["dropout"]) == (3, 3, 2, 2)
    assert g.inputs == ["x"] and g.shape("x") == (None, 784)
    assert g.output == "output" and g.shape("output") == (None, 10)
    assert g.params == ["0.weight", "0.bias", "3.weight", "3.bias", "6.weight", "6.bias"]
    assert g["0.weight"]["value"] is model[0].weight  # bound by reference: live
    assert all(g[p]["path"] == p for p in g.params)
    assert [g[n]["layer"] for n in g.nodes("dropout")] == ["2", "5"]
    assert all("layer" in g[n] for n in g.nodes())


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda c: c.name)
def test_catalogue_traces_and_survives_the_passes(case):
    model = case.build()
    x = case.sample(5)
    expected = eager_eval(model, x)
    g = trace(model, (None, case.in_features))
    np.testing.assert_allclose(interpret(g, x), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(interpret(run_pipeline(g), x), expected, rtol=0, atol=1e-6)


def test_paths_of_nested_lists_and_dicts():
    net, layered = residual_net(), list_dict_layer()
    assert trace(net, (None, 16)).params == [
        "block.fc1.weight", "block.fc1.bias", "block.fc2.weight", "block.fc2.bias", "head.weight", "head.bias"]
    g = trace(layered, (None, 10))
    assert {"heads.0.weight", "heads.1.bias", "branches.left.weight", "branches.right.bias"} <= set(g.params)
    for model, graph in ((net, trace(net, (None, 16))), (layered, g)):
        for p in graph.params:
            assert resolve_path(model, p) is graph[p]["value"]


def test_resolve_path_sees_reassigned_weights():
    model = reference_mlp()
    model[3].weight = Tensor(np.zeros((256, 128)))
    assert resolve_path(model, "3.weight") is model[3].weight


def test_shared_tensor_is_one_param_node():
    g = trace(shared_linear(), (None, 12))
    assert g.params == ["fc.weight", "fc.bias"]
    assert g.use_count("fc.weight") == 2


def test_scalars_arrays_and_foreign_tensors_become_consts():
    foreign = Tensor(np.full(3, 2.0))

    class Consts(Layer):
        def forward(self, x):
            return (x * 0.5 + 1) * foreign - np.arange(3.0) + np.ones(3)  # ndarray + symbolic is reflected

    g = trace(Consts(), (None, 3))
    consts = [g[n]["value"] for n in g.nodes("const")]
    assert [c.shape for c in consts] == [(), (), (3,), (3,), (3,)]
    assert all(c.dtype == np.float32 for c in consts)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    expected = (x * 0.5 + 1) * 2 - np.arange(3.0) + 1
    np.testing.assert_allclose(interpret(g, x), expected, atol=1e-6)


def test_concrete_batch_is_kept():
    assert trace(reference_mlp(), (32, 784)).shape("output") == (32, 10)


def test_symbolic_tensor_is_a_tensor():
    seen = []

    class Check(Layer):
        def forward(self, x):
            seen.append((isinstance(x, Tensor), type(x), x.shape, x.ndim))
            return x

    trace(Check(), (None, 4))
    [(is_tensor, kind, shape, ndim)] = seen
    assert is_tensor and kind is SymbolicTensor and ndim == 2
    assert shape[1:] == (4,) and repr(shape) == "(N, 4)"  # the batch size: a marker, not a number


@pytest.mark.parametrize("use", [
    lambda n: n == 1, lambda n: n != 8, lambda n: n > 1, lambda n: n is not None and bool(n), lambda n: int(n),
    lambda n: n * 2, lambda n: range(n), lambda n: np.zeros((n, 3)),
    # a set or dict lookup hashes first: `n in {1}` was always false, never calling __eq__
    lambda n: n in {1}, lambda n: {1: True}.get(n), lambda n: n ** 0, lambda n: -n, lambda n: abs(n),
    lambda n: round(n), lambda n: n // 2, lambda n: n & 1,
])
def test_using_the_batch_size_while_tracing_is_a_compile_error(use):
    """`if x.shape[0] == 1:` would take one branch at trace time for every batch: refused, naming it."""
    class Branchy(Layer):
        def forward(self, x):
            use(x.shape[0])
            return x

    with pytest.raises(CompileError, match="the batch size N, which is not known while tracing"):
        trace(Branchy(), (None, 4))


def test_shapes_of_traced_values_compare_and_reshape_takes_minus_one():
    class Shapes(Layer):
        def forward(self, x):
            y = x * 2
            assert x.shape == y.shape and x.shape[1] == 4 and len(x.shape) == 2
            return y.reshape(-1, 2, 2)

    assert trace(Shapes(), (None, 4)).shape("output") == (None, 2, 2)


def test_reshape_that_flattens_the_batch_says_to_keep_it_first():
    """Eager `x.reshape(-1)` merges the samples of a batch: the message says so and how to flatten
    each sample instead (it said "20 elements vs 1 elements per sample")."""
    class Flatten(Layer):
        def forward(self, x):
            return x.reshape(-1)

    with pytest.raises(CompileError, match=r"the batch dimension N must stay first.*x\.reshape\(-1, 20\)"):
        trace(Flatten(), (None, 4, 5))


@pytest.mark.parametrize("newshape, words", [
    ((3, -1), r"cannot reshape \(N, 4\) to \(3, -1\): the batch dimension N must stay first.*in R"),
    ((-1,), r"the batch dimension N must stay first, written as -1, with each sample's 4 elements"),
])
def test_reshape_that_runs_eagerly_but_cannot_compile_is_a_compile_error(newshape, words):
    # eagerly these reshapes work at some batch sizes (batch 3 for (3, -1), any for (-1,)), so they are
    # not shape errors of the model but what a kernel serving every batch size cannot do
    class R(Layer):
        def forward(self, x):
            return x.reshape(*newshape)

    np.testing.assert_array_equal(R()(Tensor(np.arange(12.0).reshape(3, 4))).data,
                                  np.arange(12.0, dtype=np.float32).reshape(newshape))
    for build in (lambda: trace(R(), (None, 4)), lambda: tc.compile(R(), input_shape=(None, 4))):
        with pytest.raises(CompileError, match=words):
            build()


def test_a_reshape_wrong_at_every_batch_size_stays_the_eager_value_error():
    class R(Layer):
        def forward(self, x):
            return x.reshape(-1, 3, 3)

    with pytest.raises(ValueError, match="Element count mismatch: 4 elements vs 9"):
        trace(R(), (None, 4))


@pytest.mark.parametrize("sizes, out", [((-1,), (20,)), ((4, -1), (4, 5)), ((-1, 2), (10, 2))],
                         ids=["batch,-1", "batch,4,-1", "batch,-1,2"])
def test_reshape_to_the_batch_size_and_minus_one(sizes, out):
    # x.reshape(x.shape[0], -1), the usual flatten: the -1 is what each sample has left
    class R(Layer):
        def forward(self, x):
            return x.reshape(x.shape[0], *sizes) * 2

    x = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32)
    assert trace(R(), (None, 4, 5)).shape("output") == (None, *out)
    np.testing.assert_array_equal(tc.compile(R(), input_shape=(None, 4, 5))(x).data, R()(Tensor(x)).data)
    with pytest.raises(ValueError, match=r"each sample's 20 elements do not make whole groups of 3"):
        class Bad(Layer):
            def forward(self, x):
                return x.reshape(x.shape[0], 3, -1)
        trace(Bad(), (None, 4, 5))


def test_a_bool_operand_is_the_number_it_is_eagerly():
    class Shift(Layer):
        def forward(self, x):
            return (x + True) * False - x * True

    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(tc.compile(Shift())(x).data, Shift()(Tensor(x)).data)


def test_messages_name_a_traced_value_a_tensor():
    class Pow(Layer):
        def forward(self, x):
            return x ** x

    class MatmulList(Layer):
        def forward(self, x):
            return x @ [[1.0]]

    for model, words in ((Pow(), r"exponent \(x \*\* 2, x \*\* 0\.5\); got Tensor \(for a tensor exponent"),
                         (MatmulList(), r"requires Tensor, got list")):
        with pytest.raises(TypeError, match=words) as info:
            trace(model, (None, 4))
        assert "Symbolic" not in str(info.value)
    with pytest.raises(TypeError, match=r"got Tensor \(for a tensor exponent"):  # eagerly the same words
        Pow()(Tensor([[1.0, 2.0]]))

    seen = []

    class Printed(Layer):
        def forward(self, x):
            seen.append(repr(x))
            return x * 2

    trace(Printed(), (None, 4))
    assert seen == ["Tensor(traced: node 'x', shape=(N, 4))"]


# ---------------------------------------------------------------- training flags

def test_training_trace_keeps_dropout_and_the_models_flags():
    model = reference_mlp().eval()
    g = trace(model, (None, 784), training=True)
    assert [g[n]["training"] for n in g.nodes("dropout")] == [True, True]
    assert all(layer.training is False for layer in model)
    model.train()
    g = trace(model, (None, 784))
    assert [g[n]["training"] for n in g.nodes("dropout")] == [False, False]
    assert all(layer.training is True for layer in model)


def test_trace_leaves_no_instance_attributes_behind():
    model = reference_mlp()
    before = [dict(vars(layer)) for layer in [model, *model]]
    trace(model, (None, 784), training=True)
    assert [dict(vars(layer)) for layer in [model, *model]] == before


# ---------------------------------------------------------------- bad input

def test_input_shape_not_fitting_first_layer():
    model = reference_mlp()
    with pytest.raises(ValueError, match="Cannot perform matrix multiplication") as info:
        trace(model, (None, 100))
    assert "shape mismatch" in str(info.value) and "Linear at '0'" in str(info.value)
    assert "Inner dimensions must match: 100 ≠ 784" in str(info.value)
    assert model[0].training is True and "forward" not in vars(model[0])  # restored after an error too


@pytest.mark.parametrize("shape", [784, (), (784, None), (None, -1), (None, 2.5), "784"])
def test_malformed_input_shape(shape):
    with pytest.raises(ValueError, match="input_shape"):
        trace(reference_mlp(), shape)


class Misbehaves(Layer):
    def __init__(self, action):
        self.action = action

    def forward(self, x):
        return self.action(x)


@pytest.mark.parametrize("action, operation", [
    (lambda x: x.data, "reads .data"),
    (lambda x: x if x else x, "converts to bool"),
    (lambda x: float(x), "converts to float"),
    (lambda x: int(x), "converts to int"),
    (lambda x: np.asarray(x), "converts to a NumPy array"),
    (lambda x: x.numpy(), "calls .numpy()"),
    (lambda x: len(x), "takes len()"),
    (lambda x: x[0], "indexes [0]"),
    (lambda x: list(x), "iterates"),
    (lambda x: np.exp(x), "np.exp, an op the op table lacks"),
    (lambda x: np.concatenate([x, x]), "np.concatenate, an op the op table lacks"),
    (lambda x: apply_op("frobnicate", x), "op 'frobnicate', which the op table lacks"),
    (lambda x: x.size, "reads .size"),
])
def test_forward_misuse_names_layer_path_and_operation(action, operation):
    model = Sequential(Linear(4, 4), Sequential(ReLU(), Misbehaves(action)))
    with pytest.raises(CompileError) as info:
        trace(model, (None, 4))
    assert "Misbehaves at '1.1'" in str(info.value)
    assert operation in str(info.value)


def test_misuse_in_the_top_level_forward():
    with pytest.raises(CompileError, match=r"Misbehaves \(the top-level model\) reads .data"):
        trace(Misbehaves(lambda x: x.data), (None, 4))


@pytest.mark.parametrize("result", [3.0, None, (1, 2), np.zeros(3), Tensor(np.zeros(3))])
def test_forward_returning_non_tensor(result):
    with pytest.raises(CompileError, match="must return a Tensor computed from its input"):
        trace(Misbehaves(lambda x: result), (None, 4))


def test_forward_returning_a_value_without_the_batch_is_a_compile_error():
    # a Tensor computed from a parameter alone: eager returns shape (3,) at every batch size
    class FromWeight(Layer):
        def __init__(self):
            self.w = Tensor(np.arange(3.0))

        def forward(self, x):
            return self.w * 2

    with pytest.raises(CompileError, match=r"must return one row per sample.*shape \(3,\) for inputs \(N, 4\)"):
        trace(FromWeight(), (None, 4))
    with pytest.raises(CompileError, match="one row per sample"):
        tc.compile(FromWeight())(np.zeros((2, 4), np.float32))


def test_user_exceptions_pass_through_and_the_model_is_restored():
    class Boom(Layer):
        def forward(self, x):
            raise KeyError("boom")

    model = Sequential(Dropout(0.5), Boom())
    with pytest.raises(KeyError, match="boom") as info:
        trace(model, (None, 4))
    if hasattr(info.value, "__notes__"):
        assert info.value.__notes__ == ["while tracing Boom at '1'"]
    assert all("forward" not in vars(layer) and "training" not in vars(layer) for layer in model)


# ---------------------------------------------------------------- what would go stale is refused

def test_indexing_a_parameter_is_recorded_and_stays_live_not_a_frozen_copy():
    import tinycomp as tc

    class Head(Layer):
        def __init__(self):
            self.fc = Linear(8, 8)

        def forward(self, x):
            return x @ self.fc.weight[:, :4]

    model = Head()
    g = trace(model, (None, 8))
    assert [g.attrs(n)["stop"] for n in g.nodes("slice")] == [4] and g.op(g.args(g.nodes("slice")[0])[0]) == "param"
    fast = tc.compile(model)
    x = np.ones((2, 8), np.float32)
    model.fc.weight.data[:, :4] = 2.0  # a change after compiling: the slice reads the parameter as it is now
    np.testing.assert_allclose(fast(x).data, np.full((2, 4), 16.0))


def test_transposing_a_one_d_parameter_stays_live():
    import tinycomp as tc

    class Scale(Layer):
        def __init__(self):
            self.s = Tensor(np.ones(4))

        def forward(self, x):
            return x * self.s.transpose()

    model = Scale()
    fast = tc.compile(model)
    x = np.ones((2, 4), np.float32)
    fast(x)
    model.s.data[:] = 5.0  # in place, after compiling
    np.testing.assert_array_equal(fast(x).data, eager_eval(model, x))


def test_a_sequential_subclass_s_own_attributes_are_live_parameters():
    import tinycomp as tc

    class WithHead(Sequential):
        def __init__(self):
            super().__init__(Linear(8, 16), ReLU())
            self.head = Linear(16, 4)
            self.scale = Tensor(np.ones(4))

        def forward(self, x):
            return self.head(super().forward(x)) * self.scale

    manual_seed(0)
    model = WithHead()
    fast = tc.compile(model)
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    fast(x)
    model.head.weight.data *= 2  # e.g. an optimizer step, in place
    model.scale.data[:] = 3.0
    np.testing.assert_allclose(fast(x).data, eager_eval(model, x), rtol=1e-5, atol=1e-6)
    assert {"head.weight", "scale", "0.weight"} <= {fast.graph[p]["path"] for p in fast.graph.params}


@pytest.mark.parametrize("keys", [(1, "1"), ("enc.0", "dec")])
def test_dict_keys_that_cannot_name_a_path_are_a_compile_error(keys):
    class Heads(Layer):
        def __init__(self):
            self.heads = {k: Linear(4, 4) for k in keys}

        def forward(self, x):
            return sum((head(x) for head in self.heads.values()), start=x)

    with pytest.raises(CompileError, match="cannot name as a path step"):
        trace(Heads(), (None, 4))


def test_a_parameter_named_output_is_traced():
    class Scaled(Layer):
        def __init__(self):
            self.output = Tensor(np.full(4, 2.0))

        def forward(self, x):
            return x * self.output

    g = trace(Scaled(), (None, 4))
    assert g.params == ["param:output"] and g[g.params[0]]["path"] == "output"


@pytest.mark.parametrize("forward, shape", [
    (lambda self, x: x + x.reshape(-1), "(N, N)"),
    (lambda self, x: x + Tensor(np.ones((3, 1, 1))), "(3, N, 1)"),
])
def test_a_batch_dimension_that_is_not_the_leading_axis_is_a_compile_error(forward, shape):
    model = type("Odd", (Layer,), {"forward": forward})()
    with pytest.raises(CompileError, match=rf"add gives shape {re.escape(shape)}, where the batch dimension N"):
        trace(model, (None, 1))


def test_one_value_per_sample_compiles_and_softmax_across_the_batch_is_refused():
    import tinycomp as tc
    from tinycomp.nn import Softmax

    flat = type("Flat", (Layer,), {"forward": lambda self, x: ReLU()(x.reshape(-1))})()
    x = np.arange(-2, 2, dtype=np.float32).reshape(4, 1)
    np.testing.assert_array_equal(tc.compile(flat)(x).data, eager_eval(flat, x))
    across = type("Across", (Layer,), {"forward": lambda self, x: Softmax()(x.reshape(-1))})()
    with pytest.raises(CompileError, match=r"softmax\(dim=-1\) of a \(N,\) value runs over the batch dimension N"):
        tc.compile(across)(x)


def test_the_graph_class_is_importable_where_design_names_it():
    import tinycomp
    from tinycomp.ir import Graph

    g = tinycomp.trace(Linear(3, 2), (None, 3))
    assert isinstance(g, Graph) and isinstance(g, tinycomp.ir.Graph) and g.nx is not None


def test_dict_keys_of_values_the_walk_does_not_enter_are_fine():
    class Config(Layer):
        def __init__(self):
            self.fc = Linear(4, 4)
            self.cfg = {"model.dim": 4, 0.5: "half", 1: "a", "1": "b"}  # no tensors or layers inside

        def forward(self, x):
            return self.fc(x) * self.cfg["model.dim"]

    assert trace(Config(), (None, 4)).params == ["fc.weight", "fc.bias"]


class _Frozen(Layer):
    training = property(lambda self: False)  # never trains: a read-only flag

    def forward(self, x):
        return x


class _Gate(Layer):
    """`training` as a property with a setter, kept in `_mode`."""

    def __init__(self):
        self.fc, self._mode = Linear(4, 4), True

    @property
    def training(self):
        return self._mode

    @training.setter
    def training(self, value):
        self._mode = value

    def forward(self, x):
        return self.fc(x) * (2.0 if self.training else 1.0)


def test_a_trace_that_fails_setting_a_flag_leaves_every_layer_in_its_own_mode():
    """The per-thread mode was installed before the flags were set: a read-only `training`
    property failed the trace and left this thread's Dropout in eval mode for good."""
    drop = Dropout(0.5)
    model = Sequential(Linear(4, 4), drop, _Frozen())
    with pytest.raises(AttributeError, match="has no setter"):
        trace(model, (None, 4))
    assert drop.training and (model(np.ones((1000, 4), np.float32)).data == 0).any()


def test_a_training_property_with_a_setter_is_restored_after_the_trace():
    gate = _Gate()
    x = np.ones((2, 4), np.float32)
    before = gate(x).data
    trace(gate, (None, 4))
    assert gate.training and gate._mode
    np.testing.assert_array_equal(gate(x).data, before)
