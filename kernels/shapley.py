"""Shapley values: coalitions of groups taken from the input, the rest from the baseline.

Sampling (Captum's ``ShapleyValueSampling``): each permutation ``s`` of the
``G`` groups gives ``G`` coalitions, its first ``k + 1`` groups for step ``k``;
the marginal contribution of group ``perms[s, k]`` is ``f(step k) - f(step k-1)``
(step -1 is the baseline).  A perturbation is a pair ``(perm_ids[u], steps[u])``.

Exact: a perturbation is a coalition code (bit ``g`` set when group ``g`` comes
from the input) and each group's value is the weighted sum
``sum_S |S|! (G - |S| - 1)! / G! * (f(S + g) - f(S))`` over all coalitions.
"""
from __future__ import annotations

from math import comb

import numpy as np
from numba import njit, prange

from .common import (ParallelKernel, accumulator, batch_out, bits, check_input_and_base, check_labels,
                      outputs_1d, select_units, selects_units, unit_masks)

MAX_EXACT_GROUPS = 16


# ---------------------------------------------------------------------- permutations
def sample_permutations(n_groups: int, n_samples: int, rng: np.random.Generator,
                        antithetic: bool = False) -> np.ndarray:
    """``(n_samples, n_groups)`` int32 permutations; antithetic: each odd row reverses the row before it."""
    if n_groups < 1 or n_samples < 1:
        raise ValueError(f"need at least one group and one sample, got {n_groups} groups, {n_samples} samples")
    drawn = -(-n_samples // 2) if antithetic else n_samples
    perms = rng.permuted(np.broadcast_to(np.arange(n_groups, dtype=np.int32), (drawn, n_groups)), axis=1)
    if antithetic:
        pairs = np.empty((2 * drawn, n_groups), dtype=np.int32)
        pairs[0::2] = perms
        pairs[1::2] = perms[:, ::-1]
        perms = pairs[:n_samples]
    return np.ascontiguousarray(perms, dtype=np.int32)


def permutation_ranks(perms) -> np.ndarray:
    """``ranks[s, g]``: the position of group ``g`` in permutation ``s``."""
    perms = np.asarray(perms)
    ranks = np.empty(perms.shape, dtype=np.int32)
    np.put_along_axis(ranks, perms.astype(np.int64), np.arange(perms.shape[1], dtype=np.int32)[None, :], axis=1)
    return ranks


@ParallelKernel
def _fill_permutation(x, base, labels, ranks, perm_ids, steps, out):
    n, d = x.shape
    b_step = 0 if base.shape[0] == 1 else 1
    m_step = 0 if labels.shape[0] == 1 else 1
    for r in prange(perm_ids.shape[0] * n):
        u = r // n
        j = r - u * n
        b = j * b_step
        m = j * m_step
        s = perm_ids[u]
        k = steps[u]
        for e in range(d):
            out[r, e] = x[j, e] if ranks[s, labels[m, e]] <= k else base[b, e]


@njit(cache=True)
def _permutation_masks(labels, ranks, perm_ids, steps, ones, zero, masks):
    """Labels shared by all rows: the mask of each coalition (all ones where the element's group is in it)."""
    d = labels.shape[1]
    for u in range(perm_ids.shape[0]):
        s = perm_ids[u]
        k = steps[u]
        for e in range(d):
            masks[u, e] = ones if ranks[s, labels[0, e]] <= k else zero


@ParallelKernel
def _fold_permutation(f, f_base, f_prev, perms, perm_ids, steps, f_full, close, phi):
    n = f_base.shape[0]
    last = perms.shape[1] - 1
    for j in prange(n):
        prev = f_prev[j]
        for u in range(perm_ids.shape[0]):
            k = steps[u]
            if k == 0:
                prev = np.float64(f_base[j])
            val = np.float64(f[u * n + j])
            phi[j, perms[perm_ids[u], k]] += val - prev
            prev = val
            if close and k == last - 1:   # the full coalition, evaluated once per row
                phi[j, perms[perm_ids[u], last]] += np.float64(f_full[j]) - val
        f_prev[j] = prev


def fill_permutation(x, base, labels, ranks, perm_ids, steps, out=None) -> np.ndarray:
    """The batch of coalitions ``(perm_ids[u], steps[u])`` of the rows of ``x`` (n, D): ``(U * n, D)``.

    Element ``e`` of row ``j`` comes from ``x`` when its group's rank in the
    permutation is ``<= steps[u]``, else from ``base`` (1 or n, D).
    """
    x, base, labels = _check_rows(x, base, labels)
    ranks = _ranks(ranks)
    labels = check_labels(labels, x.shape[0], x.shape[1], ranks.shape[1])
    perm_ids, steps = _units(perm_ids, steps, ranks.shape)
    out = batch_out(out, perm_ids.shape[0] * x.shape[0], x.shape[1], x.dtype)
    return _fill_checked(x, base, labels, ranks, perm_ids, steps, out)


def _fill_checked(x, base, labels, ranks, perm_ids, steps, out):
    if selects_units(labels, x.shape[0]):
        masks, ones, zero = unit_masks(perm_ids.shape[0], x.shape[1], x.dtype)
        _permutation_masks(labels, ranks, perm_ids, steps, ones, zero, masks)
        return select_units(x, base, masks, out)
    _fill_permutation.run(out.size, bits(x), bits(base), labels, ranks, perm_ids, steps, bits(out))
    return out


def fold_permutation(f, f_base, f_prev, perms, perm_ids, steps, phi, f_full=None) -> np.ndarray:
    """Add each coalition's marginal contribution to ``phi[j, perms[s, k]]``; in place.

    ``f`` (U * n,) are the outputs of the batch; ``f_base`` (n,) the outputs of
    the baselines; ``f_prev`` (n,) float64 carries the output of the unit before
    the first one across chunks (updated to the last one's).

    ``f_full`` (n,): the outputs of the inputs themselves.  Every permutation ends
    with the full coalition, the same rows for every permutation, so a batch may
    leave it out (steps up to ``G - 2`` only) and give its outputs here once: the
    last group of a permutation then gets ``f_full - f(step G - 2)`` when that
    step is folded.  (With one group there are no steps left: see
    :func:`close_single_group`.)
    """
    f_base = np.asarray(f_base)
    if f_base.ndim != 1:
        raise ValueError(f"f_base must be 1-D (one value per input row), got shape {f_base.shape}")
    f_base = outputs_1d(f_base, f_base.shape[0], "f_base")
    n = f_base.shape[0]
    perms = _ranks(perms, "perms")
    perm_ids, steps = _units(perm_ids, steps, perms.shape)
    f = outputs_1d(f, perm_ids.shape[0] * n)
    accumulator(f_prev, (n,), "f_prev")
    accumulator(phi, (n, perms.shape[1]), "phi")
    close = f_full is not None
    if close:
        f_full = outputs_1d(f_full, n, "f_full")
        if steps.size and steps.max() >= perms.shape[1] - 1:
            raise ValueError(f"with f_full the batch leaves out the full coalition: steps must be < "
                             f"{perms.shape[1] - 1} (groups - 1), got {steps.max()}")
    else:
        f_full = f_base
    _fold_permutation.run(f.size, f, f_base, f_prev, perms, perm_ids, steps, f_full, close, phi)
    return phi


class CheckedRows:
    """One block's rows, baselines and label array, checked by :meth:`PermutationUnits.rows`."""

    __slots__ = ("x", "base", "labels")

    def __init__(self, x, base, labels):
        self.x, self.base, self.labels = x, base, labels


class PermutationUnits:
    """The units of sampled permutations, checked once for every chunk of a call.

    Unit ``u`` is step ``steps[u]`` of permutation ``perm_ids[u]``, permutation-major.  With
    ``leave_out_full`` the last step of each permutation (the full coalition, the input itself) is not a
    unit: its outputs come once per row as ``f_full`` (:func:`fold_permutation`).  :meth:`fill` and
    :meth:`fold` do what :func:`fill_permutation` and :func:`fold_permutation` do for units ``[u0, u1)``,
    checking only what changes per chunk (the rows, the outputs), not the permutations again.
    """

    def __init__(self, perms, leave_out_full: bool = False):
        self.perms = _ranks(perms, "perms")
        self.ranks = permutation_ranks(self.perms)
        if (np.sort(self.perms, axis=1) != np.arange(self.perms.shape[1])).any():
            raise ValueError("perms must hold one permutation of 0..G-1 per row")
        samples, groups = self.perms.shape
        per = groups - 1 if leave_out_full else groups
        self.leave_out_full = bool(leave_out_full)
        self.units = samples * per
        self.perm_ids = np.repeat(np.arange(samples, dtype=np.int64), per)
        self.steps = np.tile(np.arange(per, dtype=np.int64), samples)

    def rows(self, x, base, labels) -> "CheckedRows":
        """``x`` (n, D), its baselines and labels (as :func:`fill_permutation` takes them), checked once
        for the chunks of one block of rows."""
        x, base, labels = _check_rows(x, base, labels)
        return CheckedRows(x, base, check_labels(labels, x.shape[0], x.shape[1], self.perms.shape[1]))

    def fill(self, rows: "CheckedRows", u0: int, u1: int, out=None) -> np.ndarray:
        """The batch of units ``[u0, u1)`` of a block of ``rows`` (:meth:`rows`), as :func:`fill_permutation`."""
        if not isinstance(rows, CheckedRows):
            raise ValueError("rows must come from PermutationUnits.rows(x, base, labels)")
        u0, u1 = self._range(u0, u1)
        x = rows.x
        out = batch_out(out, (u1 - u0) * x.shape[0], x.shape[1], x.dtype)
        return _fill_checked(x, rows.base, rows.labels, self.ranks, self.perm_ids[u0:u1], self.steps[u0:u1], out)

    def fold(self, f, f_base, f_prev, phi, u0: int, u1: int, f_full=None) -> np.ndarray:
        """Fold the outputs ``f`` of units ``[u0, u1)`` into ``phi``, as :func:`fold_permutation`;
        ``f_full`` is required when the full coalition is left out, refused otherwise."""
        if self.leave_out_full != (f_full is not None):
            raise ValueError("f_full (the outputs of the inputs) is needed exactly when the units leave out "
                             "the full coalition")
        u0, u1 = self._range(u0, u1)
        n = f_prev.shape[0] if isinstance(f_prev, np.ndarray) else -1
        f_base = outputs_1d(f_base, n, "f_base")
        accumulator(f_prev, (n,), "f_prev")
        accumulator(phi, (n, self.perms.shape[1]), "phi")
        f = outputs_1d(f, (u1 - u0) * n)
        f_full = f_base if f_full is None else outputs_1d(f_full, n, "f_full")
        _fold_permutation.run(f.size, f, f_base, f_prev, self.perms, self.perm_ids[u0:u1], self.steps[u0:u1],
                              f_full, self.leave_out_full, phi)
        return phi

    def _range(self, u0, u1) -> tuple[int, int]:
        u0, u1 = int(u0), int(u1)
        if not 0 <= u0 <= u1 <= self.units:
            raise ValueError(f"units [{u0}, {u1}) must lie in [0, {self.units})")
        return u0, u1


def close_single_group(f_full, f_base, n_samples: int, phi) -> np.ndarray:
    """One group: every permutation is that group alone, worth ``f_full - f_base``; ``phi`` (n, 1) += it
    ``n_samples`` times, in place (the batch has no steps to fold)."""
    f_base = np.asarray(f_base)
    if f_base.ndim != 1:
        raise ValueError(f"f_base must be 1-D (one value per input row), got shape {f_base.shape}")
    n = f_base.shape[0]
    f_full = outputs_1d(f_full, n, "f_full")
    accumulator(phi, (n, 1), "phi")
    phi[:, 0] += n_samples * (f_full.astype(np.float64) - outputs_1d(f_base, n, "f_base"))
    return phi


# ---------------------------------------------------------------------- all coalitions
def shapley_weights(n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """``(w_in, w_out)`` by coalition size ``s``: the weight of ``f(S)`` for a group in ``S`` (+) and not in it (-)."""
    g = int(n_groups)
    w_in = np.zeros(g + 1)
    w_out = np.zeros(g + 1)
    for s in range(g + 1):
        if s >= 1:
            w_in[s] = 1.0 / (g * comb(g - 1, s - 1))
        if s <= g - 1:
            w_out[s] = 1.0 / (g * comb(g - 1, s))
    return w_in, w_out


@ParallelKernel
def _fill_coalitions(x, base, labels, codes, out):
    n, d = x.shape
    b_step = 0 if base.shape[0] == 1 else 1
    m_step = 0 if labels.shape[0] == 1 else 1
    for r in prange(codes.shape[0] * n):
        u = r // n
        j = r - u * n
        b = j * b_step
        m = j * m_step
        c = codes[u]
        for e in range(d):
            out[r, e] = x[j, e] if (c >> labels[m, e]) & 1 else base[b, e]


@njit(cache=True)
def _coalition_masks(labels, codes, ones, zero, masks):
    """Labels shared by all rows: the mask of each coalition code (all ones where the element's bit is set)."""
    d = labels.shape[1]
    for u in range(codes.shape[0]):
        c = codes[u]
        for e in range(d):
            masks[u, e] = ones if (c >> labels[0, e]) & 1 else zero


@ParallelKernel
def _fold_coalitions(f, codes, sizes, w_in, w_out, phi):
    n, g = phi.shape
    for j in prange(n):
        for u in range(codes.shape[0]):
            val = np.float64(f[u * n + j])
            c = codes[u]
            s = sizes[u]
            plus = w_in[s] * val
            minus = w_out[s] * val
            for i in range(g):
                if (c >> i) & 1:
                    phi[j, i] += plus
                else:
                    phi[j, i] -= minus


def fill_coalitions(x, base, labels, codes, out=None) -> np.ndarray:
    """The batch of coalitions ``codes`` (U,) of the rows of ``x`` (n, D): ``(U * n, D)``.

    Element ``e`` comes from ``x`` when bit ``labels[e]`` of the code is set, else from ``base``.
    """
    x, base, labels = _check_rows(x, base, labels)
    labels = check_labels(labels, x.shape[0], x.shape[1], 63)
    codes = _codes(codes)
    out = batch_out(out, codes.shape[0] * x.shape[0], x.shape[1], x.dtype)
    if selects_units(labels, x.shape[0]):
        masks, ones, zero = unit_masks(codes.shape[0], x.shape[1], x.dtype)
        _coalition_masks(labels, codes, ones, zero, masks)
        return select_units(x, base, masks, out)
    _fill_coalitions.run(out.size, bits(x), bits(base), labels, codes, bits(out))
    return out


def fold_coalitions(f, codes, phi) -> np.ndarray:
    """Add the Shapley-weighted outputs of coalitions ``codes`` to ``phi`` (n, G) float64; in place."""
    if not isinstance(phi, np.ndarray) or phi.ndim != 2:
        raise ValueError("phi must be a float64 array of shape (n, groups)")
    n, g = phi.shape
    if not 1 <= g <= MAX_EXACT_GROUPS:
        raise ValueError(f"exact Shapley values take 1 to {MAX_EXACT_GROUPS} groups, got {g}")
    accumulator(phi, (n, g), "phi")
    codes = _codes(codes)
    if codes.size and codes.max() >= (1 << g):
        raise ValueError(f"coalition codes must be < 2**{g}, got {codes.max()}")
    f = outputs_1d(f, codes.shape[0] * n)
    sizes = np.bitwise_count(codes.astype(np.uint64)).astype(np.int64)
    w_in, w_out = shapley_weights(g)
    _fold_coalitions.run(f.size * g, f, codes, sizes, w_in, w_out, phi)
    return phi


# ---------------------------------------------------------------------- checks
def _check_rows(x, base, labels):
    x, base = check_input_and_base(x, base)
    return x, base, labels


def _ranks(a, name="ranks") -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2 or a.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a 2-D integer array (permutations, groups), got {a.dtype} {a.shape}")
    return np.ascontiguousarray(a, dtype=np.int32)


def _units(perm_ids, steps, shape):
    perm_ids = np.ascontiguousarray(perm_ids, dtype=np.int64)
    steps = np.ascontiguousarray(steps, dtype=np.int64)
    if perm_ids.ndim != 1 or perm_ids.shape != steps.shape:
        raise ValueError(f"perm_ids and steps must be 1-D of the same length, got {perm_ids.shape} and "
                         f"{steps.shape}")
    if perm_ids.size and (perm_ids.min() < 0 or perm_ids.max() >= shape[0] or steps.min() < 0
                          or steps.max() >= shape[1]):
        raise ValueError(f"perm_ids must be in [0, {shape[0]}) and steps in [0, {shape[1]})")
    return perm_ids, steps


def _codes(codes) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 1 or codes.dtype.kind not in "iu":
        raise ValueError(f"codes must be a 1-D integer array, got {codes.dtype} {codes.shape}")
    if codes.size and codes.min() < 0:
        raise ValueError("coalition codes must be non-negative")
    return np.ascontiguousarray(codes, dtype=np.int64)
