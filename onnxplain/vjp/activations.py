"""Activations: elementwise nonlinearities, Softmax and LogSoftmax."""
from __future__ import annotations

from . import elementwise


def _relu_derivative(ctx, x, y):
    b = ctx.b
    return b.cast_like(b.op("Greater", x, b.like(0.0, x)), x)


elementwise("Relu", _relu_derivative)
