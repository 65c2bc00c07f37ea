"""The deletion and insertion curves (feature flipping in order of relevance)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxplain.kernels.flipping import fill_flipping, relevance_ranks

from ..methods.perturbation import BufferPool, Plan, attributed_inputs, check_positive_int, drive, group_labels
from .forward import Forward

#: the flipping curves' points when ``steps`` is None: every feature, or this many steps when there are more
DEFAULT_STEPS = 100
_POOL = BufferPool()


@dataclass
class FlippingCurve:
    """A deletion or insertion curve per row: ``values[j, k]`` is the explained output of row ``j`` with the
    ``fractions[k]`` most relevant share of its features flipped; ``area[j]`` the trapezoid area under it
    over ``fractions`` (0 to 1)."""

    fractions: np.ndarray
    values: np.ndarray
    area: np.ndarray


def deletion(model, inputs, attributions, target=None, baselines=0, steps: int | None = None, feature_mask=None,
             *, target_weights=None, output: str | None = None) -> FlippingCurve:
    """The deletion curve (pixel flipping, Samek et al. 2017; RISE's deletion metric): the features of each
    row, most relevant first, replaced by ``baselines`` step by step; the explained output at each step.

    A feature is an element of an attributed input, or with ``feature_mask`` (Captum's masks: equal ids
    form a group, across inputs too) a group, scored by the sum of its attributions.  Features are ordered
    by decreasing score; ties keep their order (a stable sort): elements in C order of the inputs taken in
    turn, groups by increasing id; NaN scores come last.  Step ``k`` of ``steps`` (default: one per feature,
    at most :data:`DEFAULT_STEPS`) flips the ``floor(k * G / steps)`` first of the ``G`` features, so the
    curve has ``steps + 1`` points from the input (fraction 0) to the baselines (fraction 1) (more
    steps than features repeat points).
    ``baselines``: the forms of :meth:`Explainer.explain` (default 0).  Returns a :class:`FlippingCurve`.
    """
    return _flipping(model, inputs, attributions, target, target_weights, baselines, steps, feature_mask, output,
                     insert=False)


def insertion(model, inputs, attributions, target=None, baselines=0, steps: int | None = None, feature_mask=None,
              *, target_weights=None, output: str | None = None) -> FlippingCurve:
    """The insertion curve: from ``baselines`` (fraction 0), the features of each row, most relevant first,
    set back to the input step by step, up to the input itself (fraction 1).  Features, ties and steps as
    in :func:`deletion`."""
    return _flipping(model, inputs, attributions, target, target_weights, baselines, steps, feature_mask, output,
                     insert=True)


def _flipping(model, inputs, attributions, target, target_weights, baselines, steps, feature_mask, output, insert):
    check_positive_int(steps, "steps", allow_none=True)
    m = Forward(model, output)
    feeds, tw = m.call(inputs, target, target_weights)
    attr = m.attributions(attributions, feeds)
    n = tw.shape[0]
    axes = m.own.batch_axes
    if baselines is not None and any(axes.get(x) for x in m.spec.wrt) and np.ndim(baselines) > 0:
        raise ValueError("with inputs whose batch axis is not 0, give scalar baselines")
    attributed = attributed_inputs(m.spec, feeds, baselines)
    labels, n_groups = group_labels(m.spec, attributed, feature_mask, n)
    scores = np.zeros((n, n_groups), dtype=np.float64)
    for a in attributed:
        lab = np.broadcast_to(labels[a.name].array, (n, a.size))
        rows = np.repeat(np.arange(n), a.size)
        np.add.at(scores, (rows, lab.ravel()), attr[a.name].reshape(n, -1).ravel())
    steps = min(n_groups, DEFAULT_STEPS) if steps is None else steps
    counts = np.arange(steps + 1, dtype=np.int64) * n_groups // steps
    plan = _FlippingPlan(attributed, labels, relevance_ranks(scores), counts, insert, n)
    drive(m.runner, feeds, tw, plan, None, _POOL, False)
    fractions = counts / n_groups
    area = ((plan.values[:, 1:] + plan.values[:, :-1]) * np.diff(fractions) / 2).sum(axis=1)
    return FlippingCurve(fractions, plan.values, area)


class _FlippingPlan(Plan):
    """Unit ``u``: every row with its ``counts[u]`` most relevant features flipped (:func:`fill_flipping`)."""

    def __init__(self, inputs, labels, ranks, counts, insert, n_rows):
        self.inputs, self.labels, self.ranks, self.counts, self.insert = inputs, labels, ranks, counts, insert
        self.units = len(counts)
        self.values = np.empty((n_rows, len(counts)), dtype=np.float64)

    def start(self, r0, r1):
        self.r0, self.r1 = r0, r1

    def fill(self, u0, u1, batches):
        r0, r1 = self.r0, self.r1
        for a in self.inputs:
            fill_flipping(a.x[r0:r1], a.base_rows(r0, r1), self.labels[a.name].rows(r0, r1), self.ranks[r0:r1],
                          self.counts[u0:u1], self.insert, out=batches[a.name])

    def fold(self, u0, u1, f):
        self.values[self.r0:self.r1, u0:u1] = np.asarray(f, dtype=np.float64).reshape(u1 - u0, -1).T
