"""epsilon-LRP as a modified gradient (Bach et al., 2015; Ancona et al., 2018).

At a unary nonlinearity ``y = f(z)`` the cotangent is ``dy * f(z) / (z + eps * s(z))``
with ``s(z) = +1 where z >= 0, else -1``; linear ops keep their gradient, so the
attribution ``x * modified gradient`` redistributes relevance layer by layer.
"""
from __future__ import annotations

from ..vjp import register
from . import NONLINEAR_UNARY

EPSILON: dict = {}


def epsilon_unary(ctx):
    """``dz = dy * y / (z + eps * s(z))``."""
    b, z, y = ctx.b, ctx.x[0], ctx.y[0]
    stabilised = b.add(z, b.mul(b.cast_like(ctx.params["epsilon"], z), b.sign_pm1(z)))
    return [b.mul(ctx.dy[0], b.div(y, stabilised))] + [None] * (len(ctx.x) - 1)


for _op in NONLINEAR_UNARY:
    register(_op, table=EPSILON)(epsilon_unary)
