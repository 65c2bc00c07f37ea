"""Guided backpropagation and deconvolution at ReLU (Springenberg et al., 2015; Zeiler & Fergus, 2014).

Captum's forms: guided backprop passes ``relu(dy)`` through the ReLU's gradient
mask, deconvolution passes ``relu(dy)`` whatever the forward input was.
"""
from __future__ import annotations

from ..vjp import register

GUIDED: dict = {}
DECONVOLUTION: dict = {}


@register("Relu", table=GUIDED)
def guided_relu(ctx):
    """``dz = relu(dy) * (z > 0)``."""
    b, z = ctx.b, ctx.x[0]
    return [b.mul(b.op("Relu", ctx.dy[0]), b.cast_like(b.op("Greater", z, b.like(0.0, z)), z))]


@register("Relu", table=DECONVOLUTION)
def deconvolution_relu(ctx):
    """``dz = relu(dy)``."""
    return [ctx.b.op("Relu", ctx.dy[0])]
