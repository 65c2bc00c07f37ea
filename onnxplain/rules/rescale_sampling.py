"""DeepLIFT rules of the sampling ops (GridSample, Resize, DeformConv) where they are nonlinear in an
input that depends on the attributed input (the sampling grid or offsets); linear in the sampled image, they
take the plain gradient there.

With the grid (offsets) active the rules take exact Shapley values, the ops re-evaluated on every mix of
input and reference values.  The players are the image and each coordinate component of the grid (of the
offsets), and for DeformConv the mask too.  A component is a valid player because each output reads only
its own grid entry (each sampled column only its own offsets): the grid's x components, say, are one
player per output position.  Since the op is linear in the image (and in the mask), the image's
multiplier is the Shapley-weighted sum of the plain image gradients at the mixed grids:
``m_X = sum_S w_S J(grid_S)^T dy``, so that ``sum m_X * dX = dy * phi_X`` exactly.  A component ``j`` takes
``m_j = sum_c dy * phi_j / (g_j - g_j_ref)`` at each position, and the plain gradient where the component
did not move.  Summed over the players this is ``dy * (y - y_ref)``.

Resize is nonlinear only in its roi (tf_crop_and_resize) and its scales; with those active the rule
refuses.  DeformConv with an attributed weight and other attributed inputs (a product of the weight with
a function of several players) is refused too.
"""
from __future__ import annotations

import itertools

import numpy as np
from onnx import helper

from ..vjp import register
from ..vjp._common import fail
from ..vjp.sampling import (deform_column_cotangent, deform_columns, deform_geometry, deform_mask, deform_rows,
                            deform_sample_vjp, deform_taps, grid_sample_vjp)
from .rescale_common import below_eps, plain_gradient, reference, safe_ratio, shapley_weight

#: This family's rules (assembled with the others into :data:`onnxplain.rules.deeplift.RESCALE`).
TABLE: dict = {}


def _subsets(players):
    """Every subset of ``players``, as frozensets."""
    return [frozenset(c) for s in range(len(players) + 1) for c in itertools.combinations(players, s)]


def _scaled(ctx, t: str, w: float, like: str) -> str:
    b = ctx.b
    return t if w == 1.0 else b.mul(t, b.like(w, like))


# ------------------------------------------------------------------------------------ Resize
@register("Resize", table=TABLE)
def rescale_resize(ctx):
    """Resize is linear in its input: the plain gradient, unless the roi or the scales move with the input."""
    if ctx.needs(2) or ctx.needs(1):
        raise fail(ctx, "DeepLIFT through Resize whose roi or scales depend on the attributed input is not "
                        "supported (Resize is nonlinear in them)")
    return plain_gradient(ctx)


# ------------------------------------------------------------------------------------ GridSample
@register("GridSample", table=TABLE)
def rescale_grid_sample(ctx):
    """GridSample with an active grid: exact Shapley values over the image and the grid's coordinate
    components (module docstring); the plain gradient when only the image is active."""
    if not ctx.needs(1):
        return plain_gradient(ctx)
    b, X, grid, dy, y = ctx.b, ctx.x[0], ctx.x[1], ctx.dy[0], ctx.y[0]
    rank = b.rank(X)
    if rank is None:
        raise fail(ctx, f"the rank of {X!r} is unknown")
    k = rank - 2
    image_player = ctx.needs(0)
    comps = list(range(k))
    players = (["x"] if image_player else []) + comps
    n = len(players)
    x_ref, grid_ref = reference(ctx, X), ctx.ref(grid)
    attrs = {a.name: helper.get_attribute_value(a) for a in ctx.node.attribute}
    grids = {}

    def grid_of(present) -> str:
        key = frozenset(j for j in comps if j in present)
        if key not in grids:
            if len(key) == k:
                grids[key] = grid
            elif not key:
                grids[key] = grid_ref
            else:
                choose = b.const(np.array([j in key for j in comps]), np.bool_, hint="gs_players")
                grids[key] = b.where(choose, grid, grid_ref)
        return grids[key]

    values = {frozenset(players): y, frozenset(): ctx.ref(y)}

    def value(present: frozenset) -> str:
        if present not in values:
            image = X if (not image_player or "x" in present) else x_ref
            values[present] = b.op("GridSample", image, grid_of(present), **attrs)
        return values[present]

    _, plain_dgrid = grid_sample_vjp(ctx, X, grid, dy, need_x=False, need_grid=True)
    grads = [None, None]
    if image_player:      # linear in the image: the Shapley-weighted plain gradients at the mixed grids
        others = [p for p in players if p != "x"]
        terms = []
        for s in _subsets(others):
            dx = grid_sample_vjp(ctx, X, grid_of(s), dy, need_x=True, need_grid=False)[0]
            terms.append(_scaled(ctx, dx, shapley_weight(n, len(s)), X))
        grads[0] = b.sum(terms)
    multipliers = []
    for j in comps:
        others = [p for p in players if p != j]
        gains = []
        for s in _subsets(others):
            gain = b.sub(value(s | {j}), value(s))
            gains.append(_scaled(ctx, gain, shapley_weight(n, len(s)), y))
        phi = b.op("ReduceSum", b.mul(dy, b.sum(gains)), b.ints([1]), keepdims=0)          # (N, O...)
        component = b.const(j, np.int64)
        delta = b.op("Gather", b.sub(grid, grid_ref), component, axis=-1)
        small = below_eps(ctx, delta)
        plain = b.op("Gather", plain_dgrid, component, axis=-1)
        m = b.where(small, plain, safe_ratio(b, b.cast_like(phi, delta), delta, small))
        multipliers.append(b.unsqueeze(m, [-1]))
    grads[1] = b.op("Concat", *multipliers, axis=-1)
    return grads


# ------------------------------------------------------------------------------------ DeformConv
@register("DeformConv", table=TABLE)
def rescale_deform_conv(ctx):
    """DeformConv with active offsets (or image and mask both active): exact Shapley values of the columns
    ``mask * sample(X, offset)`` over the image, the mask and the offsets' coordinate components, through
    the linear contraction with the weight (``dC = W^T dy``, the plain rule); the bias adds, its multiplier is
    the plain one.  One active input among image, weight and mask: the plain gradient (linear in each)."""
    b, X, W, offset, dy = ctx.b, ctx.x[0], ctx.x[1], ctx.x[2], ctx.dy[0]
    mask = ctx.x[4] if len(ctx.x) > 4 and ctx.x[4] else None
    active = [i for i in (0, 1, 2, 4) if i < len(ctx.x) and ctx.x[i] and ctx.needs(i)]
    if 2 not in active and len(active) <= 1:
        return plain_gradient(ctx)
    if 1 in active:
        raise fail(ctx, "DeepLIFT through DeformConv whose weight and other inputs all depend on the attributed "
                        "input is not supported")
    geo = deform_geometry(ctx)
    spatial = len(geo.kernel)
    plain = plain_gradient(ctx)
    dcols = deform_column_cotangent(ctx, geo, W, dy)                            # (N * G, P, C / G)
    comps = [("offset", d) for d in range(spatial)] if ctx.needs(2) else []
    players = (["x"] if ctx.needs(0) else []) + (["mask"] if mask and ctx.needs(4) else []) + comps
    n = len(players)
    x_ref = reference(ctx, X)
    off_ref = reference(ctx, offset)
    mask_ref = reference(ctx, mask) if mask else None
    offsets, taps, rows, samples = {}, {}, {}, {}

    def moved(present) -> frozenset:
        return frozenset(d for (_, d) in comps if ("offset", d) in present) if comps else frozenset(range(spatial))

    def offset_of(key: frozenset) -> str:
        if key not in offsets:
            if len(key) == spatial:
                offsets[key] = offset
            elif not key:
                offsets[key] = off_ref
            else:
                channels = b.shape(offset)[1]
                choose = np.array([(c % spatial) in key for c in range(channels)]).reshape(1, -1, 1, 1)
                offsets[key] = b.where(b.const(choose, np.bool_, hint="dc_players"), offset, off_ref)
        return offsets[key]

    def taps_of(key):
        if key not in taps:
            taps[key] = deform_taps(ctx, geo, offset_of(key))
        return taps[key]

    def image_of(present) -> str:
        return X if ("x" not in players or "x" in present) else x_ref

    def sampled(present) -> str:
        key = (image_of(present), moved(present))
        if key not in samples:
            if key[0] not in rows:
                rows[key[0]] = deform_rows(ctx, geo, key[0])
            samples[key] = deform_columns(ctx, geo, rows[key[0]], taps_of(key[1]), None)[1]
        return samples[key]

    def mask_of(present) -> str | None:
        if not mask:
            return None
        return deform_mask(ctx, geo, mask if ("mask" not in players or "mask" in present) else mask_ref)

    def columns(present) -> str:
        m = mask_of(present)
        s = sampled(present)
        return b.mul(s, m) if m else s

    grads = [None] * len(ctx.x)
    if len(ctx.x) > 3 and ctx.x[3] and ctx.needs(3):
        grads[3] = plain[3]
    if "x" in players:   # linear in the image: per offset mix, the weighted cotangents of the samples
        per_offsets = {}
        for s in _subsets([p for p in players if p != "x"]):
            m = mask_of(s)
            d = _scaled(ctx, b.mul(dcols, m) if m else dcols, shapley_weight(n, len(s)), X)
            per_offsets.setdefault(moved(s), []).append(d)
        parts = [deform_sample_vjp(ctx, geo, taps_of(key), None, b.sum(ds), True, False)[0]
                 for key, ds in per_offsets.items()]
        grads[0] = b.sum(parts)
    if "mask" in players:   # linear in the mask: the weighted samples against the columns' cotangent
        terms = [_scaled(ctx, sampled(s), shapley_weight(n, len(s)), X)
                 for s in _subsets([p for p in players if p != "mask"])]
        grads[4] = b.op("Reshape", b.op("ReduceSum", b.mul(dcols, b.sum(terms)), b.ints([-1]), keepdims=0),
                        b.shape_of(mask))
    if comps:
        points = b.op("Concat", b.mul(b.op("Shape", X, start=0, end=1), b.ints([geo.offset_group])),
                      b.ints([-1]), axis=0)
        layout = b.op("Concat", b.op("Shape", offset, start=0, end=1),
                      b.ints([geo.offset_group, geo.taps, spatial, -1]), axis=0)

        def component(t: str, d: int) -> str:     # offset-shaped -> (N * G, P), component d
            return b.op("Reshape", b.op("Gather", b.op("Reshape", t, layout), b.const(d, np.int64), axis=3), points)
        parts = []
        for player in comps:
            d = player[1]
            gains = []
            for s in _subsets([p for p in players if p != player]):
                gain = b.sub(columns(s | {player}), columns(s))
                gains.append(_scaled(ctx, gain, shapley_weight(n, len(s)), X))
            phi = b.op("ReduceSum", b.mul(dcols, b.sum(gains)), b.ints([-1]), keepdims=0)   # (N * G, P)
            delta = component(b.sub(offset, off_ref), d)
            small = below_eps(ctx, delta)
            m = b.where(small, component(plain[2], d), safe_ratio(b, b.cast_like(phi, delta), delta, small))
            shape = b.op("Concat", b.op("Shape", offset, start=0, end=1),
                         b.ints([geo.offset_group, geo.taps, 1, -1]), axis=0)
            parts.append(b.op("Reshape", m, shape))
        grads[2] = b.op("Reshape", b.op("Concat", *parts, axis=3), b.shape_of(offset))
    return grads
