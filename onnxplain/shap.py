"""Attributions as SHAP ``Explanation`` objects, so ``shap.plots`` (waterfall, beeswarm, bar, image, text) draw them.

Only methods whose values are Shapley-like (each method class says so with ``shapley_like``: DeepLiftShap,
GradientSHAP, KernelSHAP, Shapley value sampling, exact Shapley values) are offered: their values split the
explained output between the features around an expected value, which is what SHAP's plots show.

``base_values`` is that expected value, per row: ``f(x) - sum(values)`` for the perturbation methods, whose
values add up to ``f(x) - f(baselines)`` exactly (efficiency), and ``f(x) - sum(values) + delta`` for the
gradient methods, whose ``delta`` is the residual ``sum(values) - (f(x) - E[f(baselines)])``: so ``base_values``
is ``E[f(baselines)]`` in both cases, as SHAP's ``expected_value``.  ``f(x)`` is the explained output, weighted
by the target as in every call.  ``data`` is the input (or what the caller gives: token strings for a text plot).

``shap`` itself is imported only when :func:`explanation` is called.
"""
from __future__ import annotations

import numpy as np


def shapley_like_methods() -> list[str]:
    """The methods :func:`explanation` takes."""
    from .methods import METHODS, get_method
    return [name for name in METHODS if get_method(name).shapley_like]


def explanation(explainer, inputs, target=None, *, target_weights=None, data=None, feature_names=None,
                channels_last: bool = False, **params):
    """The attributions of ``explainer`` for ``inputs`` as a ``shap.Explanation`` (a dict of them by input name
    when several inputs are attributed; they share ``base_values``, and their values together add up to
    ``f(x) - base_values``).

    ``target``/``target_weights`` and ``params`` are those of :meth:`onnxplain.Explainer.explain`.
    ``data``: what the plots show for the features (default: the input; for a text plot give the tokens'
    strings, shaped like the input); ``feature_names``: one name per feature of a row (a tabular model's
    columns).  ``channels_last=True`` moves axis 1 of an image (``N, C, H, W``) to the end for
    ``shap.plots.image``.  Attributions at a token embedding (``N, T, E``) are summed over the embedding, one
    value per token.
    """
    method = explainer.method
    if not getattr(method, "shapley_like", False):
        raise ValueError(f"a SHAP Explanation holds Shapley-like values; method {method.name!r} does not give them. "
                         f"Use one of: {', '.join(shapley_like_methods())}")
    try:
        import shap
    except ImportError as e:   # pragma: no cover - depends on the environment
        raise ImportError("onnxplain.shap.explanation needs the shap package: pip install shap") from e
    _, tw, _ = explainer.checked_call(inputs, target, target_weights, {})
    wanted = dict(params, return_convergence_delta=True) if method.has_delta else params
    got = explainer.explain(inputs, target, target_weights=target_weights, **wanted)
    attrs, delta = got if method.has_delta else (got, None)
    attrs = attrs if isinstance(attrs, dict) else {explainer.inputs[0]: attrs}
    given = _by_input(data, explainer.inputs, "data")
    names = _by_input(feature_names, explainer.inputs, "feature_names")
    shown_by_default = {x: np.asarray(inputs[x] if isinstance(inputs, dict) else inputs) for x in attrs}
    values = {x: _per_feature(np.asarray(a), np.asarray(given.get(x, shown_by_default[x]))) for x, a in attrs.items()}
    base = expected_value(explainer, inputs, tw, values, delta)
    out = {}
    for x, v in values.items():
        shown = np.asarray(given.get(x, shown_by_default[x]))
        if shown.shape != v.shape:
            raise ValueError(f"data for input {x!r} must have the attributions' shape {v.shape}, got {shown.shape}")
        if channels_last:
            v, shown = _channels_last(v, x), _channels_last(shown, x)
        # one explained value per row (the target may differ by row): no output dimension, no output names
        out[x] = shap.Explanation(values=v, base_values=base, data=shown, feature_names=names.get(x))
    return out[explainer.inputs[0]] if len(out) == 1 else out


def expected_value(explainer, inputs, tw: np.ndarray, values: dict, delta) -> np.ndarray:
    """Per row, ``f(x) - sum(values) (+ delta)``: the expected output over the baselines (see the module)."""
    f_x = _row_sums(explainer.forward(inputs)[explainer.output] * tw)
    total = sum(_row_sums(v) for v in values.values())
    base = f_x - total + (0.0 if delta is None else np.asarray(delta, dtype=np.float64))
    return base


def _per_feature(attr: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Attributions of a token embedding ``(N, T, E)`` summed to one per token ``(N, T)``; others unchanged."""
    if attr.ndim > data.ndim and attr.shape[:data.ndim] == data.shape:
        return attr.sum(axis=tuple(range(data.ndim, attr.ndim)))
    return attr


def _by_input(value, inputs: list[str], what: str) -> dict:
    if value is None:
        return {}
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(inputs))
        if unknown:
            raise ValueError(f"{what} given for {unknown}, which are not attributed inputs {inputs}")
        return dict(value)
    if len(inputs) > 1:
        raise ValueError(f"with several attributed inputs {inputs}, give {what} as a dict by input name")
    return {inputs[0]: value}


def _channels_last(a: np.ndarray, x: str) -> np.ndarray:
    if a.ndim < 3:
        raise ValueError(f"channels_last moves axis 1 (the channels) of an image to the end; input {x!r} has "
                         f"shape {a.shape}")
    return np.moveaxis(a, 1, -1)


def _row_sums(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.reshape(a.shape[0], -1).sum(axis=1, dtype=np.float64)
