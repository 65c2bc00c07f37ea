"""DeepLIFT rules of fused ops: the multipliers of one canonical decomposition under the rules of
:mod:`onnxplain.rules.rescale`, so an exporter that fuses a layer and one that writes it out give the
same attributions, and the difference is conserved exactly.

* ``Softmax(x) = e / sum(e)``, ``e = exp(x)``: Div's Shapley rule (``m_e = (1/s + 1/s_ref) / 2``,
  ``m_s = -(e + e_ref) / (2 s s_ref)``), the sum's plain gradient and Exp's rescale.  Written with the
  softmax values ``y`` and ``Q = exp(x_ref - lse(x))``, ``P = exp(x - lse(x_ref))`` (no overflow; shifts
  of x cancel) it is ``dx = (A + B) dy / 2 - A sum(dy (P + y_ref)) / 2`` with
  ``A = (y - Q) / Δx = (y + Q) tanh(Δx / 2) / Δx`` and ``B = (P - y_ref) / Δx = (P + y_ref) tanh(Δx / 2) / Δx``
  (the tanh form has no cancellation; its limit ``(y + Q) / 2`` is the gradient's where ``Δx`` is small).
* ``LogSoftmax(x) = x - log(sum(exp(x)))``: Log rescaled at the sum, ``dx = dy - sum(dy) q A`` with
  ``q = ℓ / ((1 + e^ℓ) tanh(ℓ / 2))``, ``ℓ = lse(x_ref) - lse(x)`` (``q = 1`` at ``ℓ = 0``).
* ``LayerNormalization``, ``InstanceNormalization``, ``GroupNormalization``:
  ``xhat = xc / sqrt(mean(xc * xc) + eps)``, ``xc = x - mean(x)``, then ``xhat * scale + bias``: the
  squares take Mul's Shapley rule (``xc + xc_ref``), the square root its rescale
  (``Δsqrt(v) / Δv = 1 / (sd + sd_ref)``), the quotient Div's Shapley rule.  Writing the variance with
  ``Pow(xc, 2)``, or ``xc * rsqrt(v)``, gives the same multipliers.
"""
from __future__ import annotations

from ..vjp import register
from ..vjp.linalg import _fail
from ..vjp.norm import _count, _per_channel, _rank
from .rescale import RESCALE, _safe_ratio, _small, midpoint


# ------------------------------------------------------------------------------------ softmax family
def _log_sum_exp(b, x: str, axis: int) -> str:
    """``log(sum(exp(x), axis))`` keeping dims, shifted by the maximum (finite with -inf entries)."""
    top = b.reduce("ReduceMax", x, [axis])
    return b.add(top, b.op("Log", b.reduce_sum(b.op("Exp", b.sub(x, top)), [axis])))


def _tanh_half_ratio(ctx, delta: str) -> str:
    """``tanh(Δ / 2) / Δ``, its limit 1/2 where ``|Δ| < eps`` or Δ is NaN (``-inf - -inf``)."""
    b = ctx.b
    small = _small(ctx, delta)
    safe = b.where(small, b.like(1.0, delta), delta)
    return b.where(small, b.like(0.5, delta), b.div(b.op("Tanh", b.mul(safe, b.like(0.5, delta))), safe))


class _SoftmaxPair:
    """A softmax's values at a row and at its reference, over one axis."""

    def __init__(self, ctx):
        b, x = ctx.b, ctx.x[0]
        self.axis = ctx.attr("axis", -1)
        x_ref = ctx.ref(x)
        lse = _log_sum_exp(b, x, self.axis)
        self.lse, self.lse_ref = lse, ctx.ref(lse)
        self.y = b.op("Exp", b.sub(x, lse))
        self.y_ref = ctx.ref(self.y)
        self.half_tanh = _tanh_half_ratio(ctx, b.sub(x, x_ref))
        # A = (y - exp(x_ref - lse)) / Δx: the Exp multiplier over the row's own sum
        self.a = b.mul(b.add(self.y, b.op("Exp", b.sub(x_ref, lse))), self.half_tanh)


@register("Softmax", since=13, table=RESCALE)
def rescale_softmax(ctx):
    """``exp(x) / sum(exp(x))`` under Div's Shapley rule and Exp's rescale (see the module docstring)."""
    b, dy = ctx.b, ctx.dy[0]
    s = _SoftmaxPair(ctx)
    p = b.op("Exp", b.sub(ctx.x[0], s.lse_ref))          # exp(x) / s_ref
    bb = b.mul(b.add(p, s.y_ref), s.half_tanh)             # (p - y_ref) / Δx
    through_sum = b.reduce_sum(b.mul(dy, b.add(p, s.y_ref)), [s.axis])
    half = b.like(0.5, dy)
    return [b.mul(half, b.sub(b.mul(b.add(s.a, bb), dy), b.mul(s.a, through_sum)))]


@register("LogSoftmax", since=13, table=RESCALE)
def rescale_log_softmax(ctx):
    """``x - log(sum(exp(x)))`` with Log rescaled at the sum: ``dx = dy - sum(dy) q A``."""
    b, dy = ctx.b, ctx.dy[0]
    s = _SoftmaxPair(ctx)
    gap = b.sub(s.lse_ref, s.lse)
    q = b.op("Reciprocal", b.mul(b.add(b.like(1.0, gap), b.op("Exp", gap)), _tanh_half_ratio(ctx, gap)))
    return [b.sub(dy, b.mul(b.reduce_sum(dy, [s.axis]), b.mul(q, s.a)))]


# ------------------------------------------------------------------------------------ normalisation
def conserving_normalization(ctx, x: str, dxhat: str, axes, eps: float, d_mean: str | None = None,
                             d_inv: str | None = None) -> str:
    """The multipliers of ``x`` through ``xhat = xc / sd`` (``xc = x - mean(x)``, ``sd = sqrt(mean(xc xc) + eps)``,
    means over ``axes``) given the cotangent ``dxhat``; ``d_mean`` and ``d_inv`` are cotangents of the
    statistics (LayerNormalization's Mean and InvStdDev outputs) when they are used."""
    b = ctx.b
    xc = b.sub(x, b.reduce("ReduceMean", x, axes))
    sd = b.op("Sqrt", b.add(b.reduce("ReduceMean", b.mul(xc, xc), axes), b.like(eps, x)))
    xc_sum = b.add(xc, ctx.ref(xc))
    inv, inv_ref = b.op("Reciprocal", sd), ctx.ref(b.op("Reciprocal", sd))
    inv_product = b.mul(inv, inv_ref)
    half = b.like(0.5, x)
    d_xc = b.mul(dxhat, b.mul(b.add(inv, inv_ref), half))                                    # Div, numerator
    d_sd = b.neg(b.mul(b.reduce_sum(b.mul(dxhat, xc_sum), axes), b.mul(inv_product, half)))  # Div, denominator
    if d_inv is not None:                                                                   # Δ(1/sd) / Δsd
        d_sd = b.sub(d_sd, b.mul(b.cast_like(d_inv, x), inv_product))
    d_var = b.div(d_sd, b.add(sd, ctx.ref(sd)))                                              # Sqrt rescaled
    d_xc = b.add(d_xc, b.mul(xc_sum, b.div(d_var, _count(b, x, axes))))                     # mean(xc * xc)
    dx = b.sub(d_xc, b.reduce("ReduceMean", d_xc, axes))                                     # x - mean(x)
    if d_mean is not None:
        dx = b.add(dx, b.div(b.cast_like(d_mean, x), _count(b, x, axes)))
    return dx


def _normalized(ctx, x: str, axes, eps: float) -> str:
    """``xhat`` recomputed (for the cotangent of an active scale)."""
    b = ctx.b
    xc = b.sub(x, b.reduce("ReduceMean", x, axes))
    var = b.reduce("ReduceMean", b.mul(xc, xc), axes)
    return b.div(xc, b.op("Sqrt", b.add(var, b.like(eps, x))))


@register("LayerNormalization", table=RESCALE)
def rescale_layer_norm(ctx):
    """``Y = xhat * Scale + B`` over axes ``[axis, rank)``: the canonical decomposition's multipliers
    (Mul's Shapley rule at the scale when the scale depends on the input too)."""
    from ..backward import unbroadcast
    b, x, scale = ctx.b, ctx.x[0], ctx.x[1]
    rank = _rank(ctx, x)
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
        grads[1] = unbroadcast(b, b.mul(dy, xhat_mid), scale, ctx.y[0])
    if dy is not None and len(ctx.x) > 2 and ctx.x[2] and ctx.needs(2):
        grads[2] = unbroadcast(b, dy, ctx.x[2], ctx.y[0])
    return grads


def _inactive_affine(ctx) -> None:
    if any(ctx.needs(i) for i in range(1, len(ctx.x))):
        raise _fail(ctx, "DeepLIFT needs the per-channel scale and bias to be independent of the attributed "
                         "input (they have no batch axis)")


@register("InstanceNormalization", table=RESCALE)
def rescale_instance_norm(ctx):
    """``Y = scale_c * xhat + B_c``, normalised per (n, c) over the spatial axes: the canonical decomposition."""
    _inactive_affine(ctx)
    b, x, scale = ctx.b, ctx.x[0], ctx.x[1]
    rank = _rank(ctx, x)
    if rank < 3:
        raise _fail(ctx, f"expected an input of rank >= 3 (N, C, D1, ...), got rank {rank}")
    dxhat = b.mul(ctx.dy[0], _per_channel(b, scale, rank))
    return [conserving_normalization(ctx, x, dxhat, list(range(2, rank)), float(ctx.attr("epsilon", 1e-5)))]


@register("GroupNormalization", since=21, table=RESCALE)
def rescale_group_norm(ctx):
    """``Y = scale_c * xhat + bias_c`` over groups of channels: the canonical decomposition in the group
    layout ``(N, G, C/G * spatial)``."""
    _inactive_affine(ctx)
    b, x, scale = ctx.b, ctx.x[0], ctx.x[1]
    rank = _rank(ctx, x)
    grouped = b.ints([0, int(ctx.attr("num_groups")), -1])
    xg = b.reshape(x, grouped)
    b.set_type(xg, b.elem_type(x), None)
    dxhat = b.reshape(b.mul(ctx.dy[0], _per_channel(b, scale, rank)), grouped)
    dx = conserving_normalization(ctx, xg, dxhat, [2], float(ctx.attr("epsilon", 1e-5)))
    return [b.reshape_like(dx, x)]
