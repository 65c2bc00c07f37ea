"""Relevance methods for transformers: Conservative LRP and AttnLRP, input x modified gradient in one run.

The rules are the override tables of :mod:`onnxplain.rules.transformer`; everything else (one block of rows,
``target_weights`` as the seed, the ``epsilon`` parameter and feed, ``delta``) is epsilon-LRP's.  Token inputs are
attributed at the embedding they feed, as by the other gradient methods: one value per embedding coordinate,
summed over the last axis for a per-token score.
"""
from __future__ import annotations

from ..rules.transformer import ATTN_LRP, CP_LRP
from .gradient import EpsilonLRP


class ConservativeLRP(EpsilonLRP):
    """Conservative LRP (Ali et al., ICML 2022): Softmax passes nothing to its scores (attention probabilities
    are constants, relevance flows through the values), LayerNorm's ``1 / std`` is a constant, unary
    nonlinearities take epsilon-LRP's rule, every other op its gradient.  On a graph without Softmax or
    normalisation it is epsilon-LRP.

    ``delta`` is ``output - sum(attributions)`` per row (epsilon-LRP's sign): the relevance biases and the
    epsilons absorbed; 0 up to epsilon on a model without biases.  Peers: LXT's and Zennit's transformer rules
    (not in Captum); they detach the same tensors.
    """

    name = "cp_lrp"
    captum = "–"
    deepexplain = "–"
    table_note = ("Softmax and LayerNorm's 1/std held constant (Ali et al. 2022); `delta` = "
                  "`output - sum(attributions)`")
    aliases = ("conservative_lrp",)
    overrides = CP_LRP


class AttnLRP(EpsilonLRP):
    """AttnLRP (Achtibat et al., ICML 2024): unary nonlinearities pass relevance on unchanged (identity rule,
    epsilon-stabilised), products of two active tensors (``Q K^T``, ``softmax . V``, gating Mul) give each
    operand half the relevance, Softmax keeps its gradient (the paper's softmax rule
    ``R_x = x (R_y - s sum R_y)``), LayerNorm's ``1 / std`` is a constant.

    ``delta`` is ``output - sum(attributions)``: besides biases and epsilons, the relevance Softmax's rule
    absorbs (its Taylor bias term), so it is not 0 on a model without biases.  Peer: LXT's AttnLRP (not in
    Captum).
    """

    name = "attn_lrp"
    captum = "–"
    deepexplain = "–"
    table_note = ("uniform rule at products of two active tensors, identity at nonlinearities (Achtibat et al. "
                  "2024); `delta` = `output - sum(attributions)`")
    aliases = ("attnlrp",)
    overrides = ATTN_LRP
