"""tinycomp.dask.predict on a real distributed.LocalCluster: 2 worker processes, 1 thread each.

One cluster for the module (starting one takes seconds); each test uses its own model structure
or looks at what changed, since the workers' compiled models outlive a test."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed", reason="the cluster tests need the dask extra: "
                                                        "pip install -e '.[dask]'")
da = pytest.importorskip("dask.array", reason="tinycomp.dask needs the dask extra")
tcd = pytest.importorskip("tinycomp.dask", reason="tinycomp.dask needs the dask extra")

from tests.dask_scoring.dask_cases import all_rows, in_process, slow_array  # noqa: E402
from tests.models import CASES  # noqa: E402
from tests.reliability.rel_helpers import assert_matches_eager  # noqa: E402
from tinycomp.bench.models import get_model  # noqa: E402
from tinycomp.dask.snapshot import Snapshot  # noqa: E402
from tinycomp.nn import Layer, Linear, ReLU, Sequential, Sigmoid, Tanh, Tensor  # noqa: E402


@pytest.fixture(scope="module")
def client(private_object_cache):
    # The worker processes inherit this process's environment when they start: the suite's
    # private cache folder and signing key (tests/conftest.py), which they share with this process
    # as processes of one user share ~/.cache/tinycomp.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=logging.CRITICAL) as cluster, distributed.Client(cluster) as c:
        yield c


def stats_for(client, key):
    """{worker address: that worker's entry for structure `key`} for the workers that hold one."""
    out = {}
    for address, s in client.run(tcd.worker_stats).items():
        assert s["address"] == address
        mine = [m for m in s["models"] if m["structure"] == key]
        assert len(mine) <= 1
        if mine:
            out[address] = dict(mine[0], pid=s["pid"], blas_threads=s["blas_threads"])
    return out


def scored_chunks_by_worker(dask_scheduler, name):
    """{worker address: how many chunks of result `name` it holds}, as the scheduler sees it now."""
    held: dict[str, int] = {}
    for ts in dask_scheduler.tasks.values():
        if isinstance(ts.key, tuple) and ts.key[0] == name and ts.state == "memory":
            for ws in ts.who_has:
                held[ws.address] = held.get(ws.address, 0) + 1
    return held


def test_results_equal_the_in_process_run_bit_for_bit(client):
    c = CASES["reference_mlp"]
    model, x = c.build(seed=11), c.sample(1200, seed=12)
    y = tcd.predict(model, da.from_array(x, chunks=(100, 784)))
    expected = in_process(model, x, y.chunks[0])  # (compiling here first fills the cache the workers read)
    got = y.compute()  # through the client: the default scheduler once one exists
    np.testing.assert_array_equal(got, expected)
    assert_matches_eager(got, model, x)
    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    c = CASES["residual_net"]  # layer classes of the tests' own, unpickled on the workers
    model, x = c.build(seed=13), c.sample(300, seed=14)
    ddf = dd.from_pandas(pd.DataFrame(x, columns=[f"f{i}" for i in range(16)]), npartitions=4)
    expected = in_process(model, x, tuple(ddf.map_partitions(len).compute(scheduler="threads")))
    out = tcd.predict(model, ddf, columns=list(ddf.columns)).compute()
    np.testing.assert_array_equal(out.to_numpy(), expected)
    assert (out.index == np.arange(300)).all()


def test_each_worker_compiles_once_from_the_disk_cache_with_one_thread_and_pinned_blas(client):
    model = Sequential(Linear(33, 17), Sigmoid(), Linear(17, 5))  # a structure no other test uses
    x = np.random.default_rng(15).standard_normal((400, 33), dtype=np.float32)
    in_process(model, x)  # compiled here first: the code is in the cache folder the workers share
    key = Snapshot.take(model, {}, (33,), {}).key
    for scale in (1.0, 0.5, -2.0):  # three computations, each with other weights
        model.layers[0].weight.data *= scale
        y = tcd.predict(model, da.from_array(x, chunks=(25, 33)))
        np.testing.assert_array_equal(y.compute(), in_process(model, x, y.chunks[0]))
    per_worker = stats_for(client, key)
    assert per_worker, "no worker scored the chunks"
    for s in per_worker.values():
        assert s["compiles"] == 1 and s["cache_hits"] == 1, s  # once per process, from the disk cache
        assert s["threads"] == 1 and s["blas_threads"] == 1, s  # 2 cores, 2 worker threads: 1 each
        assert 2 <= s["weight_loads"] <= 3, s  # new weights copied in, no recompiling
    assert sum(s["rows"] for s in per_worker.values()) == 3 * 400
    assert sum(s["calls"] for s in per_worker.values()) == 3 * 16


def test_model_edited_between_predict_and_compute_uses_the_edited_weights(client):
    c = CASES["shared_linear"]  # one Linear used twice: a tied weight
    model, x = c.build(seed=16), c.sample(200, seed=17)
    y = tcd.predict(model, da.from_array(x, chunks=(50, 12)))
    model.fc.weight.data[:] = np.flip(model.fc.weight.data)  # in place
    model.fc.bias = Tensor(np.linspace(-1, 1, 12))  # rebound
    edited = in_process(model, x, y.chunks[0])
    future = client.compute(y)
    model.fc.bias.data += 5  # after submission: not in this result
    np.testing.assert_array_equal(future.result(), edited)
    del future
    np.testing.assert_array_equal(y.compute(), edited)  # the same result again: the same weights


def test_a_model_whose_rows_changed_before_submission_raises_its_own_error(client):
    """The refusal reaches the user as the ValueError it is, as on a local scheduler (raised while
    distributed pickled the graph, it came back as a serialization TypeError)."""
    from tinycomp.nn import Linear, Sequential

    model = Sequential(Linear(7, 5), Linear(5, 2))
    y = tcd.predict(model, da.ones((20, 7), chunks=(10, 7), dtype="float32"))
    model.layers.append(Linear(2, 3))
    with pytest.raises(ValueError, match=r"output rows changed from \(2,\) to \(3,\) .* call predict\(\) again"):
        y.compute()
    y = tcd.predict(model, da.ones((20, 7), chunks=(10, 7), dtype="float32"))  # as the error says
    np.testing.assert_array_equal(y.compute(), in_process(model, np.ones((20, 7), np.float32), y.chunks[0]))


def test_dataframe_edits_after_submission_are_not_scored(client):
    # On a LocalCluster the scheduler shares this process, and dask's DataFrame expressions come
    # back to it as the very objects submitted: the model must already be frozen inside them.
    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    model = Sequential(Linear(6, 5), Tanh(), Linear(5, 2))
    x = np.random.default_rng(18).standard_normal((90, 6), dtype=np.float32)
    ddf = dd.from_pandas(pd.DataFrame(x, columns=list("abcdef")), npartitions=3)
    sizes = tuple(ddf.map_partitions(len).compute(scheduler="threads"))
    out = tcd.predict(model, ddf, columns=list("abcdef"))
    model.layers[0].weight.data *= 3  # before submission: scored
    expected = in_process(model, x, sizes)
    future = client.compute(out)
    model.layers[0].weight.data *= -1  # after: not scored
    model.layers[2].bias = Tensor(np.full(2, 9.0))
    np.testing.assert_array_equal(future.result().to_numpy(), expected)


def test_partitions_a_filter_emptied_score_to_empty_frames(client):
    """An empty partition failed on its worker: y.reshape(0, -1) cannot infer the output width."""
    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    model = Sequential(Linear(3, 7), Sigmoid(), Linear(7, 2))
    x = np.random.default_rng(19).standard_normal((100, 3), dtype=np.float32)
    pdf = pd.DataFrame(x, columns=list("abc")).assign(row=np.arange(100))
    kept = dd.from_pandas(pdf, npartitions=4).query("row < 50")
    sizes = tuple(kept.map_partitions(len).compute(scheduler="threads"))
    assert sizes.count(0) == 2  # the last two partitions are empty
    out = tcd.predict(model, kept, columns=list("abc"), output_columns=["p", "q"]).compute()
    assert list(out.columns) == ["p", "q"] and (out.dtypes == np.float32).all()
    assert (out.index == pdf.index[:50]).all()
    np.testing.assert_array_equal(out.to_numpy(), in_process(model, x[:50], sizes))


def test_edits_while_computing_never_mix_weights_within_one_result(client):
    model = Sequential(Linear(24, 16), ReLU(), Linear(16, 4))
    y = tcd.predict(model, slow_array(seed=2, chunks=24, rows=20, features=24, delay=0.05))
    x = all_rows(2, 24, 20, 24)
    expected = in_process(model, x)
    future = client.compute(y)
    edits = 0
    while not future.done():  # flip weights for the whole run, in place and by rebinding
        model.layers[2].bias = Tensor(np.full(4, 50.0 * (edits % 2)))
        model.layers[0].weight.data *= -1
        edits += 1
        time.sleep(0.005)
    assert edits > 10  # the edits really overlapped the computation
    np.testing.assert_array_equal(future.result(), expected)  # all rows with the weights at submission


def test_a_worker_killed_mid_job_is_recovered_with_complete_correct_results(client):
    model = Sequential(Linear(40, 24), Tanh(), Linear(24, 6))
    chunks, rows = 30, 30
    y = tcd.predict(model, slow_array(seed=3, chunks=chunks, rows=rows, features=40, delay=0.06))
    expected = in_process(model, all_rows(3, chunks, rows, 40))
    future = client.compute(y)
    name = y.name
    deadline = time.monotonic() + 60
    while sum((held := client.run_on_scheduler(scored_chunks_by_worker, name=name)).values()) < 4:
        assert time.monotonic() < deadline and not future.done(), "the job ended before a worker could be killed"
        time.sleep(0.02)
    victim = max(held, key=held.get)  # a worker holding scored chunks: they are lost with it
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)
    assert not future.done()
    got = future.result(timeout=120)
    assert got.shape == (chunks * rows, 6)
    np.testing.assert_array_equal(got, expected)
    client.wait_for_workers(2, timeout=60)  # the nanny started a new worker process
    assert pid not in client.run(os.getpid).values()


def test_the_example_scores_parquet_on_a_running_cluster_like_the_in_process_model(client, tmp_path):
    pd = pytest.importorskip("pandas")
    script = Path(__file__).resolve().parents[2] / "examples" / "dask_scoring.py"
    figures = tmp_path / "figures.json"
    run = subprocess.run([sys.executable, str(script), "--scheduler", client.scheduler.address, "--rows", "2500",
                          "--rows-per-file", "1000", "--memory-rows", "1500", "--repeat", "1",
                          "--data-dir", str(tmp_path), "--json", str(figures)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Parquet -> compiled -> Parquet:" in run.stdout and "rows within the parity rule" in run.stdout
    result = json.loads(figures.read_text())
    assert result["workers"] == 2 and result["rows"] == 2500
    assert all(result[f"{where}_{engine}_rows_per_s"] > 0 for where in ("parquet", "memory")
               for engine in ("compiled", "numpy"))
    x = pd.read_parquet(tmp_path / "features.parquet").to_numpy(np.float32)  # the files, in order
    y = pd.read_parquet(tmp_path / "predictions-compiled.parquet")
    assert list(y.columns) == [f"y{i}" for i in range(10)] and len(y) == 2500
    model = get_model("mlp").build(seed=0)  # the example's model
    np.testing.assert_array_equal(y.to_numpy(), in_process(model, x, (1000, 1000, 500)))
    y_numpy = pd.read_parquet(tmp_path / "predictions-numpy.parquet").to_numpy()
    assert_matches_eager(y_numpy, model, x)


def test_a_class_changed_and_changed_back_between_computations_is_scored_as_it_stands(client):
    """A class pickled by value (here a local one; a __main__ one in a script) is one object in a
    worker, which unpickling the `gain = 100` structure set in place: the `gain = 1` structure's
    compiled model then saw `gain = 100`, compiled it, and scored it for the third computation."""
    class Gained(Layer):
        gain = 1.0

        def __init__(self):
            self.fc = Linear(4, 3)

        def forward(self, x):
            return self.fc(x) * self.gain

    x = np.random.default_rng(21).standard_normal((40, 4)).astype(np.float32)
    model = Gained()
    for gain in (1.0, 100.0, 1.0, 100.0):
        Gained.gain = gain
        got = tcd.predict(model, da.from_array(x, chunks=(10, 4))).compute()
        np.testing.assert_allclose(got, model(Tensor(x)).data, rtol=1e-6, atol=1e-6, err_msg=f"gain {gain}")
