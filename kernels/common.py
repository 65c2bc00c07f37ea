"""What the kernel wrappers share: argument checks, bit views, spreading group values to elements.

Layout used by every kernel: one attributed input of an ``n``-row block is a
C-contiguous ``(n, D)`` array (the row flattened); its baselines are ``(Nb, D)``
and its group labels ``(Nm, D)`` with ``Nb`` and ``Nm`` either 1 (shared by all
rows) or ``n`` (one per row).  A batch holds ``U`` perturbations of the block,
perturbation-major: row ``u * n + j`` is perturbation ``u`` of input row ``j``.
"""
from __future__ import annotations

import types
from contextlib import contextmanager

import numba
import numpy as np
from numba import njit, prange

_NATIVE = (np.dtype(np.float32), np.dtype(np.float64))
#: elements one Numba thread should get at least: below that, waking a thread costs more than it saves
#: (and on a busy machine a descheduled worker stalls the whole parallel loop for a scheduler tick)
GRAIN = 1 << 20
_BITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
#: elements of work below which a kernel runs serially: a serial fill moves about 9 GB/s, so this is 2 ms of
#: work, and on a busy machine a parallel loop that waits for a descheduled worker takes two scheduler ticks
#: (8 ms measured on 2 cores for a 2.3M-element fill that takes 0.26 ms serially)
PARALLEL_MIN = 1 << 24


@contextmanager
def threads_for(work: int):
    """Run the Numba kernels inside with no more threads than ``work`` elements justify."""
    have = numba.get_num_threads()
    want = int(max(1, min(have, work // GRAIN)))
    if want == have:
        yield
        return
    numba.set_num_threads(want)
    try:
        yield
    finally:
        numba.set_num_threads(have)


class ParallelKernel:
    """A ``prange`` kernel compiled twice: in parallel, and serially for work one thread should do.

    ``kernel.run(work, *args)`` takes the serial compilation below :data:`PARALLEL_MIN` elements of
    ``work`` (the chunks of a small model): no thread pool is woken and Numba's thread count is not
    touched, which costs more than a small chunk's fill.  Larger work runs in parallel under
    :func:`threads_for`.
    Both compilations are cached on disk (the serial one under its own name).
    """

    def __init__(self, fn):
        self.parallel = njit(parallel=True, cache=True)(fn)
        twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__,
                                  fn.__closure__)
        twin.__qualname__ = fn.__qualname__ + "_serial"
        twin.__doc__ = fn.__doc__
        self.serial = njit(cache=True)(twin)
        self.__doc__ = fn.__doc__

    def run(self, work: int, *args):
        if work < PARALLEL_MIN:
            return self.serial(*args)
        with threads_for(work):
            return self.parallel(*args)


def rows2d(a, name: str, cols: int | None = None) -> np.ndarray:
    """``a`` as a C-contiguous 2-D array (rows, D); ``cols`` checks D."""
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, features), got shape {a.shape}")
    if cols is not None and a.shape[1] != cols:
        raise ValueError(f"{name} must have {cols} columns (the row size of x), got shape {a.shape}")
    return np.ascontiguousarray(a)


def check_rows_like(a: np.ndarray, name: str, n: int) -> None:
    if a.shape[0] not in (1, n):
        raise ValueError(f"{name} must have 1 row (shared) or {n} rows (one per input row), got {a.shape[0]}")


def check_input_and_base(x, base) -> tuple[np.ndarray, np.ndarray]:
    """``x`` as ``(n, D)`` rows of any fixed-size dtype and ``base`` as ``(1 or n, D)`` rows of the same dtype."""
    x = check_values(rows2d(x, "x"), "x")
    n, d = x.shape
    base = rows2d(base, "base", d)
    if base.dtype != x.dtype:
        raise ValueError(f"base must have the dtype of x ({x.dtype}), got {base.dtype}")
    check_rows_like(base, "base", n)
    return x, base


class Labels:
    """Group labels ``(1 or n, D)`` checked once: integer, in ``[0, n_groups)``.

    The fill and fold wrappers check raw label arrays on every call (a pass over
    them); a ``Labels`` made once per explanation skips that on every chunk.
    """

    def __init__(self, labels, n_groups: int):
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"labels must be 2-D (rows, features), got shape {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() >= n_groups):
            raise ValueError(f"labels must be group indices in [0, {n_groups}), got values in "
                             f"[{labels.min()}, {labels.max()}]")
        self.array = np.ascontiguousarray(labels, dtype=np.int32 if n_groups < 2**31 else np.int64)
        self.n_groups = int(n_groups)

    def rows(self, start: int, stop: int) -> "Labels":
        """The labels of input rows ``[start, stop)`` (shared labels are shared by every block)."""
        if self.array.shape[0] == 1:
            return self
        out = Labels.__new__(Labels)
        out.array, out.n_groups = self.array[start:stop], self.n_groups
        return out


def check_labels(labels, n: int, d: int, n_groups: int) -> np.ndarray:
    """The label array of ``labels`` (a :class:`Labels` or an integer array, checked here)."""
    if not isinstance(labels, Labels):
        labels = Labels(labels, n_groups)
    elif labels.n_groups > n_groups:
        raise ValueError(f"labels index {labels.n_groups} groups, more than the {n_groups} expected")
    array = labels.array
    if array.shape[1] != d:
        raise ValueError(f"labels must have {d} columns (the row size of x), got shape {array.shape}")
    check_rows_like(array, "labels", n)
    return array


def check_values(a, name: str) -> np.ndarray:
    """``a`` if its elements are numbers or booleans of 1, 2, 4 or 8 bytes (what :func:`bits` can view)."""
    a = np.asarray(a)
    numeric = a.dtype.kind in "fiub" or a.dtype.name == "bfloat16"
    if not numeric or a.dtype.itemsize not in _BITS:
        raise ValueError(f"{name} must be an array of floats, integers or booleans (1, 2, 4 or 8 bytes each), "
                         f"got dtype {a.dtype}")
    return a


def batch_out(out, rows: int, d: int, dtype, name: str = "out") -> np.ndarray:
    """The batch to fill: allocated when ``out`` is None, else checked (C-contiguous, right shape and dtype)."""
    if out is None:
        return np.empty((rows, d), dtype=dtype)
    if not isinstance(out, np.ndarray) or out.shape != (rows, d) or out.dtype != dtype \
            or not out.flags.c_contiguous:
        got = (out.shape, out.dtype) if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(f"{name} must be a C-contiguous {np.dtype(dtype)} array of shape {(rows, d)}, got {got}")
    return out


def bits(a: np.ndarray) -> np.ndarray:
    """A view Numba can copy: float32/float64 as they are, every other dtype (float16, integers, bool) as the
    unsigned integers of its size.  The fill kernels only move elements, so one compiled specialisation per
    element size serves every dtype of that size."""
    if a.dtype in _NATIVE:
        return a
    return a.view(_BITS[a.dtype.itemsize])


def unsigned_bits(a: np.ndarray) -> np.ndarray:
    """``a`` viewed as the unsigned integers of its element size, floats included (what :func:`select_units`
    moves: a bitwise select copies every dtype exactly, NaN payloads and signed zeros too)."""
    return a.view(_BITS[a.dtype.itemsize])


#: per element size: the unsigned type of the masks, its all-ones and its zero value
_MASK_VALUES = {size: (np.dtype(u), u(np.iinfo(u).max), u(0)) for size, u in _BITS.items()}


#: Fewer input rows than this fill element by element: the ``(units, D)`` masks of :func:`select_units` are then a
#: large share of the batch's own size and cost more than they save (3x224x224 inputs, 64 perturbations: masks
#: 2.2-2.5x slower at 1 row, even at 3-6 rows, 1.8-3.2x faster from 16 rows).
SELECT_MIN_ROWS = 4


def selects_units(labels: np.ndarray, n: int) -> bool:
    """Whether a batch of ``n`` input rows is built by :func:`select_units`: labels shared by the rows, and
    enough rows to pay for one mask per perturbation."""
    return labels.shape[0] == 1 and n >= SELECT_MIN_ROWS


def unit_masks(units: int, d: int, dtype) -> tuple[np.ndarray, object, object]:
    """An uninitialised ``(units, d)`` mask for :func:`select_units` over elements of ``dtype``, with the
    all-ones and zero values of its unsigned type (from the input, from the baseline)."""
    kind, ones, zero = _MASK_VALUES[np.dtype(dtype).itemsize]
    return np.empty((units, d), dtype=kind), ones, zero


@ParallelKernel
def _select_units(x, base, masks, out):
    n, d = x.shape
    b_step = 0 if base.shape[0] == 1 else 1
    for r in prange(masks.shape[0] * n):
        u = r // n
        j = r - u * n
        m = masks[u]
        xr = x[j]
        br = base[j * b_step]
        orow = out[r]
        for e in range(d):
            orow[e] = (xr[e] & m[e]) | (br[e] & ~m[e])


def select_units(x: np.ndarray, base: np.ndarray, masks: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Row ``u * n + j`` of ``out`` is row ``j`` of ``x`` where ``masks[u]`` is all ones and the baseline
    where it is zero: one mask row per perturbation, shared by every input row (labels shared by the rows).

    The branch-free bitwise select vectorises, where a per-element choice between two floats does not:
    building a batch costs about a plain copy.  Arguments are checked by the public wrappers: ``x`` (n, D),
    ``base`` (1 or n, D) and ``out`` (U * n, D) of one dtype, ``masks`` (U, D) from :func:`unit_masks`.
    """
    _select_units.run(out.size, unsigned_bits(x), unsigned_bits(base), masks, unsigned_bits(out))
    return out


def outputs_1d(f, rows: int, name: str = "f") -> np.ndarray:
    """One output per batch row, as float32/float64 (float16 outputs are widened)."""
    f = np.asarray(f)
    if f.ndim != 1 or f.shape[0] != rows:
        raise ValueError(f"{name} must hold one value per batch row: shape ({rows},), got {f.shape}")
    if f.dtype not in _NATIVE:
        f = f.astype(np.float32)
    return np.ascontiguousarray(f)


def accumulator(a, shape: tuple, name: str) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.shape != tuple(shape) or a.dtype != np.float64 \
            or not a.flags.c_contiguous:
        got = (a.shape, a.dtype) if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"{name} must be a C-contiguous float64 array of shape {tuple(shape)}, got {got}")
    return a


# ---------------------------------------------------------------------- spreading
@ParallelKernel
def _spread(values, labels, scale, out):
    n, d = out.shape
    m_step = 0 if labels.shape[0] == 1 else 1
    for j in prange(n):
        m = j * m_step
        for e in range(d):
            out[j, e] = values[j, labels[m, e]] * scale


def spread_groups(values, labels, scale: float = 1.0, out=None, dtype=np.float64) -> np.ndarray:
    """``out[j, e] = scale * values[j, labels[j or 0, e]]``: a value per group, given to each of its elements."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"values must be 2-D (rows, groups), got shape {values.shape}")
    values = np.ascontiguousarray(values, dtype=np.float64)
    n, g = values.shape
    labels = check_labels(labels, n, _cols(labels), g)
    out = batch_out(out, n, labels.shape[1], np.dtype(dtype))
    if out.dtype not in _NATIVE:
        raise ValueError(f"out must be float32 or float64, got {out.dtype}")
    _spread.run(out.size, values, labels, float(scale), out)
    return out


def _cols(labels) -> int:
    array = labels.array if isinstance(labels, Labels) else np.asarray(labels)
    if array.ndim != 2:
        raise ValueError(f"labels must be 2-D (rows, features), got shape {array.shape}")
    return array.shape[1]
