"""Reductions: ReduceSum, ReduceMean, ReduceMax/Min, ReduceL1/L2, ReduceSumSquare, ReduceLogSum(Exp).

Every rule has the form ``dx = keep(dy) * local(x, keep(y))``: ``keep`` puts
back the reduced axes as size-1 dims when ``keepdims=0`` (so the product
broadcasts against x), and ``local`` is the derivative of the reduced function
with respect to one element.  ReduceSum takes its axes as an input; the others
took them as an attribute up to opset 17 and as an input from opset 18, so each
of them is registered twice (``since=1`` and ``since=18``).

ReduceProd and CumProd are products: their rules never divide by x, so they stay
exact and finite where inputs are zero.  They are built from prefix products and
linear recurrences along one axis, run by recursive doubling (``log2 n`` steps of
shift-and-multiply, unrolled when ``n`` is static, a ``Loop`` otherwise).
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ..graph import np_dtype
from .registry import register
from ._common import Reduction, const_value, dims_vec, known_rank


def _reduction(op_type: str, tag: str, axes_input_since: int = 18):
    """Register ``fn(r, dy)`` for op_type (tagged ``tag``) with axes as an attribute before opset
    ``axes_input_since`` and as an input from it on."""
    def deco(fn):
        def make(from_input):
            def rule(ctx):
                return [fn(Reduction(ctx, from_input), ctx.dy[0])] + [None] * (len(ctx.x) - 1)
            rule.__name__ = fn.__name__ + ("_axes_input" if from_input else "_axes_attr")
            rule.__doc__ = fn.__doc__
            return rule
        if axes_input_since > 1:
            register(op_type, tag=tag)(make(False))
        register(op_type, tag=tag, since=axes_input_since)(make(True))
        return fn
    return deco


@_reduction("ReduceSum", "linear", axes_input_since=1)  # axes moved to an input at opset 13 (< our minimum 17)
def vjp_reduce_sum(r, dy):
    """dx = expand(dy)."""
    return r.expand(r.keep(dy))


@_reduction("ReduceMean", "linear")
def vjp_reduce_mean(r, dy):
    """dx = expand(dy) / n, n = elements per output."""
    return r.expand(r.b.div(r.keep(dy), r.count()))


@_reduction("ReduceSumSquare", "nonlinear")
def vjp_reduce_sum_square(r, dy):
    """dx = 2 x dy."""
    return r.b.mul(r.keep(dy), r.b.mul(r.x, r.b.like(2.0, r.x)))


@_reduction("ReduceL1", "nonlinear")
def vjp_reduce_l1(r, dy):
    """dx = sign(x) dy."""
    return r.b.mul(r.keep(dy), r.b.op("Sign", r.x))


@_reduction("ReduceL2", "nonlinear")
def vjp_reduce_l2(r, dy):
    """dx = x / y dy, 0 where the norm y is 0."""
    b = r.b
    y = r.keep(r.y)
    zero = b.like(0.0, r.x)
    is_zero = b.op("Equal", y, zero)
    safe = b.where(is_zero, b.like(1.0, r.x), y)
    return b.mul(r.keep(dy), b.where(is_zero, zero, b.div(r.x, safe)))


@_reduction("ReduceLogSum", "nonlinear")
def vjp_reduce_log_sum(r, dy):
    """dx = dy / exp(y) = dy / sum(x)."""
    return r.expand(r.b.div(r.keep(dy), r.b.op("Exp", r.keep(r.y))))


@_reduction("ReduceLogSumExp", "nonlinear")
def vjp_reduce_log_sum_exp(r, dy):
    """dx = exp(x - y) dy (the softmax over the reduced axes)."""
    return r.b.mul(r.keep(dy), r.b.op("Exp", r.b.sub(r.x, r.keep(r.y))))


def _extremum(r, dy):
    """dx = dy at the positions equal to the extremum, split equally among ties."""
    b = r.b
    hit = b.op("CastLike", b.op("Equal", r.x, r.keep(r.y)), r.x)
    return b.mul(b.div(r.keep(dy), r.sum_keep(hit)), hit)


_reduction("ReduceMax", "nonlinear")(_extremum)
_reduction("ReduceMin", "nonlinear")(_extremum)


# ---------------------------------------------------------------------------------------- products
def full_like(b, x: str, value: float, like: str | None = None) -> str:
    """A tensor shaped like ``x`` filled with ``value``, of the float type of ``like`` (default ``x``)."""
    return _full(b, b.shape_of(x), value, like or x)


def _full(b, shape: str, value: float, like: str) -> str:
    et = b.elem_type(like)
    t = b.op("ConstantOfShape", shape,
             value=numpy_helper.from_array(np.array([value], np_dtype(et or TensorProto.FLOAT))))
    return t if et is not None else b.cast_like(t, like)


def _axes(b, axis) -> str:
    """A scan axis as a 1-element int64 vector: an int, or already such a (run-time) vector."""
    return b.ints([axis]) if isinstance(axis, int) else axis


def flip(b, t: str, axis) -> str:
    """``t`` reversed along ``axis`` (an int, or a run-time int64 [1] vector)."""
    return b.op("Slice", t, b.ints([-1]), b.ints([-2 ** 63]), _axes(b, axis), b.ints([-1]))


def shift(b, t: str, s, axis, fill: float, like: str) -> str:
    """``t_{j-s}`` along ``axis``, ``fill`` in the first ``s`` places (``s``: an int, or an int64 [1] tensor
    smaller than the axis).  A run-time axis (an int64 [1] vector) needs opset 18 (Pad's axes)."""
    s_vec = b.ints([s]) if isinstance(s, int) else s
    rest = b.op("Slice", t, b.ints([0]), b.neg(s_vec), _axes(b, axis))
    if isinstance(axis, int):
        head = b.op("Slice", t, b.ints([0]), s_vec, b.ints([axis]))
        return b.op("Concat", _full(b, b.shape_of(head), fill, like), rest, axis=axis)
    pads = b.ints([s, 0]) if isinstance(s, int) else b.op("Concat", s, b.ints([0]), axis=0)
    return b.op("Pad", rest, pads, b.like(fill, like), axis)


def extent(b, x: str, axis):
    """The size of ``x`` along ``axis`` (non-negative int, or a run-time int64 [1] vector): an int when
    static, else an int64 scalar tensor."""
    s = b.shape(x)
    if isinstance(axis, int):
        if s is not None and isinstance(s[axis], int):
            return s[axis]
        return b.squeeze(dims_vec(b, x, axis, axis + 1), [0])
    return b.squeeze(b.op("Gather", b.shape_of(x), axis, axis=0), [0])


def _doubling(b, states: list, step, n, like: str) -> list:
    """``states = step(builder, states, s)`` for ``s = 1, 2, 4, ...`` while ``s < n``: unrolled when ``n`` is an
    int, else a ``Loop`` whose body is one step (its shift ``s`` a loop-carried int64 [1] tensor)."""
    if isinstance(n, int):
        s = 1
        while s < n:
            states = step(b, states, s)
            s *= 2
        return states
    et = b.elem_type(like)
    if et is None:
        raise ValueError(f"the element type of {like!r} is unknown")
    body = b.child()
    s_in = body.fresh("shift")
    body.inputs += [helper.make_tensor_value_info(body.fresh("i"), TensorProto.INT64, []),
                    helper.make_tensor_value_info(body.fresh("cond"), TensorProto.BOOL, []),
                    helper.make_tensor_value_info(s_in, TensorProto.INT64, [1])]
    names = [body.fresh("state") for _ in states]
    for name in names:
        body.inputs.append(b.typed(name, et))
        b.set_type(name, et)
    new = step(body, names, s_in)
    s_out = body.mul(s_in, body.ints([2]))
    n_vec = b.reshape(n, b.ints([1]))
    go = body.squeeze(body.op("Less", s_out, n_vec), [0])
    body.outputs += [b.typed(go, TensorProto.BOOL), b.typed(s_out, TensorProto.INT64)]
    body.outputs += [b.typed(body.op("Identity", t), et) for t in new]
    start = b.squeeze(b.op("Less", b.ints([1]), n_vec), [0])
    out = b.op("Loop", None, start, b.ints([1]), *states, outputs=1 + len(states), body=body.subgraph("doubling"))
    return out[1:]


def prefix_products(b, t: str, axis, n, like: str) -> str:
    """``p_j = t_0 t_1 ... t_j`` along ``axis`` (recursive doubling: ``p_j *= p_{j-s}``); ``like``: a tensor
    of the same float type whose type is known."""
    return _doubling(b, [t], lambda g, st, s: [g.mul(st[0], shift(g, st[0], s, axis, 1.0, like))], n, like)[0]


def prefix_recurrence(b, a: str, c: str, axis, n, like: str) -> str:
    """``r_j = c_j + a_j r_{j-1}`` along ``axis`` (``r_{-1} = 0``), by recursive doubling of the affine maps:
    ``c_j += a_j c_{j-s}``, ``a_j *= a_{j-s}``."""
    def step(g, st, s):
        a_, c_ = st
        return [g.mul(a_, shift(g, a_, s, axis, 0.0, like)), g.add(c_, g.mul(a_, shift(g, c_, s, axis, 0.0, like)))]
    return _doubling(b, [a, c], step, n, like)[1]


def exclusive_prefix_products(b, t: str, axis, n, like: str) -> str:
    """``prod_{l < j} t_l`` along ``axis`` (1 at the first entry)."""
    return shift(b, prefix_products(b, t, axis, n, like), 1, axis, 1.0, like)


def exclusive_suffix_products(b, t: str, axis, n, like: str) -> str:
    """``prod_{l > j} t_l`` along ``axis`` (1 at the last entry)."""
    return flip(b, exclusive_prefix_products(b, flip(b, t, axis), axis, n, like), axis)


def others_along(b, t: str, axis, n, like: str) -> str:
    """``prod_{l != j} t_l`` along ``axis``: the exclusive prefix product times the exclusive suffix product."""
    return b.mul(exclusive_prefix_products(b, t, axis, n, like), exclusive_suffix_products(b, t, axis, n, like))


def _lexicographic(b, x: str, axes: list[int], extents: list, along, like: str | None) -> str:
    """``prod_k along(ReduceProd(x, a_{k+1}...), a_k)``: ``along`` (a product along one axis) applied axis by
    axis to the products over the later axes, for entries grouped over ``axes`` in lexicographic order."""
    result = None
    for k, axis in enumerate(axes):
        rest = axes[k + 1:]
        t = b.reduce("ReduceProd", x, rest) if rest else x
        part = along(b, t, axis, extents[k], like or x)
        result = part if result is None else b.mul(result, part)
    return result


def product_of_others(b, x: str, axes: list[int], extents: list, like: str | None = None) -> str:
    """For every entry of ``x``, the product of the other entries of its group over ``axes`` (non-negative),
    without division.  The others of entry ``j`` split by the first axis ``a_k`` where they differ from ``j``:
    those are the others along ``a_k`` of the products over ``a_{k+1}...``, so the result is
    ``prod_k others_along(ReduceProd(x, a_{k+1}...), a_k)``."""
    return _lexicographic(b, x, axes, extents, others_along, like)


def products_before(b, x: str, axes: list[int], extents: list, like: str | None = None) -> str:
    """For every entry ``j`` of ``x``, the product of the entries of its group over ``axes`` that come before it
    in lexicographic order (equal on ``a_1...a_{k-1}``, smaller on ``a_k``, anything on the later axes):
    ``prod_k exclusive_prefix(ReduceProd(x, a_{k+1}...), a_k)``, without division."""
    return _lexicographic(b, x, axes, extents, exclusive_prefix_products, like)


def products_after(b, x: str, axes: list[int], extents: list, like: str | None = None) -> str:
    """The product of the entries of ``j``'s group that come after it in lexicographic order
    (:func:`products_before` with suffix products); ``before * after`` is :func:`product_of_others`."""
    return _lexicographic(b, x, axes, extents, exclusive_suffix_products, like)


def reduce_prod_axes(r) -> list[int] | None:
    """The reduced axes of a ReduceProd (non-negative, sorted), None when they are read at run time."""
    if isinstance(r.axes, str):
        return None
    rank = known_rank(r.ctx, r.x)
    return sorted({a % rank for a in r.axes}) if r.axes is not None else list(range(rank))


def _others_counting_zeros(r) -> str:
    """The product of the others over axes known only at run time: ``P / x_j`` with ``P`` the product of the
    nonzero entries, where the group has no zero; ``P`` at the group's only zero; 0 elsewhere.  Finite with
    zeros, but it divides, so it can under- or overflow where ``P`` does and the true product does not."""
    b, x = r.b, r.x
    zero = b.op("Equal", x, b.like(0.0, x))
    one = b.like(1.0, x)
    safe = b.where(zero, one, x)
    zeros = r.sum_keep(b.cast_like(zero, x))
    nonzero_product = r.reduce_keep("ReduceProd", safe)
    with_zero = b.where(b.op("Equal", zeros, one), nonzero_product, b.like(0.0, x))
    without = b.where(b.op("Equal", zeros, b.like(0.0, x)), b.div(nonzero_product, safe), b.like(0.0, x))
    return b.where(zero, with_zero, without)


@_reduction("ReduceProd", "nonlinear")
def vjp_reduce_prod(r, dy):
    """y = prod_j x_j over the axes: dx_j = dy * prod_{l != j} x_l, the product of the others (prefix times
    suffix products, no division, so exact where x has zeros); with axes read at run time, the others are
    counted from the product of the nonzero entries (:func:`_others_counting_zeros`)."""
    b = r.b
    if r.axes is None and r.noop:
        return dy
    axes = reduce_prod_axes(r)
    if axes is None:
        return b.mul(r.keep(dy), _others_counting_zeros(r))
    others = product_of_others(b, r.x, axes, [extent(b, r.x, a) for a in axes])
    return b.mul(r.keep(dy), others)


# ---------------------------------------------------------------------------------------- CumProd
def cumprod_axis(ctx):
    """CumProd's axis, non-negative: an int when it is a constant, else a run-time int64 [1] vector."""
    b = ctx.b
    rank = known_rank(ctx, ctx.x[0])
    value = const_value(b, ctx.x[1])
    if value is not None:
        return int(value.reshape(())) % rank
    axis = b.reshape(b.op("Cast", ctx.x[1], to=TensorProto.INT64), b.ints([1]))
    return b.op("Mod", axis, b.ints([rank]))


def cumprod_before(b, x: str, axis, reverse: bool) -> str:
    """``E_j = prod_{l < j} x_l`` in the direction of the product (the axis flipped when ``reverse``): an
    exclusive CumProd, shaped and ordered like ``x``.  ``axis``: an int, or a run-time int64 [1] vector."""
    scalar_axis = b.const(axis, np.int64) if isinstance(axis, int) else b.squeeze(axis, [0])
    return b.op("CumProd", x, scalar_axis, exclusive=1, reverse=1 if reverse else None)


def cumprod_after(b, x: str, dy: str, axis, exclusive: bool, reverse: bool, n) -> str:
    """``R_j = sum_{i >= j} dy_i prod_{j < l <= i} x_l`` in the direction of the product (``i > j`` when
    exclusive), shaped and ordered like ``x``: the reverse recurrence ``R_j = c_j + x_{j+1} R_{j+1}`` with
    ``c = dy`` (``c_j = dy_{j+1}`` when exclusive), run as a prefix recurrence over the flipped axis."""
    back_x, back_dy = (x, dy) if reverse else (flip(b, x, axis), flip(b, dy, axis))
    a = shift(b, back_x, 1, axis, 0.0, x)                      # a_j = x_{j+1} in the forward order
    c = shift(b, back_dy, 1, axis, 0.0, x) if exclusive else back_dy
    after = prefix_recurrence(b, a, c, axis, n, x)
    return after if reverse else flip(b, after, axis)


def cumprod_vjp(b, x: str, dy: str, axis, exclusive: bool, reverse: bool, n) -> str:
    """The cotangent of ``y = CumProd(x)`` along ``axis``, without division.

    Along the direction of the product (the axis flipped when ``reverse``),
    ``y_i = prod_{l <= i} x_l`` (``l < i`` when exclusive), so
    ``dx_j = E_j R_j`` with ``E_j = prod_{l < j} x_l`` (:func:`cumprod_before`) and
    ``R_j = sum_{i >= j} dy_i prod_{j < l <= i} x_l`` (:func:`cumprod_after`).
    ``axis``: an int, or a run-time int64 [1] vector.
    """
    return b.mul(cumprod_before(b, x, axis, reverse), cumprod_after(b, x, dy, axis, exclusive, reverse, n))


@register("CumProd", tag="nonlinear")
def vjp_cumprod(ctx):
    """y_i = prod of x along the axis up to i (exclusive, reverse): dx_j = sum_i dy_i prod_{l in i's product,
    l != j} x_l (:func:`cumprod_vjp`: exact and finite with zeros)."""
    b, x = ctx.b, ctx.x[0]
    axis = cumprod_axis(ctx)
    dx = cumprod_vjp(b, x, ctx.dy[0], axis, bool(ctx.attr("exclusive", 0)), bool(ctx.attr("reverse", 0)),
                     extent(b, x, axis))
    return [dx, None]
