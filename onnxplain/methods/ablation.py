"""Feature ablation and feature permutation, with Captum's arguments (``FeatureAblation``, ``FeaturePermutation``).

Each group of features (``feature_mask``: equal ids form a group, across
inputs too; default: every element alone) is replaced in turn: by the baselines
(ablation) or by the same features of other rows of the batch, shuffled by a
permutation of its own per group (permutation: a model's reliance on the
feature, as in permutation importance); the group's attribution, given to each
of its elements, is ``f(x) - f(replaced)``.
"""
from __future__ import annotations

import numpy as np

from onnxplain.kernels.ablation import fill_ablation, fill_permuted, fold_ablation
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


class FeaturePermutation(Perturbation):
    """Captum's ``FeaturePermutation``: each group's values swapped between the rows of the call by a random
    permutation (one per group, never the identity, as Captum's ``randperm`` loop), ``f(x) - f(permuted)`` per
    row.  The rows of a call are one sample of the data: it needs at least two, and its result depends on
    which rows are explained together (that is the method).  ``seed`` draws the permutations;
    :func:`permutations` returns them."""

    name = "feature_permutation"
    captum = "`FeaturePermutation` (one permutation per group, drawn by `seed`)"
    deepexplain = "–"
    aliases = ("permutation_importance",)
    parameters = (FEATURE_MASK, DRAW_SEED.but(doc="seed of the permutations of the rows, one per group"),
                  PERTURBATIONS_PER_EVAL, PROGRESS)

    def plan(self, spec, feeds, n_rows, params):
        if n_rows < 2:
            raise ValueError(f"feature_permutation shuffles features between the rows of a call, so it needs at "
                             f"least 2 rows, got {n_rows}")
        inputs = attributed_inputs(spec, feeds, None)
        labels, n_groups = group_labels(spec, inputs, params["feature_mask"], n_rows)
        return _PermutationPlan(inputs, labels, n_groups, permutations(n_groups, n_rows, params["seed"]))


def permutations(n_groups: int, n_rows: int, seed=None) -> np.ndarray:
    """``(n_groups, n_rows)``: a random permutation of the rows per group, none of them the identity (Captum
    draws again until it is not), drawn in group order from ``seed``."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_groups, n_rows), dtype=np.int64)
    identity = np.arange(n_rows)
    for g in range(n_groups):
        perm = rng.permutation(n_rows)
        while (perm == identity).all():
            perm = rng.permutation(n_rows)
        out[g] = perm
    return out


class _AblationPlan(Plan):
    def __init__(self, inputs, labels, n_groups):
        self.inputs, self.labels, self.n_groups = inputs, labels, n_groups
        self.units = n_groups
        self.groups = np.arange(n_groups, dtype=np.int64)
        self.attr = {a.name: np.empty(a.x.shape, dtype=a.attr_dtype) for a in inputs}

    evaluations = 1     # f(x) of the block

    def start(self, r0, r1):
        self.r0, self.r1 = r0, r1
        self.diffs = np.zeros((r1 - r0, self.n_groups), dtype=np.float64)
        self.block_labels = {k: v.rows(r0, r1) for k, v in self.labels.items()}

    def evaluation_values(self, r0, r1):
        return [{}]

    def evaluated(self, outputs):
        self.f0 = outputs[0]

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


class _PermutationPlan(_AblationPlan):
    def __init__(self, inputs, labels, n_groups, perms):
        super().__init__(inputs, labels, n_groups)
        self.perms = perms

    def fill(self, u0, u1, batches):
        for a in self.inputs:
            fill_permuted(a.x, self.r0, self.r1, self.block_labels[a.name], self.groups[u0:u1], self.perms,
                          self.n_groups, out=batches[a.name])
