"""Arithmetic: Add, Sub, Mul, Div with broadcasting, and unary maths."""
from __future__ import annotations

from . import elementwise, register


@register("Add", "Sum", broadcast=True)
def vjp_add(ctx):
    return [ctx.dy[0] if ctx.needs(i) else None for i in range(len(ctx.x))]


@register("Sub", broadcast=True)
def vjp_sub(ctx):
    return [ctx.dy[0] if ctx.needs(0) else None,
            ctx.b.neg(ctx.dy[0]) if ctx.needs(1) else None]


@register("Mul", broadcast=True)
def vjp_mul(ctx):
    b, (a, c), dy = ctx.b, ctx.x, ctx.dy[0]
    return [b.mul(dy, c) if ctx.needs(0) else None,
            b.mul(dy, a) if ctx.needs(1) else None]


@register("Div", broadcast=True)
def vjp_div(ctx):
    b, (a, c), dy = ctx.b, ctx.x, ctx.dy[0]
    da = b.div(dy, c) if ctx.needs(0) else None
    dc = b.neg(b.div(b.mul(dy, ctx.y[0]), c)) if ctx.needs(1) else None
    return [da, dc]


elementwise("Neg", lambda ctx, x, y: ctx.b.like(-1.0, x))
