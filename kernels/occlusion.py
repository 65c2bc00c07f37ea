"""Occlusion: a sliding hyperrectangle replaced by the baseline, per perturbation.

Windows follow Captum's ``Occlusion``: along each dimension the window starts
at ``0, s, 2s, ...`` for ``ceil((dim - w) / s) + 1`` positions, so when
``(dim - w)`` is not a multiple of ``s`` the last window runs past the border
and is cut there.  Windows are numbered with the first dimension varying
fastest (Captum's order).  Each element's attribution is the sum of
``f(x) - f(occluded)`` over the windows that cover it, divided by their number.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .common import (ParallelKernel, accumulator, batch_out, bits, check_rows_like, check_values, outputs_1d,
                      rows2d)


def window_starts(row_shape, window, strides, name: str = "input") -> np.ndarray:
    """Start corner of every window, ``(P, rank)`` int64, in Captum's order (first dimension fastest).

    Checks Captum's conditions: one window extent and one stride per dimension,
    windows no larger than the input, strides positive and (where the window is
    smaller than the input) no larger than the window, so every element is covered.
    """
    dims = tuple(int(v) for v in row_shape)
    window = _ints(window, "sliding_window_shapes", name, len(dims))
    strides = _ints(strides, "strides", name, len(dims))
    if any(w < 1 for w in window):
        raise ValueError(f"sliding_window_shapes for {name} must be positive, got {window}")
    if any(w > s for w, s in zip(window, dims)):
        raise ValueError(f"sliding_window_shapes {window} for {name} exceed the shape of one row {dims}")
    if any(s < 1 for s in strides):
        raise ValueError(f"strides for {name} must be positive ints, got {strides}")
    bad = [i for i, (w, s, dm) in enumerate(zip(window, strides, dims)) if dm > w and s > w]
    if bad:
        raise ValueError(f"strides {strides} for {name} are larger than the window {window} along dimension(s) "
                         f"{[i + 1 for i in bad]}, so some elements would never be occluded; use strides <= the "
                         f"window there")
    shifts = [-(-(dm - w) // s) + 1 for w, s, dm in zip(window, strides, dims)]
    p = int(np.prod(shifts, dtype=np.int64))
    rest = np.arange(p, dtype=np.int64)
    starts = np.empty((p, len(dims)), dtype=np.int64)
    for i, (count, s) in enumerate(zip(shifts, strides)):
        starts[:, i] = (rest % count) * s
        rest //= count
    return starts


@njit(cache=True, inline="always")
def _geometry(dims, window, starts, u):
    """(number of contiguous runs, run length) of window ``u``, cut at the borders."""
    k = dims.shape[0]
    if k == 0:
        return 1, 1
    outer = 1
    for dd in range(k - 1):
        outer *= min(starts[u, dd] + window[dd], dims[dd]) - starts[u, dd]
    inner = min(starts[u, k - 1] + window[k - 1], dims[k - 1]) - starts[u, k - 1]
    return outer, inner


@njit(cache=True, inline="always")
def _run_offset(dims, estr, window, starts, u, t):
    """Flat offset of the first element of contiguous run ``t`` of window ``u``."""
    k = dims.shape[0]
    if k == 0:
        return 0
    off = starts[u, k - 1]
    for dd in range(k - 2, -1, -1):
        ext = min(starts[u, dd] + window[dd], dims[dd]) - starts[u, dd]
        idx = t % ext
        t //= ext
        off += (starts[u, dd] + idx) * estr[dd]
    return off


@ParallelKernel
def _fill_occlusion(x, base, dims, estr, window, starts, active, out):
    n, d = x.shape
    b_step = 0 if base.shape[0] == 1 else 1
    for r in prange(starts.shape[0] * n):
        u = r // n
        j = r - u * n
        for e in range(d):
            out[r, e] = x[j, e]
        if active[u]:
            b = j * b_step
            outer, inner = _geometry(dims, window, starts, u)
            for t in range(outer):
                off = _run_offset(dims, estr, window, starts, u, t)
                for e in range(off, off + inner):
                    out[r, e] = base[b, e]


@ParallelKernel
def _fold_occlusion(f0, f, dims, estr, window, starts, active, sums):
    n = f0.shape[0]
    for j in prange(n):
        for u in range(starts.shape[0]):
            if not active[u]:
                continue
            diff = np.float64(f0[j]) - f[u * n + j]
            outer, inner = _geometry(dims, window, starts, u)
            for t in range(outer):
                off = _run_offset(dims, estr, window, starts, u, t)
                for e in range(off, off + inner):
                    sums[j, e] += diff


@njit(cache=True)
def _counts(dims, estr, window, starts, active, counts):
    for u in range(starts.shape[0]):
        if not active[u]:
            continue
        outer, inner = _geometry(dims, window, starts, u)
        for t in range(outer):
            off = _run_offset(dims, estr, window, starts, u, t)
            for e in range(off, off + inner):
                counts[e] += 1.0


def fill_occlusion(x, base, row_shape, window, starts, active=None, out=None) -> np.ndarray:
    """The batch of occlusions ``starts`` (U, rank) of the rows of ``x`` (n, D): shape ``(U * n, D)``.

    ``base`` (1 or n, D) holds the occluding values; ``active`` (U,) bool marks
    the windows that apply to this input (the others copy the rows unchanged:
    with several inputs, a window occludes one input at a time).
    """
    x, base, geo, active = _check(x, base, row_shape, window, starts, active)
    n, d = x.shape
    out = batch_out(out, geo[3].shape[0] * n, d, x.dtype)
    _fill_occlusion.run(out.size, bits(x), bits(base), *geo, active, bits(out))
    return out


def fold_occlusion(f0, f, row_shape, window, starts, sums, active=None) -> np.ndarray:
    """``sums[j, e] += f0[j] - f[u * n + j]`` for every window ``u`` covering element ``e``; in place."""
    f0 = np.asarray(f0)
    if f0.ndim != 1:
        raise ValueError(f"f0 must be 1-D (one value per input row), got shape {f0.shape}")
    f0 = outputs_1d(f0, f0.shape[0], "f0")
    n = f0.shape[0]
    dims, estr, window, starts, active = _geometry_args(row_shape, window, starts, active)
    f = outputs_1d(f, starts.shape[0] * n)
    accumulator(sums, (n, _size(dims)), "sums")
    _fold_occlusion.run(f.size * int(np.prod(window)), f0, f, dims, estr, window, starts, active, sums)
    return sums


def occlusion_counts(row_shape, window, starts, active=None) -> np.ndarray:
    """How many of the windows ``starts`` cover each element of a row: ``(D,)`` float64."""
    dims, estr, window, starts, active = _geometry_args(row_shape, window, starts, active)
    counts = np.zeros(_size(dims), dtype=np.float64)
    _counts(dims, estr, window, starts, active, counts)
    return counts


# ---------------------------------------------------------------------- checks
def _ints(value, what, name, rank) -> tuple:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value),) * rank
    try:
        out = tuple(int(v) for v in value)
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{what} for {name} must be an int or a tuple of {rank} ints, got {value!r}")
    if len(out) != rank:
        raise ValueError(f"{what} for {name} needs {rank} value(s), one per dimension of a row, got {out}")
    return out


def _size(dims) -> int:
    return int(np.prod(dims, dtype=np.int64))


def _geometry_args(row_shape, window, starts, active):
    dims = np.asarray(tuple(int(v) for v in row_shape), dtype=np.int64).reshape(-1)
    k = dims.shape[0]
    window = np.asarray(window, dtype=np.int64).reshape(-1)
    if window.shape[0] != k:
        raise ValueError(f"window needs {k} extent(s), got {window.tolist()}")
    starts = np.asarray(starts)
    if starts.ndim != 2 or starts.shape[1] != k or starts.dtype.kind not in "iu":
        raise ValueError(f"starts must be an integer array of shape (windows, {k}), got {starts.dtype} "
                         f"{starts.shape}")
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    if starts.size and (starts.min() < 0 or (starts >= dims).any()):
        raise ValueError(f"window starts must lie inside the row shape {tuple(dims)}")
    if (window < 1).any():
        raise ValueError(f"window extents must be positive, got {window.tolist()}")
    estr = np.ones(k, dtype=np.int64)
    for i in range(k - 2, -1, -1):
        estr[i] = estr[i + 1] * dims[i + 1]
    if active is None:
        active = np.ones(starts.shape[0], dtype=np.bool_)
    else:
        active = np.ascontiguousarray(active, dtype=np.bool_)
        if active.shape != (starts.shape[0],):
            raise ValueError(f"active must have one flag per window ({starts.shape[0]},), got {active.shape}")
    return dims, estr, window, starts, active


def _check(x, base, row_shape, window, starts, active):
    x = check_values(rows2d(x, "x"), "x")
    n, d = x.shape
    dims, estr, window, starts, active = _geometry_args(row_shape, window, starts, active)
    if _size(dims) != d:
        raise ValueError(f"x has rows of {d} elements but row_shape {tuple(dims)} holds {_size(dims)}")
    base = rows2d(base, "base", d)
    if base.dtype != x.dtype:
        raise ValueError(f"base must have the dtype of x ({x.dtype}), got {base.dtype}")
    check_rows_like(base, "base", n)
    return x, base, (dims, estr, window, starts), active
