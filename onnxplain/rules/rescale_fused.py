"""DeepLIFT rules of fused ops: the multipliers of one canonical decomposition under the rules of
:mod:`onnxplain.rules.rescale`, so an exporter that fuses a layer and one that writes it out give the
same attributions, and the difference is conserved exactly.

* ``Softmax(x) = e / sum(e)``, ``e = exp(z)``, ``z = x - max(x)`` (the form every stable softmax computes;
  ``exp(z) <= 1`` and ``sum(e)`` lies in [1, n] at a row and at its reference, so nothing overflows for any
  finite input): the cross-max rule at the maximum, Div's Shapley rule (``m_e = (1/s + 1/s_ref) / 2``,
  ``m_s = -(e + e_ref) / (2 s s_ref)``), the sum's plain gradient and Exp's rescale.  Written with the
  softmax values ``y``, ``Q = exp(z_ref - lse(z))`` and ``P = exp(z - lse(z_ref))`` it is
  ``dz = A (dy - sum(dy y_ref)) / 2 + B (dy - sum(dy y)) / 2`` with
  ``A = (y - Q) / Δz = (y + Q) tanh(Δz / 2) / Δz`` and ``B = (P - y_ref) / Δz = (P + y_ref) tanh(Δz / 2) / Δz``
  (the tanh form has no cancellation; its limit ``(y + Q) / 2`` is the gradient's where ``Δz`` is small),
  then ``dx = dz - sum(dz) m_max``.
* ``LogSoftmax(x) = z - log(sum(exp(z)))``: Log rescaled at the sum, ``dz = dy - sum(dy) q A`` with
  ``q = ℓ / ((1 + e^ℓ) tanh(ℓ / 2))``, ``ℓ = lse(z_ref) - lse(z)`` (``q = 1`` at ``ℓ = 0``), then the
  cross-max rule; ReduceLogSumExp is ``max(x) + log(sum(exp(z)))`` the same way.
* ``LpNormalization``: ``x / ||x||_p``, Div's Shapley rule and the norm's decomposition
  (``sqrt(sum(x * x))`` or ``sum(|x|)``); ReduceL1, ReduceL2, ReduceSumSquare and ReduceLogSum take
  their decompositions' multipliers the same way.
* ``LayerNormalization``, ``InstanceNormalization``, ``GroupNormalization``, ``MeanVarianceNormalization``,
  ``BatchNormalization`` in training mode:
  ``xhat = xc / sqrt(mean(xc * xc) + eps)``, ``xc = x - mean(x)``, then ``xhat * scale + bias``: the
  squares take Mul's Shapley rule (``xc + xc_ref``), the square root its rescale
  (``Δsqrt(v) / Δv = 1 / (sd + sd_ref)``), the quotient Div's Shapley rule.  Writing the variance with
  ``Pow(xc, 2)``, or ``xc * rsqrt(v)``, gives the same multipliers.
"""
from __future__ import annotations

import numpy as np

from ..vjp import register
from ..vjp._common import Reduction, fail, known_rank, normalised_count, per_channel
from ..vjp.linalg import matrix_size, minor_indices
from ..vjp.norm import channel_window_sum, lrn_parts, mean_variance_axes, mean_variance_denominator
from ..vjp.pool import lp_pool_inner, lp_pool_outer, pool_window, window_sum_transpose
from .rescale_common import below_eps, extremum_multipliers, midpoint, node_attributes, plain_gradient, safe_ratio

#: This family's rules (assembled with the others into :data:`onnxplain.rules.deeplift.RESCALE`).
TABLE: dict = {}


# ------------------------------------------------------------------------------------ softmax family
def _tanh_half_ratio(ctx, delta: str) -> str:
    """``tanh(Δ / 2) / Δ``, its limit 1/2 where ``|Δ| < eps`` or Δ is NaN (``-inf - -inf``)."""
    b = ctx.b
    small = below_eps(ctx, delta)
    safe = b.where(small, b.like(1.0, delta), delta)
    return b.where(small, b.like(0.5, delta), b.div(b.op("Tanh", b.mul(safe, b.like(0.5, delta))), safe))


class _ShiftedToMaximum:
    """``z = x - max(x)`` over some axes, the canonical first step of the softmax family: every ``exp(z)`` is
    at most 1 and every sum of them lies in [1, n], at a row and at its reference alike, so no term of the
    rules below overflows for any finite input.  The maximum takes the cross-max rule
    (:func:`~onnxplain.rules.rescale_common.extremum_multipliers`), the gradient where nothing moved."""

    def __init__(self, ctx, x: str, top: str, keep, sum_keep):
        b = ctx.b
        self.b, self.x, self.sum_keep = b, x, sum_keep
        self.z = b.sub(x, keep(top))
        m, small, share = extremum_multipliers(ctx, x, top, keep, sum_keep, "Max")
        self.m_top = b.where(small, share, m)

    def to_input(self, dz: str, d_top: str | None = None) -> str:
        """The multipliers of x from those of z and, when the maximum is itself used, its cotangent ``d_top``
        (keeping dims): ``dx = dz + (d_top - sum(dz)) m_top``."""
        b = self.b
        through_top = b.neg(self.sum_keep(dz))
        if d_top is not None:
            through_top = b.add(through_top, d_top)
        return b.add(dz, b.mul(through_top, self.m_top))


class _ExpOverSum:
    """``exp(z)`` over ``sum(exp(z))`` at a row and at its reference, ``z = x - max(x)``
    (:class:`_ShiftedToMaximum`), given ``lse = log(sum(exp(z)))`` keeping the reduced axes: the softmax
    ``y``, and ``A = (y - exp(z_ref - lse)) / Δz``, the Exp multiplier over the row's own sum."""

    def __init__(self, ctx, z: str, lse: str):
        b = ctx.b
        z_ref = ctx.ref(z)
        self.lse, self.lse_ref = lse, ctx.ref(lse)
        self.y = b.op("Exp", b.sub(z, lse))
        self.y_ref = ctx.ref(self.y)
        self.half_tanh = _tanh_half_ratio(ctx, b.sub(z, z_ref))
        self.a = b.mul(b.add(self.y, b.op("Exp", b.sub(z_ref, lse))), self.half_tanh)
        self.b_ = b.mul(b.add(b.op("Exp", b.sub(z, self.lse_ref)), self.y_ref), self.half_tanh)

    def log_ratio(self, ctx) -> str:
        """``q = (lse - lse_ref) / (1 - s_ref / s)``: Log's rescale at the sum, times the sum; with
        ``ℓ = lse_ref - lse`` it is ``1 / ((1 + e^ℓ) tanh(ℓ/2) / ℓ)``, 1 at ``ℓ = 0``."""
        b = ctx.b
        gap = b.sub(self.lse_ref, self.lse)
        return b.op("Reciprocal", b.mul(b.add(b.like(1.0, gap), b.op("Exp", gap)), _tanh_half_ratio(ctx, gap)))


def _softmax_parts(ctx) -> tuple[int, _ShiftedToMaximum, _ExpOverSum]:
    b, x = ctx.b, ctx.x[0]
    axis = ctx.attr("axis", -1)
    shift = _ShiftedToMaximum(ctx, x, b.reduce("ReduceMax", x, [axis]), lambda t: t,
                              lambda t: b.reduce_sum(t, [axis]))
    lse = b.op("Log", b.reduce_sum(b.op("Exp", shift.z), [axis]))
    return axis, shift, _ExpOverSum(ctx, shift.z, lse)


@register("Softmax", since=13, table=TABLE)
def rescale_softmax(ctx):
    """``exp(z) / sum(exp(z))``, ``z = x - max(x)``, under Div's Shapley rule and Exp's rescale (see the module
    docstring): ``dz = (A (dy - sum(dy y_ref)) + B (dy - sum(dy y))) / 2``, then the cross-max rule."""
    b, dy = ctx.b, ctx.dy[0]
    axis, shift, s = _softmax_parts(ctx)
    at_ref = b.sub(dy, b.reduce_sum(b.mul(dy, s.y_ref), [axis]))
    at_row = b.sub(dy, b.reduce_sum(b.mul(dy, s.y), [axis]))
    dz = b.mul(b.like(0.5, dy), b.add(b.mul(s.a, at_ref), b.mul(s.b_, at_row)))
    return [shift.to_input(dz)]


@register("LogSoftmax", since=13, table=TABLE)
def rescale_log_softmax(ctx):
    """``z - log(sum(exp(z)))``, ``z = x - max(x)``, with Log rescaled at the sum: ``dz = dy - sum(dy) q A``,
    then the cross-max rule."""
    b, dy = ctx.b, ctx.dy[0]
    axis, shift, s = _softmax_parts(ctx)
    dz = b.sub(dy, b.mul(b.reduce_sum(dy, [axis]), b.mul(s.log_ratio(ctx), s.a)))
    return [shift.to_input(dz)]


# ------------------------------------------------------------------------------------ reductions
def _reduction_rule(op_type: str):
    """Register ``fn(ctx, r)`` for ``op_type`` with axes as an attribute (before opset 18) and as an input."""
    def deco(fn):
        def make(from_input):
            def rule(ctx):
                return [fn(ctx, Reduction(ctx, from_input))] + [None] * (len(ctx.x) - 1)
            rule.__doc__ = fn.__doc__
            return rule
        register(op_type, table=TABLE)(make(False))
        register(op_type, since=18, table=TABLE)(make(True))
        return fn
    return deco


@_reduction_rule("ReduceSumSquare")
def rescale_reduce_sum_square(ctx, r):
    """``sum(x * x)``: Mul's Shapley rule, ``m = x + x_ref``."""
    b, x = ctx.b, ctx.x[0]
    return b.mul(r.keep(ctx.dy[0]), b.add(x, ctx.ref(x)))


@_reduction_rule("ReduceL2")
def rescale_reduce_l2(ctx, r):
    """``sqrt(sum(x * x))``: ``m = (x + x_ref) / (y + y_ref)`` (Sqrt rescaled: ``Δsqrt(v) / Δv = 1 / (y + y_ref)``);
    0 where both norms are 0 (nothing moved)."""
    b, x, y = ctx.b, ctx.x[0], r.keep(ctx.y[0])
    norms = b.add(y, r.keep(ctx.ref(ctx.y[0])))
    return b.mul(r.keep(ctx.dy[0]), safe_ratio(b, b.add(x, ctx.ref(x)), norms, below_eps(ctx, norms)))


@_reduction_rule("ReduceL1")
def rescale_reduce_l1(ctx, r):
    """``sum(|x|)``: Abs rescaled, ``m = (|x| - |x_ref|) / (x - x_ref)``, ``sign(x)`` where nothing moved."""
    b, x = ctx.b, ctx.x[0]
    x_ref = ctx.ref(x)
    delta = b.sub(x, x_ref)
    small = below_eps(ctx, delta)
    ratio = safe_ratio(b, b.sub(b.op("Abs", x), b.op("Abs", x_ref)), delta, small)
    return b.mul(r.keep(ctx.dy[0]), b.where(small, b.op("Sign", x), ratio))


@_reduction_rule("ReduceLogSum")
def rescale_reduce_log_sum(ctx, r):
    """``log(sum(x))``: Log rescaled at the sum, ``m = (y - y_ref) / (s - s_ref)``, ``1 / s`` where the sums meet."""
    b, x = ctx.b, ctx.x[0]
    total = r.sum_keep(x)
    moved = b.sub(total, ctx.ref(total))
    small = below_eps(ctx, moved)
    y = r.keep(ctx.y[0])
    ratio = safe_ratio(b, b.sub(y, r.keep(ctx.ref(ctx.y[0]))), moved, small)
    return r.expand(b.mul(r.keep(ctx.dy[0]), b.where(small, b.op("Reciprocal", total), ratio)))


@_reduction_rule("ReduceLogSumExp")
def rescale_reduce_log_sum_exp(ctx, r):
    """``max(x) + log(sum(exp(z)))``, ``z = x - max(x)``: Log rescaled at the sum and Exp at each term,
    ``dz = dy q A`` (as LogSoftmax's), and the cross-max rule at the maximum, which ``dy`` also reaches."""
    b, x = ctx.b, ctx.x[0]
    dy = r.keep(ctx.dy[0])
    shift = _ShiftedToMaximum(ctx, x, r.reduce_keep("ReduceMax", x), lambda t: t, r.sum_keep)
    s = _ExpOverSum(ctx, shift.z, b.op("Log", r.sum_keep(b.op("Exp", shift.z))))
    return shift.to_input(b.mul(dy, b.mul(s.log_ratio(ctx), s.a)), d_top=dy)


# ------------------------------------------------------------------------------------ normalisation
def conserving_normalization(ctx, x: str, dxhat: str, axes, eps: float, d_mean: str | None = None,
                             d_inv: str | None = None, outside: float = 0.0) -> str:
    """The multipliers of ``x`` through ``xhat = xc / sd`` (``xc = x - mean(x)``,
    ``sd = sqrt(mean(xc xc) + eps) + outside``, means over ``axes``) given the cotangent ``dxhat``;
    ``d_mean`` and ``d_inv`` are cotangents of the statistics (LayerNormalization's Mean and InvStdDev
    outputs) when they are used."""
    b = ctx.b
    xc = b.sub(x, b.reduce("ReduceMean", x, axes))
    root = b.op("Sqrt", b.add(b.reduce("ReduceMean", b.mul(xc, xc), axes), b.like(eps, x)))
    sd = mean_variance_denominator(b, root) if outside else root     # outside: MeanVarianceNormalization's 1e-9
    xc_sum = b.add(xc, ctx.ref(xc))
    inv, inv_ref = b.op("Reciprocal", sd), ctx.ref(b.op("Reciprocal", sd))
    inv_product = b.mul(inv, inv_ref)
    half = b.like(0.5, x)
    d_xc = b.mul(dxhat, b.mul(b.add(inv, inv_ref), half))                                    # Div, numerator
    d_sd = b.neg(b.mul(b.reduce_sum(b.mul(dxhat, xc_sum), axes), b.mul(inv_product, half)))  # Div, denominator
    if d_inv is not None:                                                                   # Δ(1/sd) / Δsd
        d_sd = b.sub(d_sd, b.mul(b.cast_like(d_inv, x), inv_product))
    roots = b.add(root, ctx.ref(root))                                                        # Sqrt rescaled
    d_var = safe_ratio(b, d_sd, roots, below_eps(ctx, roots))
    d_xc = b.add(d_xc, b.mul(xc_sum, b.div(d_var, normalised_count(b, x, axes))))                     # mean(xc * xc)
    dx = b.sub(d_xc, b.reduce("ReduceMean", d_xc, axes))                                     # x - mean(x)
    if d_mean is not None:
        dx = b.add(dx, b.div(b.cast_like(d_mean, x), normalised_count(b, x, axes)))
    return dx


def _normalized(ctx, x: str, axes, eps: float) -> str:
    """``xhat`` recomputed (for the cotangent of an active scale)."""
    b = ctx.b
    xc = b.sub(x, b.reduce("ReduceMean", x, axes))
    var = b.reduce("ReduceMean", b.mul(xc, xc), axes)
    return b.div(xc, b.op("Sqrt", b.add(var, b.like(eps, x))))


@register("LayerNormalization", table=TABLE)
def rescale_layer_norm(ctx):
    """``Y = xhat * Scale + B`` over axes ``[axis, rank)``: the canonical decomposition's multipliers
    (Mul's Shapley rule at the scale when the scale depends on the input too)."""
    b, x, scale = ctx.b, ctx.x[0], ctx.x[1]
    rank = known_rank(ctx, x)
    axis = int(ctx.attr("axis", -1))
    axes = list(range(axis + rank if axis < 0 else axis, rank))
    eps = float(ctx.attr("epsilon", 1e-5))
    dy = ctx.dy[0]
    d_mean = ctx.dy[1] if len(ctx.dy) > 1 else None
    d_inv = ctx.dy[2] if len(ctx.dy) > 2 else None
    grads = [None] * len(ctx.x)
    if ctx.needs(0):
        dxhat = b.mul(dy, midpoint(ctx, scale)) if dy is not None else b.zeros_like(x)
        grads[0] = conserving_normalization(ctx, x, dxhat, axes, eps, d_mean, d_inv)
    if dy is not None and ctx.needs(1):
        xhat = _normalized(ctx, x, axes, eps)
        xhat_mid = b.mul(b.add(xhat, ctx.ref(xhat)), b.like(0.5, x)) if ctx.needs(0) else xhat
        grads[1] = b.unbroadcast(b.mul(dy, xhat_mid), scale, ctx.y[0])
    if dy is not None and len(ctx.x) > 2 and ctx.x[2] and ctx.needs(2):
        grads[2] = b.unbroadcast(dy, ctx.x[2], ctx.y[0])
    return grads


def _inactive_affine(ctx) -> None:
    if any(ctx.needs(i) for i in range(1, len(ctx.x))):
        raise fail(ctx, "DeepLIFT needs the per-channel scale and bias to be independent of the attributed "
                         "input (they have no batch axis)")


@register("InstanceNormalization", table=TABLE)
def rescale_instance_norm(ctx):
    """``Y = scale_c * xhat + B_c``, normalised per (n, c) over the spatial axes: the canonical decomposition."""
    _inactive_affine(ctx)
    b, x, scale = ctx.b, ctx.x[0], ctx.x[1]
    rank = known_rank(ctx, x)
    if rank < 3:
        raise fail(ctx, f"expected an input of rank >= 3 (N, C, D1, ...), got rank {rank}")
    dxhat = b.mul(ctx.dy[0], per_channel(b, scale, rank))
    return [conserving_normalization(ctx, x, dxhat, list(range(2, rank)), float(ctx.attr("epsilon", 1e-5)))]


@register("BatchNormalization", table=TABLE)
def rescale_batch_norm(ctx):
    """In training mode ``Y = scale_c * xhat + B_c`` normalised per channel over the batch and spatial axes: the
    canonical decomposition (the model mixes rows, so it is explained with ``batch_size=1``).  At inference the
    statistics are constants and the map is affine: its gradient conserves."""
    if not ctx.attr("training_mode", 0):
        return plain_gradient(ctx)
    _inactive_affine(ctx)
    if ctx.dy[0] is None:      # only the running statistics have cotangents: they are not explained outputs
        return [None] * len(ctx.x)
    b, x, scale = ctx.b, ctx.x[0], ctx.x[1]
    rank = known_rank(ctx, x)
    dxhat = b.mul(ctx.dy[0], per_channel(b, scale, rank))
    axes = [0, *range(2, rank)]
    return [conserving_normalization(ctx, x, dxhat, axes, float(ctx.attr("epsilon", 1e-5)))] + [None] * (len(ctx.x) - 1)


@register("GroupNormalization", since=21, table=TABLE)
def rescale_group_norm(ctx):
    """``Y = scale_c * xhat + bias_c`` over groups of channels: the canonical decomposition in the group
    layout ``(N, G, C/G * spatial)``."""
    _inactive_affine(ctx)
    b, x, scale = ctx.b, ctx.x[0], ctx.x[1]
    rank = known_rank(ctx, x)
    grouped = b.ints([0, int(ctx.attr("num_groups")), -1])
    xg = b.reshape(x, grouped)
    b.set_type(xg, b.elem_type(x), None)
    dxhat = b.reshape(b.mul(ctx.dy[0], per_channel(b, scale, rank)), grouped)
    dx = conserving_normalization(ctx, xg, dxhat, [2], float(ctx.attr("epsilon", 1e-5)))
    return [b.reshape_like(dx, x)]


@register("MeanVarianceNormalization", table=TABLE)
def rescale_mean_variance_norm(ctx):
    """``(x - mean) / (sqrt(mean(xc * xc)) + 1e-9)`` over ``axes`` (the op's function body): the canonical
    decomposition without scale and bias."""
    return [conserving_normalization(ctx, ctx.x[0], ctx.dy[0], mean_variance_axes(ctx), 0.0, outside=1e-9)]


@register("LpNormalization", table=TABLE)
def rescale_lp_norm(ctx):
    """``x / ||x||_p`` along ``axis``: Div's Shapley rule, the norm through Mul's Shapley rule and Sqrt's
    rescale (p = 2: ``Δn = sum((x + x_ref) Δx) / (n + n_ref)``) or Abs's rescale (p = 1)."""
    b, x, dy = ctx.b, ctx.x[0], ctx.dy[0]
    axis, p = int(ctx.attr("axis", -1)), int(ctx.attr("p", 2))
    if p not in (1, 2):
        raise fail(ctx, f"p must be 1 or 2, got {p}")
    x_ref = ctx.ref(x)
    norm = b.reduce("ReduceL2" if p == 2 else "ReduceL1", x, [axis])
    norm_ref = ctx.ref(norm)
    half = b.like(0.5, x)
    direct = b.mul(dy, b.mul(b.add(b.op("Reciprocal", norm), b.op("Reciprocal", norm_ref)), half))
    d_norm = b.neg(b.div(b.reduce_sum(b.mul(dy, b.mul(b.add(x, x_ref), half)), [axis]), b.mul(norm, norm_ref)))
    if p == 2:
        through_norm = b.div(b.add(x, x_ref), b.add(norm, norm_ref))
    else:
        delta = b.sub(x, x_ref)
        small = below_eps(ctx, delta)
        ratio = safe_ratio(b, b.sub(b.op("Abs", x), b.op("Abs", x_ref)), delta, small)
        through_norm = b.where(small, b.op("Sign", x), ratio)
    return [b.add(direct, b.mul(d_norm, through_norm))]


# ------------------------------------------------------------------------------------ pooling and LRN
def _rescaled_or(ctx, change: str, delta: str, gradient: str) -> str:
    """``change / delta`` (a unary op's Rescale multiplier), ``gradient`` where ``|delta| < eps``."""
    small = below_eps(ctx, delta)
    return ctx.b.where(small, gradient, safe_ratio(ctx.b, change, delta, small))


@register("LpPool", table=TABLE)
def rescale_lp_pool(ctx):
    """``(window sum of u)^(1/p)``, ``u = |x|^p``: the root and the power rescaled (each a unary op), the
    window sum linear: ``m = W^T(dy Δy / ΔS) Δu / Δx``, the sum ``S`` taken by the node's own geometry
    (an LpPool with p = 1 of u)."""
    b, x, y, dy = ctx.b, ctx.x[0], ctx.y[0], ctx.dy[0]
    p = int(ctx.attr("p", 2))
    win, spatial, _ = pool_window(ctx)
    x_ref = ctx.ref(x)
    u = b.op("Pow", b.op("Abs", x), b.like(float(p), x))
    u_ref = b.op("Pow", b.op("Abs", x_ref), b.like(float(p), x))
    sums = b.op("LpPool", u, **{**node_attributes(ctx.node), "p": 1})
    at_root = _rescaled_or(ctx, b.sub(y, ctx.ref(y)), b.sub(sums, ctx.ref(sums)),
                           b.mul(lp_pool_outer(b, y, p), b.like(1.0 / p, y)))
    at_power = _rescaled_or(ctx, b.sub(u, u_ref), b.sub(x, x_ref), b.mul(lp_pool_inner(b, x, p), b.like(float(p), x)))
    return [b.mul(window_sum_transpose(b, b.mul(dy, at_root), win, x, spatial), at_power)]


@register("LRN", table=TABLE)
def rescale_lrn(ctx):
    """``x * g``, ``g = d^-beta``, ``d = bias + alpha / size * W(x * x)``: the product by Mul's Shapley rule
    (``m = dy (g + g_ref) / 2``, ``dg = dy (x + x_ref) / 2``), the power rescaled at d, the window sum W
    linear and the square by Mul's rule (``x + x_ref``)."""
    b, x, dy = ctx.b, ctx.x[0], ctx.dy[0]
    beta = b.like(float(ctx.attr("beta", 0.75)), x)
    size, rate, d = lrn_parts(ctx)
    g = b.op("Pow", d, b.neg(beta))
    g_ref, d_ref, x_ref = ctx.ref(g), ctx.ref(d), ctx.ref(x)
    half = b.like(0.5, x)
    direct = b.mul(dy, b.mul(b.add(g, g_ref), half))
    d_g = b.mul(dy, b.mul(b.add(x, x_ref), half))
    at_power = _rescaled_or(ctx, b.sub(g, g_ref), b.sub(d, d_ref), b.neg(b.div(b.mul(beta, g), d)))
    back = channel_window_sum(b, b.mul(b.mul(d_g, at_power), rate), size, transpose=True)
    return [b.add(direct, b.mul(back, b.add(x, x_ref)))]


# ------------------------------------------------------------------------------------ determinant
def _row_cofactors(b, above: str, below: str, i: int, n: int, rank: int, like: str) -> str:
    """The cofactors of row i of the matrix whose other rows are ``above`` (rows 0..i-1) and ``below``
    (rows i+1..n-1): ``(-1)^(i+j) det(minor_ij)`` for every j, shaped (..., 1, n)."""
    parts = [t for t in (above, below) if t is not None]
    others = parts[0] if len(parts) == 1 else b.op("Concat", *parts, axis=rank - 2)       # (..., n-1, n)
    columns = b.const(minor_indices(n), np.int64, hint="minor_indices")
    minors = b.op("Gather", others, columns, axis=rank - 1)                                 # (..., n-1, n, n-1)
    minors = b.op("Transpose", minors, perm=list(range(rank - 2)) + [rank - 1, rank - 2, rank])
    signs = b.cast_like(b.const((-1.0) ** (i + np.arange(n)), np.float32), like)
    return b.unsqueeze(b.mul(b.op("Det", minors), signs), [-2])


@register("Det", table=TABLE)
def rescale_det(ctx):
    """det is linear in each row, so ``det(A) - det(R)`` telescopes over the rows: with rows before i from R
    and after i from A, ``sum_i cof_i(R_<i, A_>i) . (A_i - R_i)``; averaged with the reverse order (rows
    before i from A, after from R) the multipliers are ``m_i = dy (cof_i(R_<i, A_>i) + cof_i(A_<i, R_>i)) / 2``
    (for a 2 x 2 matrix, Mul's Shapley rule on ``ad - bc``).  Exact, and finite for singular matrices."""
    b, a, dy = ctx.b, ctx.x[0], ctx.dy[0]
    n, rank = matrix_size(ctx)
    if n == 1:
        return plain_gradient(ctx)
    r = ctx.ref(a)
    rows = lambda t, lo, hi: None if lo >= hi else b.op("Slice", t, b.ints([lo]), b.ints([hi]), b.ints([rank - 2]))  # noqa: E731
    forward = [_row_cofactors(b, rows(r, 0, i), rows(a, i + 1, n), i, n, rank, a) for i in range(n)]
    backward = [_row_cofactors(b, rows(a, 0, i), rows(r, i + 1, n), i, n, rank, a) for i in range(n)]
    mean = b.mul(b.add(b.op("Concat", *forward, axis=rank - 2), b.op("Concat", *backward, axis=rank - 2)),
                 b.like(0.5, a))
    return [b.mul(b.unsqueeze(b.unsqueeze(dy, [-1]), [-1]), mean)]
