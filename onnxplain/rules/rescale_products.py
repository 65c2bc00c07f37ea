"""DeepLIFT rules of products, selections by rank and one-hot maxima: ReduceProd, CumProd, TopK, Hardmax and
the ScatterND / ScatterElements reductions mul, max and min.  Every rule conserves the difference exactly,
``sum_i m_i * (x_i - x_ref_i) = sum dy * (y - y_ref)``, and none divides by x, so zeros in x are fine.

* Products take the *symmetric telescoping* rule.  Along one order of the factors,
  ``prod x - prod x_ref = sum_j (prod_{l<j} x_ref_l) (x_j - x_ref_j) (prod_{l>j} x_l)``; the same along the
  reverse order swaps ``x`` and ``x_ref`` on each side, and the average of the two gives
  ``m_j = dy / 2 * [P_ref(<j) P_x(>j) + P_x(<j) P_ref(>j)]``, exclusive prefix and suffix products (for two
  factors this is the midpoint rule of :func:`~onnxplain.rules.rescale.shapley_bilinear`; where nothing
  moved it is the gradient, ``dy * prod_{l != j} x_l``).  ReduceProd over several axes orders the entries
  of a group lexicographically (:func:`~onnxplain.vjp.reduce.products_before`); CumProd applies the rule to
  every output and sums over the outputs with the recurrence of :func:`~onnxplain.vjp.reduce.cumprod_vjp`.
  A ScatterElements / ScatterND with ``reduction="mul"`` multiplies a data entry by the updates that land on
  it: without repeated indices those are two factors, the midpoint rule.
* TopK's values are a selection whose indices depend on the input: the GatherElements of x along the axis at
  TopK's own indices, under :func:`~onnxplain.rules.rescale.rescale_selection` (the row's and the reference's
  picks share ``Δy`` by how much each moved), whether or not the two top-k sets agree.
* Scatters with ``reduction="max"`` / ``"min"`` are an extremum over each position's data entry and the updates
  that land there: the cross-extremum rule of :func:`~onnxplain.rules.rescale_common.extremum_multipliers`, its groups
  being those positions.
* Hardmax is piecewise constant; a conserving rule must still carry ``y - y_ref`` where the argmax of a row
  and of its reference differ.  Its rule is a convention, not a derivative: each group along the axis carries
  ``D = sum dy * (y - y_ref)``, spread over the group's entries in proportion to how far each moved.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from onnx import helper

from ..vjp import register
from ..vjp._common import Reduction, const_value, fail, known_rank
from ..vjp.indexing import ScatterLayout, scatter_mul
from ..vjp.reduce import (cumprod_after, cumprod_axis, cumprod_before, extent, products_after, products_before,
                          reduce_prod_axes)
from .rescale import rescale_selection
from ..vjp._common import differs_from_reference
from .rescale_common import below_eps, midpoint, plain_gradient, reference, safe_ratio

#: This family's rules (assembled with the others into :data:`onnxplain.rules.deeplift.RESCALE`).
TABLE: dict = {}


def _symmetric_telescoping(b, before: str, after: str, before_ref: str, after_ref: str) -> str:
    """``[P_ref(<j) P_x(>j) + P_x(<j) P_ref(>j)] / 2``: the average of the telescoping sums along an order
    of the factors and along its reverse."""
    total = b.add(b.mul(before_ref, after), b.mul(before, after_ref))
    return b.mul(total, b.like(0.5, total))


# ------------------------------------------------------------------------------------ ReduceProd
def telescoping_reduce_prod(ctx, r: Reduction) -> str | None:
    """``y = prod_j x_j`` over the reduced axes: ``m_j = dy / 2 * [P_ref(<j) P_x(>j) + P_x(<j) P_ref(>j)]``
    with the group's entries in lexicographic order over the axes; the gradient where x is its own reference."""
    b, x = ctx.b, r.x
    if not ctx.needs(0):
        return None
    if not differs_from_reference(ctx, x):
        return plain_gradient(ctx)[0]
    if r.axes is None and r.noop:
        return ctx.dy[0]
    axes = reduce_prod_axes(r)
    if axes is None:
        raise fail(ctx, "DeepLIFT's telescoping rule for ReduceProd takes prefix and suffix products along each "
                        "reduced axis, but the axes are read at run time; give ReduceProd constant axes")
    x_ref = ctx.ref(x)
    extents = [extent(b, x, a) for a in axes]
    m = _symmetric_telescoping(b, products_before(b, x, axes, extents), products_after(b, x, axes, extents),
                               products_before(b, x_ref, axes, extents, like=x),
                               products_after(b, x_ref, axes, extents, like=x))
    return b.mul(r.keep(ctx.dy[0]), m)


def _reduce_prod_rule(from_input: bool):
    def rule(ctx):
        """ReduceProd: the symmetric telescoping rule over the reduced axes."""
        return [telescoping_reduce_prod(ctx, Reduction(ctx, from_input))] + [None] * (len(ctx.x) - 1)
    return rule


register("ReduceProd", table=TABLE)(_reduce_prod_rule(False))
register("ReduceProd", since=18, table=TABLE)(_reduce_prod_rule(True))


# ------------------------------------------------------------------------------------ CumProd
@register("CumProd", table=TABLE)
def telescoping_cumprod(ctx):
    """``y_i = prod_{l <= i} x_l`` (``l < i`` when exclusive, from the end when reverse), each output under the
    symmetric telescoping rule and summed over the outputs: ``m_j = [E_ref_j R_x_j + E_x_j R_ref_j] / 2`` with
    ``E_j = prod_{l < j} x_l`` and ``R_j = sum_{i >= j} dy_i prod_{j < l <= i} x_l`` (of x or of x_ref)."""
    b, x, dy = ctx.b, ctx.x[0], ctx.dy[0]
    if not differs_from_reference(ctx, x):
        return plain_gradient(ctx)
    axis = cumprod_axis(ctx)
    exclusive, reverse = bool(ctx.attr("exclusive", 0)), bool(ctx.attr("reverse", 0))
    n = extent(b, x, axis)
    x_ref = ctx.ref(x)
    m = _symmetric_telescoping(b, cumprod_before(b, x, axis, reverse),
                               cumprod_after(b, x, dy, axis, exclusive, reverse, n),
                               cumprod_before(b, x_ref, axis, reverse),
                               cumprod_after(b, x_ref, dy, axis, exclusive, reverse, n))
    return [m, None]


# ------------------------------------------------------------------------------------ TopK
def _values_as_gather(ctx):
    """TopK's values written as what they are, ``GatherElements(x, indices, axis)``, for the selection rule (the
    axis made non-negative: onnx.reference's GatherElements misreads a negative one)."""
    axis = int(ctx.attr("axis", -1)) % known_rank(ctx, ctx.x[0])
    node = helper.make_node("GatherElements", [ctx.node.input[0], ctx.node.output[1]], [ctx.node.output[0]],
                            name=ctx.node.name, axis=axis)
    return dataclasses.replace(ctx, node=node, dy=[ctx.dy[0]])


@register("TopK", table=TABLE)
def rescale_top_k(ctx):
    """TopK's values ``= GatherElements(x, indices)`` along the axis, with indices computed from x: the
    selection rule (:func:`~onnxplain.rules.rescale.rescale_selection`), so the entries the row picked and those
    its reference picked share ``Δy`` by how much each moved.  The indices output carries nothing."""
    if ctx.dy[0] is None:
        return [None] * len(ctx.x)
    grads = rescale_selection(_values_as_gather(ctx))
    return [grads[0]] + [None] * (len(ctx.x) - 1)


# ------------------------------------------------------------------------------------ Hardmax
@register("Hardmax", table=TABLE)
def conserving_hardmax(ctx):
    """Hardmax (one-hot of the argmax, zero gradient) has no multiplier of its own; this rule is the convention
    that conserves the difference: over each group along the axis, ``D = sum dy * (y - y_ref)`` is spread as
    ``m_j = D * sign(x_j - x_ref_j) / sum_l |x_l - x_ref_l|`` (0 where nothing in the group moved, where the
    gradient is 0 too).  It credits every entry of a group that moved, not only the two whose ranks swapped."""
    b, x, y, dy = ctx.b, ctx.x[0], ctx.y[0], ctx.dy[0]
    if not differs_from_reference(ctx, x):
        return [None] * len(ctx.x)
    axis = int(ctx.attr("axis", -1))
    delta = b.sub(x, ctx.ref(x))
    carried = b.reduce_sum(b.mul(dy, b.sub(y, ctx.ref(y))), [axis])
    moved = b.reduce_sum(b.op("Abs", delta), [axis])
    small = below_eps(ctx, moved)
    per_unit = b.where(small, b.like(0.0, x), safe_ratio(b, carried, moved, small))
    return [b.mul(per_unit, b.op("Sign", delta))] + [None] * (len(ctx.x) - 1)


# ------------------------------------------------------------------------------------ scatters
def _scatter_reduction(ctx) -> str:
    r = ctx.attr("reduction", b"none")
    return r.decode() if isinstance(r, bytes) else r


@register("ScatterND", "ScatterElements", table=TABLE)
def rescale_scatter(ctx):
    """Scatters: ``none`` and ``add`` are linear in (data, updates), the plain gradient; ``mul`` the midpoint
    rule (:func:`midpoint_scatter_mul`), ``max`` / ``min`` the cross-extremum rule (:func:`cross_extremum_scatter`).
    Indices that may differ between a row and its reference are refused for the nonlinear reductions."""
    reduction = _scatter_reduction(ctx)
    if reduction not in ("mul", "max", "min"):
        return plain_gradient(ctx)
    if not (ctx.needs(0) or ctx.needs(2)):
        return [None] * len(ctx.x)
    if differs_from_reference(ctx, ctx.x[1]):
        raise fail(ctx, f"DeepLIFT has no conserving rule for reduction={reduction!r} with indices computed from "
                        f"the attributed input (a row and its reference would reduce different entries together)")
    if reduction == "mul":
        return midpoint_scatter_mul(ctx)
    return cross_extremum_scatter(ctx, "Max" if reduction == "max" else "Min")


def _targets_distinct(ctx, s: ScatterLayout) -> bool:
    """Whether no two updates land on one position: constant distinct indices (``ScatterLayout.repeats``), or
    a ScatterElements whose indices are a constant expanded over the other axes (as exporters write a batched
    index) with distinct entries along the axis in every fibre of the constant."""
    if not s.repeats():
        return True
    if s.nd:
        return False
    producer = next((n for n in ctx.b.nodes if s.raw_idx in n.output), None)
    c = const_value(ctx.b, producer.input[0]) if producer is not None and producer.op_type == "Expand" else None
    data_shape, idx_shape = ctx.b.shape(s.data), ctx.b.shape(s.raw_idx)
    if c is None or idx_shape is None:
        return False
    axis = s.axis - (len(idx_shape) - c.ndim)          # the axis in the constant (Expand may prepend axes)
    if axis < 0 or c.shape[axis] == 1:                 # broadcast along the axis: repeats unless it stays 1
        return idx_shape[s.axis] == 1
    if (c < 0).any():
        if data_shape is None or not isinstance(data_shape[s.axis], int):
            return False
        c = c % data_shape[s.axis]
    return not (np.diff(np.sort(c, axis=axis), axis=axis) == 0).any()


def midpoint_scatter_mul(ctx) -> list:
    """``y[p] = data[p] * u_k`` at a position written by one update ``k``: two factors, so the symmetric
    telescoping rule is the midpoint rule, ``m_data = dy * (u + u_ref) / 2``, ``m_u = dy * (data + data_ref) / 2``
    (``m_data = dy`` where nothing is written).  One active operand: the plain gradient (linear in it).  Several
    updates on one position multiply three or more factors: refused unless only the data depends on the input."""
    s = ScatterLayout(ctx)
    if ctx.needs(2) and not _targets_distinct(ctx, s):
        raise fail(ctx, "DeepLIFT's rule for reduction='mul' needs constant indices without repeats (a position "
                        "written by several updates that depend on the attributed input is a product of three "
                        "or more factors; that telescoping rule is not implemented)")
    if not (ctx.needs(0) and ctx.needs(2)):
        return plain_gradient(ctx)
    mids = ScatterLayout(ctx, data=midpoint(ctx, s.data), updates=midpoint(ctx, s.updates))
    return scatter_mul(ctx, mids, ctx.dy[0])


def cross_extremum_scatter(ctx, top_op: str) -> list:
    """``y[p] = max`` (``min``) of ``data[p]`` and the updates at ``p``: the cross-extremum rule over each
    position's entries.  ``ext(y, y_ref) - y_ref`` goes to the entries equal to ``y[p]`` and
    ``y - ext(y, y_ref)`` to those whose reference equals ``y_ref[p]`` (ties split equally), each divided by
    its own ``x - x_ref``; the plain gradient where an entry did not move (its share is 0 there)."""
    b, y, dy = ctx.b, ctx.y[0], ctx.dy[0]
    s = ScatterLayout(ctx)
    y_ref = ctx.ref(y)
    top = b.op(top_op, y, y_ref)
    players = {0: s.data, 2: s.updates}
    refs = {i: reference(ctx, t) for i, t in players.items()}
    at = {0: lambda t: t, 2: s.gather}       # a data-shaped tensor read where each player sits
    hit = {i: b.cast_like(b.op("Equal", t, at[i](y)), y) for i, t in players.items()}
    hit_ref = {i: b.cast_like(b.op("Equal", t, at[i](y_ref)), y) for i, t in refs.items()}
    to_input = b.div(b.sub(top, y_ref), s.scatter(hit[0], hit[2], "add"))
    to_reference = b.div(b.sub(y, top), s.scatter(hit_ref[0], hit_ref[2], "add"))
    plain = plain_gradient(ctx)
    grads = [None] * len(ctx.x)
    for i, t in players.items():
        if not ctx.needs(i):
            continue
        share = b.add(b.mul(at[i](to_input), hit[i]), b.mul(at[i](to_reference), hit_ref[i]))
        delta = b.sub(t, refs[i])
        small = below_eps(ctx, delta)
        grads[i] = b.where(small, plain[i], b.mul(at[i](dy), safe_ratio(b, share, delta, small)))
    return grads
