"""Layer-wise relevance propagation as modified gradients: epsilon-LRP (Bach et al., 2015; Ancona et al., 2018).

At a unary nonlinearity ``y = f(z)`` (tag ``nonlinear``, flagged ``unary`` in :mod:`onnxplain.vjp.registry`)
the cotangent is ``dy * f(z) / (z + eps * s(z))`` with ``s(z) = +1 where z >= 0, else -1``; every other op
keeps its gradient, so the attribution ``x * modified gradient`` redistributes relevance layer by layer.

A table is built from a mapping op type -> rule by :func:`lrp_table`; other LRP variants (composites that give
some layers a rule of their own) are mappings of the same kind.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

from ..vjp import register
from . import NONLINEAR_UNARY


def epsilon_unary(ctx):
    """``dz = dy * y / (z + eps * s(z))``."""
    b, z, y = ctx.b, ctx.x[0], ctx.y[0]
    stabilised = b.add(z, b.mul(b.cast_like(ctx.params["epsilon"], z), b.sign_pm1(z)))
    return [b.mul(ctx.dy[0], b.div(y, stabilised))] + [None] * (len(ctx.x) - 1)


def lrp_table(rules: Mapping[str, Callable]) -> dict:
    """An override table giving each op type of ``rules`` its rule (from opset 1 on)."""
    table: dict = {}
    for op, fn in rules.items():
        register(op, table=table)(fn)
    return table


#: epsilon-LRP's override table: :func:`epsilon_unary` at every unary nonlinearity.
EPSILON = lrp_table({op: epsilon_unary for op in NONLINEAR_UNARY})
