"""Reductions: ReduceSum, ReduceMean, ReduceMax/Min, ReduceL1/L2, ReduceSumSquare, ReduceLogSum(Exp).

Every rule has the form ``dx = keep(dy) * local(x, keep(y))``: ``keep`` puts
back the reduced axes as size-1 dims when ``keepdims=0`` (so the product
broadcasts against x), and ``local`` is the derivative of the reduced function
with respect to one element.  ReduceSum takes its axes as an input; the others
took them as an attribute up to opset 17 and as an input from opset 18, so each
of them is registered twice (``since=1`` and ``since=18``).
"""
from __future__ import annotations

import numpy as np

from . import register
from .shape import const_value, shape_vec, static_shape


class _Reduction:
    """What a reduction rule needs: its axes (a list, a tensor name, or None for the default)."""

    def __init__(self, ctx, axes_from_input: bool):
        self.ctx, self.b = ctx, ctx.b
        self.x, self.y = ctx.x[0], ctx.y[0]
        self.keepdims = ctx.attr("keepdims", 1)
        self.noop = ctx.attr("noop_with_empty_axes", 0)
        if axes_from_input:
            name = ctx.x[1] if len(ctx.x) > 1 and ctx.x[1] else None
            value = const_value(self.b, name)
            self.axes = name if value is None else ([int(a) for a in value.reshape(-1)] or None)
        else:
            axes = ctx.attr("axes")
            self.axes = [int(a) for a in axes] if axes else None

    def keep(self, t: str) -> str:
        """A tensor shaped like y, reshaped so that it broadcasts against x."""
        if self.keepdims or self.axes is None:  # all axes reduced to a scalar, or nothing reduced
            return t
        axes = self.axes if isinstance(self.axes, str) else self.b.ints(self.axes)
        return self.b.op("Unsqueeze", t, axes)

    def sum_keep(self, t: str) -> str:
        """ReduceSum of a tensor shaped like x over the same axes, keeping dims."""
        axes = self.axes if isinstance(self.axes, str) or self.axes is None else self.b.ints(self.axes)
        return self.b.op("ReduceSum", t, axes, keepdims=1, noop_with_empty_axes=self.noop or None)

    def expand(self, t: str) -> str:
        return self.b.op("Expand", t, shape_vec(self.b, self.x))

    def count(self) -> str:
        """Number of elements reduced into each output, as a float scalar."""
        sx, sy = static_shape(self.b, self.x), static_shape(self.b, self.y)
        if sx is not None and sy is not None:
            return self.b.like(float(np.prod(sx)) / float(max(np.prod(sy), 1)), self.x)
        n = self.b.div(self.b.op("Size", self.x), self.b.op("Size", self.y))
        return self.b.cast_like(n, self.x)


def _reduction(op_type: str, axes_input_since: int = 18):
    """Register ``fn(r, dy)`` for op_type with axes as an attribute before opset
    ``axes_input_since`` and as an input from it on."""
    def deco(fn):
        def make(from_input):
            def rule(ctx):
                return [fn(_Reduction(ctx, from_input), ctx.dy[0])] + [None] * (len(ctx.x) - 1)
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
