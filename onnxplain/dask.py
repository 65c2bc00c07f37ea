"""Attributions over dask arrays: ``onnxplain.dask.explain`` and ``explain_dataset`` into a zarr store.

>>> from distributed import Client
>>> client = Client("tcp://scheduler:8786")
>>> x = dask.array.from_zarr("images.zarr")                     # (N, 3, 224, 224), chunked by rows
>>> attr = onnxplain.dask.explain("/shared/model.onnx", x, method="integrated_gradients", target=labels)
>>> attr.to_zarr("attributions.zarr")                          # lazy until here

Each worker process builds the explanation graph and its session once per
(model, method, output, inputs) and reuses them for every chunk it is given.
The model travels once: a path is read by the workers themselves (shared
storage), other models are serialised once and, with a distributed client,
scattered to every worker once.  Importing this module registers
:func:`explain_dataset_dask` with :mod:`onnxplain.datasets`, which hands it every
dask array given to ``explain_dataset``.  Needs the ``dask`` extra
(``pip install "onnxplain[dask]"``): dask[array], distributed and zarr.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
import warnings

import numpy as np
import onnx

try:
    import dask
    import dask.array as da
except ImportError as e:   # pragma: no cover - exercised without the extra
    raise ImportError("onnxplain.dask needs dask: pip install 'onnxplain[dask]'") from e

from .api import Explainer
from .methods.gradient import Gradient
from .methods.noise_tunnel import NoiseTunnel
from .options import EXPLAINER_KEYWORDS
from .runtime import LRUCache
from .datasets import (DatasetRun, Layout, Manifest, Output, batch_params, check_reproducible, check_rows_first,
                       fingerprint, probe_layout, register_dask_runner, run_identity)

#: explainers of this process, by (model key, method, constructor options): built once per worker process
_EXPLAINERS = LRUCache(max_items=8, max_bytes=2 << 30)
_LOCK = threading.Lock()
#: the Explainer keywords each worker's Explainer takes: all but batch_axes (dask arrays are rows first)
_CTOR = tuple(k for k in EXPLAINER_KEYWORDS if k != "batch_axes")


def explain(model, x, method: str = "saliency", target=None, *, target_weights=None,
            return_convergence_delta: bool = False, **kwargs):
    """Attributions of ``model`` for the rows of the dask array ``x``: a lazy dask array with ``x``'s row chunks.

    ``model``: a path (read by each worker: put it on storage they share), bytes, an ``onnx.ModelProto`` or an
    :class:`~onnxplain.Explainer`.  ``x``: a dask array, rows first (a dict of them by input name for a model
    with several inputs); chunks along the other axes are merged.  ``target``: an int, a tuple, None, or one
    per row as a numpy or dask array aligned with ``x``'s rows; ``target_weights`` a numpy or dask array shaped
    like the output.  ``output``, ``inputs``, ``layer``, ``providers``, ``memory_budget``, ``threads``,
    ``batch_size`` (the most rows the model sees per forward pass) and ``noise_tunnel`` go to the
    :class:`~onnxplain.Explainer` each worker builds; the other keyword arguments are the method's
    parameters.  A method that draws random numbers gets a seed per chunk derived from ``seed`` (default 0).
    ``return_convergence_delta=True``: a pair ``(attributions, deltas)`` of lazy arrays computed by the same
    tasks.  Checked here, on one row, before anything is scheduled.
    """
    ctor = {k: kwargs.pop(k) for k in _CTOR if k in kwargs}
    job = _Job.of(model, method, ctor)
    ex = job.explainer()
    check_rows_first(ex)
    params = ex.method.check_params(kwargs)
    check_reproducible(params)
    if return_convergence_delta and not ex.method.has_delta:
        raise ValueError(f"method {ex.method.name!r} has no convergence delta")
    arrays = _dask_inputs(ex, x)
    if not ex.spec.single:
        raise ValueError(f"onnxplain.dask explains one attributed input at a time; the model has {ex.inputs} "
                         f"attributed: pass inputs='name'")
    chunks = next(iter(arrays.values())).chunks[0]
    targets = _dask_targets(target, target_weights, chunks)
    probe = {k: np.asarray(v[:1]) for k, v in arrays.items()}
    layout = probe_layout(ex, probe, _first_target(target, target_weights), params)
    (row, dtype), = layout.attributions.values()
    if not return_convergence_delta:
        return _lazy(job, arrays, targets, params, row, dtype, None)
    packed_type = np.result_type(dtype, layout.delta)
    width = int(np.prod(row, dtype=np.int64))
    packed = _lazy(job, arrays, targets, params, (width + 1,), packed_type, layout.delta)
    attr = packed[:, :width].astype(dtype).reshape((-1,) + tuple(row))
    return attr, packed[:, width].astype(layout.delta)


def _lazy(job, arrays: dict, targets: dict, params: dict, row, dtype, delta):
    """One blockwise task per chunk of rows: every input's and per-row target's chunk in, attributions out
    (with ``delta`` a dtype: each row's attributions flattened, and its delta last)."""
    names = list(arrays)
    args = []
    for k, name in enumerate(names):
        args += [arrays[name], _index(arrays[name], 1000 * (k + 1))]
    dask_targets = [key for key, value in targets.items() if isinstance(value, da.Array)]
    for k, key in enumerate(dask_targets):
        args += [targets[key], _index(targets[key], 100000 * (k + 1))]
    constant = {key: value for key, value in targets.items() if key not in dask_targets}
    out_index = (0,) + tuple(range(1, 1 + len(row)))
    return da.blockwise(
        _explain_block, out_index, *args,
        names=names, dask_targets=dask_targets, constant=constant, job=job.shipped(), params=params,
        packed=delta is not None, new_axes={1 + i: d for i, d in enumerate(row)}, dtype=dtype, concatenate=True,
        meta=np.empty((0,) + tuple(row), dtype=dtype))


def _index(a, first: int) -> tuple:
    """Blockwise index of an argument: rows shared with the output (0), its other axes its own."""
    return (0,) + tuple(range(first, first + a.ndim - 1))


def _explain_block(*blocks, names, dask_targets, constant, job, params, packed=False, block_id=None):
    """The attributions of one chunk of rows, by this process's Explainer of ``job`` (``packed``: flattened,
    each row followed by its delta)."""
    inputs = dict(zip(names, blocks[:len(names)]))
    target = dict(constant)
    for key, value in zip(dask_targets, blocks[len(names):]):
        target[key] = value
    if target.get("target") is not None and not isinstance(target["target"], (int, np.integer, tuple)):
        target["target"] = np.asarray(target["target"]).tolist()
    ex = _Job.restore(job).explainer()
    feeds = inputs if len(inputs) > 1 else next(iter(inputs.values()))
    index = block_id[0] if block_id else 0
    given = {k: v for k, v in target.items() if v is not None or k == "target"}
    if not packed:
        return ex.explain(feeds, **given, **batch_params(ex, params, index))
    attr, delta = ex.explain(feeds, **given, return_convergence_delta=True, **batch_params(ex, params, index))
    kind = np.result_type(attr.dtype, np.asarray(delta).dtype)
    return np.concatenate([attr.reshape(len(attr), -1).astype(kind), np.asarray(delta, kind)[:, None]], axis=1)


class _Job:
    """The model and the Explainer's options, as they travel to the workers: a path, or bytes (scattered once
    with a distributed client); ``key`` names the model, so each worker builds one Explainer per job."""

    def __init__(self, ref, key: str, method: str, ctor: dict):
        self.ref, self.key, self.method, self.ctor = ref, key, method, ctor

    @classmethod
    def of(cls, model, method: str, ctor: dict) -> "_Job":
        if isinstance(model, Explainer):
            ctor = {**_options_of(model), **ctor}
            method = _method_name(model) if method is None or method == model.method.name else method
            model = model.model
        if isinstance(model, (str, os.PathLike)):
            path = os.path.abspath(os.fspath(model))
            if not os.path.isfile(path):
                raise ValueError(f"no ONNX model at {path!r} (workers read a path from storage they share)")
            st = os.stat(path)
            return cls(path, f"path:{path}:{st.st_size}:{st.st_mtime_ns}", method, ctor)
        if isinstance(model, onnx.ModelProto):
            model = model.SerializeToString()
        if not isinstance(model, (bytes, bytearray, memoryview)):
            raise ValueError(f"model must be a path, bytes, an onnx.ModelProto or an Explainer, got "
                             f"{type(model).__name__}")
        data = bytes(model)
        return cls(data, "sha256:" + hashlib.sha256(data).hexdigest(), method, ctor)

    def shipped(self) -> tuple:
        """What the tasks carry: the model's bytes scattered once to every worker when a distributed client is
        running (the tasks then carry a reference), else the bytes or the path themselves."""
        ref = self.ref
        if isinstance(ref, bytes):
            client = _client()
            if client is not None:
                ref = client.scatter(ref, broadcast=True, hash=True)
        return (ref, self.key, self.method, tuple(sorted(self.ctor.items(), key=lambda kv: kv[0])))

    @classmethod
    def restore(cls, shipped: tuple) -> "_Job":
        ref, key, method, ctor = shipped
        return cls(ref, key, method, dict(ctor))

    def explainer(self) -> Explainer:
        """This process's Explainer of the job: built on first use, reused for every chunk."""
        cache_key = (self.key, self.method, tuple(sorted((k, repr(v)) for k, v in self.ctor.items())))
        with _LOCK:
            ex = _EXPLAINERS.get(cache_key)
            if ex is None:
                ex = Explainer(self.ref, self.method, **self.ctor)
                _EXPLAINERS.put(cache_key, ex, ex.graph.ByteSize())
        return ex


def _options_of(ex: Explainer) -> dict:
    """The constructor options that rebuild ``ex`` from its model."""
    point = ex.spec.points[0]
    options = {"output": ex.output, "memory_budget": ex.memory_budget, "threads": ex.threads,
               "batch_size": ex.spec.batch_size}
    if isinstance(ex.method, NoiseTunnel) and not isinstance(ex.method.inner, Gradient):
        options["noise_tunnel"] = ex.method.kind   # e.g. integrated_gradients under smoothgrad
    if point.key in ex.model_inputs:
        options["inputs"] = list(ex.spec.wrt)
    else:
        options.update(layer=point.key, inputs=list(ex.spec.carriers))
    return options


def _method_name(ex: Explainer) -> str:
    """The method name that builds ``ex``'s method again (with :func:`_options_of`'s ``noise_tunnel``)."""
    m = ex.method
    return m.inner.name if isinstance(m, NoiseTunnel) and not isinstance(m.inner, Gradient) else m.name


def _client():
    try:
        from distributed import default_client
        return default_client()
    except (ImportError, ValueError):
        return None


def _dask_inputs(ex, x) -> dict:
    names = ex.model_inputs
    if not isinstance(x, dict):
        if len(names) != 1:
            raise ValueError(f"the model has {len(names)} inputs {names}; pass a dict of dask arrays by input name")
        x = {names[0]: x}
    if sorted(x) != sorted(names):
        raise ValueError(f"the model's inputs are {names}; got {sorted(x)}")
    arrays = {}
    for name in names:
        a = x[name]
        if not isinstance(a, da.Array):
            raise ValueError(f"input {name!r} must be a dask array, got {type(a).__name__}")
        arrays[name] = a.rechunk({i: -1 for i in range(1, a.ndim)}) if a.ndim > 1 else a
    rows = {k: v.chunks[0] for k, v in arrays.items()}
    first = next(iter(rows.values()))
    if any(c != first for c in rows.values()):
        arrays = {k: v.rechunk({0: first}) for k, v in arrays.items()}
    ex.check_inputs({k: np.asarray(v[:1]) for k, v in arrays.items()})   # names, dtypes, row shapes
    return arrays


def _dask_targets(target, weights, chunks) -> dict:
    """Targets as blockwise arguments: constants, or dask arrays with ``x``'s row chunks."""
    n = sum(chunks)
    if target is not None and weights is not None:
        raise ValueError("give either target or target_weights, not both")
    key, value = ("target_weights", weights) if weights is not None else ("target", target)
    if value is None or isinstance(value, (int, np.integer, tuple)):
        return {key: value}
    if not isinstance(value, da.Array):
        value = np.asarray(value)
    if value.shape[0] != n:
        raise ValueError(f"{key} has {value.shape[0]} rows but x has {n}")
    if not isinstance(value, da.Array):
        value = da.from_array(value, chunks=(chunks,) + value.shape[1:])
    return {key: value.rechunk({0: chunks, **{i: -1 for i in range(1, value.ndim)}})}


def _first_target(target, weights) -> dict:
    if weights is not None:
        return {"target_weights": np.asarray(weights[:1])}
    if target is None or isinstance(target, (int, np.integer, tuple)):
        return {"target": target}
    return {"target": np.asarray(target[:1]).tolist()}


# ---------------------------------------------------------------------- explain_dataset over dask
def explain_dataset_dask(ex, x, out, target=None, *, target_weights=None, overwrite: bool = False,
                         group: int | None = None, **params) -> DatasetRun:
    """``ex.explain_dataset`` for a dask array: chunks of rows computed on the cluster and written with
    :func:`dask.array.to_zarr` into the zarr store ``out``; a chunk recorded in the manifest (after its files
    are synced) is not computed again when the run is started again.  ``group``: chunks written between two
    manifest updates (default: twice the workers, or 4).  Registered with :mod:`onnxplain.datasets` on import,
    so that ``explain_dataset`` of a dask array comes here."""
    started = time.perf_counter()
    output = Output(out, True)
    if output.kind != "zarr":
        raise ValueError(f"a dask source is written to a zarr store (a path ending in .zarr), not {out!r}")
    params.pop("progress", None)
    lazy = explain(ex, x, ex.method.name, target, target_weights=target_weights,
                   return_convergence_delta=ex.method.has_delta, **params)
    lazy, deltas = lazy if ex.method.has_delta else (lazy, None)
    chunk = lazy.chunks[0][0]
    if any(c != chunk for c in lazy.chunks[0][:-1]) or lazy.chunks[0][-1] > chunk:
        lazy = lazy.rechunk({0: chunk})
        deltas = None if deltas is None else deltas.rechunk({0: chunk})
    bounds = np.cumsum((0,) + lazy.chunks[0])
    shipped_params = ex.method.check_params(params)
    layout = Layout({ex.inputs[0]: (tuple(lazy.shape[1:]), np.dtype(lazy.dtype))},
                    None if deltas is None else np.dtype(deltas.dtype))
    identity = run_identity(ex, shipped_params,
                            targets=fingerprint(target if target_weights is None else {"weights": target_weights}),
                            source={"shape": list(map(int, lazy.shape)), "chunks": int(chunk)},
                            batch_size=int(chunk), kind="zarr")
    manifest = Manifest.open(output, identity, overwrite)
    writer = output.open(layout, int(lazy.shape[0]), int(chunk), fresh=False)
    array = writer.arrays[next(iter(layout.attributions))]
    todo = [i for i in range(len(bounds) - 1) if i not in manifest.done]
    size = group or max(4, 2 * _workers())
    computed = 0
    try:
        for g in range(0, len(todo), size):
            picked = todo[g:g + size]
            with warnings.catch_warnings():   # the last chunk is shorter than the store's chunks: still whole
                warnings.simplefilter("ignore", da.PerformanceWarning)
                writes = [da.to_zarr(lazy[bounds[i]:bounds[i + 1]], array, region=_rows(bounds, i, lazy.ndim),
                                     compute=False) for i in picked]
                if deltas is not None:   # the same tasks: computed once with the attributions
                    writes += [da.to_zarr(deltas[bounds[i]:bounds[i + 1]], writer.delta, region=_rows(bounds, i, 1),
                                          compute=False) for i in picked]
            dask.compute(*writes)
            spans = {i: (int(bounds[i]), int(bounds[i + 1])) for i in picked}
            for start, stop in spans.values():
                writer.sync(start, stop)      # the data on disk first,
            manifest.record_batches(spans)    # then the record that says so
            computed += len(picked)
        writer.finish(int(lazy.shape[0]))
        manifest.finish()
    except BaseException:
        if not manifest.done:
            output.remove()
            manifest.remove()
        raise
    return DatasetRun(output.path, int(lazy.shape[0]), len(bounds) - 1, computed,
                      time.perf_counter() - started, writer.delta_location)


def _rows(bounds, i: int, ndim: int) -> tuple:
    """The region of chunk ``i`` of rows in the store."""
    return (slice(int(bounds[i]), int(bounds[i + 1])),) + (slice(None),) * (ndim - 1)


def _workers() -> int:
    client = _client()
    if client is None:
        return 2
    return max(1, len(client.scheduler_info().get("workers", {})))


register_dask_runner(explain_dataset_dask)

__all__ = ["explain", "explain_dataset_dask"]
