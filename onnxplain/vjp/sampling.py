"""Resampling: Resize (nearest, linear and cubic modes).

Resize is separable and linear in its input: along each resized axis it multiplies
by an interpolation matrix ``W`` (output size x input size) that depends only on the
sizes, scales and attributes.  The rule applies the transpose to ``dY``,
``dX = dY x_axis W^T`` for every resized axis.  Linear and cubic ``W`` are built at
graph-build time from the ONNX formulas (coordinate transformation, neighbours
clamped to the edges, interpolation coefficients).  Nearest ``W`` is read off the
node itself, by resizing the source index along that axis in the same graph: which
neighbour a tie goes to depends on the runtime's float rounding of the coordinate,
and the cotangent must go where the forward pass took the value from.

When a resized axis has a size known only at run time (detectors and segmenters
exported with dynamic height and width), or the scales or sizes are computed at
run time (``F.interpolate(x, size=skip.shape[-2:])`` becomes Shape/Slice/Concat
feeding ``sizes``), ``W`` is built at run time instead: the node's own Resize
(same attributes, the scale or size of that axis only) applied to an identity
basis as large as the axis gives ``W^T`` row by row, with the runtime's own
coordinates, rounding and coefficients.  Axes that the sizes copy from the input's
own shape (the batch and channel axes, as both PyTorch exporters write them) and
axes with a constant scale of 1 are left alone.
"""
from __future__ import annotations

import math

import numpy as np
from onnx import helper

from ..graph import np_dtype
from . import register
from ._common import fail
from ._common import const_value, dims_vec


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


# ------------------------------------------------------------------------- static geometry
def _static_scales(ctx, shape_in, axes, out_shape):
    """Per resized axis: (scale, output size or None), from constant scales, or from sizes (constant,
    else the inferred output shape) with ``keep_aspect_ratio_policy``; None when they are known only
    at run time."""
    b = ctx.b
    scales_in, sizes_in = _scales_and_sizes(ctx)
    scales = const_value(b, scales_in) if scales_in else None
    if scales_in and scales is None:
        return None
    if scales is not None and scales.size:
        return {a: (float(s), None) for a, s in zip(axes, np.asarray(scales, np.float64).tolist())}
    sizes = const_value(b, sizes_in) if sizes_in else None
    if sizes is not None:
        sizes = [int(v) for v in np.asarray(sizes).ravel()]
    elif out_shape is not None:
        sizes = [out_shape[a] for a in axes]
    else:
        return None
    ratios = {}
    for a, size in zip(axes, sizes):
        if size == shape_in[a]:
            ratios[a] = 1.0
        elif isinstance(size, int) and isinstance(shape_in[a], int):
            ratios[a] = size / shape_in[a]
        else:
            return None
    policy = _attr_str(ctx, "keep_aspect_ratio_policy", "stretch")
    if policy == "stretch":
        return {a: (r, size) for (a, r), size in zip(ratios.items(), sizes)}
    common = min(ratios.values()) if policy == "not_larger" else max(ratios.values())
    return {a: (common, int(round(common * shape_in[a])) if isinstance(shape_in[a], int) else None) for a in axes}


def _static_geometry(ctx, shape_in, axes):
    """``(axis, n_in, n_out, scale, roi)`` of every axis that Resize changes, or None when a changed
    axis, its scale or its size is known only at run time."""
    b, Y = ctx.b, ctx.y[0]
    out_shape = b.shape(Y)
    per_axis = _static_scales(ctx, shape_in, axes, out_shape)
    if per_axis is None:
        return None
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
            return None
        if out_shape is not None and isinstance(out_shape[a], int):
            n_out = out_shape[a]
        if not isinstance(n_out, int):
            span = (hi - lo) if coordinate_mode == "tf_crop_and_resize" else 1.0
            n_out = int(math.floor(n_in * scale * span + 1e-9))
        geometry.append((a, n_in, n_out, scale, (lo, hi)))
    return geometry


def _static_matrices(ctx, geometry, mode: str, rank: int):
    """(axis, W) per resized axis, W (n_out x n_in) built when the graph is built (read off the node for nearest)."""
    b, X = ctx.b, ctx.x[0]
    if ctx.attr("antialias", 0) and mode != "nearest" and any(s < 1 for _, _, _, s, _ in geometry):
        raise fail(ctx, "antialias=1 when downsampling is not supported")
    dtype = np_dtype(b.elem_type(X))
    options = dict(mode=mode, coordinate_mode=_attr_str(ctx, "coordinate_transformation_mode", "half_pixel"),
                   cubic_coeff_a=float(ctx.attr("cubic_coeff_a", -0.75)),
                   exclude_outside=bool(ctx.attr("exclude_outside", 0)))
    for axis, n_in, n_out, scale, roi in geometry:
        if mode == "nearest":
            yield axis, nearest_matrix(ctx, axis, n_in, rank)
        else:
            yield axis, b.const(interpolation_matrix(n_in, n_out, scale, roi=roi, **options), dtype, hint="resize_w")


# ------------------------------------------------------------------------- run-time geometry
def _scales_and_sizes(ctx) -> tuple[str, str]:
    """The names of the node's scales and sizes inputs ("" when absent)."""
    names = list(ctx.x) + [""] * (4 - len(ctx.x))
    return names[2], names[3]


def _producers(b) -> dict:
    return {o: n for n in b.nodes for o in n.output if o}


def _entry_sources(b, name: str, x: str, producers: dict, depth: int = 0) -> list | None:
    """Where each entry of the 1-D int64 tensor ``name`` comes from: ``("axis", k)`` when it is
    ``x``'s size along axis k, ``("value", v)`` when it is the constant v, None when unknown; the
    whole answer is None when not even the number of entries can be told."""
    value = const_value(b, name)
    if value is not None:
        return [("value", int(v)) for v in np.asarray(value).ravel()]
    node = producers.get(name)
    shape = b.shape(name)
    count = [None] * shape[0] if shape is not None and len(shape) == 1 and isinstance(shape[0], int) else None
    if node is None or depth > 16:
        return count
    op, ins = node.op_type, list(node.input)
    if op == "Shape":
        rank = b.rank(ins[0])
        if rank is None:
            return count
        axes = list(range(rank))[slice(_attr(node, "start", 0), _attr(node, "end", None))]
        return [("axis", k) if ins[0] == x else None for k in axes]
    if op in ("Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape"):
        inner = _entry_sources(b, ins[0], x, producers, depth + 1)
        return inner if inner is not None else count
    if op == "Concat":
        parts = [_entry_sources(b, i, x, producers, depth + 1) for i in ins]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    if op in ("Slice", "Gather"):
        inner = _entry_sources(b, ins[0], x, producers, depth + 1)
        picked = _picked_entries(b, node, inner)
        return picked if picked is not None else count
    return count


def _picked_entries(b, node, inner: list | None) -> list | None:
    """The entries of ``inner`` a Slice (constant starts/ends/steps on axis 0) or a Gather (constant
    indices) keeps."""
    if inner is None:
        return None
    ins = list(node.input) + [""] * 5
    if node.op_type == "Gather":
        idx = const_value(b, ins[1])
        if idx is None or _attr(node, "axis", 0) != 0:
            return None
        return [inner[int(i)] for i in np.asarray(idx).ravel()]
    starts, ends = const_value(b, ins[1]), const_value(b, ins[2])
    axes = const_value(b, ins[3]) if ins[3] else np.zeros(1, np.int64)
    steps = const_value(b, ins[4]) if ins[4] else np.ones(1, np.int64)
    if any(v is None or np.size(v) != 1 for v in (starts, ends, axes, steps)) or int(np.ravel(axes)[0]) not in (0, -1):
        return None
    big = np.iinfo(np.int64).max
    stop = int(np.ravel(ends)[0])
    return inner[slice(int(np.ravel(starts)[0]), None if stop >= big // 2 else stop, int(np.ravel(steps)[0]))]


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _runtime_resized_axes(ctx, shape_in, axes) -> list[tuple[int, int]]:
    """(axis, position in scales/sizes) of every axis Resize may change, from what the graph tells:
    a constant scale of 1, a size copied from the input's own shape (or equal to its static size) and
    an output dimension equal to the input's leave an axis alone."""
    b = ctx.b
    scales_in, sizes_in = _scales_and_sizes(ctx)
    scales = const_value(b, scales_in) if scales_in else None
    if scales is not None and np.size(scales) == 0:
        scales, scales_in = None, ""
    out_shape = b.shape(ctx.y[0])
    sources = None
    if not scales_in and sizes_in:
        sources = _entry_sources(b, sizes_in, ctx.x[0], _producers(b))
        if sources is not None and len(sources) != len(axes):
            sources = None
    resized = []
    for j, a in enumerate(axes):
        if out_shape is not None and shape_in[a] is not None and out_shape[a] == shape_in[a]:
            continue
        if scales is not None and float(np.ravel(scales)[j]) == 1.0:
            continue
        if sources is not None and sources[j] in (("axis", a), ("value", shape_in[a])):
            continue
        resized.append((a, j))
    return resized


def _runtime_matrix(ctx, axis: int, j: int) -> str:
    """W^T (n_in x n_out) of ``axis``, at run time: the node's Resize (its attributes, the scale or size
    of entry ``j`` only, the other axis kept) of the identity matrix of size n_in."""
    b, X = ctx.b, ctx.x[0]
    scales_in, sizes_in = _scales_and_sizes(ctx)
    n = dims_vec(b, X, axis, axis + 1)
    zeros = helper.make_tensor("zero", b.elem_type(X), [1], [0])
    eye = b.op("EyeLike", b.op("ConstantOfShape", b.op("Concat", n, n, axis=0), value=zeros))
    attrs = {a.name: helper.get_attribute_value(a) for a in ctx.node.attribute if a.name != "axes"}
    empty = "" if b.opset >= 13 else b.const(np.zeros(0, np.float32), hint="resize_empty")
    scales = const_value(b, scales_in) if scales_in else None
    if scales_in and (scales is None or np.size(scales)):
        if scales is not None:
            pair = b.const([1.0, float(np.ravel(scales)[j])], np.float32, hint="resize_scales")
        else:
            pair = b.op("Concat", b.const([1.0], np.float32), b.op("Slice", scales_in, b.ints([j]), b.ints([j + 1])),
                        axis=0)
        return b.op("Resize", eye, empty, pair, **attrs)
    size = b.op("Slice", sizes_in, b.ints([j]), b.ints([j + 1]))
    return b.op("Resize", eye, empty, empty, b.op("Concat", n, size, axis=0), **attrs)


def _runtime_matrices(ctx, shape_in, axes, mode: str):
    """(axis, W) per axis Resize may change, W (n_out x n_in) built at run time."""
    b = ctx.b
    if b.opset < 11:
        raise fail(ctx, f"Resize-{b.opset} with sizes known only at run time is not supported; "
                        f"export with opset 11 or later")
    coordinate_mode = _attr_str(ctx, "coordinate_transformation_mode", "half_pixel")
    if coordinate_mode == "tf_crop_and_resize":
        raise fail(ctx, "tf_crop_and_resize needs static sizes and scales")
    if _attr_str(ctx, "keep_aspect_ratio_policy", "stretch") != "stretch":
        raise fail(ctx, "keep_aspect_ratio_policy other than 'stretch' needs static sizes")
    if ctx.attr("antialias", 0) and mode != "nearest":
        raise fail(ctx, "antialias=1 with sizes or scales known only at run time is not supported")
    for axis, j in _runtime_resized_axes(ctx, shape_in, axes):
        yield axis, b.op("Transpose", _runtime_matrix(ctx, axis, j), perm=[1, 0])


# ------------------------------------------------------------------------- the rule
@register("Resize")
def vjp_resize(ctx):
    """dX = dY x_a W_a^T along each resized axis a (W_a: the interpolation matrix of that axis)."""
    b, X, dy = ctx.b, ctx.x[0], ctx.dy[0]
    mode = _attr_str(ctx, "mode", "nearest")
    if mode not in ("nearest", "linear", "cubic"):
        raise fail(ctx, f"unknown mode {mode!r}; expected nearest, linear or cubic")
    shape_in = b.shape(X)
    if shape_in is None:
        raise fail(ctx, "the rank of its input is unknown")
    rank = len(shape_in)
    axes = ctx.attr("axes", None)
    axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a for a in axes]
    geometry = _static_geometry(ctx, shape_in, axes)
    if geometry is not None:
        matrices = _static_matrices(ctx, geometry, mode, rank)
    else:
        matrices = _runtime_matrices(ctx, shape_in, axes, mode)
    g = dy
    for axis, w in matrices:
        perm = list(range(rank))
        perm[axis], perm[-1] = perm[-1], perm[axis]
        moved = g if axis == rank - 1 else b.op("Transpose", g, perm=perm)
        moved = b.op("MatMul", moved, w)          # (..., n_out) @ (n_out, n_in)
        g = moved if axis == rank - 1 else b.op("Transpose", moved, perm=perm)
    return [g] + [None] * (len(ctx.x) - 1)
