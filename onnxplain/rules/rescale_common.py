"""Helpers shared by the DeepLIFT rule families (:mod:`onnxplain.rules.rescale` and the ``rescale_*`` modules).

Reference values come from ``ctx.ref`` (:class:`onnxplain.rules.Partner`); tensors that do not depend on the
attributed input are their own reference.  ``ctx.params["eps"]`` is the threshold below which a difference
counts as zero and a rule falls back to the gradient.
"""
from __future__ import annotations

import math

import onnx

from . import standard_rule


# ------------------------------------------------------------------------------------ ratios and fallbacks
def safe_ratio(b, num: str, den: str, small: str) -> str:
    """``num / den`` where ``den`` is not small, 0 elsewhere (no inf or NaN anywhere)."""
    safe = b.where(small, b.like(1.0, den), den)
    return b.div(num, safe)


def below_eps(ctx, delta: str) -> str:
    """``|delta| < eps``, and true where ``delta`` is NaN (``-inf - -inf`` at masked attention scores):
    the Rescale rule falls back to the gradient there."""
    b = ctx.b
    return b.op("Not", b.op("GreaterOrEqual", b.op("Abs", delta), b.cast_like(ctx.params["eps"], delta)))


def plain_gradient(ctx) -> list:
    """The cotangents the node's standard rule gives (the fallback of a modified rule)."""
    return standard_rule(ctx.node.op_type, ctx.opset).fn(ctx)


def node_attributes(node: onnx.NodeProto) -> dict:
    """The attributes of ``node`` as Python values (to emit the same op again)."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def shapley_weight(n: int, s: int) -> float:
    """Weight of a coalition of ``s`` others in player's Shapley value among ``n`` players."""
    return math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n)


# ------------------------------------------------------------------------------------ references
def reference(ctx, t: str) -> str:
    """The reference value of input ``t``: its partner rows when it depends on the attributed input,
    ``t`` itself otherwise (constants, weights, passed-through masks)."""
    return ctx.ref(t) if t in ctx.active else t


def midpoint(ctx, t: str) -> str:
    """``(t + t_ref) / 2``, typed like ``t`` (``t`` itself when it does not depend on the input)."""
    b = ctx.b
    if t not in ctx.active:
        return t
    mid = b.mul(b.add(t, ctx.ref(t)), b.like(0.5, t))
    b.set_type(mid, b.elem_type(t), b.shape(t))
    return mid


# ------------------------------------------------------------------------------------ extrema
def extremum_multipliers(ctx, x: str, z: str, keep, sum_keep, top_op: str) -> tuple[str, str, str]:
    """The cross-extremum rule's multipliers of ``x`` for its extremum ``z`` over some axes (``top_op="Max"``
    or ``"Min"``): ``ext(z, z_ref) - z_ref`` goes to the input's extremum positions and ``z - ext(z, z_ref)`` to
    the reference's, each divided by that position's ``x - x_ref`` (ties split equally); both parts vanish where
    ``x - x_ref`` does, so ``sum(m * (x - x_ref)) = z - z_ref``.  ``keep`` makes a z-shaped tensor broadcast
    against x, ``sum_keep`` sums an x-shaped one over the reduced axes keeping dims.

    Returns ``(m, small, share)``: ``m`` (0 where ``small``), the positions where nothing moved, and
    ``share``, the extremum's gradient (its positions in x, ties split), for the caller's fallback there.
    Each multiplier lies in [0, 1]."""
    b = ctx.b
    x_ref = ctx.ref(x)
    z, z_ref = keep(z), keep(ctx.ref(z))
    top = b.op(top_op, z, z_ref)
    hit, hit_ref = (b.cast_like(b.op("Equal", t, zt), x) for t, zt in ((x, z), (x_ref, z_ref)))
    share = b.div(hit, sum_keep(hit))
    to_input = b.mul(b.sub(top, z_ref), share)
    to_reference = b.div(b.mul(b.sub(z, top), hit_ref), sum_keep(hit_ref))
    delta = b.sub(x, x_ref)
    small = below_eps(ctx, delta)
    return safe_ratio(b, b.add(to_input, to_reference), delta, small), small, share
