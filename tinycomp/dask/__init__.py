"""Score Dask arrays and dataframes with a compiled model: `tinycomp.dask.predict(model, data)`.

    import tinycomp.dask
    y = tinycomp.dask.predict(model, x)            # x: dask.array (rows x features) -> lazy dask.array
    out = tinycomp.dask.predict(model, df, columns=feature_names)   # -> lazy DataFrame of outputs

Each chunk runs the compiled model on whatever runs the graph: the local threaded scheduler, or the
workers of a `distributed.Client` (a LocalCluster or a multi-node cluster). Each worker process
receives the model once per computation and compiles it once per structure (`worker.py`); the
weights are taken once, when the computation starts (`snapshot.py`).

Needs the optional dependencies: pip install -e '.[dask]'.
"""

from __future__ import annotations

try:
    import dask
    import dask.array as da
except ImportError as exc:  # the one place that names the extra
    raise ImportError(f"tinycomp.dask needs Dask, which is not installed here ({exc}); install tinycomp's "
                      "dask extra: pip install -e '.[dask]' (dask[distributed,dataframe] and pyarrow)") from None

import math
import sys
import uuid
import warnings
from collections import Counter
from typing import Any

import numpy as np

from .. import CompiledModel, trace
from ..checks import is_whole_number
from ..frontend.inputs import first_layer, input_signature, required_inputs, split_input_shape
from ..frontend.structural import InputShape, check_feature_names
from ..frontend.walk import warn_if_dropout_active
from .snapshot import ModelRef, take_snapshot
from .worker import score_block, score_frame, worker_stats

__all__ = ["predict", "worker_stats"]


def predict(fast_or_model: Any, data: Any, *, batch_rows: int | None = None, columns: Any = None,
            output_columns: list[str] | None = None) -> Any:
    """The model's output for every row of `data`, lazily: a dask.array, or a dask DataFrame.

    - `fast_or_model`: a `CompiledModel` (its compile options are kept: check, passes,
      speed_level, training; `threads` is each worker's share of its cores instead) or a model.
    - `data`: a `dask.array.Array` of shape (rows, *features), chunked along rows only (other
      chunking is rechunked, with a PerformanceWarning), giving a float32 array of shape
      (rows, *output); or a `dask.dataframe.DataFrame` with `columns=[...]` naming the feature
      columns in order, giving a DataFrame with the same index and one float32 column per output
      value (`output_columns`, by default y0, y1, ...).
    - `batch_rows`: score each chunk in slices of at most this many rows (default: whole chunks).

    The weights are taken once for the whole result, by its snapshot task: on a cluster when the
    graph is submitted (compute(), persist()); on a local scheduler when that task runs, which
    Dask may order after other work of the same computation (slow loading, say). Edits made
    before that are scored, later ones are not, and the result never mixes the two. Computing the
    same result again scores the same weights; call predict() again to score the model as it is then.

    A training-mode model (`compile(..., training=True)`) draws its dropout masks from each
    worker's own stream: they depend on the cluster and are neither reproducible from a seed nor
    distinct between workers seeded alike (a UserWarning says so).
    """
    model, options, compiled_features = _model_and_options(fast_or_model)
    if batch_rows is not None and (not is_whole_number(batch_rows) or batch_rows < 1):
        raise ValueError(f"batch_rows must be None (whole chunks) or an int >= 1; got {batch_rows!r}")
    batch_rows = None if batch_rows is None else int(batch_rows)  # np.uint8(200): slices wrapped around, rows lost
    if not options.get("training"):  # here: on a cluster the workers' own compiles warn only in their logs
        warn_if_dropout_active(model, "predict")
    else:
        warnings.warn("predict() of a training-mode model: each worker draws dropout masks from its own stream, "
                      "so they depend on the cluster, are not reproducible from tinycomp.nn.manual_seed, and "
                      "repeat between workers seeded alike; score a model compiled for inference for results "
                      "that do not", UserWarning, stacklevel=2)
    dd = sys.modules.get("dask.dataframe")  # imported by whoever made a dask DataFrame
    if dd is not None and isinstance(data, dd.DataFrame):
        return _predict_frame(model, options, compiled_features, data, columns, output_columns, batch_rows)
    if not isinstance(data, da.Array):
        raise TypeError(f"predict() expects a dask.array.Array (rows x features) or a dask.dataframe.DataFrame "
                        f"with columns=[...]; got {type(data).__module__}.{type(data).__name__}")
    if columns is not None or output_columns is not None:
        raise TypeError("columns= and output_columns= are for a dask DataFrame; a dask array's features are its "
                        "axes after the first")
    return _predict_array(model, options, compiled_features, data, batch_rows)


def _model_and_options(fast_or_model: Any) -> tuple[Any, dict, tuple[int, ...] | None]:
    """(model, compile options, the feature shape it is pinned to: compiled with input_shape=)."""
    if isinstance(fast_or_model, CompiledModel):
        state = fast_or_model.__getstate__()  # what pickling keeps: the model and its options
        shape = state["input_shape"]
        sig = input_signature(state["model"])  # before its first call a compiled model has no shape yet
        if (shape is not None and len(split_input_shape(shape)) > 1) or \
                (shape is None and sig is not None and len(required_inputs(sig)) > 1):
            _refuse_several_inputs(state["model"])
        pinned = tuple(shape[1:]) if shape is not None and state.get("pinned", True) else None
        # the options compile()'s defaults do not give: predict(model) and predict(tc.compile(model)) then
        # make one structure key, so each worker compiles the model once, not once for each
        defaults = {"check": False, "passes": None, "speed_level": 0, "training": False}
        options = {k: state[k] for k in defaults if k in state and state[k] != defaults[k]}
        return state["model"], options, pinned
    if isinstance(fast_or_model, type):
        raise TypeError(f"predict() expects a tinycomp CompiledModel or a model (a Layer); got the class "
                        f"{fast_or_model.__name__}: pass an instance, e.g. {fast_or_model.__name__}(...)")
    if not callable(fast_or_model):
        raise TypeError(f"predict() expects a tinycomp CompiledModel or a model (a Layer); "
                        f"got {type(fast_or_model).__name__}")
    sig = input_signature(fast_or_model)
    if sig is not None and len(required_inputs(sig)) > 1:
        _refuse_several_inputs(fast_or_model)
    return fast_or_model, {}, None


def _refuse_several_inputs(model: Any) -> None:
    sig = input_signature(model)
    names = ", ".join(required_inputs(sig)) if sig is not None else "several"
    raise TypeError(f"predict() scores models of one input (rows of data); {type(model).__name__}.forward"
                    f"{sig if sig is not None else ''} takes {names}")


def _output_row(model: Any, features: tuple[int, ...], compiled: tuple[int, ...] | None,
                given: str) -> tuple[int, ...]:
    """The shape of one output row, checking first that the model takes rows of `features`."""
    if compiled is not None and compiled != features:
        raise ValueError(f"the model was compiled with input_shape for rows of shape {compiled}; {given} has rows "
                         f"of shape {features}")
    try:
        graph = trace(model, (None, *features))
    except ValueError as exc:
        raise ValueError(f"the model cannot take rows of shape {features} ({given}): {exc}") from None
    shape = tuple(graph.shape(graph.output))
    if not shape or shape[0] is not None:
        raise ValueError(f"predict() needs a model whose output has one row per input row; for rows of shape "
                         f"{features} this model returns shape {shape}")
    return shape[1:]


def _snapshot_task(model: Any, options: dict, features: tuple[int, ...], out_row: tuple[int, ...], token: str) -> Any:
    """The graph's one snapshot key: every chunk depends on it, so every chunk scores its weights."""
    ref = ModelRef(token, model, options, features, _host_threads(), out_row)
    return dask.delayed(take_snapshot, pure=False)(ref, dask_key_name=f"tinycomp-snapshot-{token}")


def _predict_array(model: Any, options: dict, compiled: tuple[int, ...] | None, data: Any,
                   batch_rows: int | None) -> Any:
    if data.ndim < 2:
        raise ValueError(f"predict() expects rows x features (at least 2 dimensions); got a dask array of "
                         f"shape {data.shape}")
    if any(math.isnan(d) for d in data.shape[1:]):
        raise ValueError(f"the feature dimensions of the data must be known; got shape {data.shape}")
    if data.dtype.kind not in "biuf":
        raise TypeError(f"predict() scores numbers (cast to float32); got a dask array of dtype {data.dtype}")
    features = tuple(int(d) for d in data.shape[1:])
    out_row = _output_row(model, features, compiled, "the data")
    if any(len(c) > 1 for c in data.chunks[1:]):
        warnings.warn(f"predict() needs whole rows in each chunk; the data is chunked {data.chunks[1:]} along its "
                      f"feature axes, so it is rechunked to one chunk there (rows stay as they are); chunk it "
                      f"along rows only, e.g. x.rechunk({{1: -1}}), to avoid this", da.PerformanceWarning,
                      stacklevel=3)
        data = data.rechunk({axis: -1 for axis in range(1, data.ndim)})
    token = uuid.uuid4().hex
    out_ndim = 1 + len(out_row)
    axes: dict[str, list[int]] = {}
    if out_ndim < data.ndim:
        axes["drop_axis"] = list(range(out_ndim, data.ndim))
    elif out_ndim > data.ndim:
        axes["new_axis"] = list(range(data.ndim, out_ndim))
    return da.map_blocks(score_block, data, _snapshot_task(model, options, features, out_row, token), batch_rows,
                         name=f"tinycomp-predict-{token}", dtype=np.float32,
                         chunks=(data.chunks[0], *((d,) for d in out_row)),
                         meta=np.empty((0,) * out_ndim, np.float32), **axes)


def _predict_frame(model: Any, options: dict, compiled: tuple[int, ...] | None, data: Any, columns: Any,
                   output_columns: list[str] | None, batch_rows: int | None) -> Any:
    import pandas as pd

    if columns is None or isinstance(columns, (str, bytes)):
        raise TypeError(f"predict() on a DataFrame needs columns=[...], the feature columns in the order the model "
                        f"reads them; got columns={columns!r}")
    columns = list(columns)
    meta = data._meta
    repeated = [c for c in dict.fromkeys(meta.columns[meta.columns.duplicated()]) if c in columns]
    if repeated:  # frame[c] would be a DataFrame of every column of that name
        raise ValueError(f"predict() reads each feature column by its name, and the DataFrame has several columns "
                         f"named {repeated[0]!r}; rename them apart first")
    missing = [c for c in columns if c not in meta.columns]
    if not columns or missing or len(set(columns)) != len(columns):
        shown = f"{list(meta.columns)[:8]}{' ...' if len(meta.columns) > 8 else ''}"
        raise ValueError(f"columns= must name distinct columns of the DataFrame; missing {missing}, given "
                         f"{len(columns)} names, {len(set(columns))} distinct; the DataFrame has {shown}")
    check = first_layer(model)  # a model fitted on named columns (scikit-learn's) reads them in its order
    if isinstance(check, InputShape) and check.feature_names is not None:
        check_feature_names(check.feature_names, [str(c) for c in columns], "columns= gives")
    bad = [(c, meta[c].dtype) for c in columns if meta[c].dtype.kind not in "biuf"]
    if bad:
        raise TypeError(f"predict() scores numeric feature columns; column {bad[0][0]!r} has dtype {bad[0][1]}")
    features = (len(columns),)
    out_row = _output_row(model, features, compiled, f"columns= ({len(columns)} columns)")
    width = math.prod(out_row)
    names = [f"y{i}" for i in range(width)] if output_columns is None else list(output_columns)
    if len(names) != width or len(set(names)) != width:
        raise ValueError(f"output_columns must be {width} distinct names, one per output value of the model "
                         f"(output rows of shape {out_row}); got {output_columns!r}")
    out_meta = pd.DataFrame({n: np.empty(0, np.float32) for n in names}, index=meta.index[:0])
    snapshot = _snapshot_task(model, options, features, out_row, uuid.uuid4().hex)
    return data.map_partitions(score_frame, snapshot, columns, names, batch_rows, meta=out_meta)


def _host_threads() -> dict[str, int]:
    """Worker address -> Dask threads on that worker's host, from the default client's scheduler
    (empty without one: chunks then run on a local scheduler)."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return {}
    try:
        client = distributed.default_client()
    except ValueError:
        return {}
    if client.asynchronous:  # its cached scheduler info lists no workers: each takes 1 thread
        return {}
    workers = client.scheduler_info(n_workers=-1)["workers"]
    per_host = Counter[str]()
    for info in workers.values():
        per_host[info["host"]] += info["nthreads"]
    return {address: per_host[info["host"]] for address, info in workers.items()}
