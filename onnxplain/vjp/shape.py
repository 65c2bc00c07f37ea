"""Shape and data movement: Reshape, Transpose, Concat, Slice, Gather, ... and non-differentiable ops."""
from __future__ import annotations

from . import identity, register, zero

identity("Identity", "Dropout")
zero("Shape", "Size", "Constant", "ConstantOfShape", "Range", "NonZero",
     "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor",
     "IsNaN", "IsInf", "ArgMax", "ArgMin", "RandomNormal", "RandomUniform", "RandomNormalLike",
     "RandomUniformLike", "EyeLike", "Sign", "Floor", "Ceil", "Round")


@register("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def vjp_reshape(ctx):
    """Ops that only change the shape: reshape the cotangent back."""
    return [ctx.b.reshape_like(ctx.dy[0], ctx.x[0])] + [None] * (len(ctx.x) - 1)
