"""Feature ablation: one group replaced by its baseline per perturbation.

Row ``u * n + j`` of the batch is input row ``j`` with every element of group
``groups[u]`` set to the baseline; the fold records ``f(x_j) - f(row)`` as the
group's attribution for row ``j`` (Captum's ``FeatureAblation``: each element
belongs to exactly one group, so nothing overlaps and nothing is divided).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .common import (ParallelKernel, accumulator, batch_out, bits, check_input_and_base, check_labels,
                      outputs_1d, select_units, selects_units, unit_masks)


@ParallelKernel
def _fill_ablation(x, base, labels, groups, out):
    n, d = x.shape
    rows = groups.shape[0] * n
    b_step = 0 if base.shape[0] == 1 else 1
    m_step = 0 if labels.shape[0] == 1 else 1
    for r in prange(rows):
        u = r // n
        j = r - u * n
        g = groups[u]
        b = j * b_step
        m = j * m_step
        for e in range(d):
            out[r, e] = base[b, e] if labels[m, e] == g else x[j, e]


@njit(cache=True)
def _ablation_masks(labels, groups, ones, zero, masks):
    """Labels shared by all rows: the mask of each ablation (zero, the baseline, on the ablated group)."""
    d = labels.shape[1]
    for u in range(groups.shape[0]):
        g = groups[u]
        for e in range(d):
            masks[u, e] = zero if labels[0, e] == g else ones


@ParallelKernel
def _fold_ablation(f0, f, groups, diffs):
    n = f0.shape[0]
    for j in prange(n):
        for u in range(groups.shape[0]):
            g = groups[u]
            if g >= 0:
                diffs[j, g] = np.float64(f0[j]) - f[u * n + j]


def fill_ablation(x, base, labels, groups, n_groups: int, out=None) -> np.ndarray:
    """The batch of ``len(groups)`` ablations of the rows of ``x``: shape ``(len(groups) * n, D)``.

    ``x`` (n, D); ``base`` (1 or n, D) same dtype; ``labels`` (1 or n, D) group
    indices in ``[0, n_groups)`` (an array or a :class:`Labels`); ``groups`` (U,)
    the group each perturbation ablates (a group absent from ``labels`` leaves
    the rows unchanged, e.g. -1).
    """
    x, base = check_input_and_base(x, base)
    n, d = x.shape
    labels = check_labels(labels, n, d, n_groups)
    groups = _groups(groups)
    out = batch_out(out, groups.shape[0] * n, d, x.dtype)
    if selects_units(labels, x.shape[0]):
        masks, ones, zero = unit_masks(groups.shape[0], d, x.dtype)
        _ablation_masks(labels, groups, ones, zero, masks)
        return select_units(x, base, masks, out)
    _fill_ablation.run(out.size, bits(x), bits(base), labels, groups, bits(out))
    return out


@ParallelKernel
def _fill_permuted(x, r0, n, labels, groups, perms, out):
    d = x.shape[1]
    m_step = 0 if labels.shape[0] == 1 else 1
    for r in prange(groups.shape[0] * n):
        u = r // n
        j = r - u * n
        g = groups[u]
        m = j * m_step
        src = perms[g, r0 + j]
        for e in range(d):
            out[r, e] = x[src, e] if labels[m, e] == g else x[r0 + j, e]


def fill_permuted(x, r0: int, r1: int, labels, groups, perms, n_groups: int, out=None) -> np.ndarray:
    """The batch of ``len(groups)`` permutations of rows ``[r0, r1)`` of ``x``: shape ``(len(groups) * n, D)``.

    Row ``u * n + j`` is row ``r0 + j`` of ``x`` (N, D) with the elements of group ``groups[u]`` taken from row
    ``perms[groups[u], r0 + j]`` (``perms`` (G, N): one permutation of all N rows per group, Captum's
    ``FeaturePermutation``); ``labels`` (1 or n, D) are the block's group indices.
    """
    x = np.ascontiguousarray(x)
    n, d = r1 - r0, x.shape[1]
    labels = check_labels(labels, n, d, n_groups)
    groups = _groups(groups)
    perms = np.ascontiguousarray(perms, dtype=np.int64)
    if perms.ndim != 2 or perms.shape[1] != x.shape[0] or perms.shape[0] < n_groups:
        raise ValueError(f"perms must be ({n_groups}, {x.shape[0]}): one permutation of the rows per group, "
                         f"got {perms.shape}")
    out = batch_out(out, groups.shape[0] * n, d, x.dtype)
    _fill_permuted.run(out.size, bits(x), r0, n, labels, groups, perms, bits(out))
    return out


def fold_ablation(f0, f, groups, diffs) -> np.ndarray:
    """``diffs[j, groups[u]] = f0[j] - f[u * n + j]`` (groups < 0 are skipped); ``diffs`` float64 (n, G), in place."""
    f0 = np.asarray(f0)
    if f0.ndim != 1:
        raise ValueError(f"f0 must be 1-D (one value per input row), got shape {f0.shape}")
    f0 = outputs_1d(f0, f0.shape[0], "f0")
    n = f0.shape[0]
    groups = _groups(groups)
    f = outputs_1d(f, groups.shape[0] * n)
    if not isinstance(diffs, np.ndarray) or diffs.ndim != 2:
        raise ValueError("diffs must be a float64 array of shape (n, groups)")
    accumulator(diffs, (n, diffs.shape[1]), "diffs")
    if groups.size and groups.max() >= diffs.shape[1]:
        raise ValueError(f"groups must be < {diffs.shape[1]} (the columns of diffs), got {groups.max()}")
    _fold_ablation.run(f.size, f0, f, groups, diffs)
    return diffs


def _groups(groups) -> np.ndarray:
    groups = np.asarray(groups)
    if groups.ndim != 1 or groups.dtype.kind not in "iu":
        raise ValueError(f"groups must be a 1-D integer array, got {groups.dtype} of shape {groups.shape}")
    return np.ascontiguousarray(groups, dtype=np.int64)
