"""DeepLIFT's core rules (the scheme: :mod:`onnxplain.rules.deeplift`): the Rescale rule at unary
nonlinearities and piecewise-constant ops, the Shapley rules of elementwise ops of several active inputs
(Max, Min, Pow, Mod, PRelu and Clip with active slopes or bounds, Div) and of bilinear maps (Mul, MatMul, Gemm,
Einsum, Conv, ConvTranspose: the plain gradient at the midpoints), the selection rules of Where and Gather whose
condition or indices depend on the input, and the cross-extremum rules of ReduceMax / ReduceMin, GlobalMaxPool and
MaxPool.  Each rule conserves the difference: ``sum_i m_i * (x_i - x_i_ref) = dy * (y - y_ref)``.
"""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import onnx

from ..vjp import register
from ..vjp._common import Reduction, const_value, fail
from ..vjp.pool import max_pool_indices
from . import NONLINEAR_UNARY, standard_rule
from ..vjp._common import differs_from_reference
from .rescale_common import (below_eps, extremum_multipliers, midpoint, node_attributes,
                             plain_gradient, reference, safe_ratio, shapley_weight)

#: This family's rules (assembled with the others into :data:`onnxplain.rules.deeplift.RESCALE`).
TABLE: dict = {}

#: Variadic ops (Max, Min) are Shapley-valued exactly over all subsets of their active inputs: 2**n forward
#: evaluations per node, so the number of active inputs is bounded.
MAX_PLAYERS = 4


# ------------------------------------------------------------------------------------ helpers
def _rescaled(ctx, phi: str, i: int, gradient: str | None) -> str:
    """``dy * phi / (x_i - x_i_ref)``, and ``gradient`` (output-shaped) where the difference is small."""
    b, x = ctx.b, ctx.x[i]
    delta = b.sub(x, ctx.ref(x))
    small = below_eps(ctx, delta)
    rescaled = b.mul(ctx.dy[0], safe_ratio(b, phi, delta, small))
    return rescaled if gradient is None else b.where(small, gradient, rescaled)


def _players(ctx) -> list[int]:
    """Indices of the node's inputs that depend on the attributed input."""
    return [i for i, x in enumerate(ctx.x) if x and ctx.needs(i)]


# ------------------------------------------------------------------------------------ unary ops
def rescale_unary(ctx):
    """``dz = dy * (y - y_ref) / (z - z_ref)``, the gradient where ``|z - z_ref| < eps``."""
    b, z, y = ctx.b, ctx.x[0], ctx.y[0]
    dz_in, dy_out = b.sub(z, ctx.ref(z)), b.sub(y, ctx.ref(y))
    small = below_eps(ctx, dz_in)
    gradient = plain_gradient(ctx)[0]
    rescaled = b.mul(ctx.dy[0], safe_ratio(b, dy_out, dz_in, small))
    if gradient is None:   # piecewise constant: 0 where nothing moved
        gradient = b.like(0.0, z)
    return [b.where(small, gradient, rescaled)] + [None] * (len(ctx.x) - 1)


#: Piecewise-constant ops: zero gradient, but a row and its reference may sit on different steps.
PIECEWISE_CONSTANT = ("Floor", "Ceil", "Round", "Sign")

for _op in NONLINEAR_UNARY + PIECEWISE_CONSTANT:
    if _op not in ("PRelu", "Clip"):   # these take slopes / bounds that may be active: Shapley below
        register(_op, table=TABLE)(rescale_unary)


# ------------------------------------------------------------------------------------ Shapley
@register("Max", "Min", "Pow", "PRelu", "Clip", "Mod", broadcast=True, table=TABLE)
def shapley_elementwise(ctx):
    """Exact Shapley multipliers of an elementwise op's active inputs (``f`` re-evaluated on every mix
    of input and reference values); with one active input this is the Rescale rule ``Δy / Δx``.
    ``Pow`` with the constant exponent 2 is exact in closed form: ``m = a + a_ref``."""
    b, node = ctx.b, ctx.node
    players = _players(ctx)
    if not players:
        return [None] * len(ctx.x)
    if node.op_type == "Pow" and players == [0] and _is_constant_two(ctx, ctx.x[1]):
        return [b.mul(ctx.dy[0], b.add(ctx.x[0], ctx.ref(ctx.x[0]))), None]
    if len(players) > MAX_PLAYERS:
        raise fail(ctx, f"DeepLIFT's Shapley rule takes at most {MAX_PLAYERS} inputs that depend on the "
                         f"attributed input, this node has {len(players)}")
    attrs = node_attributes(node)
    values: dict[frozenset, str] = {frozenset(players): ctx.y[0], frozenset(): ctx.ref(ctx.y[0])}

    def value(present: frozenset) -> str:
        if present not in values:
            args = [x if (i not in players or i in present) else ctx.ref(x) for i, x in enumerate(ctx.x)]
            values[present] = b.op(node.op_type, *args, **attrs)
        return values[present]

    gradients = plain_gradient(ctx)
    grads = [None] * len(ctx.x)
    n = len(players)
    for i in players:
        others = [j for j in players if j != i]
        terms = []
        for s in range(n):
            for coalition in itertools.combinations(others, s):
                with_i, without = frozenset(coalition) | {i}, frozenset(coalition)
                gain = b.sub(value(with_i), value(without))
                w = shapley_weight(n, s)
                terms.append(gain if w == 1.0 else b.mul(gain, b.like(w, ctx.y[0])))
        grads[i] = _rescaled(ctx, b.sum(terms), i, gradients[i])
    return grads


def _is_constant_two(ctx, name: str) -> bool:
    value = const_value(ctx.b, name)
    return value is not None and value.size == 1 and float(value.reshape(())) == 2.0


@register("Mul", broadcast=True, table=TABLE)
@register("MatMul", "Gemm", "Einsum", "Conv", "ConvTranspose", table=TABLE)
def shapley_bilinear(ctx):
    """Bilinear maps: the plain gradient with every active operand replaced by its midpoint
    ``(x + x_ref) / 2`` (each operand's cotangent reads only the others, so ``dA = dY (B + B_ref) / 2``
    and ``dB = (A + A_ref) / 2 dY``); with one active operand this is the plain gradient."""
    added = 2 if ctx.node.op_type in ("Gemm", "Conv", "ConvTranspose") else None   # C, a convolution's bias
    active = [i for i in _players(ctx) if i != added]
    if len(active) < 2:
        return plain_gradient(ctx)
    if len(active) > 2:
        raise fail(ctx, f"DeepLIFT's Shapley rule for a product of {len(active)} operands that depend on the "
                         f"attributed input is not implemented (two are)")
    node = onnx.NodeProto()
    node.CopyFrom(ctx.node)
    mids = {}
    for i in active:
        mids[i] = midpoint(ctx, ctx.x[i])
        node.input[i] = mids[i]
    return standard_rule(ctx.node.op_type, ctx.opset).fn(
        dataclasses.replace(ctx, node=node, active=ctx.active | set(mids.values())))


@register("Div", broadcast=True, table=TABLE)
def shapley_div(ctx):
    """``y = a / c``: ``m_a = (1/c + 1/c_ref) / 2`` and ``m_c = -(a + a_ref) / (2 c c_ref)`` (the
    two-player Shapley values in closed form; with ``a`` constant, ``m_c = Δy / Δc`` exactly)."""
    b, (a, c), dy = ctx.b, ctx.x, ctx.dy[0]
    c_ref = reference(ctx, c)
    da = dc = None
    if ctx.needs(0) and ctx.needs(1):
        da = b.mul(dy, b.mul(b.add(b.op("Reciprocal", c), b.op("Reciprocal", c_ref)), b.like(0.5, ctx.y[0])))
    elif ctx.needs(0):
        da = b.div(dy, c)
    if ctx.needs(1):
        a_sum = b.add(a, ctx.ref(a)) if ctx.needs(0) else b.mul(a, b.like(2.0, ctx.y[0]))
        dc = b.neg(b.div(b.mul(dy, a_sum), b.mul(b.mul(c, c_ref), b.like(2.0, ctx.y[0]))))
    return [da, dc]


# ------------------------------------------------------------------------------------ selection
def _share_by_magnitude(ctx, dz: str, own: str, other: str) -> tuple[str, str]:
    """Selections that differ between a row and its reference: the row picked an entry that moved by
    ``own``, the reference one that moved by ``other``; each entry takes the part of ``dy * Δy``
    proportional to ``|Δ|``, as the multiplier ``dy Δy / (|own| + |other|) * sign(Δ)``.  Returns that
    share (``dy Δy / (|own| + |other|)``) and where it is undefined (both entries unmoved: the plain
    gradient is used there)."""
    b = ctx.b
    total = b.add(b.op("Abs", own), b.op("Abs", other))
    small = below_eps(ctx, total)
    return safe_ratio(b, b.mul(ctx.dy[0], dz), total, small), small


@register("Where", broadcast=True, table=TABLE)
def rescale_where(ctx):
    """``y = where(cond, a, c)``.  A condition that is the same in a row and its reference routes the
    cotangent (the plain gradient, linear in a and c).  One computed from the attributed input may
    differ: the branch the row picked and the one the reference picked share ``Δy`` in proportion to
    how much each moved (:func:`_share_by_magnitude`); with equal conditions this is the gradient, and
    a branch that does not depend on the input leaves the whole of ``Δy`` to the one that does
    (``Δy / Δa``, the unique conserving answer)."""
    b, cond, y = ctx.b, ctx.x[0], ctx.y[0]
    gradients = plain_gradient(ctx)
    if not differs_from_reference(ctx, cond):
        return gradients
    zero = b.like(0.0, y)
    cond_ref = ctx.ref(cond)
    moved = {i: b.sub(ctx.x[i], ctx.ref(ctx.x[i])) if ctx.needs(i) else zero for i in (1, 2)}
    own, other = b.where(cond, moved[1], moved[2]), b.where(cond_ref, moved[1], moved[2])
    share, small = _share_by_magnitude(ctx, b.sub(y, ctx.ref(y)), own, other)
    picks = {1: b.add(b.cast_like(cond, y), b.cast_like(cond_ref, y)),
             2: b.add(b.cast_like(b.op("Not", cond), y), b.cast_like(b.op("Not", cond_ref), y))}
    grads = [None, None, None]
    for i in (1, 2):
        if ctx.needs(i):
            grads[i] = b.where(small, gradients[i], b.mul(b.mul(share, picks[i]), b.op("Sign", moved[i])))
    return grads


@register("Gather", "GatherElements", "GatherND", table=TABLE)
def rescale_selection(ctx):
    """Selections whose indices are computed from the input (a classifier pooling the last non-pad
    token): a row and its reference may pick different entries ``p`` and ``p'`` of the data.  The two
    share ``Δy`` in proportion to ``|x_p - x_ref_p|`` and ``|x_p' - x_ref_p'|`` (:func:`_share_by_magnitude`),
    scattered back by the row's and by the reference's own indices; with equal indices this is the plain
    gradient."""
    gradients = plain_gradient(ctx)
    if not ctx.needs(0) or not differs_from_reference(ctx, ctx.x[1]):
        return gradients
    if not ctx.ref.stacked:
        return _paired_selection(ctx)
    b, x, y, dy = ctx.b, ctx.x[0], ctx.y[0], ctx.dy[0]
    # how much the picked entries moved: the row's pick in the top half, the reference's below
    moved = b.op(ctx.node.op_type, b.sub(x, ctx.ref(x)), *ctx.x[1:], **node_attributes(ctx.node))
    half = ctx.ref.half(y)
    top, bottom = _rows(b, moved, None, half), b.neg(_rows(b, moved, half, None))
    dz = b.sub(_rows(b, y, None, half), _rows(b, y, half, None))
    picked = dataclasses.replace(ctx, dy=[_rows(b, dy, None, half)])
    share, small = _share_by_magnitude(picked, dz, top, bottom)
    seed = b.op("Concat", b.where(small, picked.dy[0], b.mul(share, b.op("Sign", top))),
                b.where(small, b.like(0.0, y), b.mul(share, b.op("Sign", bottom))), axis=0)
    scattered = standard_rule(ctx.node.op_type, ctx.opset).fn(dataclasses.replace(ctx, dy=[seed]))[0]
    # the reference's pick landed on the reference rows of x: add it onto the rows it is the reference of
    x_half = ctx.ref.half(scattered)
    below = _rows(b, scattered, x_half, None)
    return [b.op("Concat", b.add(_rows(b, scattered, None, x_half), below), b.zeros_like(below), axis=0)] + \
        [None] * (len(ctx.x) - 1)


def _paired_selection(ctx) -> list:
    """:func:`rescale_selection` where the references run through a copy of their own: the row's picks and
    the reference's picks of ``x - x_ref`` share ``Δy``, and each share is scattered back by its own indices."""
    b, x, y, dy = ctx.b, ctx.x[0], ctx.y[0], ctx.dy[0]
    attributes = node_attributes(ctx.node)
    delta = b.sub(x, ctx.ref(x))
    ref_operands = {name: ctx.ref(value) for name, value in zip(ctx.node.input[1:], ctx.x[1:]) if name}
    own = b.op(ctx.node.op_type, delta, *ctx.x[1:], **attributes)
    theirs = b.op(ctx.node.op_type, delta, *[ref_operands.get(n, n) for n in ctx.node.input[1:]], **attributes)
    share, small = _share_by_magnitude(ctx, b.sub(y, ctx.ref(y)), own, theirs)
    scatter = standard_rule(ctx.node.op_type, ctx.opset).fn
    by_row = scatter(dataclasses.replace(ctx, dy=[b.where(small, dy, b.mul(share, b.op("Sign", own)))]))[0]
    by_ref = scatter(dataclasses.replace(ctx, dy=[b.where(small, b.like(0.0, y), b.mul(share, b.op("Sign", theirs)))],
                                         reads={**ctx.reads, **ref_operands}))[0]
    return [b.add(by_row, by_ref)] + [None] * (len(ctx.x) - 1)


def _rows(b, t: str, start: str | None, stop: str | None) -> str:
    """Rows ``[start, stop)`` of ``t`` (from the first row / to the last when None)."""
    end = stop if stop is not None else b.ints([np.iinfo(np.int64).max])
    return b.op("Slice", t, start if start is not None else b.ints([0]), end, b.ints([0]))


def cross_extremum(ctx, keep, sum_keep, top_op: str) -> str:
    """The cross-extremum rule (:func:`extremum_multipliers`) of a reduction node to the maximum or minimum,
    with the node's own gradient where nothing moved."""
    m, small, _ = extremum_multipliers(ctx, ctx.x[0], ctx.y[0], keep, sum_keep, top_op)
    return ctx.b.where(small, plain_gradient(ctx)[0], ctx.b.mul(keep(ctx.dy[0]), m))


def _extremum_reduction(from_input: bool):
    def rule(ctx):
        """ReduceMax / ReduceMin: the cross-extremum rule over the reduced axes."""
        r = Reduction(ctx, from_input)
        top_op = "Max" if ctx.node.op_type == "ReduceMax" else "Min"
        return [cross_extremum(ctx, r.keep, r.sum_keep, top_op)] + [None] * (len(ctx.x) - 1)
    return rule


for _op in ("ReduceMax", "ReduceMin"):
    register(_op, table=TABLE)(_extremum_reduction(False))
    register(_op, since=18, table=TABLE)(_extremum_reduction(True))


@register("GlobalMaxPool", table=TABLE)
def rescale_global_max_pool(ctx):
    """GlobalMaxPool: the cross-extremum rule over the spatial axes."""
    rank = ctx.b.rank(ctx.x[0])
    if rank is None:
        raise fail(ctx, f"the rank of {ctx.x[0]!r} is unknown")
    axes = list(range(2, rank))
    return [cross_extremum(ctx, lambda t: t, lambda t: ctx.b.reduce_sum(t, axes, keepdims=1), "Max")]


@register("MaxPool", table=TABLE)
def rescale_maxpool(ctx):
    """Cross-max rule: ``max(o, o_ref) - o_ref`` goes to the input's argmax, ``o - max(o, o_ref)``
    to the reference's argmax, each divided by that position's ``x - x_ref``."""
    b, x, o = ctx.b, ctx.x[0], ctx.y[0]
    indices = max_pool_indices(ctx)
    o_ref = ctx.ref(o)
    top = b.op("Max", o, o_ref)
    to_input = b.mul(ctx.dy[0], b.sub(top, o_ref))
    to_reference = b.mul(ctx.dy[0], b.sub(o, top))
    if ctx.ref.stacked:
        # the second half's indices point into the second half: move them onto the partner rows; only the
        # first half of the rows carries target cotangents, so keep both terms of the first half
        ref_indices = ctx.ref(b.op("Sub", indices, ctx.ref.bottom_offset(x)))
        half = ctx.ref.half(o)
        terms = [(_rows(b, to_input, None, half), _rows(b, indices, None, half)),
                 (_rows(b, to_reference, None, half), _rows(b, ref_indices, None, half))]
    else:   # the reference's own copy of the pooling: its indices point into a tensor shaped like x
        terms = [(to_input, indices), (to_reference, ctx.ref(indices))]
    updates = b.op("Concat", *[_flat(b, u) for u, _ in terms], axis=0)
    where = b.op("Concat", *[_flat(b, i) for _, i in terms], axis=0)
    zeros = b.op("ConstantOfShape", b.reshape(b.op("Size", x), b.ints([1])))
    summed = b.op("ScatterElements", b.cast_like(zeros, updates), where, updates, axis=0, reduction="add")
    dx_total = b.reshape_like(summed, x)
    delta = b.sub(x, ctx.ref(x))
    return [safe_ratio(b, dx_total, delta, below_eps(ctx, delta))]


def _flat(b, t: str) -> str:
    return b.reshape(t, b.ints([-1]))

