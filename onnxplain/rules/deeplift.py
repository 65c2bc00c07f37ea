"""DeepLIFT's override table: the Rescale rule (Shrikumar et al., 2017; Ancona et al., 2018), with Shapley
rules where two activations meet, so that summation-to-delta holds on any graph.

Every rule maps the output cotangent ``dy`` of a node to *multipliers* ``m_i`` of its inputs
such that ``sum_i m_i * (x_i - x_i_ref) = dy * (y - y_ref)`` (the difference is conserved), so the
attributions of the whole graph add up to ``f(x) - f(x_ref)`` whatever way an exporter wrote a layer:

* unary nonlinearities ``y = f(z)``: ``dy * (f(z) - f(z_ref)) / (z - z_ref)``, the gradient where
  ``|z - z_ref| < eps`` (the unique conserving multiplier of a one-input elementwise op);
* ops of several tensors that depend on the attributed input (``a * b``, ``a / b``, ``a ** b``,
  Max, Min, Mod, PRelu and Clip with active slopes or bounds) take the Shapley values of their inputs as
  players: for two players ``phi_a = 1/2 [f(a, b_ref) - f(a_ref, b_ref)] + 1/2 [f(a, b) - f(a_ref, b)]``
  and ``m_a = phi_a / (a - a_ref)``.  For bilinear maps (Mul, MatMul, Gemm, two-operand Einsum, Conv and ConvTranspose
  of an attributed input by an attributed weight) this is
  the plain gradient taken at the midpoints, ``d(AB) = dA (B + B_ref) / 2 + (A + A_ref) / 2 dB``;
  one active operand keeps the plain gradient (the map is linear in it);
* ops nonlinear in one tensor that reduce or select (ReduceMax/ReduceMin, GlobalMaxPool, Where whose
  condition and Gather whose indices depend on the input) route the difference so that it is
  conserved (cross-max, like MaxPool); piecewise-constant ops (Floor, Ceil, Round, Sign) are rescaled;
* products (ReduceProd, CumProd, ScatterND / ScatterElements with reduction mul) take the symmetric telescoping
  rule, TopK the selection rule, the max / min scatters the cross-extremum rule and Hardmax a conserving spread
  of ``Δy`` (:mod:`onnxplain.rules.rescale_products`);
* fused ops take the multipliers of one canonical decomposition under the rules above, so the result
  does not depend on whether an exporter fused them: Softmax = ``exp(z) / sum(exp(z))`` at
  ``z = x - max(x)`` (the cross-max rule at the maximum, Div's Shapley rule, Exp rescaled: every term finite),
  LogSoftmax = ``z - log(sum(exp(z)))``, LayerNormalization and
  InstanceNormalization = ``(x - mean) / sqrt(mean((x - mean) * (x - mean)) + eps) * scale + bias``
  (:mod:`onnxplain.rules.rescale_fused`).
  Gelu, HardSwish, Mish... have one input, so the unary rule is already their decomposition's;
* the sampling ops where their grid or offsets move (:mod:`onnxplain.rules.rescale_sampling`) and STFT with an
  active window (:mod:`onnxplain.rules.rescale_spectral`) take exact Shapley values.

Ops tagged ``linear`` in the standard table (:mod:`onnxplain.vjp.registry`) keep their gradient, which conserves
the difference; every op tagged ``nonlinear`` has a rule here.

Reference values come from :class:`onnxplain.rules.Partner` (``ctx.ref``): the expanded batch is
``[inputs; references]`` and ``ctx.ref(t)`` swaps its halves.  Tensors that do not depend on the
attributed input are the same in both halves (or have no batch axis), so they are their own reference.
"""
from __future__ import annotations

from . import rescale, rescale_fused, rescale_products, rescale_sampling, rescale_spectral

#: The rule families, each a module with its own ``TABLE``; an op's DeepLIFT rules live in one family.
FAMILIES = (rescale, rescale_fused, rescale_products, rescale_sampling, rescale_spectral)


def assemble(*tables: dict) -> dict:
    """One override table from the families' tables, which must not share an op."""
    table: dict = {}
    for part in tables:
        for op, rules in part.items():
            if op in table:
                raise ValueError(f"two DeepLIFT rule families give {op} a rule")
            table[op] = list(rules)
    return table


#: DeepLIFT's (Rescale) override table, by op type.
RESCALE = assemble(*(family.TABLE for family in FAMILIES))
