"""Max-sensitivity (Captum's ``captum.metrics.sensitivity_max``)."""
from __future__ import annotations

import inspect

import numpy as np

from ..api import Explainer
from ..methods.perturbation import check_positive_int
from .forward import sample_chunks, samples_per_call
from .perturbations import uniform_perturbation


def sensitivity_max(explanation_func, inputs, perturb_func=None, perturb_radius: float = 0.02,
                    n_perturb_samples: int = 10, norm_ord="fro", max_examples_per_batch: int | None = None,
                    **kwargs) -> np.ndarray:
    """Max-sensitivity (Yeh et al., 2019) per row: ``max_s ||e(x_s) - e(x)|| / ||e(x)||`` over
    ``n_perturb_samples`` perturbed copies ``x_s`` of the row (Captum's ``captum.metrics.sensitivity_max``;
    a zero norm of ``e(x)`` counts as 1; the norms are over all attributed inputs' elements together).

    ``explanation_func``: an :class:`~onnxplain.Explainer`, a pair ``(Explainer, params)`` (its method
    parameters), or any callable ``f(inputs, **kwargs)`` returning attributions (an array, tuple or dict).
    ``kwargs`` go to it (``target``, ``target_weights``, ``baselines``, method parameters); with an
    Explainer all perturbed copies of a chunk are explained in one call, targets (as weights) and full-batch
    ``baselines`` or ``feature_mask`` repeated per copy.  ``perturb_func(copies, perturb_radius)`` (or
    ``perturb_func(copies)``) returns the perturbed copies (rows repeated next to each other, the form of
    ``inputs``); None: :func:`uniform_perturbation` (seed 0).  ``norm_ord``: ``"fro"`` (the 2-norm) or a
    number ``p`` (p-norm, ``inf`` included).  ``max_examples_per_batch``: Captum's; None: all copies at
    once.  Returns float64 ``(N,)``.
    """
    check_positive_int(n_perturb_samples, "n_perturb_samples")
    perturb_func = uniform_perturbation() if perturb_func is None else perturb_func
    norm = _vector_norm(norm_ord)
    explain, rows = _explanation(explanation_func, inputs, kwargs)
    n = rows(inputs)
    base = _flat(explain(inputs, 1))
    base_norm = norm(base)
    base_norm = np.where(base_norm == 0, 1.0, base_norm)
    takes_radius = len(inspect.signature(perturb_func).parameters) > 1
    best = np.full(n, -np.inf)
    for k in sample_chunks(n_perturb_samples, samples_per_call(n, n_perturb_samples, max_examples_per_batch)):
        copies = _map_arrays(inputs, lambda v: np.repeat(np.asarray(v), k, axis=0))
        perturbed = perturb_func(copies, perturb_radius) if takes_radius else perturb_func(copies)
        got = _flat(explain(perturbed, k))
        if got.shape != (n * k, base.shape[1]):
            raise ValueError(f"the explanation of {n * k} perturbed rows has {got.shape[0]} rows of "
                             f"{got.shape[1]} values; expected {base.shape[1]} per row")
        ratio = norm(got - np.repeat(base, k, axis=0)) / np.repeat(base_norm, k)
        best = np.maximum(best, ratio.reshape(n, k).max(axis=1))
    return best


def _explanation(explanation_func, inputs, kwargs: dict):
    """``(explain(x, k), rows(x))``: attributions of ``x`` whose rows are the call's rows each repeated
    ``k`` times (the per-row keywords repeated alike)."""
    if isinstance(explanation_func, tuple) and len(explanation_func) == 2 and isinstance(explanation_func[0],
                                                                                         Explainer):
        ex, params = explanation_func
        kwargs = {**dict(params or {}), **kwargs}
        explanation_func = ex
    if isinstance(explanation_func, Explainer):
        ex = explanation_func
        target, weights = kwargs.pop("target", None), kwargs.pop("target_weights", None)
        feeds, tw, _ = ex.checked_call(inputs, target, weights, {})
        n = tw.shape[0]

        def explain(x, k):
            params = {key: _repeat_per_row(v, n, k) if key in ("baselines", "feature_mask") else v
                      for key, v in kwargs.items()}
            return ex.explain(x, target_weights=np.repeat(tw, k, axis=0), **params)
        return explain, lambda x: n
    if not callable(explanation_func):
        raise ValueError(f"explanation_func must be an Explainer, (Explainer, params) or a callable, "
                         f"got {explanation_func!r}")

    def explain_callable(x, k):
        params = {key: _repeat_per_row(v, n_rows(inputs), k) if key in ("target", "baselines") else v
                  for key, v in kwargs.items()}
        return explanation_func(x, **params)

    def n_rows(x):
        first = next(iter(x.values())) if isinstance(x, dict) else x[0] if isinstance(x, tuple) else x
        return int(np.shape(first)[0])
    return explain_callable, n_rows


def _repeat_per_row(value, n: int, k: int):
    """A per-row keyword for rows repeated ``k`` times: arrays (and per-row lists) with ``n > 1`` rows repeated,
    anything else unchanged."""
    if k == 1 or n <= 1:
        return value
    if isinstance(value, dict):
        return {key: _repeat_per_row(v, n, k) for key, v in value.items()}
    if isinstance(value, list) and len(value) == n:
        return [v for v in value for _ in range(k)]
    if hasattr(value, "shape") and np.ndim(value) >= 1 and np.shape(value)[0] == n:
        return np.repeat(np.asarray(value), k, axis=0)
    return value


def _vector_norm(norm_ord):
    if norm_ord == "fro":
        return lambda a: np.linalg.norm(a, axis=1)
    if isinstance(norm_ord, (int, float, np.integer, np.floating)) and not isinstance(norm_ord, bool):
        return lambda a: np.linalg.norm(a, ord=float(norm_ord), axis=1)
    raise ValueError(f"norm_ord must be 'fro' or a number p (a p-norm over each row's attributions), "
                     f"got {norm_ord!r}")


def _flat(attributions) -> np.ndarray:
    """Attributions (an array, a tuple or dict of arrays) as ``(rows, values)`` float64, inputs side by side."""
    parts = list(attributions.values()) if isinstance(attributions, dict) else \
        list(attributions) if isinstance(attributions, (tuple, list)) else [attributions]
    parts = [np.asarray(p, dtype=np.float64) for p in parts]
    return np.concatenate([p.reshape(p.shape[0], -1) for p in parts], axis=1)


def _map_arrays(value, fn):
    if isinstance(value, dict):
        return {k: fn(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(fn(v) for v in value)
    return fn(value)
