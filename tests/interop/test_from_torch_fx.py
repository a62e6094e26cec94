"""from_torch on forwards written with tensor operations (read through torch.fx with `input_shape`):
parameters used directly, arithmetic with numbers and parameters, views with sizes read from
x.shape, transposes, products of computed tensors (a student's attention), reductions; against real
PyTorch, eager and compiled, or refused with an error naming the node and why."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e '.[torch]')")
nn = torch.nn
F = nn.functional

from interop_helpers import assert_close_to_framework, check_imported  # noqa: E402
from torch_models import (  # noqa: E402
    FlashAttention,
    FlattenThenLinear,
    KarpathyBlock,
    NanoGPTAttention,
    StudentBlock,
)

import tinycomp as tc  # noqa: E402
from tinycomp.interop import GraphModel, from_torch  # noqa: E402
from tinycomp.parity import check_parity, float64_reference  # noqa: E402


def run_torch(module):
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()
    return run


def check_against_torch(module, sample: tuple[int, ...], scale: float = 1.0):
    """Eager and compiled against the module itself at batches 1, 2 and 7; compiled against eager by the
    parity rule. Returns the compiled model."""
    module.eval()
    model = from_torch(module, input_shape=(None, *sample))
    fast = tc.compile(model, input_shape=(None, *sample))
    for rows in (1, 2, 7):
        x = (np.random.default_rng(rows).standard_normal((rows, *sample)) * scale).astype(np.float32)
        want = run_torch(module)(x)
        eager, compiled = model(x).data, fast(x).data
        assert_close_to_framework(eager, want, f"eager, batch {rows}")
        assert_close_to_framework(compiled, want, f"compiled, batch {rows}")
        report = check_parity(compiled, eager, float64_reference(fast.graph, x))
        assert report.ok, f"batch {rows}: {report}"
    return fast


class Affine(nn.Module):
    """Parameters used directly: x @ w + b and F.linear, numbers on either side."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.w = nn.Parameter(torch.randn(6, 5) * 0.5)
        self.b = nn.Parameter(torch.randn(5))

    def forward(self, x):
        if self.how == "matmul":
            return torch.tanh(x @ self.w + self.b) * 2 - 1
        if self.how == "linear":
            return 1 - F.linear(x, self.w.t(), self.b) / 3
        return F.relu(F.linear(x, self.w.T))


@pytest.mark.parametrize("how", ["matmul", "linear", "linear-no-bias"])
def test_parameters_used_directly(how):
    torch.manual_seed(1)
    module = Affine(how).eval()
    check_imported(from_torch(module, input_shape=(None, 6)), run_torch(module), 6, scale=2.0)


def test_transformer_block_as_a_student_writes_it():
    torch.manual_seed(2)
    fast = check_against_torch(StudentBlock(), (5, 16))
    ops = {fast.graph.op(n) for n in fast.graph.nodes()}
    assert {"attention", "layer_norm"} <= ops and not {"transpose", "softmax", "mean"} & ops


def test_causal_block_masked_from_a_buffer_cut_to_the_input():
    torch.manual_seed(4)
    module = StudentBlock(causal=True)
    model = from_torch(module.eval(), input_shape=(None, 5, 16))
    assert "Where(shape=(1, 1, 5, 5), -inf, data)" in repr(model)  # the mask cut to 5 at import, a constant
    check_against_torch(module, (5, 16))


@pytest.mark.parametrize("last", [False, True], ids=["all-positions", "last-position"])
def test_nanogpt_attention_split_and_masked(last):
    torch.manual_seed(6)
    check_against_torch(NanoGPTAttention(last=last), (5, 16))


def test_heads_joined_with_cat_as_in_lets_build_gpt():
    torch.manual_seed(9)
    fast = check_against_torch(nn.Sequential(KarpathyBlock(), KarpathyBlock()), (5, 16))
    counts = fast.graph.op_counts()
    assert counts.get("attention") == 8 and counts.get("concat") == 2 and "where" not in counts


@pytest.mark.parametrize("mode", ["causal", "bool-mask", "float-mask", "data-mask"])
def test_scaled_dot_product_attention_is_the_fused_kernel(mode):
    torch.manual_seed(13)
    fast = check_against_torch(FlashAttention(mode=mode), (5, 16))
    assert fast.graph.op_counts().get("attention") == 1


@pytest.mark.parametrize("call, match", [
    (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.1), r"dropout_p > 0 \(it drops at inference"),
    (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=q[..., :1] > 0, is_causal=True),
     r"is_causal=True with an attn_mask"),
])
def test_scaled_dot_product_attention_refusals(call, match):
    class Call(nn.Module):
        def forward(self, x):
            return call(x, x, x)

    with pytest.raises(tc.CompileError, match=match):
        from_torch(Call().eval(), input_shape=(None, 2, 5, 4))


class Parts(nn.Module):
    """Indexing and the ways torch cuts a tensor into parts."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.w = nn.Parameter(torch.randn(4, 6))

    def forward(self, x):  # x: (N, 3, 6)
        how = self.how
        if how == "getitem":
            return x[:, 1:, ::2] * x[:, 0:1, 1:4] + x[:, 1:, -1:] + self.w[1, :3]
        if how == "ints-and-none":
            return x[:, 2][:, None] + x[:, :, 0, None] @ self.w[:1, :]
        if how == "split":
            a, b = x.split([2, 4], dim=-1)
            c, d, e = torch.chunk(x, 3, 2)
            return a.sum(-1, keepdim=True) * b + c.sum(-1, keepdim=True) - d.mean(-1, keepdim=True) * e[..., :1]
        if how == "stack":
            a, b, c = x.unbind(1)
            return torch.stack([c, a * 2, b], dim=1) + torch.stack((a, b, c), -1).transpose(1, 2)
        if how == "unbind-narrow-select":
            first, second, third = x.unbind(1)
            return first * second - third + x.narrow(2, 1, 3).sum(-1)[:, :1] + x.select(1, 2)
        raise AssertionError(how)


class Hunted(nn.Module):
    """Forms a hunt over real models found imported wrong or refused (each failed before its fix)."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.register_buffer("keep", torch.rand(4, 6) < 0.5)
        self.register_buffer("tril", torch.tril(torch.ones(8, 8)))

    def forward(self, x):  # x: (N, 4, 6)
        how = self.how
        if how == "narrow-from-the-end":
            return x.narrow(1, -2, 2) * 2
        if how == "parts-picked-by-sizes":
            parts = x.chunk(3, x.dim() - 1)  # the dim given positionally, computed
            return torch.cat(parts[: x.shape[1] // 2], -1) + parts[x.shape[1] - 4].sum(-1, keepdim=True)
        if how == "in-place":
            a = (x * 2).masked_fill_(self.keep, -1e9).clamp_(-5, 5)
            e = x.clone()
            e.mul_(2).add_(1)  # e is written through the node mul_ returned
            return a + F.hardtanh_(x * 1.5, -0.5, 0.5) + (x + 1).relu_() + e + (x * 1).clamp_min_(0.2)
        if how == "max-of-two":
            return torch.max(x, -x) + x.min(x * 2)
        if how == "list-index":
            return x[:, [-1], :] + x[:, [0, 2], ::2].sum(-1, keepdim=True)
        if how == "mask-before-scale":
            T = x.size(1)
            att = (x @ x.transpose(-2, -1)).masked_fill(self.tril[:T, :T] == 0, float("-inf")) / 6 ** 0.5
            return F.softmax(att, dim=-1) @ x
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["narrow-from-the-end", "parts-picked-by-sizes", "in-place", "max-of-two",
                                 "list-index", "mask-before-scale"])
def test_forms_a_hunt_found(how):
    torch.manual_seed(11)
    fast = check_against_torch(Hunted(how), (4, 6))
    if how == "mask-before-scale":
        assert fast.graph.op_counts().get("attention") == 1


class MinGPTBlock(nn.Module):
    """minGPT keeps its MLP as a lambda over the module's own ModuleDict: a copy's lambda still calls
    the original's modules, so the forward is traced on the module itself, its state put back."""

    def __init__(self):
        super().__init__()
        self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(8, 32), c_proj=nn.Linear(32, 8)))
        m = self.mlp
        self.mlpf = lambda x: m.c_proj(F.gelu(m.c_fc(x)))

    def forward(self, x):
        self.last = x
        return x + self.mlpf(x)


def test_a_forward_that_calls_its_own_modules_through_a_closure():
    torch.manual_seed(12)
    module = MinGPTBlock().eval()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    from_torch(module, input_shape=(None, 4, 8))
    assert not hasattr(module, "last") and set(vars(module)) == set(vars(MinGPTBlock()))  # as it was
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    check_against_torch(module, (4, 8))


class Uncopyable(nn.Module):
    """deepcopy refuses its non-leaf tensor attribute, so the import runs the module itself; its
    batch norm in training mode updates running statistics when run, and its forward keeps a list."""

    def __init__(self):
        super().__init__()
        self.fc, self.bn = nn.Linear(4, 4), nn.BatchNorm1d(4)
        self.s = torch.ones(4, requires_grad=True) * 2  # not a leaf: deepcopy raises
        self.seen, self.log, self.n = [], {"calls": []}, torch.zeros(1)

    def forward(self, x):
        self.seen.append(x)
        self.log["calls"].append(1)  # a list inside a dict
        self.n += 1  # a plain tensor attribute, not a buffer
        return self.bn(self.fc(x)) * self.s.detach()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_users_module_is_left_as_it_was_even_when_it_cannot_be_copied(mode):
    """A hunt found an import flipping such a module to eval, counting two batches in its batch norm
    (and moving its statistics), and leaving a traced value in its list; refused or not."""
    module = Uncopyable().train(mode == "train")
    before = {k: v.clone() for k, v in module.state_dict().items()}
    if mode == "train":
        with pytest.raises(tc.CompileError, match="BatchNorm1d"):
            from_torch(module, input_shape=(None, 4))
    else:
        check_imported(from_torch(module, input_shape=(None, 4)), run_torch(module), 4)
        module.seen.clear()  # check_imported's own torch runs appended to it
        module.log["calls"].clear()
        module.n.zero_()
    assert module.training == (mode == "train") and module.bn.training == (mode == "train")
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items()) and module.seen == []
    assert module.log == {"calls": []} and module.n.item() == 0


def test_a_softmax_of_rows_all_masked_is_refused_naming_why():
    """torch's softmax of a row that is all -inf is NaN, tinycomp's (TinyTorch's) zeros: the check
    against the module says so, not 'in place through another name'."""
    class AllMasked(nn.Module):
        def forward(self, x):
            return torch.softmax(x.masked_fill(x > -5, float("-inf")), -1)

    with pytest.raises(tc.CompileError, match=r"torch gives NaN at \d+ places where the import gives numbers: a "
                                              r"softmax of a row that is all -inf"):
        from_torch(AllMasked().eval(), input_shape=(None, 4))


def test_nan_torch_makes_without_a_softmax_is_not_blamed_on_one():
    """log of a mean of a layer norm (rounding noise, its sign the sums' order): the refusal named an
    all -inf softmax the model does not have."""
    class LogOfNoise(nn.Module):
        def forward(self, x):
            return torch.log(F.layer_norm(x, (17,)).mean(-1, keepdim=True))

    with pytest.raises(tc.CompileError, match=r"torch gives NaN at \d+ places where the import gives numbers: a NaN "
                                              r"one of them makes and the other does not"):
        from_torch(LogOfNoise().eval(), input_shape=(None, 17))


def test_in_place_writes_through_detach_show_in_the_tensor():
    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            a = self.fc(x)
            a.detach().add_(1)  # a shares its storage with what detach returns
            return a

    module = Detached().eval()
    check_imported(from_torch(module), run_torch(module), 4)  # without input_shape: no check against torch


def test_the_first_tracing_error_is_the_one_reported():
    class FinfoFill(nn.Module):  # torch.finfo of a traced dtype: fx cannot trace it
        def __init__(self):
            super().__init__()
            self.register_buffer("tril", torch.tril(torch.ones(8, 8)))

        def forward(self, x):
            T = x.size(1)
            s = x @ x.transpose(1, 2)
            return s.masked_fill(self.tril[:T, :T] == 0, torch.finfo(s.dtype).min)

    with pytest.raises(tc.CompileError, match=r"torch.fx cannot trace its forward \(TypeError: torch.finfo\(\)"):
        from_torch(FinfoFill().eval(), input_shape=(None, 5, 8))


@pytest.mark.parametrize("how", ["getitem", "ints-and-none", "split", "stack", "unbind-narrow-select"])
def test_indexing_and_parts(how):
    torch.manual_seed(7)
    check_against_torch(Parts(how), (3, 6))


class Bounded(nn.Module):
    """Clamps, ReLU6 and Hardtanh, torch.where with a fixed condition, maximum/minimum of computed tensors."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.relu6, self.hardtanh = nn.ReLU6(), nn.Hardtanh(-0.5, 0.25)
        self.low = nn.Parameter(torch.randn(4) * 0.3 - 0.5)
        self.register_buffer("keep", torch.rand(3, 4) < 0.5)

    def forward(self, x):  # x: (N, 3, 4)
        how = self.how
        if how == "clamp":
            return x.clamp(-1, 0.5) + torch.clamp(x, min=self.low) + x.clip(max=0.1) + x.clamp_min(0) - x.clamp_max(0)
        if how == "modules":
            return self.relu6(x * 4) + self.hardtanh(x) + F.relu6(-x * 4) + F.hardtanh(x, -0.1, 0.2)
        if how == "where":
            return torch.where(self.keep, x, x.exp()) + x.masked_fill(~self.keep, 0.5) + torch.where(self.keep, 1.0, -x)
        if how == "masks-from-data":
            pad = x.abs().sum(-1, keepdim=True) == 0
            y = torch.where(x > 0, x, 0.01 * x) + (x <= 0.5).float() * 3 + x.masked_fill(~(x >= -0.25), -1.0)
            y = y.masked_fill(pad, 0.0) + (x != x * 2).float() + torch.logical_not(x < 1).float()
            return y + x.gt(0.3) * x.lt(0.6)
        if how == "extremes":
            return torch.maximum(x, x * x - 1) - torch.minimum(torch.tanh(x), x / 2) + torch.maximum(self.low, x)
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["clamp", "modules", "where", "masks-from-data", "extremes"])
def test_clamps_selections_and_extremes(how):
    torch.manual_seed(5)
    check_against_torch(Bounded(how), (3, 4), scale=2.0)


class Forms(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.scale = nn.Parameter(torch.rand(4) + 0.5)
        self.gamma, self.beta = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(4))

    def forward(self, x):  # x: (N, 3, 4)
        how = self.how
        if how == "arithmetic":
            return (2 - x) / self.scale + x ** 2 - (-x).exp().abs()
        if how == "roots":
            return torch.rsqrt(x * x + 1) + (x.abs() + 1).log() + torch.sqrt(x.abs()) + (x * x + 1).reciprocal()
        if how == "reductions":
            return x - x.mean(-1, keepdim=True) + torch.amax(x, dim=-1, keepdim=True) + x.sum(dim=1, keepdim=True)
        if how == "views":
            return x.unsqueeze(2).squeeze(2).permute(0, 2, 1).contiguous().reshape(x.size(0), -1)
        if how == "layer-norm":
            return F.dropout(F.layer_norm(x, (4,), self.gamma, self.beta, 1e-3), 0.3, self.training)
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["arithmetic", "roots", "reductions", "views", "layer-norm"])
def test_tensor_operations_in_a_forward(how):
    torch.manual_seed(3)
    check_against_torch(Forms(how), (3, 4))


def test_a_module_inside_a_sequential_gets_its_own_input_shape():
    # the Sequential's input is (N, 6); FlattenThenLinear sees (N, 3, 4) after the Linear and the Unflatten-like view
    torch.manual_seed(4)
    check_against_torch(nn.Sequential(nn.Linear(6, 12), FlattenThenLinear()), (6,))


def dropouts(model) -> list[bool]:
    layers = model.layers.values() if isinstance(model, GraphModel) else list(model)
    return [layer.training for layer in layers if isinstance(layer, tc.nn.Dropout)]


def test_dropout_function_keeps_the_training_flag_it_is_given():
    assert dropouts(from_torch(Forms("layer-norm").train(), input_shape=(None, 3, 4))) == [True]
    assert dropouts(from_torch(Forms("layer-norm").eval(), input_shape=(None, 3, 4))) == [False]


class Refused(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how

    def forward(self, x):  # x: (N, 3, 4)
        if self.how == "size-as-number":
            return x - x.size(0)
        if self.how == "size-mod":  # 1 at batch 97 and 101 alike, 2 at batch 2: still the batch's
            return x + x.size(0) % 4
        if self.how == "merge-batch":
            return x.reshape(-1, 4)
        if self.how == "move-batch":
            return x.transpose(0, 1)
        if self.how == "reduce-batch":
            return x.mean(0, keepdim=True)
        if self.how == "index-batch":
            return x[1:]
        if self.how == "softmax-no-dim":
            return F.softmax(x)  # torch picks an axis from the rank, with a deprecation warning
        return x[:, [2, 0]]


@pytest.mark.parametrize("how, match", [
    ("size-as-number", r"node sub' of type call_function sub \(an operand changes with the batch size"),
    ("size-mod", r"node add' of type call_function add \(an operand changes with the batch size"),
    ("merge-batch", r"node reshape' of type call_method reshape \(shape \[-1, 4\] on a value of sizes \[3, 4\]"),
    ("move-batch", r"node transpose' of type call_method transpose \(perm \[1, 0, 2\] moves the batch"),
    ("reduce-batch", r"of type call_method mean \(axes \[0\]: a reduction over the batch"),
    ("index-batch", r"node getitem' of type call_function getitem \(1: cuts the batch axis of \(N, 3, 4\)"),
    ("softmax-no-dim", r"node softmax' of type call_function softmax \(dim=None: give the axis, e.g. "
                       r"softmax\(x, dim=-1\); torch picks one"),
    ("index-list", r"node getitem' of type call_function getitem \(\[:, \[2, 0\]\] on a value .*positions \[2, 0\], "
                   r"which are not an increasing, evenly spaced run"),
])
@pytest.mark.filterwarnings("ignore:Implicit dimension choice:UserWarning")  # torch's, on F.softmax(x)
def test_what_cannot_be_imported_is_named(how, match):
    with pytest.raises(tc.CompileError, match=match):
        from_torch(Refused(how), input_shape=(None, 3, 4))


def test_sizes_without_input_shape_ask_for_it():
    with pytest.raises(tc.CompileError, match=r"node getattr_1' .*reads the input's sizes: pass the input's shape, "
                                              r"from_torch\(module, input_shape=\(None, ...\)\)"):
        from_torch(StudentBlock())
    with pytest.raises(tc.CompileError, match=r"node matmul' .*pass the input's shape"):
        from_torch(Affine("matmul"))


@pytest.mark.parametrize("shape", [(), (None, 0), (None, 2.5), 7])
def test_bad_input_shape_is_a_value_error(shape):
    with pytest.raises((ValueError, TypeError), match="input_shape must be"):
        from_torch(StudentBlock(), input_shape=shape)


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop, self.fc = nn.Dropout(0.5), nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.drop(x)).view(x.size(0), -1)


def test_importing_leaves_torchs_random_stream_alone():
    # the import runs the forward (dropout in training mode draws); the user's next draws stay the same
    module = Noisy().train()
    for make in (lambda: module, lambda: nn.Sequential(nn.Dropout(0.5), module).train()):
        torch.manual_seed(0)
        want = torch.rand(3)
        torch.manual_seed(0)
        from_torch(make(), input_shape=(None, 4))
        assert torch.equal(torch.rand(3), want)


# ---- forms a bug hunt found imported wrong, crashing or refused without cause (each failed before)
class Residual(nn.Sequential):
    """A Sequential subclass with a forward of its own: read through fx, not layer by layer."""

    def forward(self, x):
        return x + super().forward(x)


class InPlace(nn.Module):
    """Activations written into their operand: later readers of the operand see the result."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.fc1, self.fc2, self.act = nn.Linear(6, 6), nn.Linear(6, 6), nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.fc1(x)
        shortcut = h
        a = self.act(h) if self.how == "module" else F.relu(h, inplace=True)
        return self.fc2(a) + shortcut


class Defaults(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.p = nn.Linear(6, 6), nn.Parameter(torch.randn(1))

    def forward(self, x, scale: float = 2.0, mask=None):
        h = self.fc(x) * scale if mask is None else self.fc(x) + mask
        return F.softmax(h, dim=h.dim() - 1) + (h.unsqueeze(-1) @ self.p)  # x @ a one-element vector


@pytest.mark.parametrize("make", [
    lambda: Residual(nn.Linear(6, 6), nn.Tanh()), lambda: nn.Sequential(Residual(nn.Linear(6, 6)), nn.ReLU()),
    lambda: InPlace("module"), lambda: InPlace("function"), Defaults,
], ids=["sequential-subclass", "nested-subclass", "inplace-module", "inplace-function", "defaults"])
@pytest.mark.parametrize("shaped", [True, False], ids=["input_shape", "no-shape"])
def test_forms_that_imported_wrong_or_not_at_all(make, shaped):
    torch.manual_seed(5)
    module = make().eval()
    if shaped:
        check_against_torch(module, (6,))
    elif isinstance(module, Defaults):
        with pytest.raises(tc.CompileError, match="pass the input's shape"):  # it reads h.dim()
            from_torch(module)
    else:
        check_imported(from_torch(module), run_torch(module), 6)


class Aliased(nn.Module):
    """An augmented assignment on a tensor another name also holds: in torch `r` sees the write."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.fc, self.other = nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, x):
        h = self.fc(x)
        r, kept = h, [h]
        if self.how == "+=":
            h += self.other(x)
        elif self.how == "-=":
            h -= 1
        elif self.how == "*=":
            h *= 3
        elif self.how == "/=":
            kept[0] /= 4
        else:
            h **= 2
        return torch.tanh(r) + kept[0]


class SizeCounter(nn.Module):
    """`n += 1` on a traced size is Python's sum: `m`, the size before, is unchanged."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        n = x.shape[-1]
        m = n
        n += 1
        return self.fc(x) * m + n


@pytest.mark.parametrize("how", ["+=", "-=", "*=", "/=", "**="])
@pytest.mark.parametrize("shaped", [True, False], ids=["input_shape", "no-shape"])
def test_augmented_assignments_write_in_place_as_in_torch(how, shaped):
    """torch.fx's own Proxy records `h += y` as `h = h + y`, so every other name of h kept the old
    value (silently without input_shape); the importer's tracer records it as the in-place op."""
    torch.manual_seed(6)
    module = Aliased(how).eval()
    if shaped:
        check_against_torch(module, (6,))
    else:
        check_imported(from_torch(module), run_torch(module), 6)


def test_an_augmented_assignment_on_a_size_is_a_plain_sum():
    torch.manual_seed(7)
    check_against_torch(SizeCounter().eval(), (6,))


def test_modules_with_forward_hooks_are_refused_naming_them():
    module = nn.Sequential(nn.Linear(6, 6), nn.ReLU())
    module[0].register_forward_hook(lambda m, args, out: out * 2)
    with pytest.raises(tc.CompileError, match=r"module '0' of type Linear \(it has forward hooks"):
        from_torch(module)


@pytest.mark.parametrize("module, match", [
    (nn.Sequential(nn.Linear(5, 3), nn.ReLU()), r"fails on an input of shape \(N, 4\) \(RuntimeError: mat1"),
    (FlattenThenLinear(), r"its forward fails on an input of shape \(N, 4\)"),
])
def test_an_input_shape_the_module_cannot_take_is_a_compile_error(module, match):
    with pytest.raises(tc.CompileError, match=match):
        from_torch(module, input_shape=(None, 4))


class Several(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.attention = nn.MultiheadAttention(6, 2, batch_first=True)

    def forward(self, x):
        if self.how == "max-with-dim":
            values, _ = x.max(dim=-1, keepdim=True)
            return x - values
        if self.how == "flatten":
            return x.flatten(-2)  # on (N, 6): the batch too
        if self.how == "elu":  # fx fills in elu's alpha and inplace: not the reason it is refused
            return F.elu(x)
        if self.how == "attention-module":
            return self.attention(x, x, x, need_weights=False)[0]
        if self.how == "computed-bound":
            return x.clamp(min=x.mean(-1, keepdim=True))
        return torch.add(x, x.exp(), alpha=0.5)


@pytest.mark.parametrize("how, match", [
    ("max-with-dim", r"node max_1' of type call_method max \(it returns several tensors \(as max with a dim"),
    ("flatten", r"node flatten' of type call_method flatten \(start_dim -2 on a 2-D value is the batch"),
    ("alpha", r"node add' of type call_function add \(with keyword arguments alpha\)"),
    ("elu", r"node elu' of type call_function elu; supported"),
    ("attention-module", r"module 'attention' of type MultiheadAttention; supported"),
    ("computed-bound", r"node clamp' of type call_method clamp \(a bound computed from the input"),
])
def test_refusals_say_why(how, match):
    with pytest.raises(tc.CompileError, match=match):
        from_torch(Several(how), input_shape=(None, 6))


# ---- layers common in models people import: SiLU, LeakyReLU, LogSoftmax, BatchNorm in eval mode
class Classifier(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 4)
        self.norm = nn.BatchNorm1d(8)
        self.act = {"modules": nn.SiLU(), "leaky": nn.LeakyReLU(0.2)}.get(how, nn.Identity())
        with torch.no_grad():  # statistics as a trained model has them
            self.norm.running_mean.uniform_(-1, 1)
            self.norm.running_var.uniform_(0.5, 2)
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        h = self.norm(self.fc1(x))
        if self.how == "functions":
            return F.log_softmax(self.fc2(F.silu(h) + F.leaky_relu(h, 0.1)), dim=-1)
        return torch.log_softmax(self.fc2(self.act(h)), -1)


@pytest.mark.parametrize("how", ["modules", "leaky", "functions"])
def test_silu_leaky_relu_log_softmax_and_batch_norm(how):
    torch.manual_seed(6)
    module = Classifier(how).eval()
    check_imported(from_torch(module), run_torch(module), 6, scale=2.0)
    check_against_torch(module, (6,), scale=2.0)


def test_batch_norm_over_channels_of_a_3d_input():
    torch.manual_seed(7)
    module = nn.Sequential(nn.BatchNorm1d(3), nn.Flatten(), nn.Linear(12, 2))
    with torch.no_grad():
        module[0].running_mean.uniform_(-1, 1)
        module[0].running_var.uniform_(0.5, 2)
    check_against_torch(module, (3, 4))


def test_batch_norm_in_training_mode_is_refused():
    with pytest.raises(tc.CompileError, match=r"module '0' of type BatchNorm1d \(in training mode.*import the model "
                                              r"in eval\(\)"):
        from_torch(nn.Sequential(nn.BatchNorm1d(4)).train())


# ---- a second hunt: each failed before its fix
class ViewAlias(nn.Module):
    """ReLU(inplace=True) on a view of y writes into y itself: torch.fx records a new value."""

    def __init__(self):
        super().__init__()
        self.fc, self.act = nn.Linear(6, 6), nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.fc(x)
        self.act(y.view(y.size(0), 2, 3))
        return y


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_the_check_against_the_module_runs_in_training_mode_too(mode):
    module = ViewAlias().train(mode == "train")
    with pytest.raises(tc.CompileError, match=r"computes other values than the module .*both in eval mode"):
        from_torch(module, input_shape=(None, 6))


class DropInPlace(nn.Module):
    def forward(self, x):
        return x + F.dropout(x, 0.5, self.training, inplace=True)  # in torch: twice the dropped x


def test_dropout_in_place_is_seen_by_later_readers():
    model = from_torch(DropInPlace().train(), input_shape=(None, 64))
    x = np.random.default_rng(0).uniform(1, 2, (8, 64)).astype(np.float32)
    ratios = set(np.round(model(x).data / x, 4).ravel().tolist())
    assert ratios == {0.0, 4.0}, ratios  # dropped, or kept and scaled by 2, then added to itself


class Stateful(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)
        self.register_buffer("calls", torch.zeros(()))
        self.last_hidden = None

    def forward(self, x):
        self.calls += 1
        h = self.fc(x)
        self.last_hidden = h
        return h.relu()


def test_importing_leaves_the_module_as_it_was():
    module = Stateful().eval()
    from_torch(module, input_shape=(None, 6))
    assert module.calls.item() == 0 and module.last_hidden is None
    __import__("pickle").dumps(module)


class Random(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how, self.fc = how, nn.Linear(6, 6)

    def forward(self, x):
        if self.how == "noise":
            return self.fc(x) + torch.randn(6)
        return F.dropout(self.fc(x), 0.3)  # F.dropout's default: training=True, in eval too


@pytest.mark.parametrize("how, mode, match", [
    ("noise", "train", r"computes other values than the module .*or draw random numbers"),
    ("noise", "eval", r"computes other values than the module .*or draw random numbers"),
    ("default-dropout", "eval", r"node dropout' .*\(training=True in a module in eval mode \(F.dropout's default\)"),
    # in train mode torch.fx records self.training and a literal True alike: the check compares in eval
    # mode, and the message names the likely cause as the eval-mode refusal does
    ("default-dropout", "train", r"computes other values .*an F.dropout\(..., training=True\) drops in eval mode "
                                 r"too: pass training=self.training"),
])
def test_random_numbers_drawn_in_forward_are_refused(how, mode, match):
    with pytest.raises(tc.CompileError, match=match):
        from_torch(Random(how).train(mode == "train"), input_shape=(None, 6))


def test_modules_on_the_meta_device_and_inputs_too_large_to_run_are_compile_errors():
    with pytest.raises(tc.CompileError, match="on the meta device"):
        from_torch(nn.Sequential(nn.Linear(6, 6, device="meta")))
    with pytest.raises(tc.CompileError, match=r"fails on an input of shape \(N, 100000000000\) \(RuntimeError"):
        from_torch(nn.Sequential(nn.ReLU()), input_shape=(None, 10 ** 11))


class SumAxis(nn.Module):
    def forward(self, x):
        return x.sum(axis=1, keepdim=True) + x


def test_bfloat16_modules_numpy_axis_and_torch_compile_wrappers_import():
    torch.manual_seed(8)
    module = nn.Sequential(nn.Linear(6, 4), nn.Tanh()).to(torch.bfloat16).eval()  # checked at bfloat16's rounding
    x = np.random.default_rng(8).standard_normal((5, 6)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x).to(torch.bfloat16)).float().numpy()
    assert_close_to_framework(from_torch(module, input_shape=(None, 6))(x).data, want, "bfloat16", rtol=3e-2)
    check_against_torch(SumAxis(), (6,))
    module = nn.Sequential(nn.Linear(6, 4), nn.ReLU()).eval()
    with __import__("warnings").catch_warnings():  # torch.compile's import warns about torch.jit
        __import__("warnings").simplefilter("ignore")
        compiled = torch.compile(module)  # a wrapper; nothing is compiled until it is called
    check_imported(from_torch(compiled, input_shape=(None, 6)), run_torch(module), 6)


def test_input_shape_batch_entry_must_be_none_or_a_size():
    with pytest.raises(ValueError, match="input_shape must be"):
        from_torch(nn.Sequential(nn.Linear(6, 4)), input_shape=("b", 6))


def test_a_batch_norm_scale_rebound_to_an_array_is_read_live():
    # as any parameter may be: the compiled model follows, and a recompile accepts it
    torch.manual_seed(9)
    module = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.LeakyReLU()).eval()
    model = from_torch(module, input_shape=(None, 6))
    fast = tc.compile(model, input_shape=(None, 6))
    x = np.random.default_rng(9).standard_normal((5, 6)).astype(np.float32)
    model[1].scale = np.full(4, 2.0, np.float32)
    assert_close_to_framework(fast(x).data, model(x).data, "after the rebinding")
    model[2].slope = 0.2  # a change that recompiles
    assert_close_to_framework(fast(x).data, model(x).data, "recompiled")
    assert_close_to_framework(tc.compile(model, input_shape=(None, 6))(x).data, model(x).data, "a fresh compile")


# ---- a fuzzer of random torch forwards: each failed before its fix
class Specials(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how

    def forward(self, x):
        if self.how == "nan":  # NaN where x < 0, in torch and in the import alike
            return x.sqrt() + 1
        if self.how == "input-in-place":  # writes into the input, then reads it
            return F.leaky_relu(x, 0.1, inplace=True) * 2 + x
        v = x.permute(0, 2, 1)  # a view of the input: writing into it changes x
        F.relu(v, inplace=True)
        return x * -2.0


@pytest.mark.parametrize("how", ["nan", "input-in-place"])
def test_the_check_against_the_module_takes_nan_and_inputs_written_in_place(how):
    # the check compared NaN with NaN as a difference, and ran the import on the input torch had changed
    module = Specials(how).eval()
    model = from_torch(module, input_shape=(None, 3, 2))
    x = np.random.default_rng(3).standard_normal((4, 3, 2)).astype(np.float32)
    want = run_torch(module)(x.copy())
    with np.errstate(invalid="ignore"):  # the square root of a negative value, as in torch
        got = model(x.copy()).data
    assert np.array_equal(np.isnan(got), np.isnan(want)) and np.isnan(want).any() == (how == "nan")
    assert_close_to_framework(np.nan_to_num(got), np.nan_to_num(want), how)


def test_writing_into_a_view_of_the_input_is_refused():
    with pytest.raises(tc.CompileError, match="computes other values than the module"):
        from_torch(Specials("view-in-place").eval(), input_shape=(None, 3, 2))


class PassThrough(nn.Module):
    def forward(self, x):
        return F.dropout(x, 0.1, self.training)


class KeywordsUnread(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x, **kwargs):  # the Hugging Face style: no keyword given, none read
        return self.fc(x)


@pytest.mark.parametrize("module", [PassThrough(), nn.Identity(), nn.Sequential(nn.Identity()), KeywordsUnread()],
                         ids=["dropout-only", "Identity", "Sequential(Identity)", "forward(x, **kwargs)"])
def test_pass_through_and_unread_keyword_forwards_import(module):
    """With input_shape, a model returning its input failed its own check with a raw TypeError (the
    eager model hands the array back, not a Tensor); forward(x, **kwargs) was refused as taking 2
    arguments without defaults ('_kwargs', fx's name)."""
    check_against_torch(module, (8,))


class Packed(KeywordsUnread):
    def forward(self, *inputs):
        return self.fc(inputs[0])


class KeywordsRead(KeywordsUnread):
    def forward(self, x, **kwargs):
        return self.fc(x) * kwargs.get("scale", 1.0)


@pytest.mark.parametrize("module, match", [
    (Packed(), r"its forward takes \*inputs; tinycomp models take one tensor: write forward\(self, x\)"),
    (KeywordsRead(), r"its forward reads \*\*kwargs; tinycomp models take one tensor"),
])
@pytest.mark.parametrize("input_shape", [None, (None, 8)])
def test_packed_arguments_are_refused_by_name(module, match, input_shape):
    """forward(self, *inputs) with input_shape ended in AttributeError: 'list' object has no attribute 'shape'."""
    with pytest.raises(tc.CompileError, match=match):
        from_torch(module.eval(), input_shape=input_shape)


def test_a_torch_input_that_requires_grad_is_read_as_its_values():
    """torch refuses np.asarray of a tensor that requires grad: eager and compiled calls ended in
    torch's RuntimeError from deep inside the input conversion."""
    module = nn.Sequential(nn.Linear(8, 4)).eval()
    model = from_torch(module)
    x = torch.randn(3, 8, requires_grad=True)
    want = module(x).detach().numpy()
    np.testing.assert_allclose(model(x).data, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tc.compile(model)(x).data, want, rtol=1e-5, atol=1e-6)


class MatrixTranspose(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 6)

    def forward(self, x):
        return self.fc(x.mT)


class WholeTranspose(MatrixTranspose):
    def forward(self, x):
        return self.fc(x).T


class PowerOfTwo(MatrixTranspose):
    def forward(self, x):
        return torch.pow(2.0, x)


def test_matrix_transpose_attribute_imports_and_whole_transpose_says_why():
    """x.mT is transpose(-2, -1); both it and x.T were refused as 'node getattr_1 of type call_function
    getattr' without a reason. 2 ** x named the internal ConstantOperand."""
    check_against_torch(MatrixTranspose(), (5, 5))
    with pytest.raises(tc.CompileError, match=r"getattr \(perm \[1, 0\] moves the batch \(axis 0\) away from the "
                                              r"first axis\)"):
        from_torch(WholeTranspose().eval(), input_shape=(None, 5))
    with pytest.raises(tc.CompileError, match=r"\(only x \*\* \(a number\) is supported; here the base is a constant "
                                              r"and the exponent the computed tensor\)"):
        from_torch(PowerOfTwo().eval(), input_shape=(None, 5))


class MeanByHand(nn.Module):
    """Sizes read from x.shape: a mean over the sequence and a cut to its first half."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(x.sum(1) / x.shape[1]) + x[:, : x.size(1) // 2].sum(1)[:, :3]


def test_the_input_shape_an_import_read_sizes_from_is_kept():
    """Another sequence length would run with the sizes read at import (a mean divided by 5, a cut to
    2 rows) and give wrong values; the imported model refuses it, eager and compiled, naming both."""
    model = from_torch(MeanByHand().eval(), input_shape=(None, 5, 8))
    assert isinstance(model.input_check, tc.nn.InputShape) and model.input_check.sample_shape == (5, 8)
    fast = tc.compile(model)
    x = np.random.default_rng(0).standard_normal((3, 5, 8)).astype(np.float32)
    np.testing.assert_allclose(fast(x).data, model(x).data, rtol=1e-5, atol=1e-6)
    longer = np.zeros((3, 7, 8), np.float32)
    for call in (model, fast, tc.compile(model)):
        with pytest.raises(ValueError, match=r"inputs of shape \(N, 5, 8\) .*got an input of shape \(\S+, 7, 8\)"):
            call(longer)
    assert tc.summary(model).parameters == 8 * 3 + 3  # the shape it needs is the one it keeps


def test_the_input_check_leaves_the_layers_and_their_paths_as_imported():
    """The check is an attribute, not a first layer or step: model[0] and the parameter paths are the
    import's own (a check as layer 0 renamed 0.weight to 1.weight)."""
    model = from_torch(StudentBlock().eval(), input_shape=(None, 4, 16))
    assert isinstance(model, GraphModel) and model.input_check.sample_shape == (4, 16)
    with pytest.raises(ValueError, match=r"inputs of shape \(N, 4, 16\)"):
        model(np.zeros((2, 5, 16), np.float32))
    chain = from_torch(nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval(), input_shape=(None, 4))
    assert type(chain[0]).__name__ == "Linear" and isinstance(chain, tc.nn.Sequential)
    params = tc.trace(chain, (None, 4)).nodes("param")
    assert params == ["0.weight", "0.bias"]
    assert tc.summary(chain).parameters == 15 and "InputShape(N, 4)" in repr(chain)
