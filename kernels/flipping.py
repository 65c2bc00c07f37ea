"""Feature flipping (the deletion and insertion curves of :mod:`onnxplain.metrics`).

Each input row has its features (groups) ranked by relevance: ``ranks[j, g]`` is
the position of group ``g`` in row ``j``'s order (0: the most relevant).  Unit
``u`` of a batch flips the ``counts[u]`` most relevant groups: row ``u * n + j``
of the batch is input row ``j`` with every element whose group ranks below
``counts[u]`` set to the baseline (deletion), or the baseline with those
elements set to the input (insertion).  Layout as in :mod:`onnxplain.kernels.common`.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from .common import ParallelKernel, batch_out, bits, check_input_and_base, check_labels


@ParallelKernel
def _fill_flipping(x, base, labels, ranks, counts, insert, out):
    n, d = x.shape
    rows = counts.shape[0] * n
    b_step = 0 if base.shape[0] == 1 else 1
    m_step = 0 if labels.shape[0] == 1 else 1
    for r in prange(rows):
        u = r // n
        j = r - u * n
        count = counts[u]
        b = j * b_step
        m = j * m_step
        rank = ranks[j]
        for e in range(d):
            flipped = rank[labels[m, e]] < count
            out[r, e] = x[j, e] if flipped == insert else base[b, e]


def fill_flipping(x, base, labels, ranks, counts, insert: bool, out=None) -> np.ndarray:
    """The batch of ``len(counts)`` flipped copies of the rows of ``x``: shape ``(len(counts) * n, D)``.

    ``x`` (n, D) of any fixed-size dtype; ``base`` (1 or n, D) of the same dtype;
    ``labels`` (1 or n, D) group indices in ``[0, G)`` (an array or a
    :class:`~onnxplain.kernels.common.Labels`); ``ranks`` (n, G) integers, each row's
    rank of each group; ``counts`` (U,) how many groups each unit flips;
    ``insert``: False for deletion (flipped elements take the baseline), True for
    insertion (the row starts as the baseline, flipped elements take the input).
    """
    x, base = check_input_and_base(x, base)
    n, d = x.shape
    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or ranks.dtype.kind not in "iu":
        raise ValueError(f"ranks must be a 2-D integer array (rows, groups), got {ranks.dtype} of shape {ranks.shape}")
    if ranks.shape[0] != n:
        raise ValueError(f"ranks must have one row per input row ({n}), got {ranks.shape[0]}")
    labels = check_labels(labels, n, d, ranks.shape[1])
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.dtype.kind not in "iu":
        raise ValueError(f"counts must be a 1-D integer array, got {counts.dtype} of shape {counts.shape}")
    out = batch_out(out, counts.shape[0] * n, d, x.dtype)
    _fill_flipping.run(out.size, bits(x), bits(base), labels, np.ascontiguousarray(ranks, dtype=np.int64),
                       np.ascontiguousarray(counts, dtype=np.int64), bool(insert), bits(out))
    return out


def relevance_ranks(scores) -> np.ndarray:
    """``(n, G)`` ranks of each row's group ``scores``: 0 for the largest score, ties in increasing group
    order (a stable sort of the negated scores; NaN scores rank last)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (rows, groups), got shape {scores.shape}")
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty(scores.shape, dtype=np.int64)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1], dtype=np.int64)[None, :], axis=1)
    return ranks
