"""Coalitions of groups for the surrogate methods (KernelSHAP, LIME): drawn, written as perturbed rows, folded.

A coalition is a row of a ``(U, G)`` uint8 matrix ``Z``: ``Z[u, g] = 1`` when
group ``g`` comes from the input, 0 when it comes from the baseline.  The
batch of units ``[u0, u1)`` of an ``n``-row block is perturbation-major, as
every kernel here: row ``(u - u0) * n + j`` is coalition ``u`` of input row
``j``, element ``e`` taken from ``x[j, e]`` when ``Z[u, labels[e]]`` is set,
else from the baseline.

Draws: :func:`draw_shapley_coalitions` (sizes from the Shapley kernel
distribution, members uniform, optionally paired with complements),
:func:`draw_bernoulli_coalitions` (each group present with probability 1/2),
:func:`all_coalitions` (every coalition but the empty and the full one).
:func:`group_products` gives the per-group sums LIME's similarity kernel needs
without touching the perturbed rows, and :func:`weighted_lasso` is the
coordinate-descent solver of LIME's default surrogate.
"""
from __future__ import annotations

from math import lgamma

import numpy as np
from numba import njit, prange

from .common import (ParallelKernel, batch_out, bits, check_input_and_base, check_labels, rows2d, select_units,
                     selects_units, unit_masks)

#: groups :func:`all_coalitions` enumerates at most (2**G rows)
MAX_ENUMERATED_GROUPS = 24


# ---------------------------------------------------------------------- draws
def shapley_kernel_weights(n_groups: int, sizes) -> np.ndarray:
    """The Shapley kernel ``(G - 1) / (C(G, k) k (G - k))`` of coalitions of ``sizes`` (each in 1..G-1)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if n_groups < 2:
        raise ValueError(f"the Shapley kernel needs at least 2 groups, got {n_groups}")
    if sizes.size and (sizes.min() < 1 or sizes.max() > n_groups - 1):
        raise ValueError(f"coalition sizes must be in [1, {n_groups - 1}] (the empty and full coalitions have "
                         f"infinite weight), got values in [{sizes.min()}, {sizes.max()}]")
    k = np.arange(1, n_groups, dtype=np.float64)
    log_comb = lgamma(n_groups + 1) - np.array([lgamma(i + 1) + lgamma(n_groups - i + 1) for i in k])
    per_size = np.concatenate([[0.0], np.exp(np.log(n_groups - 1) - log_comb - np.log(k) - np.log(n_groups - k)),
                               [0.0]])
    return per_size[sizes]


def shapley_size_distribution(n_groups: int) -> np.ndarray:
    """``p[k]``, k = 0..G: the probability of a coalition of size ``k`` under the Shapley kernel,
    ``(G - 1) / (k (G - k))`` normalised over k = 1..G-1 (all coalitions of one size equally likely)."""
    if n_groups < 2:
        raise ValueError(f"the Shapley kernel needs at least 2 groups, got {n_groups}")
    k = np.arange(1, n_groups, dtype=np.float64)
    p = (n_groups - 1) / (k * (n_groups - k))
    return np.concatenate([[0.0], p / p.sum(), [0.0]])


@ParallelKernel
def _smallest_keys(keys, sizes, out):
    """``out[u, g] = 1`` for the ``sizes[u]`` groups of smallest ``keys[u, g]``: a uniform subset of that size."""
    for u in prange(keys.shape[0]):
        order = np.argsort(keys[u])
        for i in range(sizes[u]):
            out[u, order[i]] = 1


def draw_shapley_coalitions(n_groups: int, count: int, rng: np.random.Generator, paired: bool = True) -> np.ndarray:
    """``count`` coalitions ``(count, G)`` uint8: a size ``k`` drawn from :func:`shapley_size_distribution`,
    then ``k`` groups uniformly (KernelSHAP's sampling, as Captum's ``KernelShap`` draws).  ``paired``: each
    odd row is the complement of the row before it (antithetic pairs, as SHAP's ``KernelExplainer``); the
    kernel is symmetric in ``k <-> G - k``, so complements have the same distribution."""
    if n_groups < 2 or count < 0:
        raise ValueError(f"need at least 2 groups and a non-negative count, got {n_groups} groups, count {count}")
    drawn = -(-count // 2) if paired else count
    sizes = rng.choice(n_groups + 1, size=drawn, p=shapley_size_distribution(n_groups)).astype(np.int64)
    keys = rng.random((drawn, n_groups))
    z = np.zeros((drawn, n_groups), dtype=np.uint8)
    _smallest_keys.run(keys.size, keys, sizes, z)
    if paired:
        pairs = np.empty((2 * drawn, n_groups), dtype=np.uint8)
        pairs[0::2] = z
        pairs[1::2] = 1 - z
        z = pairs[:count]
    return np.ascontiguousarray(z)


def draw_bernoulli_coalitions(n_groups: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` coalitions ``(count, G)`` uint8, each group present with probability 1/2 (Captum's ``Lime``
    default ``perturb_func``)."""
    if n_groups < 1 or count < 0:
        raise ValueError(f"need at least 1 group and a non-negative count, got {n_groups} groups, count {count}")
    return (rng.random((count, n_groups)) < 0.5).astype(np.uint8)


def all_coalitions(n_groups: int) -> np.ndarray:
    """Every coalition of ``G`` groups but the empty and the full one, ``(2**G - 2, G)`` uint8; row
    ``c - 1`` is the coalition of code ``c`` (bit ``g`` set: group ``g`` present)."""
    if not 2 <= n_groups <= MAX_ENUMERATED_GROUPS:
        raise ValueError(f"enumerating coalitions takes 2 to {MAX_ENUMERATED_GROUPS} groups, got {n_groups}")
    codes = np.arange(1, (1 << n_groups) - 1, dtype=np.int64)
    return ((codes[:, None] >> np.arange(n_groups, dtype=np.int64)[None, :]) & 1).astype(np.uint8)


def check_coalitions(z, n_groups: int | None = None) -> np.ndarray:
    """``z`` as a C-contiguous ``(U, G)`` uint8 matrix of zeros and ones (``G`` checked when given)."""
    z = np.asarray(z)
    if z.ndim != 2 or (n_groups is not None and z.shape[1] != n_groups):
        want = f"(units, {n_groups})" if n_groups is not None else "(units, groups)"
        raise ValueError(f"coalitions must be a 2-D {want} array, got shape {z.shape}")
    if z.dtype.kind not in "biu" or (z.size and z.max() > 1):
        raise ValueError(f"coalitions must hold 0 and 1 (booleans or unsigned integers), got dtype {z.dtype}")
    return np.ascontiguousarray(z, dtype=np.uint8)


# ---------------------------------------------------------------------- perturbed rows
@ParallelKernel
def _fill_coalition_rows(x, base, labels, z, u0, out):
    n, d = x.shape
    b_step = 0 if base.shape[0] == 1 else 1
    m_step = 0 if labels.shape[0] == 1 else 1
    for r in prange(out.shape[0]):
        u = u0 + r // n
        j = r % n
        b = j * b_step
        m = j * m_step
        for e in range(d):
            out[r, e] = x[j, e] if z[u, labels[m, e]] else base[b, e]


@njit(cache=True)
def _coalition_unit_masks(labels, z, u0, ones, zero, masks):
    """Labels shared by all rows: the mask of each coalition (all ones where the element's group is present)."""
    d = labels.shape[1]
    for i in range(masks.shape[0]):
        u = u0 + i
        for e in range(d):
            masks[i, e] = ones if z[u, labels[0, e]] else zero


def fill_coalition_rows(x, base, labels, z, u0: int, u1: int, out=None) -> np.ndarray:
    """The batch of coalitions ``z[u0:u1]`` of the rows of ``x`` (n, D): ``((u1 - u0) * n, D)``.

    ``base`` is (1 or n, D) of the dtype of ``x`` (any dtype: the elements are moved, not computed);
    ``labels`` a :class:`~onnxplain.kernels.common.Labels` or an integer array (1 or n, D) of group ids.
    """
    return CoalitionUnits(z).fill(x, base, labels, u0, u1, out)


class CoalitionUnits:
    """The coalitions ``z`` of a call, checked once: :meth:`fill` writes the batch of units ``[u0, u1)``,
    checking per chunk only what changes (the rows, the output buffer)."""

    def __init__(self, z):
        self.z = check_coalitions(z)
        self.units, self.n_groups = self.z.shape

    def fill(self, x, base, labels, u0: int, u1: int, out=None) -> np.ndarray:
        x, base = check_input_and_base(x, base)
        labels = check_labels(labels, x.shape[0], x.shape[1], self.n_groups)
        if not 0 <= u0 <= u1 <= self.units:
            raise ValueError(f"units must satisfy 0 <= u0 <= u1 <= {self.units}, got [{u0}, {u1})")
        out = batch_out(out, (u1 - u0) * x.shape[0], x.shape[1], x.dtype)
        if selects_units(labels, x.shape[0]):
            masks, ones, zero = unit_masks(u1 - u0, x.shape[1], x.dtype)
            _coalition_unit_masks(labels, self.z, u0, ones, zero, masks)
            return select_units(x, base, masks, out)
        _fill_coalition_rows.run(out.size, bits(x), bits(base), labels, self.z, u0, bits(out))
        return out


# ---------------------------------------------------------------------- LIME's similarities
@ParallelKernel
def _group_products(x, base, labels, out):
    n, d = x.shape
    b_step = 0 if base.shape[0] == 1 else 1
    m_step = 0 if labels.shape[0] == 1 else 1
    for j in prange(n):
        b = j * b_step
        m = j * m_step
        for e in range(d):
            g = labels[m, e]
            xv = x[j, e]
            bv = base[b, e]
            out[j, 0, g] += xv * xv
            out[j, 1, g] += xv * bv
            out[j, 2, g] += bv * bv
            out[j, 3, g] += (xv - bv) * (xv - bv)


def group_products(x, base, labels, n_groups: int, out=None) -> np.ndarray:
    """Per row and group, the sums ``x.x``, ``x.b``, ``b.b`` and ``(x-b).(x-b)`` over the group's elements:
    ``(n, 4, G)`` float64, added to ``out`` when given (one call per attributed input, groups shared).

    A perturbed row ``p`` of coalition ``z`` has ``x.p = sum_g z_g xx_g + (1 - z_g) xb_g``,
    ``p.p = sum_g z_g xx_g + (1 - z_g) bb_g`` and ``|x - p|^2 = sum_g (1 - z_g) dd_g``: the distances of
    every coalition from these, never from the perturbed rows themselves.
    """
    x = rows2d(x, "x")
    n, d = x.shape
    base = rows2d(base, "base", d)
    labels = check_labels(labels, n, d, n_groups)
    if out is None:
        out = np.zeros((n, 4, n_groups), dtype=np.float64)
    elif not isinstance(out, np.ndarray) or out.shape != (n, 4, n_groups) or out.dtype != np.float64:
        raise ValueError(f"out must be a float64 array of shape {(n, 4, n_groups)}")
    _group_products.run(x.size, np.ascontiguousarray(x, dtype=np.float64),
                        np.ascontiguousarray(base, dtype=np.float64), labels, out)
    return out


# ---------------------------------------------------------------------- lasso
#: float reassociation (and fused multiply-adds) in the lasso's sums over the coalitions: they vectorise;
#: no NaN or infinity assumption (a NaN output still gives NaN coefficients)
_SUMS = {"reassoc", "contract"}
#: coordinate-descent sweeps between two duality-gap checks (a check costs as much as a sweep)
GAP_EVERY = 4


@njit(cache=True, fastmath=_SUMS)
def _dot(a, b):
    total = 0.0
    for u in range(a.shape[0]):
        total += a[u] * b[u]
    return total


@njit(cache=True, fastmath=_SUMS)
def _lasso_row(z, v, y, alpha, tol, max_iter, beta):
    """Minimise ``1/2 sum_u v_u (yc_u - zc_u . beta)^2 + alpha |beta|_1`` (``sum v = 1``; ``zc``, ``yc``
    centred by the weighted means) by cyclic coordinate descent, until the duality gap (checked every
    :data:`GAP_EVERY` sweeps, and after the last) is below ``tol * 1/2 sum v yc^2``; returns the intercept
    ``ybar - zbar . beta``.  The centred coalitions are held per group (``(G, U)``, plain and weighted), so
    that every sum runs over contiguous memory."""
    units, g = z.shape
    mean = np.zeros(g)
    ybar = 0.0
    for u in range(units):
        ybar += v[u] * y[u]
        for k in range(g):
            mean[k] += v[u] * z[u, k]
    zc = np.empty((g, units))
    vz = np.empty((g, units))
    r = np.empty(units)
    yc = np.empty(units)
    vr = np.empty(units)
    for u in range(units):
        yc[u] = y[u] - ybar
        r[u] = yc[u]
        for k in range(g):
            c = z[u, k] - mean[k]
            zc[k, u] = c
            vz[k, u] = v[u] * c
    for u in range(units):
        vr[u] = v[u] * r[u]
    scale = _dot(vr, r)
    sq = np.empty(g)
    for k in range(g):
        sq[k] = _dot(vz[k], zc[k])
        beta[k] = 0.0
    if scale > 0.0:
        for it in range(max_iter):
            for k in range(g):
                if sq[k] == 0.0:
                    continue
                old = beta[k]
                rho = _dot(vz[k], r) + sq[k] * old
                new = np.sign(rho) * max(abs(rho) - alpha, 0.0) / sq[k]
                if new != old:
                    step = new - old
                    row = zc[k]
                    for u in range(units):
                        r[u] -= step * row[u]
                    beta[k] = new
            if (it + 1) % GAP_EVERY != 0 and it + 1 < max_iter:
                continue
            # duality gap of the weighted problem (residuals scaled into the dual feasible set)
            top = 0.0
            for k in range(g):
                top = max(top, abs(_dot(vz[k], r)))
            s = 1.0 if top <= alpha else alpha / top
            for u in range(units):
                vr[u] = v[u] * r[u]
            rr = _dot(vr, r)
            ry = _dot(vr, yc)
            l1 = 0.0
            for k in range(g):
                l1 += abs(beta[k])
            gap = 0.5 * rr * (1.0 + s * s) + alpha * l1 - s * ry
            if gap <= tol * 0.5 * scale:
                break
    intercept = ybar
    for k in range(g):
        intercept -= mean[k] * beta[k]
    return intercept


@ParallelKernel
def _lasso_rows(z, v, y, alpha, tol, max_iter, beta, intercept):
    for j in prange(y.shape[0]):
        intercept[j] = _lasso_row(z, v[j], y[j], alpha, tol, max_iter, beta[j])


def weighted_lasso(z, weights, y, alpha: float, tol: float = 1e-12, max_iter: int = 100_000):
    """Per row ``j``, the lasso of ``y[j]`` on the coalitions ``z`` (U, G) with sample weights ``weights[j]``,
    an unpenalised intercept and scikit-learn's scaling of the objective (weights normalised to sum to 1):
    ``1/2 sum_u w_u (y_u - b - z_u . beta)^2 / sum w + alpha |beta|_1``.  Returns ``(beta (n, G),
    intercept (n,))`` float64.  ``tol`` bounds the duality gap relative to ``1/2 sum w yc^2 / sum w``."""
    z = np.ascontiguousarray(z, dtype=np.float64)
    w = np.ascontiguousarray(weights, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    if z.ndim != 2 or w.ndim != 2 or y.shape != w.shape or w.shape[1] != z.shape[0]:
        raise ValueError(f"weighted_lasso takes z (U, G), weights and y (n, U); got {z.shape}, {w.shape}, {y.shape}")
    total = w.sum(axis=1, keepdims=True)
    if (w < 0).any() or (total <= 0).any():
        raise ValueError("sample weights must be non-negative with a positive sum in every row")
    beta = np.zeros((y.shape[0], z.shape[1]))
    intercept = np.zeros(y.shape[0])
    # work: a few dozen sweeps of U x G per row
    _lasso_rows.run(y.size * z.shape[1] * 32, z, w / total, y, float(alpha), float(tol), int(max_iter), beta,
                    intercept)
    return beta, intercept
