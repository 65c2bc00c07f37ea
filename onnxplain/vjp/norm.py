"""Normalisation: BatchNormalization (inference and training mode), LayerNormalization,
InstanceNormalization, GroupNormalization (opset 21 form), LpNormalization, LRN and
MeanVarianceNormalization.

All but LpNormalization normalise ``xhat = (x - mean) / sqrt(var + eps)`` (MeanVarianceNormalization:
``/ (std + 1e-9)``) and most apply an affine map.  With
statistics that are constants (BatchNormalization at inference) the map is affine per
channel; with statistics taken from x itself (LayerNormalization, BatchNormalization
in training mode) the cotangent is projected: ``dx = inv * (g - mean(g) - xhat * mean(g xhat))``
with ``g = dy * scale`` and means over the normalised axes.
"""
from __future__ import annotations

import numpy as np

from onnxplain.converters.normalize import within_rank

from .registry import register
from ._common import fail, known_rank, normalised_count, per_channel


def _statistics(b, x: str, axes, eps: float):
    """(x - mean, 1 / sqrt(var + eps)) over ``axes``, both keeping dims."""
    xc = b.sub(x, b.reduce("ReduceMean", x, axes))
    var = b.reduce("ReduceMean", b.mul(xc, xc), axes)
    inv = b.op("Reciprocal", b.op("Sqrt", b.add(var, b.like(eps, x))))
    return xc, inv


def _normalized_grad(b, g: str, xhat: str, inv: str, axes) -> str:
    """dx = inv * (g - mean(g) - xhat * mean(g * xhat)): the cotangent through xhat = (x - mean) * inv."""
    mean_g = b.reduce("ReduceMean", g, axes)
    mean_gx = b.reduce("ReduceMean", b.mul(g, xhat), axes)
    return b.mul(inv, b.sub(b.sub(g, mean_g), b.mul(xhat, mean_gx)))


# ------------------------------------------------------------------------- BatchNormalization
@register("BatchNormalization", tag="nonlinear")
def vjp_batch_norm(ctx):
    """Y = scale * (X - mean) / sqrt(var + eps) + B per channel (axis 1); at inference
    dX = dY * scale / sqrt(var + eps); in training mode the batch statistics are differentiated too."""
    b, dy = ctx.b, ctx.dy[0]
    X, scale, mean, var = ctx.x[0], ctx.x[1], ctx.x[3], ctx.x[4]
    if dy is None:   # only the running statistics have cotangents: they are not explained outputs
        return [None] * len(ctx.x)
    eps = float(ctx.attr("epsilon", 1e-5))
    rank = known_rank(ctx, X)
    axes = [0] + list(range(2, rank))

    def per_channel(t):   # (C,) -> (C, 1, ..., 1), which broadcasts against (N, C, ...)
        return b.unsqueeze(t, list(range(1, rank - 1))) if rank > 2 else t

    grads = [None] * len(ctx.x)
    if ctx.attr("training_mode", 0):
        xc, inv = _statistics(b, X, axes, eps)
        xhat = b.mul(xc, inv)
        if ctx.needs(0):
            grads[0] = _normalized_grad(b, b.mul(dy, per_channel(scale)), xhat, inv, axes)
    else:
        inv = b.op("Reciprocal", b.op("Sqrt", b.add(var, b.like(eps, X))))     # (C,)
        if ctx.needs(0):
            grads[0] = b.mul(dy, per_channel(b.mul(scale, inv)))
        if ctx.needs(1):
            xhat = b.mul(b.sub(X, per_channel(mean)), per_channel(inv))
        if ctx.needs(3):   # d/dmean = -sum(dY) * scale * inv
            grads[3] = b.neg(b.mul(b.reduce_sum(dy, axes, keepdims=0), b.mul(scale, inv)))
        if ctx.needs(4):   # d/dvar = sum(dY (X - mean)) * scale * (-1/2) inv^3
            s = b.reduce_sum(b.mul(dy, b.sub(X, per_channel(mean))), axes, keepdims=0)
            inv3 = b.mul(inv, b.mul(inv, inv))
            grads[4] = b.mul(s, b.mul(scale, b.mul(inv3, b.like(-0.5, X))))
    if ctx.needs(1):
        grads[1] = b.reduce_sum(b.mul(dy, xhat), axes, keepdims=0)
    if ctx.needs(2):
        grads[2] = b.reduce_sum(dy, axes, keepdims=0)
    return grads


# ------------------------------------------------------------------------- LayerNormalization
@register("LayerNormalization", tag="nonlinear")
def vjp_layer_norm(ctx):
    """Y = xhat * Scale + B, xhat normalised over axes [axis, rank): dX = inv (g - mean g - xhat mean(g xhat)),
    g = dY Scale; dScale = sum dY xhat, dB = sum dY; cotangents of Mean / InvStdDev are added when present."""
    b = ctx.b
    X, scale = ctx.x[0], ctx.x[1]
    bias = ctx.x[2] if len(ctx.x) > 2 and ctx.x[2] else None
    rank = known_rank(ctx, X)
    axis = int(ctx.attr("axis", -1))
    axis = axis + rank if axis < 0 else axis
    axes = list(range(axis, rank))
    eps = float(ctx.attr("epsilon", 1e-5))
    dy = ctx.dy[0]
    d_mean = ctx.dy[1] if len(ctx.dy) > 1 else None
    d_inv = ctx.dy[2] if len(ctx.dy) > 2 else None
    xc, inv = _statistics(b, X, axes, eps)
    xhat = b.mul(xc, inv)
    grads = [None] * len(ctx.x)
    if ctx.needs(0):
        parts = []
        if dy is not None:
            parts.append(_normalized_grad(b, b.mul(dy, scale), xhat, inv, axes))
        if d_mean is not None or d_inv is not None:
            n = normalised_count(b, X, axes)
            if d_mean is not None:     # mean = sum(x) / n
                parts.append(b.op("Expand", b.div(b.cast_like(d_mean, X), n), b.shape_of(X)))
            if d_inv is not None:      # d inv / dx = -inv^3 (x - mean) / n
                inv3 = b.mul(inv, b.mul(inv, inv))
                parts.append(b.neg(b.div(b.mul(b.mul(b.cast_like(d_inv, X), inv3), xc), n)))
        grads[0] = b.sum(parts) if parts else None
    if dy is not None:
        if ctx.needs(1):
            grads[1] = b.unbroadcast(b.mul(dy, xhat), scale, ctx.y[0])
        if bias is not None and ctx.needs(2):
            grads[2] = b.unbroadcast(dy, bias, ctx.y[0])
    return grads


# ---------------------------------------------------------------------- InstanceNormalization
@register("InstanceNormalization", tag="nonlinear")
def vjp_instance_norm(ctx):
    """Y = scale_c * xhat + B_c, xhat normalised per (n, c) over the spatial axes:
    dX = inv (g - mean g - xhat mean(g xhat)) with g = dY scale_c; dscale = sum dY xhat, dB = sum dY."""
    b, dy = ctx.b, ctx.dy[0]
    X, scale = ctx.x[0], ctx.x[1]
    rank = known_rank(ctx, X)
    if rank < 3:
        raise fail(ctx, f"expected an input of rank >= 3 (N, C, D1, ...), got rank {rank}")
    axes = list(range(2, rank))
    xc, inv = _statistics(b, X, axes, float(ctx.attr("epsilon", 1e-5)))
    xhat = b.mul(xc, inv)
    grads = [None] * len(ctx.x)
    if ctx.needs(0):
        grads[0] = _normalized_grad(b, b.mul(dy, per_channel(b, scale, rank)), xhat, inv, axes)
    if ctx.needs(1):
        grads[1] = b.reduce_sum(b.mul(dy, xhat), [0] + axes, keepdims=0)
    if len(ctx.x) > 2 and ctx.needs(2):
        grads[2] = b.reduce_sum(dy, [0] + axes, keepdims=0)
    return grads


# ------------------------------------------------------------------------- GroupNormalization
# (Only the opset 21 form: GroupNormalization-18, with one scale and bias per group, is deprecated
# and onnx.checker rejects models that use it, so the normaliser never hands one to a rule.)
@register("GroupNormalization", tag="nonlinear", since=21)
def vjp_group_norm(ctx):
    """Y = scale_c * xhat + bias_c, xhat normalised over each group of C/G channels and the spatial axes:
    in group layout (N, G, C/G * spatial) dX is LayerNormalization's over the last axis, with g = dY scale_c."""
    b, dy = ctx.b, ctx.dy[0]
    X, scale = ctx.x[0], ctx.x[1]
    rank = known_rank(ctx, X)
    grouped = b.ints([0, int(ctx.attr("num_groups")), -1])     # 0 keeps the (dynamic) batch size
    xg = b.reshape(X, grouped)
    b.set_type(xg, b.elem_type(X))
    xc, inv = _statistics(b, xg, [2], float(ctx.attr("epsilon", 1e-5)))
    xhat = b.mul(xc, inv)                                      # (N, G, C/G * spatial)
    axes = [0] + list(range(2, rank))
    grads = [None] * len(ctx.x)
    if ctx.needs(0):
        g = b.reshape(b.mul(dy, per_channel(b, scale, rank)), grouped)
        grads[0] = b.reshape_like(_normalized_grad(b, g, xhat, inv, [2]), X)
    if ctx.needs(1):
        grads[1] = b.reduce_sum(b.mul(dy, b.reshape_like(xhat, X)), axes, keepdims=0)
    if ctx.needs(2):
        grads[2] = b.reduce_sum(dy, axes, keepdims=0)
    return grads


# ----------------------------------------------------------------------------- LpNormalization
@register("LpNormalization", tag="nonlinear")
def vjp_lp_norm(ctx):
    """Y = X / ||X||_p along ``axis``: p=2: dX = (dY - Y sum(dY Y)) / ||X||_2;
    p=1: dX = (dY - sign(X) sum(dY Y)) / ||X||_1.  Where the norm is 0 the runtime writes Y = 0 and X has
    no direction: dX = 0 there (finite, instead of dY / 0)."""
    b, X, Y, dy = ctx.b, ctx.x[0], ctx.y[0], ctx.dy[0]
    axis = int(ctx.attr("axis", -1))
    p = int(ctx.attr("p", 2))
    if p not in (1, 2):
        raise fail(ctx, f"p must be 1 or 2, got {p}")
    norm = b.reduce("ReduceL2" if p == 2 else "ReduceL1", X, [axis])
    proj = b.reduce_sum(b.mul(dy, Y), [axis])
    direction = Y if p == 2 else b.op("Sign", X)
    zero = b.op("Equal", norm, b.like(0.0, norm))
    safe = b.where(zero, b.like(1.0, norm), norm)
    return [b.where(zero, b.like(0.0, dy), b.div(b.sub(dy, b.mul(direction, proj)), safe))]


# ------------------------------------------------------------------- MeanVarianceNormalization
def mean_variance_axes(ctx) -> list[int]:
    """MeanVarianceNormalization's axes (default ``[0, 2, 3]``) within the input's rank, as onnxruntime takes
    them (the default's axis 3 is dropped on a rank-3 input)."""
    rank = known_rank(ctx, ctx.x[0])
    return sorted(within_rank(ctx.attr("axes", [0, 2, 3]), rank))


def mean_variance_denominator(b, std: str) -> str:
    """``std + 1e-9``, MeanVarianceNormalization's denominator (the epsilon outside the square root, as in
    the op's function body).  Written as a Sum: the graph optimizer of :func:`onnxplain.graph.clean_graph`
    deletes an ``Add`` of a scalar constant within 1e-8 of zero as a no-op, which would leave ``1 / std``."""
    return b.op("Sum", std, b.like(1e-9, std))


@register("MeanVarianceNormalization", tag="nonlinear")
def vjp_mean_variance_norm(ctx):
    """Y = (X - mean) / (std + 1e-9) over ``axes`` (the op's function body): with D = std + 1e-9 and
    u = (X - mean) / std, dX = (dY - mean dY) / D - u mean(dY u) std / D^2.  Computed from X alone (never
    from Y: onnxruntime's kernel divides by std without the epsilon and writes NaN on a constant row); where
    std = 0 (a constant row) u is 0 and dX = (dY - mean dY) / 1e-9, the limit of the function body."""
    b, X, dy = ctx.b, ctx.x[0], ctx.dy[0]
    axes = mean_variance_axes(ctx)
    xc = b.sub(X, b.reduce("ReduceMean", X, axes))
    std = b.op("Sqrt", b.reduce("ReduceMean", b.mul(xc, xc), axes))
    d = mean_variance_denominator(b, std)
    flat = b.op("Equal", std, b.like(0.0, std))
    u = b.where(flat, b.like(0.0, X), b.div(xc, b.where(flat, b.like(1.0, std), std)))
    centred = b.div(b.sub(dy, b.reduce("ReduceMean", dy, axes)), d)
    spread = b.mul(b.mul(u, b.reduce("ReduceMean", b.mul(dy, u), axes)), b.div(std, b.mul(d, d)))
    return [b.sub(centred, spread)]


# ----------------------------------------------------------------------------- LRN
def channel_window_sum(b, t: str, size: int, transpose: bool = False) -> str:
    """For LRN: the sum of ``t`` over channels ``c - floor((size - 1) / 2)`` .. ``c + ceil((size - 1) / 2)``
    (cut at the edges), as a Conv of ones over channels; ``transpose``: the adjoint sum (the window
    mirrored), which sends a channel's value back to the channels its window read."""
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    if transpose:
        lo, hi = hi, lo
    columns = b.op("Reshape", t, b.op("Concat", b.op("Shape", t, end=1), b.ints([1]), b.op("Shape", t, start=1, end=2),
                                      b.ints([-1]), axis=0))                                    # (N, 1, C, rest)
    ones = b.cast_like(b.const(np.ones((1, 1, size, 1)), np.float32, hint="lrn_window"), t)
    summed = b.op("Conv", columns, ones, pads=[lo, 0, hi, 0])
    return b.reshape_exact(summed, b.shape_of(t))


def lrn_parts(ctx):
    """LRN's ``alpha / size`` and ``d = bias + alpha / size * S`` (S: the channel-window sum of x^2)."""
    b, x = ctx.b, ctx.x[0]
    size = int(ctx.attr("size"))
    rate = b.like(float(ctx.attr("alpha", 1e-4)) / size, x)
    return size, rate, b.add(b.like(float(ctx.attr("bias", 1.0)), x), b.mul(rate, channel_window_sum(b, b.mul(x, x), size)))


@register("LRN", tag="nonlinear")
def vjp_lrn(ctx):
    """y = x d^-beta, d = bias + alpha / size * S, S = the channel-window sum of x^2:
    dx = dy d^-beta - 2 beta alpha / size * x * W^T(dy x d^(-beta-1)), W^T the window's adjoint sum."""
    b, x, dy = ctx.b, ctx.x[0], ctx.dy[0]
    beta = b.like(float(ctx.attr("beta", 0.75)), x)
    size, rate, d = lrn_parts(ctx)
    scale = b.op("Pow", d, b.neg(beta))
    back = channel_window_sum(b, b.div(b.mul(b.mul(dy, x), scale), d), size, transpose=True)
    return [b.sub(b.mul(dy, scale), b.mul(b.mul(b.mul(b.like(2.0, x), beta), rate), b.mul(x, back)))]
