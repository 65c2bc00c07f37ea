"""Reductions: ReduceSum, ReduceMean, ReduceMax/Min, ReduceL1/L2, ReduceSumSquare, ReduceLogSum(Exp).

Every rule has the form ``dx = keep(dy) * local(x, keep(y))``: ``keep`` puts
back the reduced axes as size-1 dims when ``keepdims=0`` (so the product
broadcasts against x), and ``local`` is the derivative of the reduced function
with respect to one element.  ReduceSum takes its axes as an input; the others
took them as an attribute up to opset 17 and as an input from opset 18, so each
of them is registered twice (``since=1`` and ``since=18``).
"""
from __future__ import annotations


from . import register
from ._common import Reduction


def _reduction(op_type: str, axes_input_since: int = 18):
    """Register ``fn(r, dy)`` for op_type with axes as an attribute before opset
    ``axes_input_since`` and as an input from it on."""
    def deco(fn):
        def make(from_input):
            def rule(ctx):
                return [fn(Reduction(ctx, from_input), ctx.dy[0])] + [None] * (len(ctx.x) - 1)
            rule.__name__ = fn.__name__ + ("_axes_input" if from_input else "_axes_attr")
            rule.__doc__ = fn.__doc__
            return rule
        if axes_input_since > 1:
            register(op_type)(make(False))
        register(op_type, since=axes_input_since)(make(True))
        return fn
    return deco


@_reduction("ReduceSum", axes_input_since=1)  # axes moved to an input at opset 13 (< our minimum 17)
def vjp_reduce_sum(r, dy):
    """dx = expand(dy)."""
    return r.expand(r.keep(dy))


@_reduction("ReduceMean")
def vjp_reduce_mean(r, dy):
    """dx = expand(dy) / n, n = elements per output."""
    return r.expand(r.b.div(r.keep(dy), r.count()))


@_reduction("ReduceSumSquare")
def vjp_reduce_sum_square(r, dy):
    """dx = 2 x dy."""
    return r.b.mul(r.keep(dy), r.b.mul(r.x, r.b.like(2.0, r.x)))


@_reduction("ReduceL1")
def vjp_reduce_l1(r, dy):
    """dx = sign(x) dy."""
    return r.b.mul(r.keep(dy), r.b.op("Sign", r.x))


@_reduction("ReduceL2")
def vjp_reduce_l2(r, dy):
    """dx = x / y dy, 0 where the norm y is 0."""
    b = r.b
    y = r.keep(r.y)
    zero = b.like(0.0, r.x)
    is_zero = b.op("Equal", y, zero)
    safe = b.where(is_zero, b.like(1.0, r.x), y)
    return b.mul(r.keep(dy), b.where(is_zero, zero, b.div(r.x, safe)))


@_reduction("ReduceLogSum")
def vjp_reduce_log_sum(r, dy):
    """dx = dy / exp(y) = dy / sum(x)."""
    return r.expand(r.b.div(r.keep(dy), r.b.op("Exp", r.keep(r.y))))


@_reduction("ReduceLogSumExp")
def vjp_reduce_log_sum_exp(r, dy):
    """dx = exp(x - y) dy (the softmax over the reduced axes)."""
    return r.b.mul(r.keep(dy), r.b.op("Exp", r.b.sub(r.x, r.keep(r.y))))


def _extremum(r, dy):
    """dx = dy at the positions equal to the extremum, split equally among ties."""
    b = r.b
    hit = b.op("CastLike", b.op("Equal", r.x, r.keep(r.y)), r.x)
    return b.mul(b.div(r.keep(dy), r.sum_keep(hit)), hit)


_reduction("ReduceMax")(_extremum)
_reduction("ReduceMin")(_extremum)
