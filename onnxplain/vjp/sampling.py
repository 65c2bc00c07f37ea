"""Resampling: Resize (nearest, linear and cubic modes).

Resize is separable and linear in its input: along each resized axis it multiplies
by an interpolation matrix ``W`` (output size x input size) that depends only on the
sizes, scales and attributes.  The rule applies the transpose to ``dY``,
``dX = dY x_axis W^T`` for every resized axis.  Linear and cubic ``W`` are built at
graph-build time from the ONNX formulas (coordinate transformation, neighbours
clamped to the edges, interpolation coefficients).  Nearest ``W`` is read off the
node itself, by resizing the source index along that axis in the same graph: which
neighbour a tie goes to depends on the runtime's float rounding of the coordinate,
and the cotangent must go where the forward pass took the value from.  Resized
axes need static sizes; a dynamic batch axis is fine as long as it is not resized.
"""
from __future__ import annotations

import math

import numpy as np
from onnx import helper

from ..graph import np_dtype
from . import register
from ._common import fail
from .shape import const_value


def _attr_str(ctx, name: str, default: str) -> str:
    v = ctx.attr(name, default)
    return v.decode() if isinstance(v, bytes) else v


# ------------------------------------------------------------------------- coordinates
def source_coordinate(mode: str, x: np.ndarray, scale: float, n_in: int, n_out: int, roi=(0.0, 1.0)) -> np.ndarray:
    """x_original of output positions ``x`` under ``coordinate_transformation_mode`` (ONNX Resize's formulas)."""
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = n_out / (scale * n_in)
        offset = n_in / 2 * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if n_out > 1 else np.full_like(x, -0.5)
    if mode == "align_corners":
        return x * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_crop_and_resize":
        start, end = roi
        if n_out > 1:
            return start * (n_in - 1) + x * (end - start) * (n_in - 1) / (n_out - 1)
        return np.full_like(x, 0.5 * (start + end) * (n_in - 1))
    raise ValueError(f"unknown coordinate_transformation_mode {mode!r}")


# ------------------------------------------------------------------------- coefficients
def linear_coefficients(ratio: float) -> list:
    """Weights of the neighbours (left, right): 1 - r and r."""
    return [1.0 - ratio, ratio]


def cubic_coefficients(ratio: float, a: float) -> list:
    """Keys' cubic convolution weights of the four neighbours at distances 1 + r, r, 1 - r, 2 - r."""
    def near(t):   # |t| <= 1
        return ((a + 2) * t - (a + 3)) * t * t + 1

    def far(t):    # 1 < |t| < 2
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return [far(1 + ratio), near(ratio), near(1 - ratio), far(2 - ratio)]


def interpolation_matrix(n_in: int, n_out: int, scale: float, *, mode: str, coordinate_mode: str,
                         cubic_coeff_a: float = -0.75, exclude_outside: bool = False, roi=(0.0, 1.0)) -> np.ndarray:
    """W (n_out x n_in) of ``linear`` or ``cubic`` Resize along one axis (y = W @ x): the neighbours of each
    x_original, clamped to the edges, weighted by the interpolation coefficients."""
    w = np.zeros((n_out, n_in))
    xs = source_coordinate(coordinate_mode, np.arange(n_out, dtype=np.float64), scale, n_in, n_out, roi)
    for o, x in enumerate(xs.tolist()):
        if coordinate_mode == "tf_crop_and_resize" and (x < 0 or x > n_in - 1):
            continue             # extrapolation_value: a constant, no cotangent
        left = math.ceil(x) - 1  # the left neighbour; ratio in (0, 1], 1 when x is an integer
        ratio = x - left
        if mode == "linear":
            coeffs, first = linear_coefficients(ratio), left
        else:
            coeffs, first = cubic_coefficients(ratio, cubic_coeff_a), left - 1
        coeffs = np.asarray(coeffs, np.float64)
        idx = np.arange(first, first + len(coeffs))
        if exclude_outside and mode == "cubic":
            inside = (idx >= 0) & (idx < n_in)
            coeffs = np.where(inside, coeffs, 0.0)
            coeffs = coeffs / coeffs.sum()
        np.add.at(w[o], np.clip(idx, 0, n_in - 1), coeffs)
    return w


def nearest_matrix(ctx, axis: int, n_in: int, rank: int) -> str:
    """W (n_out x n_in) of ``nearest`` Resize along ``axis``, as a graph tensor: the node's own Resize of
    the source index (0 .. n_in - 1 along ``axis``, broadcast to X's shape) names the picked neighbours."""
    b, X = ctx.b, ctx.x[0]
    dtype = np_dtype(b.elem_type(X))
    shape = [1] * rank
    shape[axis] = n_in
    index = b.op("Expand", b.const(np.arange(n_in).reshape(shape), dtype, hint="resize_index"), b.shape_of(X))
    attrs = {a.name: helper.get_attribute_value(a) for a in ctx.node.attribute}
    if _attr_str(ctx, "coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
        attrs["extrapolation_value"] = -1.0     # extrapolated outputs match no index: no cotangent
    picked = b.op("Resize", index, *ctx.x[1:], **attrs)
    others = [i for i in range(rank) if i != axis]
    source = b.reduce("ReduceMax", picked, others, keepdims=0) if others else picked     # (n_out,)
    hit = b.op("Equal", b.unsqueeze(source, [1]), b.const(np.arange(n_in), dtype, hint="resize_index"))
    return b.op("Cast", hit, to=b.elem_type(X))


# ------------------------------------------------------------------------- the rule
def _scales(ctx, shape_in, axes, out_shape):
    """Per resized axis: (scale, output size or None), from constant scales, or from sizes (constant,
    else the inferred output shape) with ``keep_aspect_ratio_policy``."""
    b = ctx.b
    names = list(ctx.x) + [""] * (4 - len(ctx.x))
    scales = const_value(b, names[2]) if names[2] else None
    if names[2] and scales is None:
        raise fail(ctx, "its scales are computed at run time; onnxplain needs them constant")
    if scales is not None and scales.size:
        return {a: (float(s), None) for a, s in zip(axes, np.asarray(scales, np.float64).tolist())}
    sizes = const_value(b, names[3]) if names[3] else None
    if sizes is not None:
        sizes = [int(v) for v in np.asarray(sizes).ravel()]
    elif out_shape is not None:
        sizes = [out_shape[a] for a in axes]
    else:
        raise fail(ctx, "its sizes are computed at run time and its output shape is unknown")
    ratios = {}
    for a, size in zip(axes, sizes):
        if size == shape_in[a]:
            ratios[a] = 1.0
        elif isinstance(size, int) and isinstance(shape_in[a], int):
            ratios[a] = size / shape_in[a]
        else:
            raise fail(ctx, f"axis {a} is resized but its sizes are not static (input {shape_in}, sizes {sizes})")
    policy = _attr_str(ctx, "keep_aspect_ratio_policy", "stretch")
    if policy == "stretch":
        return {a: (r, size) for (a, r), size in zip(ratios.items(), sizes)}
    common = min(ratios.values()) if policy == "not_larger" else max(ratios.values())
    return {a: (common, int(round(common * shape_in[a])) if isinstance(shape_in[a], int) else None) for a in axes}


def _geometry(ctx):
    """``(axis, n_in, n_out, scale, roi)`` of every axis that Resize changes."""
    b, X, Y = ctx.b, ctx.x[0], ctx.y[0]
    shape_in = b.shape(X)
    if shape_in is None:
        raise fail(ctx, "the rank of its input is unknown")
    rank = len(shape_in)
    axes = ctx.attr("axes", None)
    axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a for a in axes]
    out_shape = b.shape(Y)
    per_axis = _scales(ctx, shape_in, axes, out_shape)
    coordinate_mode = _attr_str(ctx, "coordinate_transformation_mode", "half_pixel")
    roi = None
    if coordinate_mode == "tf_crop_and_resize":
        roi = const_value(b, ctx.x[1]) if len(ctx.x) > 1 and ctx.x[1] else None
        if roi is None:
            raise fail(ctx, "tf_crop_and_resize needs a constant roi")
        roi = np.asarray(roi, np.float64).ravel()
    geometry = []
    for i, a in enumerate(axes):
        scale, n_out = per_axis[a]
        lo, hi = 0.0, 1.0
        if roi is not None:
            k = len(roi) // 2
            j = i if k == len(axes) else a
            lo, hi = float(roi[j]), float(roi[k + j])
        if scale == 1.0 and (lo, hi) == (0.0, 1.0):
            continue              # an axis left as it is (the dynamic batch axis among them)
        n_in = shape_in[a]
        if not isinstance(n_in, int):
            raise fail(ctx, f"axis {a} is resized but its size is not static (input shape {shape_in})")
        if out_shape is not None and isinstance(out_shape[a], int):
            n_out = out_shape[a]
        if not isinstance(n_out, int):
            span = (hi - lo) if coordinate_mode == "tf_crop_and_resize" else 1.0
            n_out = int(math.floor(n_in * scale * span + 1e-9))
        geometry.append((a, n_in, n_out, scale, (lo, hi)))
    return geometry


@register("Resize")
def vjp_resize(ctx):
    """dX = dY x_a W_a^T along each resized axis a (W_a: the interpolation matrix of that axis)."""
    b, X, dy = ctx.b, ctx.x[0], ctx.dy[0]
    mode = _attr_str(ctx, "mode", "nearest")
    if mode not in ("nearest", "linear", "cubic"):
        raise fail(ctx, f"unknown mode {mode!r}")
    geometry = _geometry(ctx)
    if ctx.attr("antialias", 0) and mode != "nearest" and any(s < 1 for _, _, _, s, _ in geometry):
        raise fail(ctx, "antialias=1 when downsampling is not supported")
    rank = len(b.shape(X))
    dtype = np_dtype(b.elem_type(X))
    options = dict(mode=mode, coordinate_mode=_attr_str(ctx, "coordinate_transformation_mode", "half_pixel"),
                   cubic_coeff_a=float(ctx.attr("cubic_coeff_a", -0.75)),
                   exclude_outside=bool(ctx.attr("exclude_outside", 0)))
    g = dy
    for axis, n_in, n_out, scale, roi in geometry:
        if mode == "nearest":
            w = nearest_matrix(ctx, axis, n_in, rank)
        else:
            w = b.const(interpolation_matrix(n_in, n_out, scale, roi=roi, **options), dtype, hint="resize_w")
        perm = list(range(rank))
        perm[axis], perm[-1] = perm[-1], perm[axis]
        moved = g if axis == rank - 1 else b.op("Transpose", g, perm=perm)
        moved = b.op("MatMul", moved, w)          # (..., n_out) @ (n_out, n_in)
        g = moved if axis == rank - 1 else b.op("Transpose", moved, perm=perm)
    return [g] + [None] * (len(ctx.x) - 1)
