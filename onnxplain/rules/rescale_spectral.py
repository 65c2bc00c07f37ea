"""DeepLIFT rules of the spectral ops.

DFT is linear in its signal, and STFT in its signal for a fixed window: the plain gradient conserves the
difference there, so they need no rule of their own.  STFT whose signal and window both depend on the
attributed input is bilinear, ``y = B(x, w)``; the Shapley values of its two inputs are the plain gradient
taken at the midpoints, ``B(x, w) - B(x_ref, w_ref) = B(x - x_ref, (w + w_ref) / 2) + B((x + x_ref) / 2, w - w_ref)``,
as for the other bilinear maps (:func:`onnxplain.rules.rescale.shapley_bilinear`).
"""
from __future__ import annotations

import dataclasses

import onnx

from ..vjp import register
from . import standard_rule
from .rescale_common import midpoint

#: This family's rules (assembled with the others into :data:`onnxplain.rules.deeplift.RESCALE`).
TABLE: dict = {}

SIGNAL, WINDOW = 0, 2   # STFT's inputs; frame_step and frame_length are integers


@register("STFT", table=TABLE)
def shapley_stft(ctx):
    """STFT: each operand's cotangent read at the other's midpoint ``(t + t_ref) / 2`` when signal and window
    both depend on the attributed input; the plain gradient when only one does (linear in it)."""
    rule = standard_rule(ctx.node.op_type, ctx.opset)
    both = all(len(ctx.x) > i and ctx.x[i] and ctx.needs(i) for i in (SIGNAL, WINDOW))
    if not both:
        return rule.fn(ctx)
    node = onnx.NodeProto()
    node.CopyFrom(ctx.node)
    mids = {i: midpoint(ctx, ctx.x[i]) for i in (SIGNAL, WINDOW)}
    for i, mid in mids.items():
        node.input[i] = mid
    return rule.fn(dataclasses.replace(ctx, node=node, active=ctx.active | set(mids.values())))
