"""Activations: elementwise nonlinearities, Clip, Gelu, Softmax and LogSoftmax, Hardmax (no gradient).

At kinks the rules follow PyTorch's autograd conventions (e.g. Relu'(0) = 0,
Elu'(0) = alpha, Clip passes the gradient at its bounds).
"""
from __future__ import annotations

import math

from .registry import elementwise, register
from ._common import masked
from .pool import relu_mask_moved_to_pool


def _gate(ctx, cond: str, dy: str) -> list:
    """dx = dy where ``cond`` holds, 0 elsewhere (for single-input ops; :func:`masked`)."""
    return [masked(ctx.b, dy, cond)] + [None] * (len(ctx.x) - 1)


# ---------------------------------------------------------------- piecewise linear
@register("Relu", tag="nonlinear", unary=True)
def vjp_relu(ctx):
    """y = max(x, 0): dx = dy * [x > 0], read as [y > 0] (the same set): the mask comes from the
    Relu's output, so the pre-activation is read by nothing else and onnxruntime fuses Conv+Relu.
    A MaxPool that alone reads y applies the mask itself, at the pooled size
    (:func:`onnxplain.vjp.pool.relu_mask_at_pool`): dy then passes unchanged."""
    b, y = ctx.b, ctx.y[0]
    if relu_mask_moved_to_pool(ctx):
        return [ctx.dy[0]]
    return _gate(ctx, b.op("Greater", y, b.like(0.0, y)), ctx.dy[0])


@register("LeakyRelu", tag="nonlinear", unary=True)
def vjp_leaky_relu(ctx):
    """y = x if x > 0 else alpha * x: dx = dy * (1 if x > 0 else alpha)."""
    b, x = ctx.b, ctx.x[0]
    alpha = ctx.attr("alpha", 0.01)
    slope = b.where(b.op("Greater", x, b.like(0.0, x)), b.like(1.0, x), b.like(alpha, x))
    return [b.mul(ctx.dy[0], slope)]


@register("ThresholdedRelu", tag="nonlinear", unary=True)
def vjp_thresholded_relu(ctx):
    """y = x if x > alpha else 0: dx = dy * [x > alpha]."""
    b, x = ctx.b, ctx.x[0]
    return _gate(ctx, b.op("Greater", x, b.like(ctx.attr("alpha", 1.0), x)), ctx.dy[0])


@register("PRelu", tag="nonlinear", unary=True, broadcast=True)
def vjp_prelu(ctx):
    """y = x if x > 0 else slope * x: dx = dy * (1 if x > 0 else slope), dslope = dy * x where x <= 0."""
    b, (x, slope), dy = ctx.b, ctx.x, ctx.dy[0]
    positive = b.op("Greater", x, b.like(0.0, x))
    dx = b.where(positive, dy, b.mul(dy, slope)) if ctx.needs(0) else None
    dslope = b.where(positive, b.like(0.0, x), b.mul(dy, x)) if ctx.needs(1) else None
    return [dx, dslope]


@register("Shrink", tag="nonlinear", unary=True)
def vjp_shrink(ctx):
    """y = x - bias if x > lambd, x + bias if x < -lambd, else 0: dx = dy * [x < -lambd or x > lambd]
    (0 at x = +-lambd, as torch's hardshrink and softshrink)."""
    b, x = ctx.b, ctx.x[0]
    lambd = b.like(ctx.attr("lambd", 0.5), x)
    outside = b.op("Or", b.op("Less", x, b.neg(lambd)), b.op("Greater", x, lambd))
    return _gate(ctx, outside, ctx.dy[0])


@register("HardSigmoid", tag="nonlinear", unary=True)
def vjp_hard_sigmoid(ctx):
    """y = clip(alpha * x + beta, 0, 1): dx = dy * alpha strictly inside (0, 1), 0 elsewhere."""
    b, y = ctx.b, ctx.y[0]
    alpha = ctx.attr("alpha", 0.2)
    inside = b.op("And", b.op("Greater", y, b.like(0.0, y)), b.op("Less", y, b.like(1.0, y)))
    return _gate(ctx, inside, b.mul(ctx.dy[0], b.like(alpha, y)))


@register("HardSwish", tag="nonlinear", unary=True)
def vjp_hard_swish(ctx):
    """y = x * clip(x / 6 + 1/2, 0, 1): dx = dy * (0 if x <= -3, x / 3 + 1/2 if x < 3, else 1) (torch's ends)."""
    b, x = ctx.b, ctx.x[0]
    ramp = b.add(b.mul(x, b.like(1.0 / 3.0, x)), b.like(0.5, x))
    upper = b.where(b.op("Less", x, b.like(3.0, x)), ramp, b.like(1.0, x))
    slope = b.where(b.op("LessOrEqual", x, b.like(-3.0, x)), b.like(0.0, x), upper)
    return [b.mul(ctx.dy[0], slope)]


@register("Clip", tag="nonlinear", unary=True, broadcast=True)
def vjp_clip(ctx):
    """y = clip(x, lo, hi): dx = dy where lo <= x <= hi (bounds included, as torch.clamp); dlo, dhi get dy outside."""
    b, x, dy = ctx.b, ctx.x[0], ctx.dy[0]
    lo = ctx.x[1] if len(ctx.x) > 1 and ctx.x[1] else None
    hi = ctx.x[2] if len(ctx.x) > 2 and ctx.x[2] else None
    zero = b.like(0.0, x)
    grads = [None] * len(ctx.x)
    conds = []
    if lo is not None:
        conds.append(b.op("GreaterOrEqual", x, lo))
    if hi is not None:
        conds.append(b.op("LessOrEqual", x, hi))
    if ctx.needs(0):
        grads[0] = dy if not conds else b.where(conds[0] if len(conds) == 1 else b.op("And", *conds), dy, zero)
    if lo is not None and ctx.needs(1):   # torch: x < lo (and lo < hi when both are given)
        below = b.op("Less", x, lo)
        if hi is not None:
            below = b.op("And", below, b.op("Less", lo, hi))
        grads[1] = b.where(below, dy, zero)
    if hi is not None and ctx.needs(2):   # torch: x > hi (or hi < lo when both are given)
        above = b.op("Greater", x, hi)
        if lo is not None:
            above = b.op("Or", above, b.op("Less", hi, lo))
        grads[2] = b.where(above, dy, zero)
    return grads


# ---------------------------------------------------------------- exponential family
@register("Elu", tag="nonlinear", unary=True)
def vjp_elu(ctx):
    """y = x if x > 0 else alpha * (exp(x) - 1): dx = dy * (1 if x > 0 else y + alpha)."""
    b, x, y = ctx.b, ctx.x[0], ctx.y[0]
    alpha = ctx.attr("alpha", 1.0)
    slope = b.where(b.op("Greater", x, b.like(0.0, x)), b.like(1.0, x), b.add(y, b.like(alpha, y)))
    return [b.mul(ctx.dy[0], slope)]


@register("Selu", tag="nonlinear", unary=True)
def vjp_selu(ctx):
    """y = gamma * (x if x > 0 else alpha * (exp(x) - 1)): dx = dy * (gamma if x > 0 else y + gamma * alpha)."""
    b, x, y = ctx.b, ctx.x[0], ctx.y[0]
    alpha = ctx.attr("alpha", 1.67326319217681884765625)
    gamma = ctx.attr("gamma", 1.05070102214813232421875)
    slope = b.where(b.op("Greater", x, b.like(0.0, x)), b.like(gamma, x), b.add(y, b.like(gamma * alpha, y)))
    return [b.mul(ctx.dy[0], slope)]


@register("Celu", tag="nonlinear", unary=True)
def vjp_celu(ctx):
    """y = max(0, x) + min(0, alpha * (exp(x / alpha) - 1)): dx = dy * (1 if x > 0 else y / alpha + 1)."""
    b, x, y = ctx.b, ctx.x[0], ctx.y[0]
    alpha = ctx.attr("alpha", 1.0)
    neg = b.add(b.mul(y, b.like(1.0 / alpha, y)), b.like(1.0, y))
    slope = b.where(b.op("Greater", x, b.like(0.0, x)), b.like(1.0, x), neg)
    return [b.mul(ctx.dy[0], slope)]


def _sigmoid_derivative(ctx, x, y):
    """sigmoid' = y * (1 - y)."""
    b = ctx.b
    return b.mul(y, b.sub(b.like(1.0, y), y))


def _tanh_derivative(ctx, x, y):
    """tanh' = 1 - y^2."""
    b = ctx.b
    return b.sub(b.like(1.0, y), b.mul(y, y))


def _softplus_derivative(ctx, x, y):
    """softplus' = sigmoid(x)."""
    return ctx.b.op("Sigmoid", x)


def _softsign_derivative(ctx, x, y):
    """softsign' = 1 / (1 + |x|)^2."""
    b = ctx.b
    t = b.add(b.op("Abs", x), b.like(1.0, x))
    return b.op("Reciprocal", b.mul(t, t))


def _mish_derivative(ctx, x, y):
    """mish = x * tanh(softplus(x)): mish' = t + x * (1 - t^2) * sigmoid(x), t = tanh(softplus(x))."""
    b = ctx.b
    t = b.op("Tanh", b.op("Softplus", x))
    sech2 = b.sub(b.like(1.0, x), b.mul(t, t))
    return b.add(t, b.mul(b.mul(x, sech2), b.op("Sigmoid", x)))


@register("Swish", tag="nonlinear", unary=True, since=24)
def vjp_swish(ctx):
    """y = x * s, s = sigmoid(alpha * x): dx = dy * (s + alpha * x * s * (1 - s)) = dy * (s + alpha * y * (1 - s))."""
    b, x, y = ctx.b, ctx.x[0], ctx.y[0]
    alpha = b.like(ctx.attr("alpha", 1.0), x)
    s = b.op("Sigmoid", b.mul(alpha, x))
    slope = b.add(s, b.mul(b.mul(alpha, y), b.sub(b.like(1.0, x), s)))
    return [b.mul(ctx.dy[0], slope)]


elementwise("Sigmoid", _sigmoid_derivative, tag="nonlinear")
elementwise("Tanh", _tanh_derivative, tag="nonlinear")
elementwise("Softplus", _softplus_derivative, tag="nonlinear")
elementwise("Softsign", _softsign_derivative, tag="nonlinear")
elementwise("Mish", _mish_derivative, tag="nonlinear")


# ---------------------------------------------------------------- Gelu (opset 20)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715


@register("Gelu", tag="nonlinear", unary=True, since=20)
def vjp_gelu(ctx):
    """y = x * Phi(x): dx = dy * (Phi(x) + x * phi(x)); the tanh form differentiates its own approximation."""
    b, x = ctx.b, ctx.x[0]
    if ctx.attr("approximate", "none") in ("tanh", b"tanh"):
        slope = _gelu_tanh_derivative(b, x)
    else:
        cdf = b.mul(b.like(0.5, x), b.add(b.like(1.0, x), b.op("Erf", b.mul(x, b.like(1.0 / math.sqrt(2.0), x)))))
        pdf = b.mul(b.like(1.0 / math.sqrt(2.0 * math.pi), x), b.op("Exp", b.mul(b.mul(x, x), b.like(-0.5, x))))
        slope = b.add(cdf, b.mul(x, pdf))
    return [b.mul(ctx.dy[0], slope)]


def _gelu_tanh_derivative(b, x: str) -> str:
    """t = tanh(k (x + c x^3)): d/dx [x (1 + t) / 2] = (1 + t) / 2 + x (1 - t^2) k (1 + 3 c x^2) / 2."""
    x2 = b.mul(x, x)
    inner = b.mul(b.like(_SQRT_2_OVER_PI, x), b.add(x, b.mul(b.like(_GELU_CUBIC, x), b.mul(x2, x))))
    t = b.op("Tanh", inner)
    half_one_plus_t = b.mul(b.like(0.5, x), b.add(b.like(1.0, x), t))
    dinner = b.add(b.like(0.5 * _SQRT_2_OVER_PI, x), b.mul(b.like(1.5 * _SQRT_2_OVER_PI * _GELU_CUBIC, x), x2))
    return b.add(half_one_plus_t, b.mul(b.mul(x, b.sub(b.like(1.0, x), b.mul(t, t))), dinner))


# ---------------------------------------------------------------- Hardmax: piecewise constant
@register("Hardmax", tag="no-gradient")
def vjp_hardmax(ctx):
    """y = one_hot(argmax(x, axis)): piecewise constant, so it passes no gradient (dx = 0, as torch's
    one_hot(argmax) does; like Floor or ArgMax, a path through it carries none).  A row and its reference
    may have different argmax, so DeepLIFT has a rule of its own that carries ``y - y_ref``
    (:mod:`onnxplain.rules.rescale_products`)."""
    return [None] * len(ctx.x)


# ---------------------------------------------------------------- Softmax, LogSoftmax (opset >= 13)
@register("Softmax", tag="nonlinear", since=13)
def vjp_softmax(ctx):
    """y = softmax(x, axis): dx = y * (dy - sum(dy * y, axis))."""
    b, y, dy = ctx.b, ctx.y[0], ctx.dy[0]
    axis = ctx.attr("axis", -1)
    dot = b.reduce_sum(b.mul(dy, y), [axis], keepdims=1)
    return [b.mul(y, b.sub(dy, dot))]


@register("LogSoftmax", tag="nonlinear", since=13)
def vjp_log_softmax(ctx):
    """y = log_softmax(x, axis): dx = dy - exp(y) * sum(dy, axis)."""
    b, y, dy = ctx.b, ctx.y[0], ctx.dy[0]
    axis = ctx.attr("axis", -1)
    total = b.reduce_sum(dy, [axis], keepdims=1)
    return [b.sub(dy, b.mul(b.op("Exp", y), total))]
