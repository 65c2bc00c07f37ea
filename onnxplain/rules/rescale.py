"""DeepLIFT's Rescale rule (Shrikumar et al., 2017; Ancona et al., 2018).

At a unary nonlinearity ``y = f(z)`` the cotangent is ``dy * (f(z) - f(z_ref)) /
(z - z_ref)``, and the plain gradient where ``|z - z_ref| < eps``.  MaxPool uses
a cross-max rule that keeps summation-to-delta; Softmax is rescaled per row
along its axis.  Everything else (linear ops, products) keeps its standard rule.
"""
from __future__ import annotations

from ..vjp import register
from ..vjp.pool import max_pool_indices
from . import NONLINEAR_UNARY, standard_rule

RESCALE: dict = {}


def _safe_ratio(b, num: str, den: str, small: str) -> str:
    """``num / den`` where ``den`` is not small, 0 elsewhere (no inf or NaN anywhere)."""
    safe = b.where(small, b.like(1.0, den), den)
    return b.div(num, safe)


def _small(ctx, delta: str) -> str:
    """``|delta| < eps``, and true where ``delta`` is NaN (``-inf - -inf`` at masked attention scores):
    the Rescale rule falls back to the gradient there."""
    b = ctx.b
    return b.op("Not", b.op("GreaterOrEqual", b.op("Abs", delta), b.cast_like(ctx.params["eps"], delta)))


def rescale_unary(ctx):
    """``dz = dy * (y - y_ref) / (z - z_ref)``, the gradient where ``|z - z_ref| < eps``."""
    b, z, y = ctx.b, ctx.x[0], ctx.y[0]
    dz_in, dy_out = b.sub(z, ctx.ref(z)), b.sub(y, ctx.ref(y))
    small = _small(ctx, dz_in)
    grads = standard_rule(ctx.node.op_type, ctx.opset).fn(ctx)
    rescaled = b.mul(ctx.dy[0], _safe_ratio(b, dy_out, dz_in, small))
    return [b.where(small, grads[0], rescaled)] + [None] * (len(ctx.x) - 1)


for _op in NONLINEAR_UNARY:
    register(_op, table=RESCALE)(rescale_unary)


@register("Softmax", table=RESCALE)
def rescale_softmax(ctx):
    """Elementwise rescale, then centred per row along the softmax axis (softmax ignores shifts)."""
    b = ctx.b
    g = rescale_unary(ctx)[0]
    axis = ctx.attr("axis", -1)
    return [b.sub(g, b.reduce("ReduceMean", g, [axis], keepdims=1))]


@register("MaxPool", table=RESCALE)
def rescale_maxpool(ctx):
    """Cross-max rule: ``max(o, o_ref) - o_ref`` goes to the input's argmax, ``o - max(o, o_ref)``
    to the reference's argmax, each divided by that position's ``x - x_ref``."""
    b, x, o = ctx.b, ctx.x[0], ctx.y[0]
    indices = max_pool_indices(ctx)
    o_ref = ctx.ref(o)
    top = b.op("Max", o, o_ref)
    to_input = b.mul(ctx.dy[0], b.sub(top, o_ref))
    to_reference = b.mul(ctx.dy[0], b.sub(o, top))
    # the second half's indices point into the second half: move them onto the partner rows
    offset = ctx.ref.bottom_offset(x)
    ref_indices = ctx.ref(b.op("Sub", indices, offset))
    half = ctx.ref.half(o)
    # only the first half of the rows carries target cotangents; keep both halves' terms from it
    flat_size = b.op("Size", x)
    updates = b.op("Concat", _flat(b, _first_half(b, to_input, half)), _flat(b, _first_half(b, to_reference, half)),
                   axis=0)
    where = b.op("Concat", _flat(b, _first_half(b, indices, half)), _flat(b, _first_half(b, ref_indices, half)),
                 axis=0)
    zeros = b.op("ConstantOfShape", b.reshape(flat_size, b.ints([1])))
    summed = b.op("ScatterElements", b.cast_like(zeros, updates), where, updates, axis=0, reduction="add")
    dx_total = b.reshape_like(summed, x)
    delta = b.sub(x, ctx.ref(x))
    return [_safe_ratio(b, dx_total, delta, _small(ctx, delta))]


def _first_half(b, t: str, half: str) -> str:
    return b.op("Slice", t, b.ints([0]), half, b.ints([0]))


def _flat(b, t: str) -> str:
    return b.reshape(t, b.ints([-1]))
