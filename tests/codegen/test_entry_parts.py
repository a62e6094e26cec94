"""An entry of more than `entry_parts.PART_NODES` nodes runs them in parts, internal functions it calls in
turn (one function of 150 TransformerBlocks took LLVM 2.4 s to emit). The parts call the same
kernels in the same order: every model gives the bits it gives unsplit, whatever its arguments
(row blocks, several inputs, training-mode draws, an output that is an input)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import tinycomp as tc
from tests.export.runners import run_export, skip_unless_runnable
from tests.models import CATALOGUE, eager_eval
from tinycomp.codegen import entry_parts, module
from tinycomp.frontend.transformer import TransformerBlock
from tinycomp.nn import Dropout, Layer, Linear, ReLU, Sequential, Tensor, manual_seed
from tinycomp.parity import check_parity


@pytest.fixture(autouse=True)
def no_disk_cache(monkeypatch):
    monkeypatch.setenv("TINYCOMP_CACHE", "0")  # both forms compile here, not one from the other's cache


def _both(monkeypatch, build, *inputs, part_nodes=1, **options):
    """(output unsplit, output in parts of `part_nodes` nodes, the split compiled model)."""
    whole = tc.compile(build(), threads=1, **options)
    want = whole(*inputs).data
    monkeypatch.setattr(entry_parts, "PART_NODES", part_nodes)
    split = tc.compile(build(), threads=1, **options)
    return want, split(*inputs).data, split


def _parts(fast) -> int:
    return len(re.findall(r'define internal void @"tinycomp_forward\.part\d+"', fast.dump("llvm")))


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda c: c.name)
def test_every_catalogue_model_gives_the_same_bits_in_parts(monkeypatch, case):
    x = case.sample(5)
    want, got, split = _both(monkeypatch, case.build, x)
    assert _parts(split) >= 2
    assert got.tobytes() == want.tobytes()
    np.testing.assert_allclose(got, eager_eval(case.build(), x), rtol=2e-4, atol=2e-5)


class Masked(Layer):
    def __init__(self):
        manual_seed(5)
        self.blocks = [TransformerBlock(16, 2) for _ in range(2)]

    def forward(self, x, mask):
        for block in self.blocks:
            x = block(x, mask)
        return x


def test_row_blocks_and_a_shared_input_in_parts(monkeypatch):
    x = np.random.default_rng(3).standard_normal((300, 8, 16)).astype(np.float32)  # several row blocks
    mask = np.tril(np.ones((8, 8), np.float32))
    want, got, split = _both(monkeypatch, Masked, x, mask, part_nodes=3,
                             input_shape=[(None, 8, 16), (8, 8)])
    assert split._artifact.plan.row_block and _parts(split) >= 3
    assert got.tobytes() == want.tobytes()
    eager = Masked()(Tensor(x), Tensor(mask)).data
    np.testing.assert_allclose(got, eager, rtol=1e-4, atol=1e-4)


def test_training_mode_draws_in_parts(monkeypatch):
    def build():
        manual_seed(9)
        return Sequential(Linear(6, 12), ReLU(), Dropout(0.3), Linear(12, 12), Dropout(0.5), Linear(12, 4))

    x = np.random.default_rng(4).standard_normal((7, 6)).astype(np.float32)
    manual_seed(1)
    want, _, _ = _both(monkeypatch, build, x, part_nodes=10_000, training=True)
    manual_seed(1)
    _, got, split = _both(monkeypatch, build, x, training=True)
    assert _parts(split) >= 3
    assert got.tobytes() == want.tobytes()


class Identity(Layer):
    def forward(self, x):
        return x


def test_an_output_that_is_the_input_is_copied_after_the_parts(monkeypatch):
    x = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
    _, got, _ = _both(monkeypatch, Identity, x)
    assert got.tobytes() == x.tobytes()


def test_an_export_in_parts_runs_and_matches_eager(monkeypatch, tmp_path):
    skip_unless_runnable("host")
    monkeypatch.setattr(entry_parts, "PART_NODES", 2)
    manual_seed(2)
    model = Sequential(Linear(5, 9), ReLU(), Linear(9, 9), ReLU(), Linear(9, 3))
    tc.export(model, tmp_path, input_shape=(None, 5), target="host")
    assert b"tinycomp_forward.part1" in (tmp_path / "model.o").read_bytes()  # its local symbols: in parts
    x = np.random.default_rng(6).standard_normal((6, 5)).astype(np.float32)
    got = run_export("host", tmp_path, x, [1, 6])
    w = [(lin.weight.data.astype(np.float64), lin.bias.data.astype(np.float64)) for lin in model.layers[::2]]
    ref = x.astype(np.float64)
    for i, (weight, bias) in enumerate(w):
        ref = ref @ weight + bias
        ref = np.maximum(ref, 0) if i < 2 else ref
    for batch in (1, 6):
        report = check_parity(got[batch], model(Tensor(x[:batch])).data, ref[:batch])
        assert report.ok, f"batch {batch}: {report}"


def test_a_module_in_parts_still_splits_for_parallel_code_generation(monkeypatch):
    """The parts read the GEMM drivers' config variables through inlined glue: the module splitter
    refused to place them outside the first part and left the whole module to one thread, then kept
    them all in the first part; each part now holds copies of the configs it reads."""
    from tinycomp.codegen.split import split_ir_module
    from tinycomp.ir.passes import run_pipeline

    monkeypatch.setattr(entry_parts, "PART_NODES", 4)
    g = tc.trace(Masked(), [(None, 8, 16), (8, 8)])
    run_pipeline(g)
    with module.lowered_module(g, 16) as (_, mod):
        assert len([f for f in mod.functions if f.name.startswith("tinycomp_forward.part")]) >= 3
        texts = [printer() for printer in split_ir_module(mod, 2)]
    assert len(texts) == 2
    defined = [set(re.findall(r'define (?:internal )?void @"(tinycomp_forward\.part\d+)"', t)) for t in texts]
    assert all(defined), defined  # both threads compile some of the entry's parts
    assert '_linear.config" = internal constant' in texts[1]  # those reading a GEMM's config too
