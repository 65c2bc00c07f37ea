"""Indexing and masking: GatherND, ScatterND, ScatterElements, CumSum, Trilu, Mod.

Gathers send the cotangent back by scattering it (adding, since an index may
repeat) into zeros shaped like the data; scatters are the transpose: the data
keeps the cotangent where it was not overwritten, the updates gather theirs.
Indices are made non-negative with ``Mod`` before they are used to scatter, as
the Gather rules in :mod:`onnxplain.vjp.shape` do.
"""
from __future__ import annotations

import numpy as np

from . import register
from ._common import fail, rank_or_fail


# ---------------------------------------------------------------------------------------- helpers
def _reduction(ctx) -> str:
    r = ctx.attr("reduction", b"none")
    return r.decode() if isinstance(r, bytes) else r


def _tuples_in_range(b, data: str, idx: str, batch_dims: int) -> str:
    """GatherND/ScatterND index tuples (int64, last axis k) made non-negative: idx % shape(data)[b:b+k]."""
    start = b.ints([batch_dims])
    sizes = b.op("Slice", b.shape_of(data), start, b.add(start, b.op("Shape", idx, start=-1)))
    return b.op("Mod", idx, sizes)


def _with_batch_coords(ctx, idx: str, batch_dims: int) -> str:
    """GatherND's index tuples with the ``batch_dims`` leading coordinates written out in front."""
    b = ctx.b
    q = b.rank(ctx.x[1])
    if q is None:
        raise fail(ctx, "batch_dims > 0 needs the rank of the indices")
    lead = b.op("Shape", idx, end=-1)                    # indices.shape[:-1]
    coords = []
    for j in range(batch_dims):
        size = b.op("Shape", idx, start=j, end=j + 1)
        r = b.op("Range", b.const(0, np.int64), b.squeeze(size, [0]), b.const(1, np.int64))
        r = b.reshape(r, b.ints([1] * j + [-1] + [1] * (q - 2 - j)))
        coords.append(b.unsqueeze(b.op("Expand", r, lead), [-1]))
    return b.op("Concat", *coords, idx, axis=-1)


# ---------------------------------------------------------------------------------------- gathers
@register("GatherND")
def vjp_gather_nd(ctx):
    """y = data[b..., idx[b..., i..., :]]: d data = zeros(data) with dy added at those positions."""
    b = ctx.b
    data, idx = ctx.x
    batch_dims = int(ctx.attr("batch_dims", 0))
    full = _tuples_in_range(b, data, idx, batch_dims)
    if batch_dims:
        full = _with_batch_coords(ctx, full, batch_dims)
    return [b.op("ScatterND", b.zeros_like(data), full, ctx.dy[0], reduction="add"), None]


# ---------------------------------------------------------------------------------------- scatters
@register("ScatterND")
def vjp_scatter_nd(ctx):
    """y = data with updates written (none) or added (add) at idx:
    d data = dy, zeroed at idx when written; d updates = dy[idx]."""
    b, dy = ctx.b, ctx.dy[0]
    data, idx, updates = ctx.x
    reduction = _reduction(ctx)
    if reduction not in ("none", "add"):
        raise fail(ctx, f"reduction={reduction!r} is not supported (only 'none' and 'add')")
    idx = _tuples_in_range(b, data, idx, 0)
    grads = [None, None, None]
    if ctx.needs(0):
        grads[0] = dy if reduction == "add" else b.op("ScatterND", dy, idx, b.zeros_like(updates))
    if ctx.needs(2):
        grads[2] = b.op("GatherND", dy, idx)
    return grads


@register("ScatterElements")
def vjp_scatter_elements(ctx):
    """y = data with updates written (none) or added (add) at idx along the axis:
    d data = dy, zeroed at idx when written; d updates = dy gathered at idx."""
    b, dy = ctx.b, ctx.dy[0]
    data, idx, updates = ctx.x
    rank = len(rank_or_fail(b, data))
    axis = int(ctx.attr("axis", 0)) % rank
    reduction = _reduction(ctx)
    if reduction not in ("none", "add"):
        raise fail(ctx, f"reduction={reduction!r} is not supported (only 'none' and 'add')")
    grads = [None, None, None]
    if ctx.needs(0):
        grads[0] = dy if reduction == "add" else b.op("ScatterElements", dy, idx, b.zeros_like(updates), axis=axis)
    if ctx.needs(2):
        grads[2] = b.op("GatherElements", _crop_to_indices(b, dy, idx, axis, rank), idx, axis=axis)
    return grads


def _crop_to_indices(b, g: str, idx: str, axis: int, rank: int) -> str:
    """``g`` cut to the extent of ``idx`` along every axis but ``axis`` (the indices may cover less of
    the data there; onnx.reference's GatherElements insists on equal sizes)."""
    others = [k for k in range(rank) if k != axis]
    sg, si = b.shape(g), b.shape(idx)
    if not others or (sg is not None and si is not None and all(
            isinstance(sg[k], int) and sg[k] == si[k] for k in others)):
        return g
    ends = b.op("Gather", b.shape_of(idx), b.ints(others))
    return b.op("Slice", g, b.ints([0] * len(others)), ends, b.ints(others))


# ---------------------------------------------------------------------------------------- prefix sums and masks
@register("CumSum")
def vjp_cumsum(ctx):
    """y_i = sum_{j <= i} x_j (or j < i, or from the end): dx = the same sum of dy in the other direction."""
    reverse = int(ctx.attr("reverse", 0))
    exclusive = int(ctx.attr("exclusive", 0))
    dx = ctx.b.op("CumSum", ctx.dy[0], ctx.x[1], exclusive=exclusive or None, reverse=1 - reverse or None)
    return [dx, None]


@register("Trilu")
def vjp_trilu(ctx):
    """y = x masked to a triangle: dx = dy masked to the same triangle."""
    k = ctx.x[1] if len(ctx.x) > 1 and ctx.x[1] else None
    dx = ctx.b.op("Trilu", ctx.dy[0], *([k] if k else []), upper=ctx.attr("upper", 1))
    return [dx] + [None] * (len(ctx.x) - 1)


@register("Mod", broadcast=True)
def vjp_mod(ctx):
    """y = fmod(a, c) = a - trunc(a / c) c (float Mod): da = dy, dc = -dy trunc(a / c)."""
    b, (a, c), dy = ctx.b, ctx.x, ctx.dy[0]
    grads = [dy if ctx.needs(0) else None, None]
    if ctx.needs(1):
        quotient = b.op("Round", b.div(b.sub(a, ctx.y[0]), c))   # the integer trunc(a / c), exactly
        grads[1] = b.neg(b.mul(dy, quotient))
    return grads
