"""Arithmetic: broadcasting binary and variadic ops, Where, Cast, and unary maths."""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto

from ..graph import np_dtype
from .registry import elementwise, register
from ._common import const_value, known_rank


# ---------------------------------------------------------------- helpers
def _float_dtype(b, ref: str) -> np.dtype:
    """The numpy dtype of float tensor ``ref`` (float32 when unknown)."""
    return np_dtype(b.elem_type(ref) or TensorProto.FLOAT)


def _masked(b, cond: str, value: str, ref: str) -> str:
    """``value`` where ``cond`` is false, 0 where it is true (0 of ``ref``'s type)."""
    return b.where(cond, b.like(0.0, ref), value)


# ---------------------------------------------------------------- linear ops
@register("Add", "Sum", tag="linear", broadcast=True)
def vjp_add(ctx):
    """y = sum_i x_i: dx_i = dy."""
    return [ctx.dy[0] if ctx.needs(i) else None for i in range(len(ctx.x))]


@register("Mean", tag="linear", broadcast=True)
def vjp_mean(ctx):
    """y = (1/n) sum_i x_i: dx_i = dy / n."""
    n = len(ctx.x)
    g = ctx.dy[0] if n == 1 else ctx.b.mul(ctx.dy[0], ctx.b.like(1.0 / n, ctx.y[0]))
    return [g if ctx.needs(i) else None for i in range(n)]


@register("Sub", tag="linear", broadcast=True)
def vjp_sub(ctx):
    """y = a - c: da = dy, dc = -dy."""
    return [ctx.dy[0] if ctx.needs(0) else None,
            ctx.b.neg(ctx.dy[0]) if ctx.needs(1) else None]


@register("Mul", tag="nonlinear", broadcast=True)
def vjp_mul(ctx):
    """y = a * c: da = dy * c, dc = dy * a."""
    b, (a, c), dy = ctx.b, ctx.x, ctx.dy[0]
    return [b.mul(dy, c) if ctx.needs(0) else None,
            b.mul(dy, a) if ctx.needs(1) else None]


@register("Div", tag="nonlinear", broadcast=True)
def vjp_div(ctx):
    """y = a / c: da = dy / c, dc = -dy * y / c."""
    b, c, dy = ctx.b, ctx.x[1], ctx.dy[0]
    da = b.div(dy, c) if ctx.needs(0) else None
    dc = b.neg(b.div(b.mul(dy, ctx.y[0]), c)) if ctx.needs(1) else None
    return [da, dc]


# ---------------------------------------------------------------- Pow
@register("Pow", tag="nonlinear", broadcast=True)
def vjp_pow(ctx):
    """y = a ** c: da = dy * c * a ** (c - 1) (0 where c == 0), dc = dy * y * log(a) (0 where a == 0, c >= 0)."""
    b, (a, c), dy, y = ctx.b, ctx.x, ctx.dy[0], ctx.y[0]
    da = dc = None
    if ctx.needs(0):
        da = _pow_base_grad(ctx, a, c, dy)
    if ctx.needs(1):
        c_like = c if b.elem_type(c) == b.elem_type(a) else b.cast_like(c, a)
        g = b.mul(b.mul(dy, y), b.op("Log", a))
        zero_base = b.op("And", b.op("Equal", a, b.like(0.0, a)),
                        b.op("GreaterOrEqual", c_like, b.like(0.0, a)))
        dc = _masked(b, zero_base, g, a)
        if b.elem_type(c) != b.elem_type(a):
            dc = b.cast_like(dc, c)
    return [da, dc]


def _pow_base_grad(ctx, a: str, c: str, dy: str) -> str:
    """dy * c * a ** (c - 1), simplified when the exponent is a known constant."""
    b = ctx.b
    value = const_value(b, c)
    if value is not None:
        value = np.asarray(value, dtype=np.float64)
        if value.size == 1 and float(value.reshape(())) == 1.0:
            return dy
        if value.size == 1 and float(value.reshape(())) == 2.0:
            return b.mul(dy, b.mul(a, b.like(2.0, a)))
        if value.size == 1 and float(value.reshape(())) == 0.0:
            return b.mul(dy, b.like(0.0, a))
        if not np.any(value == 0.0):  # no 0 * inf to guard against
            scale = b.const(value, _float_dtype(b, a))
            return b.mul(dy, b.mul(scale, b.op("Pow", a, b.const(value - 1.0, _float_dtype(b, a)))))
    c_like = c if b.elem_type(c) == b.elem_type(a) else b.cast_like(c, a)
    g = b.mul(dy, b.mul(c_like, b.op("Pow", a, b.sub(c_like, b.like(1.0, a)))))
    return _masked(b, b.op("Equal", c_like, b.like(0.0, a)), g, a)


# ---------------------------------------------------------------- Min, Max, Where
@register("Max", "Min", tag="nonlinear", broadcast=True)
def vjp_minmax(ctx):
    """y = max_i x_i (or min): dx_i = dy * [x_i == y] / #{j: x_j == y} (ties split equally)."""
    b, dy, y = ctx.b, ctx.dy[0], ctx.y[0]
    n = len(ctx.x)
    if n == 1:
        return [dy]
    masks = [b.cast_like(b.op("Equal", x, y), y) for x in ctx.x]
    share = b.div(dy, b.sum(masks))
    return [b.mul(share, masks[i]) if ctx.needs(i) else None for i in range(n)]


@register("Where", tag="nonlinear", broadcast=True)
def vjp_where(ctx):
    """y = where(cond, a, c): da = where(cond, dy, 0), dc = where(cond, 0, dy)."""
    b, cond, dy = ctx.b, ctx.x[0], ctx.dy[0]
    zero = b.like(0.0, ctx.y[0])
    return [None,
            b.where(cond, dy, zero) if ctx.needs(1) else None,
            b.where(cond, zero, dy) if ctx.needs(2) else None]


# ---------------------------------------------------------------- Cast
@register("Cast", "CastLike", tag="linear")
def vjp_cast(ctx):
    """y = cast(x): dx = dy cast back to x's type."""
    return [ctx.b.cast_like(ctx.dy[0], ctx.x[0])] + [None] * (len(ctx.x) - 1)


# ---------------------------------------------------------------- DequantizeLinear
@register("DequantizeLinear", tag="linear")
def vjp_dequantize_linear(ctx):
    """y = (x - zero_point) * scale, scale per tensor, per ``axis`` or per block of ``block_size`` along it:
    d scale = dy * (x - zero_point) summed over the elements each scale multiplies (the node itself computes
    ``x - zero_point``, with a scale of ones).  x and zero_point are integers (or float8 codes): no cotangent."""
    b, x, scale = ctx.b, ctx.x[0], ctx.x[1]
    grads = [None] * len(ctx.x)
    if not ctx.needs(1):
        return grads
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in ctx.node.attribute}
    ones = b.add(b.zeros_like(scale), b.like(1.0, scale))
    g = b.mul(ctx.dy[0], b.op("DequantizeLinear", x, ones, *ctx.x[2:], **attrs))
    rank, scale_rank = known_rank(ctx, x), known_rank(ctx, scale)
    axis, block = int(attrs.get("axis", 1)) % max(rank, 1), int(attrs.get("block_size", 0))
    if scale_rank == 0 or b.shape(scale) == [1]:      # one scale for the whole tensor
        grads[1] = b.reshape_exact(b.op("ReduceSum", g, keepdims=0), b.shape_of(scale))
    elif block == 0:
        grads[1] = b.reduce_sum(g, [a for a in range(rank) if a != axis], keepdims=0)
    else:
        grads[1] = _sum_over_blocks(b, g, axis, block, rank)
    return grads


def _sum_over_blocks(b, g: str, axis: int, block: int, rank: int) -> str:
    """``g`` summed over consecutive blocks of ``block`` entries along ``axis`` (the last block may be short:
    ``g`` is zero-padded to whole blocks first)."""
    size = b.op("Shape", g, start=axis, end=axis + 1)
    blocks = b.div(b.add(size, b.ints([block - 1])), b.ints([block]))
    pads = b.op("Concat", b.ints([0] * rank), b.ints([0] * axis), b.sub(b.mul(blocks, b.ints([block])), size),
                b.ints([0] * (rank - axis - 1)), axis=0)
    padded = b.op("Pad", g, pads)
    shape = b.op("Concat", b.op("Shape", g, end=axis), blocks, b.ints([block]), b.op("Shape", g, start=axis + 1),
                 axis=0)
    return b.reduce_sum(b.reshape_exact(padded, shape), [axis + 1], keepdims=0)


# ---------------------------------------------------------------- unary maths
def _neg_derivative(ctx, x, y):
    """d(-x) = -1."""
    return ctx.b.like(-1.0, x)


def _abs_derivative(ctx, x, y):
    """d|x| = sign(x) (0 at 0, as torch)."""
    return ctx.b.op("Sign", x)


def _exp_derivative(ctx, x, y):
    """d exp(x) = y."""
    return y


def _erf_derivative(ctx, x, y):
    """d erf(x) = 2 / sqrt(pi) * exp(-x^2)."""
    b = ctx.b
    return b.mul(b.like(2.0 / math.sqrt(math.pi), x), b.op("Exp", b.neg(b.mul(x, x))))


def _sin_derivative(ctx, x, y):
    """d sin(x) = cos(x)."""
    return ctx.b.op("Cos", x)


def _cos_derivative(ctx, x, y):
    """d cos(x) = -sin(x)."""
    return ctx.b.neg(ctx.b.op("Sin", x))


def _tan_derivative(ctx, x, y):
    """d tan(x) = 1 + tan(x)^2 = 1 + y^2 (as torch, from the output)."""
    b = ctx.b
    return b.add(b.like(1.0, y), b.mul(y, y))


def _sinh_derivative(ctx, x, y):
    """d sinh(x) = cosh(x)."""
    return ctx.b.op("Cosh", x)


def _cosh_derivative(ctx, x, y):
    """d cosh(x) = sinh(x)."""
    return ctx.b.op("Sinh", x)


def _one_minus_square(b, x: str) -> str:
    """1 - x^2, as (1 - x) (1 + x): no cancellation near |x| = 1."""
    one = b.like(1.0, x)
    return b.mul(b.sub(one, x), b.add(one, x))


def _asin_derivative(ctx, x, y):
    """d asin(x) = 1 / sqrt(1 - x^2) (inf at |x| = 1, NaN outside [-1, 1], as torch)."""
    b = ctx.b
    return b.op("Reciprocal", b.op("Sqrt", _one_minus_square(b, x)))


def _acos_derivative(ctx, x, y):
    """d acos(x) = -1 / sqrt(1 - x^2) (-inf at |x| = 1, NaN outside [-1, 1], as torch)."""
    return ctx.b.neg(_asin_derivative(ctx, x, y))


def _atan_derivative(ctx, x, y):
    """d atan(x) = 1 / (1 + x^2)."""
    b = ctx.b
    return b.op("Reciprocal", b.add(b.like(1.0, x), b.mul(x, x)))


def _asinh_derivative(ctx, x, y):
    """d asinh(x) = 1 / sqrt(x^2 + 1)."""
    b = ctx.b
    return b.op("Reciprocal", b.op("Sqrt", b.add(b.mul(x, x), b.like(1.0, x))))


def _acosh_derivative(ctx, x, y):
    """d acosh(x) = 1 / sqrt(x^2 - 1), as 1 / sqrt((x - 1) (x + 1)) (inf at x = 1, NaN below, as torch)."""
    b = ctx.b
    one = b.like(1.0, x)
    return b.op("Reciprocal", b.op("Sqrt", b.mul(b.sub(x, one), b.add(x, one))))


def _atanh_derivative(ctx, x, y):
    """d atanh(x) = 1 / (1 - x^2) (inf at |x| = 1, as torch)."""
    b = ctx.b
    return b.op("Reciprocal", _one_minus_square(b, x))


elementwise("Neg", _neg_derivative, tag="linear")
elementwise("Abs", _abs_derivative, tag="nonlinear")
elementwise("Exp", _exp_derivative, tag="nonlinear")
elementwise("Erf", _erf_derivative, tag="nonlinear")
elementwise("Sin", _sin_derivative, tag="nonlinear")
elementwise("Cos", _cos_derivative, tag="nonlinear")
elementwise("Tan", _tan_derivative, tag="nonlinear")
elementwise("Sinh", _sinh_derivative, tag="nonlinear")
elementwise("Cosh", _cosh_derivative, tag="nonlinear")
elementwise("Asin", _asin_derivative, tag="nonlinear")
elementwise("Acos", _acos_derivative, tag="nonlinear")
elementwise("Atan", _atan_derivative, tag="nonlinear")
elementwise("Asinh", _asinh_derivative, tag="nonlinear")
elementwise("Acosh", _acosh_derivative, tag="nonlinear")
elementwise("Atanh", _atanh_derivative, tag="nonlinear")


@register("Log", tag="nonlinear", unary=True)
def vjp_log(ctx):
    """y = log(x): dx = dy / x."""
    return [ctx.b.div(ctx.dy[0], ctx.x[0])]


@register("Sqrt", tag="nonlinear", unary=True)
def vjp_sqrt(ctx):
    """y = sqrt(x): dx = dy / (2 y)."""
    b, y = ctx.b, ctx.y[0]
    return [b.div(ctx.dy[0], b.mul(y, b.like(2.0, y)))]


@register("Reciprocal", tag="nonlinear", unary=True)
def vjp_reciprocal(ctx):
    """y = 1 / x: dx = -dy * y^2."""
    b, y = ctx.b, ctx.y[0]
    return [b.neg(b.mul(ctx.dy[0], b.mul(y, y)))]


@register("ai.onnx.ml.Scaler", tag="linear")
def vjp_ml_scaler(ctx):
    """y = (x - offset) * scale (ai.onnx.ml, scale per feature on the last axis): dx = dy * scale."""
    b = ctx.b
    scale = np.asarray(ctx.attr("scale", [1.0]), dtype=np_dtype(b.elem_type(ctx.y[0]) or 1))
    return [b.mul(ctx.dy[0], b.const(scale, scale.dtype))]
