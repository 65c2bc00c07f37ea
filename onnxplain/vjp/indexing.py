"""Indexing and masking: GatherND, ScatterND, ScatterElements, TensorScatter, TopK, CumSum, Trilu, Mod.

Gathers send the cotangent back by scattering it (adding, since an index may
repeat) into zeros shaped like the data; scatters are the transpose: the data
keeps the cotangent where it was not overwritten, the updates gather theirs.
Indices are made non-negative with ``Mod`` before they are used to scatter, as
the Gather rules in :mod:`onnxplain.vjp.shape` do.
"""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from .registry import register
from ._common import const_value, fail, known_rank, rank_or_fail
from .shape import flat_positions


# ---------------------------------------------------------------------------------------- helpers
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
@register("GatherND", tag="nonlinear")
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
class ScatterLayout:
    """Where a ScatterND or ScatterElements node writes: ``gather(t)`` reads a data-shaped ``t`` at the
    positions of the updates (shaped like them), ``scatter(base, u, reduction)`` writes (or reduces) an
    updates-shaped ``u`` into ``base`` there.  ScatterND's index tuples are made non-negative."""

    def __init__(self, ctx, data: str | None = None, updates: str | None = None):
        b = self.b = ctx.b
        self.ctx = ctx
        self.data, idx, self.updates = ctx.x
        self.data, self.updates = data or self.data, updates or self.updates
        self.nd = ctx.node.op_type == "ScatterND"
        self.raw_idx = idx
        if self.nd:
            self.idx = _tuples_in_range(b, self.data, idx, 0)
        else:
            self.rank = len(rank_or_fail(b, self.data))
            self.axis = int(ctx.attr("axis", 0)) % self.rank
            self.idx = idx

    def gather(self, t: str) -> str:
        b = self.b
        if self.nd:
            return b.op("GatherND", t, self.idx)
        return b.op("GatherElements", _crop_to_indices(b, t, self.idx, self.axis, self.rank), self.idx, axis=self.axis)

    def scatter(self, base: str, u: str, reduction: str | None = None) -> str:
        op = "ScatterND" if self.nd else "ScatterElements"
        return self.b.op(op, base, self.idx, u, reduction=reduction, **({} if self.nd else {"axis": self.axis}))

    def repeats(self) -> bool:
        """Whether two updates may land on one position: False only for constant indices that are all distinct
        (needs the data's static shape where indices are negative)."""
        idx = const_value(self.b, self.raw_idx)
        if idx is None:
            return True
        shape = self.b.shape(self.data)
        if self.nd:
            k = idx.shape[-1]
            tuples = idx.reshape(-1, k)
            if (tuples < 0).any():
                if shape is None or not all(isinstance(d, int) for d in shape[:k]):
                    return True
                tuples = tuples % np.array(shape[:k])
            return len({tuple(t) for t in tuples.tolist()}) != len(tuples)
        along = idx
        if (idx < 0).any():
            if shape is None or not isinstance(shape[self.axis], int):
                return True
            along = idx % shape[self.axis]
        coords = list(np.indices(idx.shape))
        coords[self.axis] = along
        targets = np.stack([c.reshape(-1) for c in coords], axis=1)
        return len({tuple(t) for t in targets.tolist()}) != len(targets)

    def most_writes(self) -> int | None:
        """The largest number of updates that land on one position: exact for constant indices, else the
        number of updates that could (None when that is not static)."""
        idx = const_value(self.b, self.raw_idx)
        if idx is not None and not self.repeats():
            return 1
        shape = self.b.shape(self.raw_idx)
        if shape is None or not all(isinstance(d, int) for d in shape):
            return None
        return int(np.prod(shape[:-1])) if self.nd else int(shape[self.axis])


def _reduction(ctx) -> str:
    r = ctx.attr("reduction", b"none")
    return r.decode() if isinstance(r, bytes) else r


def _last_writes(s: ScatterLayout) -> str:
    """1 (typed like the updates) where an update is the one a scatter without reduction keeps, 0 where a later
    update overwrote it.  The updates' own positions are scattered the same way and read back: the rule assumes
    the runtime writes the updates in order, the last write winning (as onnxruntime and onnx.reference do)."""
    b = s.b
    order = flat_positions(b, s.updates)
    marks = b.op("ConstantOfShape", b.shape_of(s.data), value=numpy_helper.from_array(np.array([-1], np.int64)))
    kept = s.gather(s.scatter(marks, order))
    return b.cast_like(b.op("Equal", kept, order), s.updates)


def scatter_none(ctx, s: ScatterLayout, dy: str) -> list:
    """y = data with the updates written at idx: d data = dy with zeros written at idx; d updates = dy read
    at idx, for the update written last at a position (0 for one overwritten by a later update)."""
    b = s.b
    grads = [None, None, None]
    if ctx.needs(0):
        grads[0] = s.scatter(dy, b.zeros_like(s.updates))
    if ctx.needs(2):
        g = s.gather(dy)
        grads[2] = b.mul(g, _last_writes(s)) if s.repeats() else g
    return grads


def scatter_add(ctx, s: ScatterLayout, dy: str) -> list:
    """y = data + the updates added at idx: d data = dy; d updates = dy read at idx (repeats each read it)."""
    return [dy if ctx.needs(0) else None, None, s.gather(dy) if ctx.needs(2) else None]


def scatter_mul(ctx, s: ScatterLayout, dy: str) -> list:
    """y[p] = data[p] * prod_{k at p} u_k: d data = dy * prod_{k at p} u_k; d u_k = dy[p] * data[p] *
    prod_{k' at p, k' != k} u_k'.  The product of the other updates of a position is 1 without repeats;
    with repeats it is found by counting zeros (``P / u_k`` with ``P`` the product of the nonzero updates
    there when none is zero, ``P`` for the only zero one, else 0): finite with zeros."""
    b = s.b
    ones = b.op("Add", b.zeros_like(s.data), b.like(1.0, s.data))
    grads = [None, None, None]
    if ctx.needs(0):
        grads[0] = b.mul(dy, s.scatter(ones, s.updates, "mul"))
    if ctx.needs(2):
        g = s.gather(b.mul(dy, s.data))
        if s.repeats():
            u = s.updates
            zero = b.op("Equal", u, b.like(0.0, u))
            safe = b.where(zero, b.like(1.0, u), u)
            zeros = s.gather(s.scatter(b.zeros_like(s.data), b.cast_like(zero, u), "add"))
            product = s.gather(s.scatter(ones, safe, "mul"))
            nil = b.like(0.0, u)
            others = b.where(zero, b.where(b.op("Equal", zeros, b.like(1.0, u)), product, nil),
                             b.where(b.op("Equal", zeros, nil), b.div(product, safe), nil))
            g = b.mul(g, others)
        grads[2] = g
    return grads


def scatter_extremum(ctx, s: ScatterLayout, dy: str) -> list:
    """y[p] = max (or min) of data[p] and the updates at p: dy[p] goes to the entries equal to y[p], split
    equally among ties (as ReduceMax's rule and torch's scatter_reduce do)."""
    b, y = s.b, ctx.y[0]
    hit_data = b.cast_like(b.op("Equal", s.data, y), y)
    hit_updates = b.cast_like(b.op("Equal", s.updates, s.gather(y)), y)
    share = b.div(dy, s.scatter(hit_data, hit_updates, "add"))
    return [b.mul(share, hit_data) if ctx.needs(0) else None, None,
            b.mul(s.gather(share), hit_updates) if ctx.needs(2) else None]


SCATTER_RULES = {"none": scatter_none, "add": scatter_add, "mul": scatter_mul,
                 "max": scatter_extremum, "min": scatter_extremum}


@register("ScatterND", "ScatterElements", tag="nonlinear")
def vjp_scatter(ctx):
    """ScatterND / ScatterElements with any reduction (none, add, mul, max, min): see the rule of each."""
    reduction = _reduction(ctx)
    if reduction not in SCATTER_RULES:
        raise fail(ctx, f"reduction={reduction!r} is not a reduction of ONNX")
    return SCATTER_RULES[reduction](ctx, ScatterLayout(ctx), ctx.dy[0])


@register("TensorScatter", tag="linear")
def vjp_tensor_scatter(ctx):
    """present = past with update[..., s, ...] written along the axis at w[b] + s (mod the cache length L when
    circular; w = write_indices, 0 when absent): d past = dy with zeros written at the same places (a
    TensorScatter of zeros); d update = dy read there (GatherElements).  The spec bounds the updates by the
    cache length, so no place is written twice."""
    b, dy = ctx.b, ctx.dy[0]
    past, update = ctx.x[0], ctx.x[1]
    w = ctx.x[2] if len(ctx.x) > 2 and ctx.x[2] else None
    rank = known_rank(ctx, past)
    axis = int(ctx.attr("axis", -2)) % rank
    mode = ctx.attr("mode", b"linear")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    grads = [None] * len(ctx.x)
    if ctx.needs(0):
        grads[0] = b.op("TensorScatter", dy, b.zeros_like(update), w, axis=axis, mode=mode)
    if ctx.needs(1):
        seq = b.op("Shape", update, start=axis, end=axis + 1)
        steps = b.op("Range", b.const(0, np.int64), b.squeeze(seq, [0]), b.const(1, np.int64))
        steps = b.reshape(steps, b.ints([1] * axis + [-1] + [1] * (rank - axis - 1)))
        where = steps if w is None else b.add(b.reshape(w, b.ints([-1] + [1] * (rank - 1))), steps)
        if mode == "circular":
            where = b.op("Mod", where, b.op("Shape", past, start=axis, end=axis + 1))
        grads[1] = b.op("GatherElements", dy, b.op("Expand", where, b.shape_of(update)), axis=axis)
    return grads


@register("TopK", tag="nonlinear")
def vjp_top_k(ctx):
    """values = the k largest (or smallest) x along the axis, taken at ``indices``: dx = zeros(x) with d values
    written at those positions (each position is picked once; among tied entries, the one TopK picked gets
    the cotangent).  The indices output is an integer and carries none."""
    b = ctx.b
    if ctx.dy[0] is None:
        return [None, None]
    dx = b.op("ScatterElements", b.zeros_like(ctx.x[0]), ctx.y[1], ctx.dy[0], axis=ctx.attr("axis", -1))
    return [dx, None]


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
@register("CumSum", tag="linear")
def vjp_cumsum(ctx):
    """y_i = sum_{j <= i} x_j (or j < i, or from the end): dx = the same sum of dy in the other direction."""
    reverse = int(ctx.attr("reverse", 0))
    exclusive = int(ctx.attr("exclusive", 0))
    dx = ctx.b.op("CumSum", ctx.dy[0], ctx.x[1], exclusive=exclusive or None, reverse=1 - reverse or None)
    return [dx, None]


@register("Trilu", tag="linear")
def vjp_trilu(ctx):
    """y = x masked to a triangle: dx = dy masked to the same triangle."""
    k = ctx.x[1] if len(ctx.x) > 1 and ctx.x[1] else None
    dx = ctx.b.op("Trilu", ctx.dy[0], *([k] if k else []), upper=ctx.attr("upper", 1))
    return [dx] + [None] * (len(ctx.x) - 1)


@register("Mod", tag="nonlinear", broadcast=True)
def vjp_mod(ctx):
    """y = fmod(a, c) = a - trunc(a / c) c (float Mod): da = dy, dc = -dy trunc(a / c)."""
    b, (a, c), dy = ctx.b, ctx.x, ctx.dy[0]
    grads = [dy if ctx.needs(0) else None, None]
    if ctx.needs(1):
        quotient = b.op("Round", b.div(b.sub(a, ctx.y[0]), c))   # the integer trunc(a / c), exactly
        grads[1] = b.neg(b.mul(dy, quotient))
    return grads


@register("OneHot", tag="linear")
def vjp_one_hot(ctx):
    """y = values[1] where the index hits, values[0] elsewhere: d values = [sum(dy * (1 - hot)), sum(dy * hot)],
    ``hot`` the node's own one-hot of 0 and 1 (so negative indices and the axis are the runtime's)."""
    b, values, dy = ctx.b, ctx.x[2], ctx.dy[0]
    if not ctx.needs(2):
        return [None, None, None]
    off_on = b.cast_like(b.const([0.0, 1.0], np.float32), values)
    hot = b.op("OneHot", ctx.x[0], ctx.x[1], off_on, axis=ctx.attr("axis", -1))
    on = b.op("ReduceSum", b.mul(dy, hot), keepdims=0)
    everything = b.op("ReduceSum", dy, keepdims=0)
    return [None, None, b.op("Concat", b.unsqueeze(b.sub(everything, on), [0]), b.unsqueeze(on, [0]), axis=0)]
