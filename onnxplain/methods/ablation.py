"""Feature ablation, with Captum's arguments (``FeatureAblation``).

Each group of features (``feature_mask``: equal ids form a group, across
inputs too; default: every element alone) is replaced by the baselines in turn;
the group's attribution, given to each of its elements, is ``f(x) - f(ablated)``.
"""
from __future__ import annotations

import numpy as np

from onnxplain.kernels.ablation import fill_ablation, fold_ablation
from onnxplain.kernels.common import spread_groups

from .params import DRAW_SEED, FEATURE_MASK, N_BASELINES, PERTURBATION_BASELINES, PERTURBATIONS_PER_EVAL, PROGRESS
from .perturbation import Perturbation, Plan, attributed_inputs, group_labels


class FeatureAblation(Perturbation):
    name = "feature_ablation"
    captum = "`FeatureAblation`"
    deepexplain = "–"
    aliases = ("ablation",)
    parameters = (FEATURE_MASK, PERTURBATION_BASELINES, N_BASELINES, DRAW_SEED, PERTURBATIONS_PER_EVAL, PROGRESS)

    def plan(self, spec, feeds, n_rows, params):
        inputs = attributed_inputs(spec, feeds, params["baselines"])
        labels, n_groups = group_labels(spec, inputs, params["feature_mask"], n_rows)
        return _AblationPlan(inputs, labels, n_groups)


class _AblationPlan(Plan):
    def __init__(self, inputs, labels, n_groups):
        self.inputs, self.labels, self.n_groups = inputs, labels, n_groups
        self.units = n_groups
        self.groups = np.arange(n_groups, dtype=np.int64)
        self.attr = {a.name: np.empty(a.x.shape, dtype=a.attr_dtype) for a in inputs}

    def begin(self, r0, r1, evaluate):
        self.r0, self.r1 = r0, r1
        self.f0 = evaluate({})
        self.diffs = np.zeros((r1 - r0, self.n_groups), dtype=np.float64)
        self.block_labels = {k: v.rows(r0, r1) for k, v in self.labels.items()}

    def fill(self, u0, u1, batches):
        for a in self.inputs:
            fill_ablation(a.x[self.r0:self.r1], a.base_rows(self.r0, self.r1), self.block_labels[a.name],
                          self.groups[u0:u1], self.n_groups, out=batches[a.name])

    def fold(self, u0, u1, f):
        fold_ablation(self.f0, f, self.groups[u0:u1], self.diffs)

    def end(self):
        for a in self.inputs:
            self.attr[a.name][self.r0:self.r1] = spread_groups(self.diffs, self.block_labels[a.name])

    def result(self):
        return {a.name: v.reshape((-1,) + a.row) for a, v in zip(self.inputs, self.attr.values())}
