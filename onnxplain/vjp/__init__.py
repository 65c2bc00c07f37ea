"""The table of standard backward rules, one small function per op type.

A rule receives a :class:`onnxplain.backward.VJPContext` (names of the node's
inputs ``ctx.x``, outputs ``ctx.y`` and output cotangents ``ctx.dy``; the
builder ``ctx.b``) and returns one cotangent name per input, ``None`` where an
input gets none.  Rules for broadcasting ops are registered with
``broadcast=True``; the walker then sums their cotangents back to each input's
shape.  Rules never compute weight gradients: ``ctx.needs(i)`` says which
inputs depend on an attributed input.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Rule:
    fn: Callable
    broadcast: bool = False
    since: int = 1  # first opset of the default domain this rule applies to
    cuts: bool = False  # the op passes no gradient at all (integer outputs, piecewise constant)


RULES: dict[str, list[Rule]] = {}


def register(*op_types: str, broadcast: bool = False, since: int = 1, table: dict | None = None,
             cuts: bool = False):
    """Decorator: register ``fn`` as the rule of ``op_types`` (from opset ``since`` on); ``cuts``: the op
    passes no gradient, so a path through it carries none."""
    target = RULES if table is None else table

    def deco(fn):
        for op in op_types:
            rules = target.setdefault(op, [])
            rules.append(Rule(fn, broadcast, since, cuts))
            rules.sort(key=lambda r: -r.since)
        return fn
    return deco


def zero(*op_types: str) -> None:
    """Ops whose outputs carry no gradient (comparisons, shapes, random draws...)."""
    register(*op_types, cuts=True)(lambda ctx: [None] * len(ctx.x))


def identity(*op_types: str) -> None:
    """Ops that pass their first input's cotangent through unchanged."""
    register(*op_types)(lambda ctx: [ctx.dy[0]] + [None] * (len(ctx.x) - 1))


def elementwise(op_type: str, derivative: Callable) -> None:
    """Unary elementwise ops: ``dx = dy * derivative(ctx, x, y)``."""
    @register(op_type)
    def rule(ctx):
        d = derivative(ctx, ctx.x[0], ctx.y[0])
        return [ctx.b.mul(ctx.dy[0], d)] + [None] * (len(ctx.x) - 1)
    rule.__name__ = f"vjp_{op_type.lower()}"


# Importing the families registers their rules.
from . import arithmetic, activations, indexing, linalg, pool, norm, reduce, sampling, shape  # noqa: E402,F401
from . import control_flow, recurrent, spectral  # noqa: E402,F401
