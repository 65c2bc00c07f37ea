"""explain_dataset: whole datasets streamed through an Explainer, within its memory budget, resumable.

A *source* is read one batch at a time and each batch's attributions are
written before the next batch is read, so memory does not grow with the
dataset.  Sources: any array-like with ``shape`` and slicing (a numpy memmap,
``np.load(path, mmap_mode="r")``, a zarr array, an h5py dataset), a dict of
them by input name, an iterable of batches (arrays, dicts by input name, or
``(batch, target)`` pairs), or a dask array (see :mod:`onnxplain.dask`).
Outputs: a ``.npy`` file (header first, rows written in place) or a zarr
store (a directory; one array per attributed input, and ``delta``).

Resuming: a small manifest beside the output (``<out>.manifest.json``)
records what the run is (model digest, method, parameters, targets, source
shape, batch size) and which batches are on disk; a batch is recorded only
after its data has been flushed to the disk (fsync), and the manifest itself
is replaced atomically.  A run killed at any moment and started again with the
same arguments recomputes only the batches not recorded and leaves the same
bytes as one uninterrupted run; different arguments are refused unless
``overwrite=True``.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_VERSION = 1
#: rows of a batch at most when ``batch_size`` is not given (a killed run loses at most one batch)
MAX_DEFAULT_BATCH = 1024
#: share of the memory budget one batch's inputs and attributions may take when ``batch_size`` is not given
BATCH_SHARE = 1 / 8
#: bytes reserved for a .npy header, so that a header naming any number of rows has the same length
NPY_HEADER_BYTES = 256


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
    array ``delta``).  Returns a :class:`DatasetRun`.
    """
    _check_rows_first(ex)
    if _is_dask(source):
        if batch_size is not None:
            raise ValueError("a dask source is explained and written by its own chunks of rows: rechunk it "
                             "(x.rechunk({0: n})) instead of giving batch_size")
        from .dask import explain_dataset_dask
        return explain_dataset_dask(ex, source, out, target, target_weights=target_weights, overwrite=overwrite,
                                    **params)
    started = time.perf_counter()
    if target is not None and target_weights is not None:
        raise ValueError("give either target or target_weights, not both")
    params = ex.method.check_params(params)
    _check_reproducible(params)
    target_out = _OutputTarget(out, ex.spec.single)
    reader = _reader(ex, source)
    targets = _Targets(target, target_weights, reader.rows)
    first = reader.first_batch()
    if reader.rows is not None and batch_size is None:
        batch_size = default_batch_size(first, ex.memory_budget, reader.rows)
    batch_size = _check_batch_size(batch_size, reader.rows)
    probe = {k: v[:1] for k, v in first.items()}
    layout = _layout(ex, probe, targets.first_row(reader), params)
    identity = _identity(ex, reader, targets, params, batch_size, layout, target_out.kind)
    manifest = Manifest.open(target_out, identity, overwrite)

    outputs = target_out.open(layout, reader.rows, batch_size, fresh=not manifest.done)
    bar = tqdm(total=reader.rows, unit="row", unit_scale=True, desc="explain_dataset", leave=True,
               disable=not (progress if progress is not None else sys.stderr.isatty()))
    try:
        with bar:
            computed = _stream(ex, reader, targets, params, batch_size, outputs, manifest, bar)
        total = manifest.rows_done()
        outputs.finish(total)
        manifest.finish()
    except BaseException:
        if not manifest.done:   # nothing durable yet: leave nothing behind
            target_out.remove()
            manifest.remove()
        raise
    return DatasetRun(target_out.path, total, len(manifest.done), computed, time.perf_counter() - started,
                      outputs.delta_location)


def _stream(ex, reader, targets, params: dict, batch_size, outputs, manifest, bar) -> int:
    """Read, explain, write and record each batch not on disk yet; return how many were computed."""
    computed = 0
    for index, start, batch in reader.batches(batch_size, skip=manifest.done):
        stop = start + first_rows(batch)
        if index in manifest.done:
            manifest.check_rows(index, start, stop)
        else:
            target = targets.batch(start, stop, batch)
            attr, delta = _explain_batch(ex, batch, target, _batch_params(ex, params, index))
            outputs.write(start, stop, attr, delta)
            outputs.sync(start, stop)     # the data on disk first,
            manifest.record(index, start, stop)   # then the record that says so
            computed += 1
        bar.update(stop - start)
    return computed


def explain_npy(model, data, out, method: str = "saliency", *, target=None, target_file=None, target_weights=None,
                batch_size: int | None = None, memory_budget=None, overwrite: bool = False,
                progress: bool | None = None, output=None, inputs=None, layer=None, params=None,
                noise_tunnel: str | None = None, batch_axes: dict | None = None,
                model_batch_size: int | None = None) -> DatasetRun:
    """:func:`explain_dataset` of the rows of the ``.npy`` file ``data`` (memmapped: read batch by batch).

    ``batch_size``: the rows of one streamed batch (default: what the memory budget holds);
    ``model_batch_size``: the most rows the model sees per forward pass (the ``batch_size`` of
    :class:`~onnxplain.Explainer`).  ``target_file`` and ``target_weights`` are ``.npy`` paths (memmapped
    too): one target per row, or weights shaped like the output.  ``target="pred"`` is refused (write the
    predicted classes to a ``target_file``).  What the command line's ``explain --batch-size`` runs.
    """
    from .api import Explainer
    from .targets import PREDICTED
    if isinstance(target, str) and target == PREDICTED:
        raise ValueError("target 'pred' is not streamed: write the predicted classes to an .npy file and give it "
                         "as target_file")
    source = _open_npy(data, "the data")
    if target is not None and target_file is not None:
        raise ValueError("give either target or target_file, not both")
    if target_file is not None:
        target = _open_npy(target_file, "target_file")
    extra = {"target_weights": _open_npy(target_weights, "target_weights")} if target_weights is not None else {}
    ex = Explainer(model, method, output=output, inputs=inputs, layer=layer, memory_budget=memory_budget,
                   noise_tunnel=noise_tunnel, batch_axes=batch_axes, batch_size=model_batch_size)
    return explain_dataset(ex, source, out, target, batch_size=batch_size, overwrite=overwrite, progress=progress,
                           **extra, **(params or {}))


def _open_npy(path, what: str) -> np.ndarray:
    path = os.fspath(path)
    if not path.endswith(".npy") or not os.path.isfile(path):
        raise ValueError(f"{what} must be an existing .npy file, got {path!r}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{what}: cannot read {path!r} as an .npy array: {e}") from e


def default_batch_size(first: dict, budget: int, rows: int) -> int:
    """Rows per batch: a batch's inputs and attributions take at most :data:`BATCH_SHARE` of the budget."""
    n = max(1, first_rows(first))
    per_row = sum(np.asarray(v).nbytes for v in first.values()) / n
    per_row = 2 * per_row + 64   # the inputs, the attributions (same size), deltas and targets
    return int(max(1, min(rows, MAX_DEFAULT_BATCH, budget * BATCH_SHARE // per_row)))


def first_rows(batch: dict) -> int:
    return int(np.shape(next(iter(batch.values())))[0])


# ---------------------------------------------------------------------- sources
class _ArraySource:
    """Array-likes by input name, all with the same number of rows; read by slices."""

    def __init__(self, arrays: dict):
        self.arrays = arrays
        counts = {k: int(v.shape[0]) for k, v in arrays.items()}
        if len(set(counts.values())) != 1:
            raise ValueError(f"every input of the source needs the same number of rows, got {counts}")
        self.rows = next(iter(counts.values()))
        if self.rows == 0:
            raise ValueError("the source has no rows")

    def first_batch(self) -> dict:
        return {k: np.asarray(v[:1]) for k, v in self.arrays.items()}

    def describe(self) -> dict:
        return {k: {"shape": list(map(int, v.shape)), "dtype": str(np.dtype(v.dtype))} for k, v in self.arrays.items()}

    def batches(self, size: int, skip=()):
        for index, start in enumerate(range(0, self.rows, size)):
            stop = min(self.rows, start + size)
            if index in skip:   # not read again
                yield index, start, {k: _Rows(stop - start) for k in self.arrays}
            else:
                yield index, start, {k: np.asarray(v[start:stop]) for k, v in self.arrays.items()}


class _Rows:
    """Stands for a batch of ``n`` rows that is not read (already on disk)."""

    def __init__(self, n: int):
        self.shape = (n,)


class _IterableSource:
    """Batches from an iterable (arrays, dicts by input name, or ``(batch, target)`` pairs); read once per run,
    so a resumed run must be given an iterable that yields the same batches in the same order."""

    rows = None

    def __init__(self, ex, iterable):
        self.ex = ex
        self._it = iter(iterable)
        try:
            self._first = next(self._it)
        except StopIteration:
            raise ValueError("the source yields no batches") from None
        self.targets_given = isinstance(self._first, tuple)

    def _split(self, item):
        if isinstance(item, tuple):
            if len(item) != 2:
                raise ValueError(f"a batch given as a tuple must be (inputs, target), got {len(item)} items")
            if not self.targets_given:
                raise ValueError("the source yields some batches with a target and some without")
            inputs, target = item
        else:
            if self.targets_given:
                raise ValueError("the source yields some batches with a target and some without")
            inputs, target = item, None
        return _by_name(self.ex, inputs), target

    def first_batch(self) -> dict:
        return self._split(self._first)[0]

    def first_target(self):
        return self._split(self._first)[1]

    def describe(self) -> dict:
        first = self.first_batch()
        return {k: {"row": list(np.shape(v)[1:]), "dtype": str(np.asarray(v).dtype)} for k, v in first.items()}

    def batches(self, size, skip=()):
        start = 0
        for index, item in enumerate(_chain(self._first, self._it)):
            inputs, target = self._split(item)
            inputs = {k: np.asarray(v) for k, v in inputs.items()}
            if target is not None:
                inputs[_BATCH_TARGET] = target
            yield index, start, inputs
            start += first_rows(inputs)


_BATCH_TARGET = "\0target"   # key of a batch's own target, carried with an iterable's batches


def _chain(first, rest):
    yield first
    yield from rest


def _by_name(ex, inputs) -> dict:
    if isinstance(inputs, dict):
        return dict(inputs)
    names = ex.model_inputs
    if len(names) != 1:
        raise ValueError(f"the model has {len(names)} inputs {names}; give the source as a dict by input name")
    return {names[0]: inputs}


def _is_array_like(v) -> bool:
    return hasattr(v, "shape") and hasattr(v, "__getitem__") and hasattr(v, "dtype") and len(v.shape) >= 1


def _is_dask(v) -> bool:
    if isinstance(v, dict):
        return any(_is_dask(x) for x in v.values())
    return type(v).__module__.split(".")[0] == "dask"


def _reader(ex, source):
    if isinstance(source, dict) and all(_is_array_like(v) for v in source.values()):
        arrays = _by_name(ex, source)
    elif _is_array_like(source):
        arrays = _by_name(ex, source)
    elif isinstance(source, (str, bytes, os.PathLike)):
        raise ValueError(f"source {source!r} is a path; open it first, e.g. np.load(path, mmap_mode='r')")
    elif hasattr(source, "__iter__"):
        return _IterableSource(ex, source)
    else:
        raise ValueError(f"source must be an array-like with shape and slicing (numpy, memmap, zarr, h5py), a dict "
                         f"of them by input name, an iterable of batches or a dask array; got "
                         f"{type(source).__name__}")
    reader = _ArraySource(arrays)
    ex.check_inputs(reader.first_batch())   # names, dtypes and row shapes, before anything is written
    return reader


def _check_rows_first(ex) -> None:
    """A dataset is streamed by slices of its first axis: every input of ``ex`` must be batched on axis 0."""
    other = {k: v for k, v in getattr(ex, "batch_axes", {}).items() if v != 0}
    if other:
        raise ValueError(f"explain_dataset reads and writes rows along the first axis, but inputs {other} have "
                         f"another batch axis (None: unbatched); explain them with Explainer.explain, batch by "
                         f"batch, or build the Explainer on a model whose inputs are batch first")


# ---------------------------------------------------------------------- targets
class _Targets:
    """The call's targets, sliced per batch: one for every row, or one per row (array-like, read by slices)."""

    def __init__(self, target, weights, rows: int | None):
        self.target, self.weights = target, weights
        self.per_row = None
        if weights is not None:
            self.per_row = weights
            what = "target_weights"
        elif target is not None and not isinstance(target, (int, np.integer, tuple)):
            self.per_row = target if _is_array_like(target) else np.asarray(target)
            what = "target"
        if self.per_row is not None:
            if rows is None:
                raise ValueError(f"an iterable source takes its per-row targets with its batches ((inputs, target) "
                                 f"pairs); {what} per row needs an array-like source")
            if int(np.shape(self.per_row)[0]) != rows:
                raise ValueError(f"{what} has {np.shape(self.per_row)[0]} rows but the source has {rows}")

    def batch(self, start: int, stop: int, batch: dict) -> dict:
        """The target arguments of rows ``[start, stop)``; a batch carrying its own target gives it up here."""
        if _BATCH_TARGET in batch:
            return {"target": _per_row_list(batch.pop(_BATCH_TARGET))}
        if self.weights is not None:
            return {"target_weights": np.asarray(self.weights[start:stop])}
        if self.per_row is not None:
            return {"target": np.asarray(self.per_row[start:stop]).tolist()}
        return {"target": self.target}

    def first_row(self, reader) -> dict:
        """The target arguments of the source's first row."""
        if isinstance(reader, _IterableSource) and reader.targets_given:
            if self.target is not None or self.weights is not None:
                raise ValueError("the source yields its targets with its batches; do not give target as well")
            given = _per_row_list(reader.first_target())
            return {"target": given[:1] if isinstance(given, list) else given}
        return self.batch(0, 1, {})

    def describe(self):
        if self.per_row is not None:
            return {"per_row": "target_weights" if self.weights is not None else "target",
                    "digest": _digest_array_like(self.per_row)}
        return {"target": _fingerprint(self.target)}


def _per_row_list(target):
    """A batch's target: one per row as a list (Captum's form), else as given (an int, a tuple, None)."""
    if target is None or isinstance(target, (int, np.integer, tuple)):
        return target
    return np.asarray(target).tolist()


def _digest_array_like(values, rows_at_a_time: int = 65536) -> str:
    h = hashlib.sha256()
    n = int(np.shape(values)[0])
    for start in range(0, n, rows_at_a_time):
        chunk = np.ascontiguousarray(np.asarray(values[start:start + rows_at_a_time]))
        h.update(str((chunk.dtype.str, chunk.shape[1:])).encode())
        h.update(chunk.tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------- one batch
def _check_reproducible(params: dict) -> None:
    seed = params.get("seed")
    if isinstance(seed, np.random.Generator):
        raise ValueError("explain_dataset needs an int seed (a numpy Generator cannot be replayed when a run "
                         "resumes)")


def _batch_params(ex, params: dict, index: int) -> dict:
    """The parameters of batch ``index``: a seed of its own (derived from ``seed``, default 0) for methods that
    draw random numbers, and no per-call progress bar (the dataset has its own)."""
    out = dict(params)
    if "seed" in ex.method.defaults:
        base = 0 if params["seed"] is None else int(params["seed"])
        out["seed"] = int(np.random.SeedSequence([base, index]).generate_state(1, dtype=np.uint32)[0])
    if "progress" in ex.method.defaults:
        out["progress"] = False
    return out


def _explain_batch(ex, batch: dict, target: dict, params: dict):
    inputs = batch if len(batch) > 1 else next(iter(batch.values()))
    if ex.method.has_delta:
        attr, delta = ex.explain(inputs, **target, return_convergence_delta=True, **params)
    else:
        attr, delta = ex.explain(inputs, **target, **params), None
    return (attr if isinstance(attr, dict) else {ex.inputs[0]: attr}), delta


@dataclass
class _Layout:
    """What one row of output holds: attribution row shape and dtype per attributed input, and the delta's."""

    attributions: dict          # input name -> (row shape, dtype)
    delta: np.dtype | None


def _layout(ex, probe: dict, target: dict, params: dict) -> _Layout:
    """Explain the first row once: the output's row shapes and dtypes, and every parameter checked before
    anything is written."""
    attr, delta = _explain_batch(ex, dict(probe), target, _batch_params(ex, params, 0))
    return _Layout({k: (tuple(v.shape[1:]), np.dtype(v.dtype)) for k, v in attr.items()},
                   None if delta is None else np.dtype(np.asarray(delta).dtype))


# ---------------------------------------------------------------------- identity of a run
def _fingerprint(value):
    """A JSON-able, exact description of a parameter value (arrays by content digest)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, dict):
        return {str(k): _fingerprint(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_fingerprint(v) for v in value]
    if isinstance(value, np.ndarray) or _is_array_like(value):
        a = np.ascontiguousarray(np.asarray(value))
        return {"array": a.dtype.str, "shape": list(a.shape), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}
    return repr(value)


def _identity(ex, reader, targets: _Targets, params: dict, batch_size, layout: _Layout, kind: str) -> dict:
    shown = {k: v for k, v in params.items() if k != "progress"}
    return {
        "model": ex.digest,
        "method": ex.method.name,
        "output": ex.output,
        "attributed": [[p.key, p.tensor] for p in ex.spec.points],
        "params": _fingerprint(shown),
        "targets": targets.describe(),
        "source": reader.describe(),
        "batch_size": batch_size,
        "format": kind,
        "attributions": {k: [list(shape), dtype.str] for k, (shape, dtype) in layout.attributions.items()},
    }


def _check_batch_size(batch_size, rows):
    if batch_size is None:
        return None    # an iterable source: its own batches
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    if rows is None:
        raise ValueError("batch_size is for array-like sources; an iterable source is read in its own batches")
    return int(batch_size)


# ---------------------------------------------------------------------- the output and its manifest
class _OutputTarget:
    """Where a run writes: a ``.npy`` file, or a zarr store (a directory, ``.zarr`` or existing)."""

    def __init__(self, out, single: bool):
        self.path = os.path.abspath(os.fspath(out))
        if self.path.endswith(".npy"):
            self.kind = "npy"
            if not single:
                raise ValueError(f"several inputs are attributed: write to a zarr store (a path ending in .zarr), "
                                 f"one array per input, not to {out!r}")
        elif self.path.endswith(".zarr") or os.path.isdir(self.path):
            self.kind = "zarr"
        else:
            raise ValueError(f"out must be a .npy path or a zarr store (a path ending in .zarr), got {out!r}")
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            raise ValueError(f"cannot write {out!r}: folder {folder!r} does not exist")
        if not os.access(folder, os.W_OK):
            raise ValueError(f"cannot write {out!r}: folder {folder!r} is not writable")
        if os.path.exists(self.path) and not os.access(self.path, os.W_OK):
            raise ValueError(f"cannot write {out!r}: it exists and is read-only")
        self.delta_path = self.path[:-4] + ".delta.npy" if self.kind == "npy" else None

    @property
    def manifest_path(self) -> str:
        return self.path + MANIFEST_SUFFIX

    def exists(self) -> bool:
        return os.path.exists(self.path) or (self.delta_path is not None and os.path.exists(self.delta_path))

    def remove(self) -> None:
        for p in (self.path, self.delta_path):
            if p is None or not os.path.lexists(p):
                continue
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.remove(p)

    def open(self, layout: _Layout, rows, batch_size, fresh: bool):
        if fresh:
            self.remove()
        if self.kind == "npy":
            return _NpyOutputs(self, layout, rows)
        return _ZarrOutputs(self, layout, rows, batch_size)


class Manifest:
    """The record of a run beside its output: what the run is, and which batches are durably written."""

    def __init__(self, path: str, identity: dict, done: dict, complete: bool = False):
        self.path, self.identity, self.batches, self.complete = path, identity, done, complete

    @property
    def done(self) -> dict:
        """Batch index -> (first row, end row) of the batches on disk."""
        return self.batches

    @classmethod
    def open(cls, target: _OutputTarget, identity: dict, overwrite: bool) -> "Manifest":
        path = target.manifest_path
        if overwrite:
            if os.path.exists(path):
                os.remove(path)
            return cls(path, identity, {})
        if os.path.exists(path):
            try:
                with open(path) as f:
                    data = json.load(f)
                found = data["run"]
                done = {int(k): tuple(v) for k, v in data["done"].items()}
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path!r} is not a manifest of explain_dataset ({e}); pass overwrite=True to "
                                 f"start again") from e
            if found != identity:
                diff = sorted(k for k in set(found) | set(identity) if found.get(k) != identity.get(k))
                raise ValueError(f"{target.path!r} holds the results of another run (its manifest differs in "
                                 f"{', '.join(diff)}); pass overwrite=True (--overwrite) to replace them, or write "
                                 f"elsewhere")
            return cls(path, identity, done, bool(data.get("complete")))
        if target.exists():
            raise ValueError(f"{target.path!r} exists and has no manifest of explain_dataset beside it; pass "
                             f"overwrite=True to replace it")
        return cls(path, identity, {})

    def check_rows(self, index: int, start: int, stop: int) -> None:
        if self.batches[index] != (start, stop):
            raise ValueError(f"batch {index} covers rows {start}:{stop} but the run being resumed wrote rows "
                             f"{self.batches[index][0]}:{self.batches[index][1]}: the source yields other batches")

    def record(self, index: int, start: int, stop: int) -> None:
        self.batches[index] = (start, stop)
        self._write()

    def rows_done(self) -> int:
        return max((stop for _, stop in self.batches.values()), default=0)

    def finish(self) -> None:
        self.complete = True
        self._write()

    def remove(self) -> None:
        if os.path.exists(self.path):
            os.remove(self.path)

    def _write(self) -> None:
        data = {"version": MANIFEST_VERSION, "run": self.identity, "complete": self.complete,
                "done": {str(k): list(v) for k, v in sorted(self.batches.items())}}
        write_durably(self.path, json.dumps(data, indent=1).encode())


def write_durably(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically, on disk when this returns (file and folder synced)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _sync_folder(os.path.dirname(path))


def _sync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _NpyFile:
    """A .npy file written in place: a header of fixed length first (so that the number of rows it names can
    change without moving the data), rows at their offsets, fsync on demand."""

    def __init__(self, path: str, row: tuple, dtype: np.dtype, rows: int | None):
        self.path, self.row, self.dtype = path, tuple(row), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row, dtype=np.int64)) * self.dtype.itemsize
        new = not os.path.exists(path)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if new:
            os.pwrite(self.fd, self.header(rows or 0), 0)
        else:
            self._check_header()

    def header(self, rows: int) -> bytes:
        d = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
             "shape": (int(rows),) + self.row}
        text = repr(d).encode("latin1")
        body = NPY_HEADER_BYTES - 10   # magic (6), version (2), header length (2)
        if len(text) + 1 > body:
            raise ValueError(f"the .npy header for rows of shape {self.row} does not fit {NPY_HEADER_BYTES} bytes")
        return b"\x93NUMPY\x01\x00" + body.to_bytes(2, "little") + text.ljust(body - 1) + b"\n"

    def _check_header(self) -> None:
        head = os.pread(self.fd, NPY_HEADER_BYTES, 0)
        try:
            d = ast.literal_eval(head[10:].decode("latin1").strip())
            ok = head[:8] == b"\x93NUMPY\x01\x00" and tuple(d["shape"][1:]) == self.row \
                and np.dtype(d["descr"]) == self.dtype
        except (ValueError, SyntaxError, KeyError, TypeError):
            ok = False
        if not ok:
            raise ValueError(f"{self.path!r} is not the .npy file of the run being resumed; pass overwrite=True")

    def write(self, start: int, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, dtype=self.dtype).tobytes()
        os.pwrite(self.fd, data, NPY_HEADER_BYTES + start * self.row_bytes)

    def sync(self) -> None:
        os.fsync(self.fd)

    def finish(self, rows: int) -> None:
        os.pwrite(self.fd, self.header(rows), 0)
        os.ftruncate(self.fd, NPY_HEADER_BYTES + rows * self.row_bytes)
        os.fsync(self.fd)
        os.close(self.fd)


class _NpyOutputs:
    """Attributions of the one attributed input in ``out``, per-row deltas in ``<out minus .npy>.delta.npy``."""

    def __init__(self, target: _OutputTarget, layout: _Layout, rows):
        (name, (row, dtype)), = layout.attributions.items()
        self.name = name
        self.attr = _NpyFile(target.path, row, dtype, rows)
        self.delta = _NpyFile(target.delta_path, (), layout.delta, rows) if layout.delta is not None else None
        self.delta_location = target.delta_path if self.delta is not None else None

    def write(self, start, stop, attr, delta):
        self.attr.write(start, attr[self.name])
        if self.delta is not None:
            self.delta.write(start, delta)

    def sync(self, start, stop):
        self.attr.sync()
        if self.delta is not None:
            self.delta.sync()

    def finish(self, rows):
        self.attr.finish(rows)
        if self.delta is not None:
            self.delta.finish(rows)


def zarr_module():
    try:
        import zarr
    except ImportError as e:
        raise ImportError("writing a zarr store needs zarr: pip install 'onnxplain[dask]'") from e
    return zarr


def attribution_array_name(single: bool, name: str) -> str:
    """The zarr array of input ``name``'s attributions (the graph's output names)."""
    return "attributions" if single else f"attributions_{name}"


class _ZarrOutputs:
    """One zarr array per attributed input (``attributions`` or ``attributions_<input>``) and ``delta``, chunked
    by batches of rows; a batch's chunk files are synced to the disk before it is recorded (local stores)."""

    def __init__(self, target: _OutputTarget, layout: _Layout, rows, batch_size):
        zarr = zarr_module()
        self.root = target.path
        group = zarr.open_group(self.root, mode="a")
        single = len(layout.attributions) == 1
        chunk = batch_size or MAX_DEFAULT_BATCH
        self.arrays = {}
        for name, (row, dtype) in layout.attributions.items():
            self.arrays[name] = _zarr_array(group, attribution_array_name(single, name), row, dtype, rows, chunk)
        self.delta = _zarr_array(group, "delta", (), layout.delta, rows, chunk) if layout.delta is not None else None
        self.delta_location = f"{self.root}/delta" if self.delta is not None else None
        self.growing = rows is None

    def _all(self):
        return list(self.arrays.values()) + ([self.delta] if self.delta is not None else [])

    def write(self, start, stop, attr, delta):
        for a in self._all():
            if self.growing and a.shape[0] < stop:
                a.resize((stop,) + tuple(a.shape[1:]))
        for name, a in self.arrays.items():
            a[start:stop] = attr[name]
        if self.delta is not None:
            self.delta[start:stop] = delta

    def sync(self, start, stop):
        for a in self._all():
            folder = os.path.join(self.root, a.path)
            chunk = a.chunks[0]
            for i in range(start // chunk, (stop - 1) // chunk + 1):
                _sync_tree(os.path.join(folder, "c", str(i)))
            _sync_tree(os.path.join(folder, "zarr.json"))

    def finish(self, rows):
        for a in self._all():
            if a.shape[0] != rows:
                a.resize((rows,) + tuple(a.shape[1:]))
            _sync_tree(os.path.join(self.root, a.path, "zarr.json"))


def _zarr_array(group, name, row, dtype, rows, chunk):
    shape = (rows or 0,) + tuple(row)
    if name in group:
        a = group[name]
        if tuple(a.shape[1:]) != tuple(row) or np.dtype(a.dtype) != np.dtype(dtype):
            raise ValueError(f"the zarr array {name!r} is not the one of the run being resumed; pass overwrite=True")
        return a
    return group.create_array(name, shape=shape, chunks=(chunk,) + tuple(row), dtype=dtype, fill_value=0)


def _sync_tree(path: str) -> None:
    """fsync a file, or every file under a folder and the folders themselves."""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return
    for folder, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        _sync_folder(folder)
