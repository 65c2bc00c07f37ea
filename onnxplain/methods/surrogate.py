"""Surrogate models over coalitions of groups: KernelSHAP and LIME (Captum's ``KernelShap`` and ``Lime``).

The interpretable features are the groups of ``feature_mask`` (equal ids form a
group, across inputs too; None: every element alone).  A coalition ``z`` in
``{0, 1}^G`` is a perturbed row: the present groups from the input, the absent
ones from ``baselines`` (Captum's forms).  The model runs on ``U`` coalitions
per row, and a weighted linear model of the outputs on ``z`` is fitted per row;
its coefficients, one per group, are given to each element of the group (as
Captum's ``return_input_shape=True``).  The coalitions of a call are drawn once
(by ``seed``) and shared by every row, so that the batches are built by the
masked copies of :mod:`onnxplain.kernels.coalitions`; Captum draws new ones for
each example.  Each row's estimate has the same distribution as Captum's.

``kernel_shap``: SHAP's KernelSHAP (Lundberg & Lee 2017).  ``n_samples``
(Captum's default 25) counts, as Captum counts it, the empty and the full
coalition (the baselines and the input) and ``n_samples - 2`` coalitions drawn
with Captum's distribution: a size ``k`` with probability proportional to the
Shapley kernel's ``(G - 1) / (k (G - k))``, then ``k`` groups uniformly, each
coalition weighted 1; ``paired=True`` (default) pairs each with its complement
(antithetic draws, as SHAP's ``KernelExplainer``).  When ``n_samples >= 2**G``
every coalition is run once instead, weighted by the Shapley kernel
``(G - 1) / (C(G, |z|) |z| (G - |z|))``: the result is then the exact Shapley
values.  The regression is the constrained weighted least squares of SHAP:
``f(baselines)`` is the intercept and ``sum(phi) = f(x) - f(baselines)`` holds
exactly (efficiency, for any draw).  Captum instead fits an unconstrained
``LinearRegression`` with weight ``1e6`` on the empty and full coalitions; its
coefficients approach ours as that weight grows (they differ by ``O(1e-6)``
relative).

``lime``: Captum's ``Lime`` with its defaults: ``n_samples=25`` coalitions,
each group present with probability 1/2; sample weights
``exp(-d^2 / (2 kernel_width^2))`` with ``d`` the cosine distance (or, with
``distance_mode="euclidean"``, the Euclidean one) between the input and the
perturbed input in the input space (all attributed inputs of the row
flattened together); the surrogate is Captum's default ``SkLearnLasso(alpha=0.01)``,
solved here by coordinate descent, or a ridge or ordinary least squares
(``interpretable_model``), each with an unpenalised intercept and
scikit-learn's scaling of the objective for the same ``alpha``: lasso
``sum_u w_u r_u^2 / (2 sum w) + alpha |beta|_1``, ridge
``sum_u w_u r_u^2 + alpha |beta|^2``.  No scikit-learn at run time.

Group ids are numbered in increasing order (0..G-1); Captum numbers ``0..max``
and keeps a group of no elements for each missing id, which changes a lasso or
ridge fit slightly: give contiguous ids to compare.
"""
from __future__ import annotations

import numbers
import threading
from contextlib import contextmanager

import numpy as np

from onnxplain.kernels.coalitions import (MAX_ENUMERATED_GROUPS, CoalitionUnits, all_coalitions,
                                          draw_bernoulli_coalitions, draw_shapley_coalitions, group_products,
                                          shapley_kernel_weights, weighted_lasso)
from onnxplain.kernels.common import spread_groups

from .params import (DRAW_SEED, FEATURE_MASK, N_BASELINES, PERTURBATION_BASELINES, PERTURBATIONS_PER_EVAL, PROGRESS,
                     Param)
from .perturbation import Perturbation, Plan, attributed_inputs, check_positive_int, group_labels

#: relative cut of the singular values of the least-squares problems (the constrained problem of KernelSHAP has
#: an exact null direction, the all-ones vector, that must be cut)
RCOND = 1e-10
#: floats one batched solve of the LIME surrogates holds at most (rows are solved in sub-batches)
SOLVE_FLOATS = 1 << 22
#: LIME's ``1 - cos`` takes norms below this as this (torch's ``CosineSimilarity`` eps, which Captum uses)
COSINE_EPS = 1e-8

#: flops of a fit below which its dense linear algebra runs on one BLAS thread (waking BLAS threads for a
#: 200 x 64 SVD costs ten times the SVD itself, far more on a busy machine)
SMALL_FIT_FLOPS = 1 << 28

SURROGATES = ("lasso", "ridge", "linear")
DISTANCES = ("cosine", "euclidean")


class KernelShap(Perturbation):
    name = "kernel_shap"
    captum = "`KernelShap`"
    deepexplain = "–"
    aliases = ("kernelshap",)
    table_note = "all `2**groups` coalitions (exact Shapley values) when `n_samples >= 2**groups`"
    shapley_like = True
    parameters = (Param("n_samples", 25, "int", "model runs per row: the empty and full coalitions and n_samples - 2 "
                        "drawn ones", own_check=True, in_graph=False),
                  FEATURE_MASK, PERTURBATION_BASELINES, N_BASELINES,
                  DRAW_SEED.but(doc="seed of the coalitions and of the n_baselines draws"),
                  Param("paired", True, "bool", "pair each drawn coalition with its complement (antithetic draws)",
                        in_graph=False),
                  PERTURBATIONS_PER_EVAL, PROGRESS)

    def check_params(self, params):
        p = super().check_params(params)
        n = p["n_samples"]
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 2:
            raise ValueError(f"n_samples must be an int >= 2 (it counts the empty and the full coalition, as "
                             f"Captum's KernelShap does), got {n!r}")
        return p

    def plan(self, spec, feeds, n_rows, params):
        inputs = attributed_inputs(spec, feeds, params["baselines"])
        labels, n_groups = group_labels(spec, inputs, params["feature_mask"], n_rows)
        z, w = kernel_shap_coalitions(n_groups, int(params["n_samples"]), np.random.default_rng(params["seed"]),
                                      bool(params["paired"]))
        return _KernelShapPlan(inputs, labels, n_groups, z, w)


class Lime(Perturbation):
    name = "lime"
    captum = "`Lime`"
    deepexplain = "–"
    parameters = (Param("n_samples", 25, "int", "coalitions per row, each group present with probability 1/2",
                        own_check=True, in_graph=False),
                  FEATURE_MASK, PERTURBATION_BASELINES, N_BASELINES,
                  DRAW_SEED.but(doc="seed of the coalitions and of the n_baselines draws"),
                  Param("interpretable_model", "lasso", "choice", "the weighted linear surrogate fitted per row",
                        choices=SURROGATES, in_graph=False),
                  Param("alpha", 0.01, "float", "penalty of the lasso or ridge surrogate (scikit-learn's alpha)",
                        own_check=True, in_graph=False),
                  Param("kernel_width", 1.0, "float", "width of the similarity kernel exp(-d^2 / (2 width^2))",
                        own_check=True, in_graph=False),
                  Param("distance_mode", "cosine", "choice", "distance d between the input and a perturbed input",
                        choices=DISTANCES, in_graph=False),
                  PERTURBATIONS_PER_EVAL, PROGRESS)

    def check_params(self, params):
        p = super().check_params(params)
        check_positive_int(p["n_samples"], "n_samples")
        alpha, width = p["alpha"], p["kernel_width"]
        if not _is_real(alpha) or not alpha >= 0 or not np.isfinite(alpha):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
        if not _is_real(width) or not width > 0 or not np.isfinite(width):
            raise ValueError(f"kernel_width must be a finite number > 0, got {width!r}")
        return p

    def plan(self, spec, feeds, n_rows, params):
        inputs = attributed_inputs(spec, feeds, params["baselines"])
        labels, n_groups = group_labels(spec, inputs, params["feature_mask"], n_rows)
        z = draw_bernoulli_coalitions(n_groups, int(params["n_samples"]), np.random.default_rng(params["seed"]))
        return _LimePlan(inputs, labels, n_groups, z, params["interpretable_model"], float(params["alpha"]),
                         float(params["kernel_width"]), params["distance_mode"])


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def kernel_shap_coalitions(n_groups: int, n_samples: int, rng: np.random.Generator, paired: bool = True):
    """``(z (U, G) uint8, weights (U,))``: every coalition but the empty and full one with its Shapley kernel
    weight when ``n_samples >= 2**G``, else ``n_samples - 2`` draws of weight 1 (see the module)."""
    if n_groups < 2:
        return np.zeros((0, n_groups), np.uint8), np.zeros(0)
    if n_groups <= MAX_ENUMERATED_GROUPS and n_samples >= 1 << n_groups:
        z = all_coalitions(n_groups)
        return z, shapley_kernel_weights(n_groups, z.sum(axis=1))
    z = draw_shapley_coalitions(n_groups, n_samples - 2, rng, paired)
    return z, np.ones(z.shape[0])


def constrained_shapley_operator(z, weights) -> tuple[np.ndarray, np.ndarray]:
    """KernelSHAP's regression as a linear map of the outputs: ``phi = y @ B + delta * c`` per row.

    ``phi`` minimises ``sum_u w_u (y_u - z_u . phi)^2`` subject to ``sum(phi) = delta``, with ``y`` the outputs
    of the coalitions minus ``f(baselines)`` and ``delta = f(x) - f(baselines)`` (SHAP's constrained problem).
    Written ``phi = delta / G + psi`` with ``sum(psi) = 0``: ``psi`` is the minimum-norm least-squares solution
    of ``sqrt(w) (z - |z| / G) psi = sqrt(w) (y - delta |z| / G)``, which lies in the sum-zero subspace, so the
    constraint holds exactly whatever the rank of ``z``.  Returns ``B`` (U, G) and ``c`` (G,).
    """
    z = np.asarray(z, dtype=np.float64)
    units, g = z.shape
    sizes = z.sum(axis=1)
    root = np.sqrt(np.asarray(weights, dtype=np.float64))
    design = root[:, None] * (z - sizes[:, None] / g)
    pinv = _pinv(design)                               # (G, U)
    b = (pinv * root[None, :]).T                       # y -> phi
    c = 1.0 / g - b.T @ (sizes / g)                    # delta -> phi
    return np.ascontiguousarray(b), c


def _pinv(a: np.ndarray) -> np.ndarray:
    """The pseudo-inverse, singular values below :data:`RCOND` of the largest cut (a stack of matrices too)."""
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    top = s[..., :1] if s.shape[-1] else s
    keep = s > RCOND * top
    inv = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)
    return np.swapaxes(vt, -1, -2) @ (inv[..., :, None] * np.swapaxes(u, -1, -2))


# ---------------------------------------------------------------------- LIME's weights and surrogates
def lime_similarities(products: np.ndarray, z: np.ndarray, kernel_width: float, distance_mode: str) -> np.ndarray:
    """``exp(-d^2 / (2 width^2))`` per row and coalition ``(n, U)``, ``d`` the cosine or Euclidean distance of the
    input and the perturbed input (Captum's ``get_exp_kernel_similarity_function``), from the per-group sums of
    :func:`~onnxplain.kernels.coalitions.group_products` (n, 4, G)."""
    zf = np.asarray(z, dtype=np.float64)
    xx, xb, bb, dd = (products[:, i] for i in range(4))
    if distance_mode == "cosine":
        dot = xb.sum(axis=1)[:, None] + (xx - xb) @ zf.T
        pp = np.maximum(bb.sum(axis=1)[:, None] + (xx - bb) @ zf.T, 0.0)
        nx = np.maximum(np.sqrt(xx.sum(axis=1)), COSINE_EPS)[:, None]
        d2 = (1.0 - dot / (nx * np.maximum(np.sqrt(pp), COSINE_EPS))) ** 2
    elif distance_mode == "euclidean":
        d2 = np.maximum(dd @ (1.0 - zf).T, 0.0)
    else:
        raise ValueError(f"distance_mode must be one of {', '.join(DISTANCES)}, got {distance_mode!r}")
    return np.exp(-d2 / (2.0 * kernel_width ** 2))


def fit_surrogate(z, weights, y, model: str, alpha: float) -> np.ndarray:
    """The coefficients ``(n, G)`` of the weighted linear model of ``y`` (n, U) on ``z`` (U, G) per row, with
    ``weights`` (n, U) and an unpenalised intercept: scikit-learn's ``Lasso(alpha)``, ``Ridge(alpha)`` or
    ``LinearRegression()`` fitted with ``sample_weight`` (the minimum-norm solution when it is not unique)."""
    if model == "lasso":
        return weighted_lasso(z, weights, y, alpha)[0]
    if model not in ("ridge", "linear"):
        raise ValueError(f"interpretable_model must be one of {', '.join(SURROGATES)}, got {model!r}")
    zf = np.asarray(z, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    units, g = zf.shape
    out = np.empty((y.shape[0], g))
    step = max(1, SOLVE_FLOATS // max(1, units * g + min(units, g) ** 2))
    for r0 in range(0, y.shape[0], step):
        r1 = min(y.shape[0], r0 + step)
        out[r0:r1] = _least_squares(zf, w[r0:r1], y[r0:r1], alpha if model == "ridge" else None)
    return out


def _least_squares(z, w, y, ridge):
    """Weighted (ridge) least squares of a few rows, centred by the weighted means (the intercept)."""
    total = w.sum(axis=1, keepdims=True)
    if (total <= 0).any():
        raise ValueError("every perturbed input got similarity 0 (the sample weights of a row sum to 0): "
                         "increase kernel_width")
    mean_z = (w @ z) / total                                   # (n, G)
    mean_y = (w * y).sum(axis=1, keepdims=True) / total
    root = np.sqrt(w)
    a = root[:, :, None] * (z[None, :, :] - mean_z[:, None, :])  # (n, U, G)
    b = root * (y - mean_y)                                    # (n, U)
    if ridge is None:
        return (_pinv(a) @ b[:, :, None])[:, :, 0]
    units, g = z.shape
    if g <= units:       # (A^T A + alpha I) beta = A^T b
        gram = np.swapaxes(a, 1, 2) @ a + ridge * np.eye(g)
        return np.linalg.solve(gram, (np.swapaxes(a, 1, 2) @ b[:, :, None]))[:, :, 0]
    outer = a @ np.swapaxes(a, 1, 2) + ridge * np.eye(units)   # beta = A^T (A A^T + alpha I)^-1 b
    return (np.swapaxes(a, 1, 2) @ np.linalg.solve(outer, b[:, :, None]))[:, :, 0]


# ---------------------------------------------------------------------- BLAS threads
_BLAS = {"controller": None, "users": 0, "limit": None}
_BLAS_LOCK = threading.Lock()


@contextmanager
def one_blas_thread(flops: int):
    """Dense linear algebra of ``flops`` inside runs on one BLAS thread when it is small
    (:data:`SMALL_FIT_FLOPS`, through ``threadpoolctl``; where it cannot control BLAS, nothing changes).
    Concurrent calls share one limit, lifted when the last of them leaves."""
    if flops > SMALL_FIT_FLOPS or not _enter_one_thread():
        yield
        return
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS["users"] -= 1
            if _BLAS["users"] == 0:
                _BLAS["limit"].restore_original_limits()
                _BLAS["limit"] = None


def _enter_one_thread() -> bool:
    with _BLAS_LOCK:
        if _BLAS["controller"] is None:
            try:
                from threadpoolctl import ThreadpoolController
                _BLAS["controller"] = ThreadpoolController()
            except Exception:   # a BLAS it cannot control: BLAS keeps its threads
                _BLAS["controller"] = False
        if _BLAS["controller"] is False:
            return False
        if _BLAS["users"] == 0:
            _BLAS["limit"] = _BLAS["controller"].limit(limits=1, user_api="blas")
        _BLAS["users"] += 1
        return True


# ---------------------------------------------------------------------- plans
class _CoalitionPlan(Plan):
    """Unit ``u`` is coalition ``z[u]``; the outputs of a block are kept ``(n, U)`` and fitted at its end."""

    def __init__(self, inputs, labels, n_groups, z):
        self.inputs, self.labels, self.n_groups = inputs, labels, n_groups
        self.coalitions = CoalitionUnits(z) if len(z) else None
        self.z = z
        self.units = z.shape[0]
        self.attr = {a.name: np.empty(a.x.shape, dtype=a.attr_dtype) for a in inputs}

    def start(self, r0, r1):
        self.r0, self.r1 = r0, r1
        self.outputs = np.empty((r1 - r0, self.units), dtype=np.float64)
        self.block_labels = {k: v.rows(r0, r1) for k, v in self.labels.items()}

    def fill(self, u0, u1, batches):
        for a in self.inputs:
            self.coalitions.fill(a.x[self.r0:self.r1], a.base_rows(self.r0, self.r1), self.block_labels[a.name],
                                 u0, u1, out=batches[a.name])

    def fold(self, u0, u1, f):
        self.outputs[:, u0:u1] = f.reshape(u1 - u0, self.r1 - self.r0).T

    def coefficients(self) -> np.ndarray:
        raise NotImplementedError

    def end(self):
        units, g = self.z.shape
        with one_blas_thread(units * g * min(units, g) * (self.r1 - self.r0)):   # a bound: fits per row
            phi = self.coefficients()
        for a in self.inputs:
            self.attr[a.name][self.r0:self.r1] = spread_groups(phi, self.block_labels[a.name])

    def result(self):
        return {a.name: self.attr[a.name].reshape((-1,) + a.row) for a in self.inputs}


class _KernelShapPlan(_CoalitionPlan):
    evaluations = 2   # the baselines and the inputs: the empty and the full coalition

    def __init__(self, inputs, labels, n_groups, z, weights):
        super().__init__(inputs, labels, n_groups, z)
        self.weights = weights
        self.operator = None     # made on the first block (an estimate never needs it)

    def evaluation_values(self, r0, r1):
        return [{a.name: a.base_rows(r0, r1) for a in self.inputs}, {}]

    def evaluated(self, outputs):
        self.f_base, self.f_full = outputs

    def coefficients(self):
        f_base = self.f_base.astype(np.float64)
        delta = self.f_full.astype(np.float64) - f_base
        if self.units == 0:
            return np.repeat(delta[:, None] / self.n_groups, self.n_groups, axis=1)
        if self.operator is None:
            self.operator = constrained_shapley_operator(self.z, self.weights)
        b, c = self.operator
        return (self.outputs - f_base[:, None]) @ b + delta[:, None] * c[None, :]


class _LimePlan(_CoalitionPlan):
    def __init__(self, inputs, labels, n_groups, z, model, alpha, kernel_width, distance_mode):
        super().__init__(inputs, labels, n_groups, z)
        self.model, self.alpha = model, alpha
        self.kernel_width, self.distance_mode = kernel_width, distance_mode

    def coefficients(self):
        products = None
        for a in self.inputs:
            products = group_products(a.x[self.r0:self.r1], a.base_rows(self.r0, self.r1),
                                      self.block_labels[a.name], self.n_groups, out=products)
        weights = lime_similarities(products, self.z, self.kernel_width, self.distance_mode)
        return fit_surrogate(self.z, weights, self.outputs, self.model, self.alpha)
