"""The table of standard backward rules, one small function per op type.

A rule receives a :class:`onnxplain.backward.VJPContext` (names of the node's
inputs ``ctx.x``, outputs ``ctx.y`` and output cotangents ``ctx.dy``; the
builder ``ctx.b``) and returns one cotangent name per input, ``None`` where an
input gets none.  Rules for broadcasting ops are registered with
``broadcast=True``; the walker then sums their cotangents back to each input's
shape.  Rules never compute weight gradients: ``ctx.needs(i)`` says which
inputs depend on an attributed input.

The table, the decorator and the tags of the ops live in :mod:`onnxplain.vjp.registry`; importing this
package imports the families (one module each), which registers their rules.
"""
from __future__ import annotations

from . import arithmetic, activations, indexing, linalg, pool, norm, reduce, sampling, shape  # noqa: F401
from . import control_flow, recurrent, spectral  # noqa: F401
from .registry import RULES, Rule, register

__all__ = ["RULES", "Rule", "register"]
