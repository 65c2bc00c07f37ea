"""Reading a dataset: a source opened as batches of arrays by input name, and the targets of each batch.

Sources: any array-like with ``shape`` and slicing (a numpy memmap, ``np.load(path, mmap_mode="r")``, a zarr
array, an h5py dataset), a dict of them by input name (:class:`ArraySource`, read by slices of rows), or an
iterable of batches: arrays, dicts by input name, or ``(batch, target)`` pairs (:class:`IterableSource`, read
once).  Targets (:class:`RowTargets`): one for every row, or one per row as an array-like read by slices.
A dask array is not read here (see :func:`is_dask_source`).
"""
from __future__ import annotations

import os

import numpy as np

#: key of a batch's own target, carried with an iterable's batches
BATCH_TARGET = "\0target"


def first_rows(batch: dict) -> int:
    """The number of rows of a batch of arrays by input name (its first array's first axis)."""
    return int(np.shape(next(iter(batch.values())))[0])


def is_array_like(v) -> bool:
    """``v`` is read by slices of rows: it has a ``dtype``, a ``shape`` of one axis or more, and ``[start:stop]``."""
    return hasattr(v, "shape") and hasattr(v, "__getitem__") and hasattr(v, "dtype") and len(v.shape) >= 1


def is_dask_source(v) -> bool:
    """``v`` is a dask collection, or a dict holding one: told by the module of its type, without importing dask."""
    if isinstance(v, dict):
        return any(is_dask_source(x) for x in v.values())
    return type(v).__module__.split(".")[0] == "dask"


def by_input_name(ex, inputs) -> dict:
    """A batch (or a source) as a dict by input name: a dict as given, one array for a model of one input."""
    if isinstance(inputs, dict):
        return dict(inputs)
    names = ex.model_inputs
    if len(names) != 1:
        raise ValueError(f"the model has {len(names)} inputs {names}; give the source as a dict by input name")
    return {names[0]: inputs}


def open_source(ex, source):
    """``source`` as an :class:`ArraySource` (checked against ``ex``'s inputs before anything is written) or an
    :class:`IterableSource`; a path or anything else is refused."""
    if isinstance(source, dict) and all(is_array_like(v) for v in source.values()):
        arrays = by_input_name(ex, source)
    elif is_array_like(source):
        arrays = by_input_name(ex, source)
    elif isinstance(source, (str, bytes, os.PathLike)):
        raise ValueError(f"source {source!r} is a path; open it first, e.g. np.load(path, mmap_mode='r')")
    elif hasattr(source, "__iter__"):
        return IterableSource(ex, source)
    else:
        raise ValueError(f"source must be an array-like with shape and slicing (numpy, memmap, zarr, h5py), a dict "
                         f"of them by input name, an iterable of batches or a dask array; got "
                         f"{type(source).__name__}")
    reader = ArraySource(arrays)
    ex.check_inputs(reader.first_batch())   # names, dtypes and row shapes, before anything is written
    return reader


class ArraySource:
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
        """Shape and dtype per input, as the manifest records the source."""
        return {k: {"shape": list(map(int, v.shape)), "dtype": str(np.dtype(v.dtype))} for k, v in self.arrays.items()}

    def batches(self, size: int, skip=()):
        """``(index, first row, batch)`` of every batch of ``size`` rows; those in ``skip`` are not read."""
        for index, start in enumerate(range(0, self.rows, size)):
            stop = min(self.rows, start + size)
            if index in skip:
                yield index, start, {k: SkippedRows(stop - start) for k in self.arrays}
            else:
                yield index, start, {k: np.asarray(v[start:stop]) for k, v in self.arrays.items()}


class SkippedRows:
    """Stands for a batch of ``n`` rows that is not read (already on disk)."""

    def __init__(self, n: int):
        self.shape = (n,)


class IterableSource:
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
        return by_input_name(self.ex, inputs), target

    def first_batch(self) -> dict:
        return self._split(self._first)[0]

    def first_target(self):
        return self._split(self._first)[1]

    def describe(self) -> dict:
        """Row shape and dtype per input, as the manifest records the source."""
        first = self.first_batch()
        return {k: {"row": list(np.shape(v)[1:]), "dtype": str(np.asarray(v).dtype)} for k, v in first.items()}

    def batches(self, size, skip=()):
        """``(index, first row, batch)`` of every batch the iterable yields (each read: the iterable cannot
        skip); a batch's own target rides in it under :data:`BATCH_TARGET`."""
        start = 0
        for index, item in enumerate(_chain(self._first, self._it)):
            inputs, target = self._split(item)
            inputs = {k: np.asarray(v) for k, v in inputs.items()}
            if target is not None:
                inputs[BATCH_TARGET] = target
            yield index, start, inputs
            start += first_rows(inputs)


def _chain(first, rest):
    yield first
    yield from rest


class RowTargets:
    """The call's targets, sliced per batch: one for every row, or one per row (array-like, read by slices)."""

    def __init__(self, target, weights, rows: int | None):
        self.target, self.weights = target, weights
        self.per_row = None
        if weights is not None:
            self.per_row = weights
            what = "target_weights"
        elif target is not None and not isinstance(target, (int, np.integer, tuple)):
            self.per_row = target if is_array_like(target) else np.asarray(target)
            what = "target"
        if self.per_row is not None:
            if rows is None:
                raise ValueError(f"an iterable source takes its per-row targets with its batches ((inputs, target) "
                                 f"pairs); {what} per row needs an array-like source")
            if int(np.shape(self.per_row)[0]) != rows:
                raise ValueError(f"{what} has {np.shape(self.per_row)[0]} rows but the source has {rows}")

    def batch(self, start: int, stop: int, batch: dict) -> dict:
        """The target arguments of rows ``[start, stop)``; a batch carrying its own target gives it up here."""
        if BATCH_TARGET in batch:
            return {"target": per_row_list(batch.pop(BATCH_TARGET))}
        if self.weights is not None:
            return {"target_weights": np.asarray(self.weights[start:stop])}
        if self.per_row is not None:
            return {"target": np.asarray(self.per_row[start:stop]).tolist()}
        return {"target": self.target}

    def first_row(self, reader) -> dict:
        """The target arguments of the source's first row."""
        if isinstance(reader, IterableSource) and reader.targets_given:
            if self.target is not None or self.weights is not None:
                raise ValueError("the source yields its targets with its batches; do not give target as well")
            given = per_row_list(reader.first_target())
            return {"target": given[:1] if isinstance(given, list) else given}
        return self.batch(0, 1, {})


def per_row_list(target):
    """A batch's target: one per row as a list (Captum's form), else as given (an int, a tuple, None)."""
    if target is None or isinstance(target, (int, np.integer, tuple)):
        return target
    return np.asarray(target).tolist()
