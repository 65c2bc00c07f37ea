"""Numba kernels that build perturbation batches and fold their outputs back.

Every public function here validates its arguments and allocates what it
returns; the Numba kernels behind them (``prange`` loops compiled in parallel and
serially, :class:`~onnxplain.kernels._common.ParallelKernel`) only fill
preallocated arrays.  Layout: an attributed input of an ``n``-row block is
``(n, D)`` (rows flattened); a batch of ``U`` perturbations is ``(U * n, D)``,
perturbation-major (row ``u * n + j`` is perturbation ``u`` of input row ``j``).
"""
from ._common import Labels, spread_groups
from .ablation import fill_ablation, fold_ablation
from .occlusion import fill_occlusion, fold_occlusion, occlusion_counts, window_starts
from .shapley import (MAX_EXACT_GROUPS, PermutationUnits, close_single_group, fill_coalitions, fill_permutation, fold_coalitions,
                      fold_permutation, permutation_ranks, sample_permutations, shapley_weights)

__all__ = ["Labels", "MAX_EXACT_GROUPS", "PermutationUnits", "close_single_group", "fill_ablation", "fill_coalitions", "fill_occlusion",
           "fill_permutation", "fold_ablation", "fold_coalitions", "fold_occlusion", "fold_permutation", "occlusion_counts",
           "permutation_ranks", "sample_permutations", "shapley_weights", "spread_groups", "window_starts"]
