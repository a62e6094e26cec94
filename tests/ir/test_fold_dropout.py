import numpy as np

from tests.ir.passcheck import check_pass
from tests.models import CASES, reference_mlp
from tinycomp.frontend.tracer import trace
from tinycomp.ir.passes import fold_dropout, run_pipeline
from tinycomp.nn import Dropout, Linear, ReLU, Sequential, manual_seed

X = CASES["reference_mlp"].sample(5)


def count(g, op):
    return g.op_counts().get(op, 0)


def test_eval_dropout_is_removed():
    manual_seed(0)
    g = trace(reference_mlp(), (None, 784))
    h = check_pass(fold_dropout, g, X, pre=lambda g: count(g, "dropout") == 2, post=lambda g: count(g, "dropout") == 0)
    assert count(h, "relu") == 2 and count(h, "matmul") == 3


def test_training_dropout_is_kept():
    manual_seed(0)
    g = trace(reference_mlp(), (None, 784), training=True)
    assert [g[n]["training"] for n in g.nodes("dropout")] == [True, True]
    assert [g[n]["p"] for n in g.nodes("dropout")] == [0.5, 0.3]
    check_pass(fold_dropout, g, X, pre=lambda g: count(g, "dropout") == 2, post=lambda g: count(g, "dropout") == 2,
               changes=False, seed=3)
    assert count(run_pipeline(g), "dropout") == 2


def test_p_zero_dropout_is_removed_even_in_training():
    manual_seed(0)
    model = Sequential(Linear(4, 6), Dropout(0.0), ReLU(), Dropout(0.25))
    g = trace(model, (None, 4), training=True)
    x = np.ones((3, 4), np.float32)
    h = check_pass(fold_dropout, g, x, pre=lambda g: count(g, "dropout") == 2,
                   post=lambda g: [g[n]["p"] for n in g.nodes("dropout")] == [0.25], seed=7)
    assert count(h, "relu") == 1


def test_nothing_to_fold():
    manual_seed(0)
    g = trace(Sequential(Linear(3, 2), ReLU()), (None, 3))
    check_pass(fold_dropout, g, np.ones((2, 3), np.float32), pre=lambda g: True,
               post=lambda g: count(g, "relu") == 1, changes=False)
