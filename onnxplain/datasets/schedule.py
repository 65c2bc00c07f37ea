"""Streaming a dataset: the batch size, one batch explained, the loop that reads, explains, writes and records
each batch not on disk yet, and its progress bar.

A dask array is handed on, to the runner :mod:`onnxplain.dask` registers when it is imported
(:func:`register_dask_runner`); a dask array arriving first loads onnxplain.dask as a plugin, by name.
"""
from __future__ import annotations

import importlib
import sys
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .resume import Manifest, check_reproducible, fingerprint_targets, run_identity
from .sources import RowTargets, first_rows, is_dask_source, open_source
from .stores import Layout, Output

#: rows of a batch at most when ``batch_size`` is not given (a killed run loses at most one batch)
MAX_DEFAULT_BATCH = 1024
#: share of the memory budget one batch's inputs and attributions may take when ``batch_size`` is not given
BATCH_SHARE = 1 / 8

#: what explains a dask source: onnxplain.dask's explain_dataset_dask, once onnxplain.dask is imported
_DASK_RUNNER: list = []


@dataclass
class DatasetRun:
    """What :func:`explain_dataset` did: ``rows`` explained in all, over ``batches`` batches, of which
    ``computed`` were computed by this call (the others were on disk already), in ``seconds``."""

    out: str
    rows: int
    batches: int
    computed: int
    seconds: float
    deltas: str | None = None   # where the per-row deltas went (a .npy path, or the zarr array "delta")

    def summary(self) -> str:
        """One line for a terminal."""
        return (f"{self.rows} row(s) in {self.batches} batch(es), {self.computed} computed now, in "
                f"{self.seconds:.1f} s: wrote {self.out}" + (f" (deltas: {self.deltas})" if self.deltas else ""))


def register_dask_runner(run) -> None:
    """Hand dask sources to ``run(ex, source, out, target, *, target_weights, overwrite, **params)``, which
    returns a :class:`DatasetRun` (:mod:`onnxplain.dask` registers its ``explain_dataset_dask`` on import)."""
    _DASK_RUNNER[:] = [run]


def explain_dataset(ex, source, out, target=None, *, target_weights=None, batch_size: int | None = None,
                    overwrite: bool = False, progress: bool | None = None, **params) -> DatasetRun:
    """Explain every row of ``source`` with ``ex`` and write the attributions to ``out``.

    ``target`` takes the forms of :meth:`Explainer.explain` (one per row: any array-like with one entry per
    source row, read batch by batch); ``target_weights`` an array-like shaped like the output, row by row.
    ``batch_size``: rows read, explained and written at a time (default: what fits an eighth of the memory
    budget, at most 1024) -- not the Explainer's ``batch_size``, the most rows its model sees per forward
    pass, which applies within each batch.  ``progress``: a tqdm bar (rows per second, time left) on stderr; default: when
    stderr is a terminal.  ``params`` are the method's (``n_steps``, ``baselines`` ...); a method that draws
    random numbers gets a seed per batch derived from ``seed`` (default 0), so a resumed run repeats them.
    Per-row deltas, for methods that have them, go beside the attributions (``<out>.delta.npy``, or the zarr
    array ``delta``).  A dask array is explained on its cluster by :mod:`onnxplain.dask` (import it first).
    Returns a :class:`DatasetRun`.
    """
    check_rows_first(ex)
    if is_dask_source(source):
        if batch_size is not None:
            raise ValueError("a dask source is explained and written by its own chunks of rows: rechunk it "
                             "(x.rechunk({0: n})) instead of giving batch_size")
        return _dask_runner()(ex, source, out, target, target_weights=target_weights, overwrite=overwrite,
                              **params)
    started = time.perf_counter()
    if target is not None and target_weights is not None:
        raise ValueError("give either target or target_weights, not both")
    params = ex.method.check_params(params)
    check_reproducible(params)
    output = Output(out, ex.spec.single)
    reader = open_source(ex, source)
    targets = RowTargets(target, target_weights, reader.rows)
    first = reader.first_batch()
    if reader.rows is not None and batch_size is None:
        batch_size = default_batch_size(first, ex.memory_budget, reader.rows)
    batch_size = check_batch_size(batch_size, reader.rows)
    probe = {k: v[:1] for k, v in first.items()}
    layout = probe_layout(ex, probe, targets.first_row(reader), params)
    identity = run_identity(ex, params, targets=fingerprint_targets(targets), source=reader.describe(),
                            batch_size=batch_size, kind=output.kind)
    identity["attributions"] = {k: [list(shape), dtype.str] for k, (shape, dtype) in layout.attributions.items()}
    manifest = Manifest.open(output, identity, overwrite)

    writer = output.open(layout, reader.rows, batch_size or MAX_DEFAULT_BATCH, fresh=not manifest.done)
    bar = tqdm(total=reader.rows, unit="row", unit_scale=True, desc="explain_dataset", leave=True,
               disable=not (progress if progress is not None else sys.stderr.isatty()))
    try:
        with bar:
            computed = stream_batches(ex, reader, targets, params, batch_size, writer, manifest, bar)
        total = manifest.rows_done()
        writer.finish(total)
        manifest.finish()
    except BaseException:
        if not manifest.done:   # nothing durable yet: leave nothing behind
            output.remove()
            manifest.remove()
        raise
    return DatasetRun(output.path, total, len(manifest.done), computed, time.perf_counter() - started,
                      writer.delta_location)


def _dask_runner():
    """The registered dask runner; onnxplain.dask is loaded as a plugin when a dask array arrives before it was
    imported (it sits above the Explainer, so this package never imports it as a module of its own; a missing
    ``onnxplain[dask]`` extra is the error that names its install)."""
    if not _DASK_RUNNER:
        importlib.import_module("onnxplain.dask")    # registers itself on import
    return _DASK_RUNNER[0]


def stream_batches(ex, reader, targets: RowTargets, params: dict, batch_size, writer, manifest: Manifest,
                   bar) -> int:
    """Read, explain, write and record each batch not on disk yet; return how many were computed."""
    computed = 0
    for index, start, batch in reader.batches(batch_size, skip=manifest.done):
        stop = start + first_rows(batch)
        if index in manifest.done:
            manifest.check_rows(index, start, stop)
        else:
            target = targets.batch(start, stop, batch)
            attr, delta = explain_batch(ex, batch, target, batch_params(ex, params, index))
            writer.write(start, stop, attr, delta)
            writer.sync(start, stop)              # the data on disk first,
            manifest.record(index, start, stop)   # then the record that says so
            computed += 1
        bar.update(stop - start)
    return computed


# ---------------------------------------------------------------------- batch sizes
def default_batch_size(first: dict, budget: int, rows: int) -> int:
    """Rows per batch: a batch's inputs and attributions take at most :data:`BATCH_SHARE` of the budget."""
    n = max(1, first_rows(first))
    per_row = sum(np.asarray(v).nbytes for v in first.values()) / n
    per_row = 2 * per_row + 64   # the inputs, the attributions (same size), deltas and targets
    return int(max(1, min(rows, MAX_DEFAULT_BATCH, budget * BATCH_SHARE // per_row)))


def check_batch_size(batch_size, rows: int | None) -> int | None:
    """``batch_size`` as an int (None for an iterable source, read in its own batches)."""
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    if rows is None:
        raise ValueError("batch_size is for array-like sources; an iterable source is read in its own batches")
    return int(batch_size)


def check_rows_first(ex) -> None:
    """A dataset is streamed by slices of its first axis: every input of ``ex`` must be batched on axis 0."""
    other = {k: v for k, v in getattr(ex, "batch_axes", {}).items() if v != 0}
    if other:
        raise ValueError(f"explain_dataset reads and writes rows along the first axis, but inputs {other} have "
                         f"another batch axis (None: unbatched); explain them with Explainer.explain, batch by "
                         f"batch, or build the Explainer on a model whose inputs are batch first")


# ---------------------------------------------------------------------- one batch
def batch_params(ex, params: dict, index: int) -> dict:
    """The parameters of batch ``index``: a seed of its own (derived from ``seed``, default 0) for methods that
    draw random numbers, and no per-call progress bar (the dataset has its own)."""
    out = dict(params)
    if "seed" in ex.method.defaults:
        base = 0 if params["seed"] is None else int(params["seed"])
        out["seed"] = int(np.random.SeedSequence([base, index]).generate_state(1, dtype=np.uint32)[0])
    if "progress" in ex.method.defaults:
        out["progress"] = False
    return out


def explain_batch(ex, batch: dict, target: dict, params: dict) -> tuple[dict, np.ndarray | None]:
    """One batch's attributions by attributed input, and its per-row deltas (None for methods without)."""
    inputs = batch if len(batch) > 1 else next(iter(batch.values()))
    if ex.method.has_delta:
        attr, delta = ex.explain(inputs, **target, return_convergence_delta=True, **params)
    else:
        attr, delta = ex.explain(inputs, **target, **params), None
    return (attr if isinstance(attr, dict) else {ex.inputs[0]: attr}), delta


def probe_layout(ex, probe: dict, target: dict, params: dict) -> Layout:
    """Explain the first row once: the output's row shapes and dtypes, and every parameter checked before
    anything is written."""
    attr, delta = explain_batch(ex, dict(probe), target, batch_params(ex, params, 0))
    return Layout({k: (tuple(v.shape[1:]), np.dtype(v.dtype)) for k, v in attr.items()},
                  None if delta is None else np.dtype(np.asarray(delta).dtype))
