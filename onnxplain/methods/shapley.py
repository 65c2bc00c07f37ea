"""Shapley values of groups of features: sampled permutations, or exact over every coalition.

``shapley_sampling`` follows Captum's ``ShapleyValueSampling``: for each of
``n_samples`` random permutations of the groups, the groups are added to the
baselines one by one and each group gets the change of the output when it is
added; the attribution is the mean over the permutations, given to each element
of the group.  That costs one run of the baselines plus ``n_samples x groups``
rows per input row, as Captum counts them.  Every permutation's contributions
sum to ``f(x) - f(baselines)``, so the estimate satisfies efficiency exactly,
and on a model linear in the inputs it is exact for any ``n_samples``.
``antithetic=True`` pairs each permutation with its reverse (variance reduction).

``shapley_values`` is exact: all ``2**G`` coalitions are run once and weighted
(``|S|! (G - |S| - 1)! / G!``); it refuses more than
:data:`~onnxplain.kernels.shapley.MAX_EXACT_GROUPS` groups.  Captum's ``ShapleyValues``
computes the same numbers from all ``G!`` permutations.
"""
from __future__ import annotations

import numpy as np

from onnxplain.kernels.common import spread_groups
from onnxplain.kernels.shapley import (MAX_EXACT_GROUPS, PermutationUnits, close_single_group, fill_coalitions,
                                       fold_coalitions, sample_permutations)

from .params import (DRAW_SEED, FEATURE_MASK, N_BASELINES, PERTURBATION_BASELINES, PERTURBATIONS_PER_EVAL, PROGRESS,
                     Param)
from .perturbation import Perturbation, Plan, attributed_inputs, check_positive_int, group_labels


class ShapleySampling(Perturbation):
    name = "shapley_sampling"
    captum = "`ShapleyValueSampling`"
    deepexplain = "`shapley_sampling` (`samples`)"
    aliases = ("shapley_value_sampling", "shapleyvaluesampling")
    shapley_like = True
    parameters = (Param("n_samples", 25, "int", "random permutations of the groups", own_check=True, in_graph=False),
                  FEATURE_MASK, PERTURBATION_BASELINES, N_BASELINES,
                  DRAW_SEED.but(doc="seed of the permutations and of the n_baselines draws"),
                  Param("antithetic", False, "bool", "pair each permutation with its reverse (variance reduction)",
                        own_check=True, in_graph=False),
                  PERTURBATIONS_PER_EVAL, PROGRESS)

    def check_params(self, params):
        p = super().check_params(params)
        check_positive_int(p["n_samples"], "n_samples")
        if not isinstance(p["antithetic"], (bool, np.bool_)):
            raise ValueError(f"antithetic must be True or False, got {p['antithetic']!r}")
        return p

    def plan(self, spec, feeds, n_rows, params):
        inputs = attributed_inputs(spec, feeds, params["baselines"])
        labels, n_groups = group_labels(spec, inputs, params["feature_mask"], n_rows)
        perms = sample_permutations(n_groups, int(params["n_samples"]), np.random.default_rng(params["seed"]),
                                    bool(params["antithetic"]))
        return _SamplingPlan(inputs, labels, perms)


class ShapleyValues(Perturbation):
    name = "shapley_values"
    captum = "`ShapleyValues`"
    deepexplain = "–"
    table_note = "runs all `2**groups` coalitions"
    aliases = ("exact_shapley",)
    shapley_like = True
    parameters = (FEATURE_MASK, PERTURBATION_BASELINES, N_BASELINES, DRAW_SEED, PERTURBATIONS_PER_EVAL, PROGRESS)

    def plan(self, spec, feeds, n_rows, params):
        inputs = attributed_inputs(spec, feeds, params["baselines"])
        if params["feature_mask"] is None:
            total = sum(a.size for a in inputs)
            if total > MAX_EXACT_GROUPS:
                raise ValueError(_too_many(total, "features (no feature_mask: every element is a group)"))
        labels, n_groups = group_labels(spec, inputs, params["feature_mask"], n_rows)
        if n_groups > MAX_EXACT_GROUPS:
            raise ValueError(_too_many(n_groups, "groups in feature_mask"))
        return _ExactPlan(inputs, labels, n_groups)


def _too_many(count, what):
    return (f"shapley_values is exact over all 2**G coalitions and takes at most {MAX_EXACT_GROUPS} groups; "
            f"got {count} {what}. Group the features with feature_mask, or use shapley_sampling")


class _GroupPlan(Plan):
    def __init__(self, inputs, labels, n_groups):
        self.inputs, self.labels, self.n_groups = inputs, labels, n_groups
        self.attr = {a.name: np.empty(a.x.shape, dtype=a.attr_dtype) for a in inputs}
        self.scale = 1.0

    def start(self, r0, r1):
        self.r0, self.r1 = r0, r1
        self.phi = np.zeros((r1 - r0, self.n_groups), dtype=np.float64)
        self.block_labels = {k: v.rows(r0, r1) for k, v in self.labels.items()}

    def end(self):
        for a in self.inputs:
            self.attr[a.name][self.r0:self.r1] = spread_groups(self.phi, self.block_labels[a.name], self.scale)

    def result(self):
        return {a.name: self.attr[a.name].reshape((-1,) + a.row) for a in self.inputs}


class _SamplingPlan(_GroupPlan):
    """Permutation ``s``, step ``k`` (its first ``k + 1`` groups from the input) is unit ``s * (G - 1) + k``
    for ``k < G - 1``; the baselines and the inputs (the empty and the full coalition) are the block's own
    two evaluations."""

    evaluations = 2   # the baselines, the inputs

    def __init__(self, inputs, labels, perms):
        super().__init__(inputs, labels, perms.shape[1])
        self.permutations = PermutationUnits(perms, leave_out_full=True)
        self.units = self.permutations.units
        self.n_samples = perms.shape[0]
        self.scale = 1.0 / perms.shape[0]

    def start(self, r0, r1):
        super().start(r0, r1)
        self.f_prev = np.zeros(r1 - r0, dtype=np.float64)
        self.rows = {a.name: self.permutations.rows(a.x[r0:r1], a.base_rows(r0, r1), self.block_labels[a.name])
                     for a in self.inputs}

    def evaluation_values(self, r0, r1):
        return [{a.name: a.base_rows(r0, r1) for a in self.inputs}, {}]

    def evaluated(self, outputs):
        self.f_base, self.f_full = outputs
        if self.n_groups == 1:
            close_single_group(self.f_full, self.f_base, self.n_samples, self.phi)

    def fill(self, u0, u1, batches):
        for name, rows in self.rows.items():
            self.permutations.fill(rows, u0, u1, out=batches[name])

    def fold(self, u0, u1, f):
        self.permutations.fold(f, self.f_base, self.f_prev, self.phi, u0, u1, f_full=self.f_full)


class _ExactPlan(_GroupPlan):
    def __init__(self, inputs, labels, n_groups):
        super().__init__(inputs, labels, n_groups)
        self.units = 1 << n_groups

    def fill(self, u0, u1, batches):
        codes = np.arange(u0, u1, dtype=np.int64)
        for a in self.inputs:
            fill_coalitions(a.x[self.r0:self.r1], a.base_rows(self.r0, self.r1), self.block_labels[a.name],
                            codes, out=batches[a.name])

    def fold(self, u0, u1, f):
        fold_coalitions(f, np.arange(u0, u1, dtype=np.int64), self.phi)
