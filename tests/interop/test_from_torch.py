"""from_torch against real PyTorch: random weights, batch 0/1/7/129, eager and compiled."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e '.[torch]')")
nn = torch.nn

from interop_helpers import BATCHES, assert_close_to_framework, check_imported  # noqa: E402

import tinycomp as tc  # noqa: E402
import tinycomp.nn as tnn  # noqa: E402
from tinycomp.interop import GraphModel, from_torch  # noqa: E402
from tinycomp.nn import GELU, Dropout, Flatten, Linear, Sequential, Softmax  # noqa: E402


def run_torch(module):
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()
    return run


def seeded(seed: int, make):
    torch.manual_seed(seed)
    return make().eval()


@pytest.mark.parametrize("make, width", [
    (lambda: nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10)), 20),
    (lambda: nn.Sequential(nn.Linear(12, 16), nn.Sigmoid(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 5),
                           nn.Softmax(dim=-1)), 12),
    (lambda: nn.Sequential(nn.Linear(9, 24), nn.GELU(), nn.Linear(24, 3, bias=False)), 9),
    (lambda: nn.Sequential(nn.Linear(9, 24), nn.GELU(approximate="tanh"), nn.Linear(24, 3)), 9),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(8, 4), nn.Identity(), nn.Softmax(dim=1)), 8),
    (lambda: nn.Sequential(nn.Sequential(nn.Linear(6, 6), nn.ReLU()), nn.Linear(6, 2)), 6),
], ids=["mlp-dropout", "sigmoid-tanh-softmax", "gelu-exact", "gelu-tanh", "flatten-identity", "nested"])
def test_sequential_models_match_torch(make, width):
    module = seeded(1, make)
    model = from_torch(module)
    assert isinstance(model, Sequential)
    check_imported(model, run_torch(module), width, scale=2.0)


def test_exact_and_tanh_gelu_are_told_apart_and_exact_gelu_is_compiled_with_erf():
    exact = from_torch(seeded(2, lambda: nn.Sequential(nn.Linear(4, 4), nn.GELU())))
    approx = from_torch(seeded(2, lambda: nn.Sequential(nn.Linear(4, 4), nn.GELU(approximate="tanh"))))
    assert exact[1].approximate == "none" and approx[1].approximate == "tanh"
    fast = tc.compile(exact, input_shape=(None, 4))
    assert "activation=gelu_erf" in fast.dump("optimized")
    assert "gelu_erf" in fast.dump("llvm")
    x = np.linspace(-6, 6, 48, dtype=np.float32).reshape(12, 4)
    with torch.no_grad():  # the two forms differ by ~1e-4 here; each matches its own torch form
        t_exact = nn.functional.gelu(torch.from_numpy(x)).numpy()
        t_tanh = nn.functional.gelu(torch.from_numpy(x), approximate="tanh").numpy()
    assert np.abs(t_exact - t_tanh).max() > 1e-4
    np.testing.assert_allclose(GELU("none")(x).data, t_exact, atol=2e-6)
    np.testing.assert_allclose(GELU("tanh")(x).data, t_tanh, atol=2e-6)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 16)
        self.fc2 = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = h + self.fc2(h)
        return torch.softmax(self.head(nn.functional.gelu(h)), dim=-1)


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(10, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.inner(x)))


def test_module_with_residual_add_is_a_graph_model():
    module = seeded(3, Residual)
    model = from_torch(module)
    assert isinstance(model, GraphModel)
    assert {"fc1", "fc2", "head"} <= set(model.layers)
    check_imported(model, run_torch(module), 16)


def test_module_whose_forward_is_a_chain_is_a_sequential():
    module = seeded(4, Chain)
    model = from_torch(module)
    assert isinstance(model, Sequential) and isinstance(model[0], Linear)
    check_imported(model, run_torch(module), 10)


def test_training_flag_follows_the_module():
    module = seeded(5, lambda: nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)))
    assert from_torch(module)[1].training is False
    assert from_torch(module.train())[1].training is True
    assert isinstance(from_torch(module)[1], Dropout)


def test_each_layer_keeps_its_own_modules_training_flag():
    module = seeded(5, lambda: nn.Sequential(nn.Linear(6, 6), nn.Dropout(0.5), nn.Linear(6, 2))).train()
    module[1].eval()  # torch runs this dropout as the identity although the model trains
    model = from_torch(module)
    assert model.training is True and model[1].training is False
    x = np.random.default_rng(5).standard_normal((9, 6)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    assert_close_to_framework(model(x).data, want, "eager, dropout in eval inside a training model")


class KeywordCall(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(7, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(input=torch.relu(self.fc(input=x)))


class TwoArgumentCall(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)  # called with two tensors: traced (not run), then refused

    def forward(self, x):
        return self.fc(x, x)


def test_sub_module_called_with_a_keyword_argument():
    module = seeded(7, KeywordCall)
    check_imported(from_torch(module), run_torch(module), 7)
    with pytest.raises(tc.CompileError, match="node '.*fc' of type call_module fc.*called with 2 arguments"):
        from_torch(TwoArgumentCall())


def test_float64_module_weights_become_float32():
    module = seeded(6, lambda: nn.Sequential(nn.Linear(5, 3))).double()
    model = from_torch(module)
    assert model[0].weight.dtype == np.float32
    x = np.random.default_rng(0).standard_normal((4, 5))
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(x).data, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("module, name, kind", [
    (nn.Sequential(nn.Linear(4, 4), nn.Conv1d(1, 1, 3)), "1", "Conv1d"),
    (nn.Sequential(nn.Sequential(nn.ELU())), "0.0", "ELU"),
    (nn.Softmax(), "(the top module)", "Softmax"),
    (lambda: nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 0)), "1",
     r"Linear \(4 in, 0 out: a layer of no inputs or outputs"),
])
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors:UserWarning")  # torch's, on Linear(4, 0)
def test_unsupported_module_is_a_compile_error_naming_it(module, name, kind):
    module = module if isinstance(module, nn.Module) else module()  # built here: torch warns as it builds
    with pytest.raises(tc.CompileError, match=rf"module '{__import__('re').escape(name)}' of type {kind}"):
        from_torch(module)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.cat([self.fc(x), x], dim=1)


def test_unsupported_function_names_the_node():
    with pytest.raises(tc.CompileError, match=r"node '\(the top module\): node cat' of type call_function cat"):
        from_torch(Branchy())


@pytest.mark.parametrize("flatten", [nn.Flatten(), nn.Flatten(-2), nn.Flatten(1, -2)], ids=["1", "-2", "1..-2"])
def test_flatten_keeps_the_batch_first(flatten):
    module = nn.Sequential(flatten, nn.Linear(12 if flatten.end_dim == -1 else 4, 2)).eval()
    model = from_torch(module)
    x = np.random.default_rng(1).standard_normal((5, 3, 4)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(x).data, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tc.compile(model)(x).data, want, rtol=1e-5, atol=1e-6)


def test_flatten_of_the_batch_is_refused_naming_the_module():
    with pytest.raises(ValueError, match="start_dim"):
        Flatten(0)
    with pytest.raises(tc.CompileError, match="module '1' of type Flatten.*dimension 0 is the batch"):
        from_torch(nn.Sequential(nn.Linear(4, 4), nn.Flatten(0)))
    with pytest.raises(ValueError, match=r"Flatten\(start_dim=-3\) on an input of 3 dimensions would merge the batch"):
        Flatten(-3)(np.zeros((2, 3, 4), np.float32))


def test_softmax_keeps_its_dim():
    assert from_torch(nn.Sequential(nn.Softmax(dim=1)))[0].dim == 1
    assert repr(Softmax(dim=1)) == "Softmax(dim=1)"


def test_not_a_module_is_a_type_error():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        from_torch("a string")


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_torch_eagerly(affine):
    module = seeded(7, lambda: nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32, eps=1e-3, elementwise_affine=affine),
                                             nn.GELU(), nn.Linear(32, 4)))
    if affine:  # not the ones and zeros torch starts from
        with torch.no_grad():
            module[1].weight.normal_()
            module[1].bias.normal_()
    model = from_torch(module)
    assert isinstance(model[1], tnn.LayerNorm) and model[1].eps == pytest.approx(1e-3)
    run = run_torch(module)
    for rows in BATCHES:
        x = np.random.default_rng(rows).standard_normal((rows, 16)).astype(np.float32) * 3
        assert_close_to_framework(model(x).data, run(x), f"eager, batch {rows}")


def test_layer_norm_compiles():
    module = seeded(8, lambda: nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 4)))
    check_imported(from_torch(module), run_torch(module), 16)
