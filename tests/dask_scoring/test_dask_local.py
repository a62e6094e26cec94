"""tinycomp.dask.predict on the local threaded scheduler (no distributed.Client): results, the
snapshot of the weights, and the errors. The cluster tests are in test_dask_cluster.py."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

da = pytest.importorskip("dask.array", reason="tinycomp.dask needs the dask extra: pip install -e '.[dask]'")
tcd = pytest.importorskip("tinycomp.dask", reason="tinycomp.dask needs the dask extra")

import tinycomp as tc  # noqa: E402
from tests.dask_scoring.dask_cases import all_rows, in_process, slow_array  # noqa: E402
from tests.models import CASES  # noqa: E402
from tests.reliability.rel_helpers import assert_matches_eager  # noqa: E402
from tinycomp.nn import Layer, Linear, Sequential, Sigmoid, Tanh, Tensor  # noqa: E402


def local(y):
    return y.compute(scheduler="threads")


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_chunk_equals_the_in_process_run_eager_and_float64(name):
    c = CASES[name]
    model = c.build(seed=3)
    x = c.sample(203, seed=4)
    y = tcd.predict(model, da.from_array(x, chunks=((50, 0, 1, 97, 55), (c.in_features,))))
    assert isinstance(y, da.Array) and y.dtype == np.float32 and y.chunks[0] == (50, 0, 1, 97, 55)
    got = local(y)
    np.testing.assert_array_equal(got, in_process(model, x, y.chunks[0]))  # bit for bit: same calls, same threads
    assert_matches_eager(got, model, x)  # and the eager model within the parity rule (float64 reference)


class PerPosition(Layer):
    """(N, 3, 6) -> (N, 3, 4): a Linear over the last axis of a 3-D sample."""

    def __init__(self):
        self.fc = Linear(6, 4)
        self.act = Tanh()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.fc(x))


def test_rows_of_several_axes_and_rechunking_along_features_warns():
    model = PerPosition()
    x = np.random.default_rng(0).standard_normal((40, 3, 6), dtype=np.float32)
    with pytest.warns(da.PerformanceWarning, match=r"rechunked to one chunk .* x.rechunk"):
        y = tcd.predict(model, da.from_array(x, chunks=(16, 2, 6)))
    assert y.shape == (40, 3, 4) and y.chunks == ((16, 16, 8), (3,), (4,))
    got = local(y)
    np.testing.assert_array_equal(got, in_process(model, x))
    assert_matches_eager(got, model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # chunked along rows only: no warning
        tcd.predict(model, da.from_array(x, chunks=(16, 3, 6)))


def test_batch_rows_scores_each_chunk_in_slices():
    c = CASES["reference_mlp"]
    model, x = c.build(seed=1), c.sample(300, seed=2)
    sliced = local(tcd.predict(model, da.from_array(x, chunks=(150, 784)), batch_rows=64))
    np.testing.assert_array_equal(sliced, in_process(model, x, (64, 64, 22) * 2))  # slices of 64 in each chunk
    assert_matches_eager(sliced, model, x)
    as_numpy_int = local(tcd.predict(model, da.from_array(x, chunks=(150, 784)), batch_rows=np.int64(64)))
    np.testing.assert_array_equal(as_numpy_int, sliced)  # a NumPy integer is a row count too
    # a small one wrapped around in the slicing: np.uint8(200) lost 100 of 300 rows, np.int8(100) overflowed
    for small in (np.uint8(200), np.int8(100)):
        got = local(tcd.predict(model, da.from_array(x, chunks=(300, 784)), batch_rows=small))
        np.testing.assert_array_equal(got, in_process(model, x, (int(small), 300 - int(small))))


def test_a_training_mode_model_warns_that_its_masks_depend_on_the_cluster():
    from tinycomp.nn import Dropout

    fast = tc.compile(Sequential(Linear(8, 8), Dropout(0.5)).train(), training=True)
    with pytest.warns(UserWarning, match=r"predict\(\) of a training-mode model: each worker draws dropout masks "
                                         r"from its own stream"):
        tcd.predict(fast, da.ones((10, 8), chunks=(5, 8), dtype="float32"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an inference compile of the same model: no warning
        tcd.predict(tc.compile(Sequential(Linear(8, 8), Dropout(0.5)).eval()), da.ones((10, 8), chunks=(5, 8)))
    # a model left in training mode, scored for inference: said once, in the caller (on a cluster the
    # workers' own compiles warned only in their logs), not again by the workers' compiles
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        local(tcd.predict(Sequential(Linear(8, 8), Dropout(0.5)), da.ones((10, 8), chunks=(5, 8))))
    assert [str(w.message)[:60] for w in seen] == ["scoring Sequential for inference while 1 of its Dropout laye"]
    assert seen[0].filename == __file__


def test_dataframe_columns_by_name_in_the_given_order_keeping_the_index():
    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    c = CASES["softmax_head"]  # 20 features
    model = c.build(seed=5)
    x = c.sample(90, seed=6)
    names = [f"f{i}" for i in range(20)]
    pdf = pd.DataFrame(x[:, ::-1], columns=names[::-1], index=pd.RangeIndex(1000, 1090, name="row"))
    pdf["label"] = "text"  # not a feature: never read
    ddf = dd.from_pandas(pdf, npartitions=3)
    out = tcd.predict(model, ddf, columns=names, output_columns=[f"p{k}" for k in range(7)])
    assert list(out.columns) == [f"p{k}" for k in range(7)] and out.npartitions == 3
    got = out.compute(scheduler="threads")
    assert (got.index == pdf.index).all() and (got.dtypes == np.float32).all()
    np.testing.assert_array_equal(got.to_numpy(), in_process(model, x))
    default = tcd.predict(model, ddf, columns=names).compute(scheduler="threads")
    assert list(default.columns) == [f"y{k}" for k in range(7)]


def test_a_model_fitted_on_named_columns_takes_those_names_in_order():
    """An imported scikit-learn model fitted on a DataFrame reads its columns in the fitted order."""
    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install -e '.[sklearn]')")
    from sklearn.linear_model import Ridge

    from tinycomp.interop import from_sklearn

    rng = np.random.default_rng(2)
    pdf = pd.DataFrame(rng.standard_normal((60, 3)), columns=["a", "b", "c"])
    model = from_sklearn(Ridge().fit(pdf, pdf.a - 2 * pdf.c))
    ddf = dd.from_pandas(pdf, npartitions=2)
    with pytest.raises(ValueError, match="columns 'a', 'b', 'c' in that order .* columns= gives 'c', 'b', 'a'"):
        tcd.predict(model, ddf, columns=["c", "b", "a"])
    got = tcd.predict(model, ddf, columns=["a", "b", "c"]).compute(scheduler="threads")
    np.testing.assert_allclose(got.to_numpy()[:, 0], model(pdf).data[:, 0], rtol=1e-6, atol=1e-6)


def test_a_compiled_model_keeps_its_options_and_compiled_shape():
    c = CASES["residual_net"]
    model, x = c.build(seed=7), c.sample(64, seed=8)
    fast = tc.compile(model, input_shape=(None, 16), speed_level=2, check=True)
    got = local(tcd.predict(fast, da.from_array(x, chunks=20)))
    np.testing.assert_array_equal(got, fast(x).data)
    with pytest.raises(ValueError, match=r"compiled with input_shape for rows of shape \(16,\); the data has rows "
                                         r"of shape \(8,\)"):
        tcd.predict(fast, da.zeros((10, 8), chunks=5))
    lazy = tc.compile(CASES["softmax_head"].build(), speed_level=1)  # not pinned: compiles for any width
    lazy(np.zeros((2, 20), np.float32))
    with pytest.raises(ValueError, match=r"cannot take rows of shape \(8,\)"):  # the model's own limit, not 20
        tcd.predict(lazy, da.zeros((10, 8), chunks=5))


def test_model_edited_between_predict_and_compute_is_scored_with_the_edited_weights():
    c = CASES["list_dict_layer"]  # parameters in a list and a dict
    model, x = c.build(seed=9), c.sample(120, seed=10)
    y = tcd.predict(model, da.from_array(x, chunks=40))
    model.heads[0].weight.data *= -1.5  # in place
    model.branches["right"].bias = Tensor(np.full(3, 0.25))  # rebound
    edited = in_process(model, x)
    got = local(y)
    np.testing.assert_array_equal(got, edited)
    model.heads[1].bias.data += 1  # after the computation started: this result keeps its weights
    np.testing.assert_array_equal(local(y), edited)
    np.testing.assert_array_equal(local(tcd.predict(model, da.from_array(x, chunks=40))), in_process(model, x))
    scaled = Scaled()  # a plain array attribute: read live like a parameter, so snapshotted like one
    y = tcd.predict(scaled, da.from_array(x[:, :5], chunks=(40, 5)))
    before = in_process(scaled, x[:, :5], y.chunks[0])
    scaled.scale[:] = 10
    got = local(y)
    np.testing.assert_array_equal(got, in_process(scaled, x[:, :5], y.chunks[0]))
    assert not np.array_equal(got, before)


class Scaled(Layer):
    def __init__(self):
        self.fc = Linear(5, 3)
        self.scale = np.full(3, 2.0, np.float32)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) * self.scale


def test_layers_changed_between_predict_and_compute():
    model = Sequential(Linear(6, 4), Tanh(), Linear(4, 3))
    x = np.random.default_rng(4).standard_normal((30, 6), dtype=np.float32)
    y = tcd.predict(model, da.from_array(x, chunks=10))
    model.layers[1] = Sigmoid()  # same output shape: a new structure, scored as it is at compute()
    np.testing.assert_array_equal(local(y), in_process(model, x, y.chunks[0]))
    y = tcd.predict(model, da.from_array(x, chunks=10))
    model.layers.append(Linear(3, 2))  # the result was laid out for rows of 3: refused, not mis-shaped
    with pytest.raises(ValueError, match=r"output rows changed from \(3,\) to \(2,\) .* call predict\(\) again"):
        local(y)
    y = tcd.predict(model, da.from_array(x, chunks=10))
    model.layers[0] = Linear(7, 4)  # rows of 6 no longer fit: was the tracer's bare matmul error
    with pytest.raises(ValueError, match=r"^the model changed between predict\(\) and the computation and no longer "
                                         r"takes rows of shape \(6,\): .*call predict\(\) again"):
        local(y)


class RangeError(ValueError):
    def __init__(self, what: str, limit: float):
        super().__init__(f"{what} exceeds {limit}")


class Checked(Layer):
    """A layer whose forward() refuses a setting with an error class of two arguments."""

    def __init__(self):
        self.fc, self.scale = Linear(4, 2), 1.0

    def forward(self, x: Tensor) -> Tensor:
        if self.scale > 10:
            raise RangeError("scale", 10)
        return self.fc(x) * self.scale


def test_a_forward_that_fails_after_predict_says_so_with_its_own_error_as_the_cause():
    """Rebuilt from its text as its own class, an error whose constructor takes two arguments became
    'RangeError.__init__() missing 1 required positional argument'; the model's error was lost."""
    model = Checked()
    x = np.random.default_rng(5).standard_normal((8, 4), dtype=np.float32)
    y = tcd.predict(model, da.from_array(x, chunks=4))
    model.scale = 20.0
    with pytest.raises(ValueError, match=r"takes rows of shape \(4,\): RangeError: scale exceeds 10") as caught:
        local(y)
    assert isinstance(caught.value.__cause__, RangeError)


class MissingLayer(KeyError):
    pass


@pytest.mark.parametrize("error, kind, text", [
    (RangeError("scale", 10), ValueError, "test_dask_local.RangeError: scale exceeds 10"),
    (KeyError("mode"), KeyError, "'mode'"),
    (MissingLayer("mode"), KeyError, "test_dask_local.MissingLayer: mode'"),
    (FileNotFoundError(2, "No such file or directory", "/data/table.npy"), FileNotFoundError, "'/data/table.npy'"),
    (tc.CompileError("refused"), tc.CompileError, "refused"),
], ids=["its own class", "KeyError", "a KeyError of its own", "an OSError's file name", "tinycomp's"])
def test_an_error_of_the_submitting_process_is_raised_where_the_task_runs(error, kind, text):
    """Through distributed, a snapshot that failed at submission travels as its error's class and
    text: a class of two arguments failed to rebuild, a KeyError's text came back quoted twice. Now
    the class itself where Python's or tinycomp's rebuilds, else its nearest such base."""
    from tinycomp.dask.snapshot import Refused, _portable, take_snapshot

    refused = pickle.loads(pickle.dumps(Refused(_portable(error))))
    with pytest.raises(kind) as caught:
        take_snapshot(refused)
    assert type(caught.value) is kind and str(caught.value).endswith(text) and not str(caught.value).startswith('"')


class Hook:
    def __init__(self, owner):
        self.owner = owner


class Locked(Layer):
    def __init__(self):  # a back-reference first: it fails to pickle too, through the model
        self.hook, self.fc, self.lock = Hook(self), Linear(4, 2), threading.Lock()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


def test_a_model_that_cannot_be_pickled_is_named_with_the_attribute():
    """pickle's bare "cannot pickle '_thread.lock' object" named no model and no attribute."""
    x = np.random.default_rng(6).standard_normal((8, 4), dtype=np.float32)
    y = tcd.predict(Locked(), da.from_array(x, chunks=4))
    with pytest.raises(TypeError, match=r"copies the model for the workers by pickling it, and Locked\.lock cannot "
                                        r"be pickled: cannot pickle '_thread.lock' object"):
        local(y)


def test_edits_while_computing_never_mix_weights_within_one_result():
    model = Sequential(Linear(12, 8), Tanh(), Linear(8, 3))
    x_lazy = slow_array(seed=1, chunks=16, rows=25, features=12, delay=0.02)
    x = all_rows(1, 16, 25, 12)
    biases = [np.zeros(3, np.float32), np.full(3, 100.0, np.float32)]
    expected = []
    for b in biases:
        model.layers[2].bias.data[:] = b
        expected.append(in_process(model, x))
    for _ in range(3):
        stop = threading.Event()

        def flip(stop=stop):
            i = 0
            while not stop.is_set():
                model.layers[2].bias = Tensor(biases[i % 2])  # one atomic edit: every state is one of two
                i += 1

        y = tcd.predict(model, x_lazy)
        editor = threading.Thread(target=flip)
        editor.start()
        try:
            got = local(y)
        finally:
            stop.set()
            editor.join()
        assert any(np.array_equal(got, e) for e in expected), "rows were scored with different weights"


def test_compiled_once_per_process_for_a_structure_whatever_the_weights():
    model = Sequential(Linear(7, 5), Tanh(), Linear(5, 2))
    x = np.random.default_rng(3).standard_normal((60, 7), dtype=np.float32)
    for scale in (1.0, 2.0, -3.0):
        model.layers[0].weight.data *= scale
        # the model, then the model compiled with compile()'s default options: one structure (they made two)
        given = model if scale != 2.0 else tc.compile(model)
        np.testing.assert_array_equal(local(tcd.predict(given, da.from_array(x, chunks=10))), in_process(model, x))
    mine = [m for m in tcd.worker_stats()["models"] if m["rows"] and m["structure"] == _structure(model, (7,))]
    assert len(mine) == 1 and mine[0]["compiles"] == 1 and mine[0]["threads"] == 1
    assert mine[0]["weight_loads"] == 3 and mine[0]["rows"] == 180 and mine[0]["calls"] == 18


def _structure(model, features):
    from tinycomp.dask.snapshot import Snapshot

    return Snapshot.take(model, {}, features, {}).key


def test_bad_arguments_are_named():
    model = CASES["reference_mlp"].build()
    x = da.zeros((10, 784), chunks=5)
    with pytest.raises(TypeError, match=r"dask.array.Array .* got numpy.ndarray"):
        tcd.predict(model, np.zeros((10, 784)))
    with pytest.raises(TypeError, match="CompiledModel or a model"):
        tcd.predict("model", x)
    with pytest.raises(ValueError, match=r"cannot take rows of shape \(100,\)"):
        tcd.predict(model, da.zeros((10, 100), chunks=5))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        tcd.predict(model, da.zeros(784, chunks=100))
    with pytest.raises(TypeError, match="dtype <U1|dtype <U"):
        tcd.predict(model, da.from_array(np.full((4, 784), "a")))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_rows must be None .* or an int >= 1"):
            tcd.predict(model, x, batch_rows=bad)
    with pytest.raises(TypeError, match="columns= and output_columns= are for a dask DataFrame"):
        tcd.predict(model, x, columns=["a"])


class _Gated(Layer):
    def __init__(self):
        self.fc = Linear(5, 3)

    def forward(self, x, mask):
        return self.fc(x) * mask


def test_a_plain_function_scores_and_a_class_is_refused_as_compile_refuses_it():
    """A callable without eval() (a function, compiled or not) failed on every chunk with
    'function' object has no attribute 'eval'; passing the class said its forward took (self, x)."""
    def double(x):
        return x * 2.0

    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    for model in (double, tc.compile(double)):
        np.testing.assert_array_equal(local(tcd.predict(model, da.from_array(x, chunks=(2, 2)))), x * 2)
    with pytest.raises(TypeError, match=r"got the class Linear: pass an instance, e.g. Linear\(...\)"):
        tcd.predict(Linear, da.from_array(x, chunks=(2, 2)))


def test_a_chunk_of_other_rows_than_its_array_declares_is_named():
    """A map_blocks chunk of 8 columns in an array declared 9 wide got compile()'s advice to compile
    without input_shape, which predict() cannot take."""
    model = Sequential(Linear(9, 2))
    x = da.ones((6, 9), chunks=(3, 9)).map_blocks(lambda b: b[:, :8] if b[0, 0] == 1 else b, dtype=np.float32)
    with pytest.raises(ValueError, match=r"predict\(\) was built for rows of shape \(9,\); a chunk of 3 rows has "
                                         r"rows of shape \(8,\)"):
        local(tcd.predict(model, x))


def test_a_model_of_several_inputs_is_refused_by_name():
    """It got compile()'s advice to pass each input, which predict() cannot; compiled with one shape
    per input, its shapes were garbled into 'rows of shape ((None, 3),)'."""
    x = da.ones((4, 5), chunks=(2, 5))
    for model in (_Gated(), tc.compile(_Gated(), input_shape=[(None, 5), (None, 3)]), tc.compile(_Gated())):
        with pytest.raises(TypeError, match=r"^predict\(\) scores models of one input \(rows of data\); "
                                            r"_Gated.forward\(x, mask\) takes x, mask$"):
            tcd.predict(model, x)


def test_bad_dataframe_arguments_are_named():
    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    model = Sequential(Linear(3, 2))
    ddf = dd.from_pandas(pd.DataFrame({"a": [1.0, 2], "b": [3.0, 4], "c": [5, 6], "s": ["x", "y"]}), npartitions=1)
    with pytest.raises(TypeError, match="needs columns="):
        tcd.predict(model, ddf)
    with pytest.raises(ValueError, match=r"missing \['z'\]"):
        tcd.predict(model, ddf, columns=["a", "b", "z"])
    with pytest.raises(ValueError, match="distinct"):
        tcd.predict(model, ddf, columns=["a", "a", "b"])
    twice = dd.from_pandas(pd.DataFrame([[1.0, 2.0, 3.0]], columns=["a", "a", "b"]), npartitions=1)
    with pytest.raises(ValueError, match="the DataFrame has several columns named 'a'; rename them apart first"):
        tcd.predict(Sequential(Linear(2, 2)), twice, columns=["a", "b"])  # said 'DataFrame' has no 'dtype'

    with pytest.raises(TypeError, match="column 's' has dtype object|column 's' has dtype"):
        tcd.predict(model, ddf, columns=["a", "b", "s"])
    with pytest.raises(ValueError, match=r"cannot take rows of shape \(2,\)"):
        tcd.predict(model, ddf, columns=["a", "b"])
    with pytest.raises(ValueError, match="output_columns must be 2 distinct names"):
        tcd.predict(model, ddf, columns=["a", "b", "c"], output_columns=["only"])
    got = tcd.predict(model, ddf, columns=["a", "b", "c"]).compute(scheduler="threads")  # int column: cast
    np.testing.assert_array_equal(got.to_numpy(), in_process(model, np.array([[1, 3, 5], [2, 4, 6]], np.float32)))


def test_importing_tinycomp_does_not_import_dask_and_a_missing_dask_names_the_extra():
    code = "import sys, tinycomp, tinycomp.nn; print('dask' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"
    code = "import sys; sys.modules['dask'] = None; import tinycomp.dask"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode != 0
    assert "ImportError: tinycomp.dask needs Dask" in run.stderr and "pip install -e '.[dask]'" in run.stderr


def test_a_cluster_of_threads_in_this_process_scores_without_pinning_this_process_blas():
    distributed = pytest.importorskip("distributed")
    c = CASES["no_bias"]
    model, x = c.build(seed=19), c.sample(120, seed=20)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cl, \
            distributed.Client(cl) as client:
        y = tcd.predict(model, da.from_array(x, chunks=(30, 9)))
        np.testing.assert_array_equal(y.compute(), in_process(model, x, y.chunks[0]))
        stats = client.run(tcd.worker_stats)
    assert len(stats) == 2 and all(s["pid"] == os.getpid() for s in stats.values())  # workers are threads here
    assert all(s["blas_threads"] is None for s in stats.values())  # the caller's own process: BLAS left alone
