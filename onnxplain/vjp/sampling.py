"""Resampling: Resize (nearest, linear and cubic modes), GridSample, AffineGrid and DeformConv.

Resize is separable and linear in its input: along each resized axis it multiplies
by an interpolation matrix ``W`` (output size x input size) that depends only on the
sizes, scales and attributes.  The rule applies the transpose to ``dY``,
``dX = dY x_axis W^T`` for every resized axis.  Linear and cubic ``W`` follow the
specification's formulas (coordinate transformation with the output width
``scale * n_in``, neighbours clamped to the edges, the kernel widened by antialias,
exclude_outside, tf_crop_and_resize's extrapolated rows): built when the graph is
built where sizes, scales and roi are constants, else in the graph from their run-time
values (the same formulas in double precision).  onnxruntime (and PyTorch) divide by
the rounded output size in align_corners and pytorch_half_pixel where ``scale * n_in``
is fractional, and skip a tf_crop_and_resize whose output size equals its input's;
the rule follows the specification there.  Nearest ``W`` is read off the node itself,
by resizing the source index along that axis in the same graph (or, with sizes or
scales known only at run time, an identity basis through the node's attributes):
which neighbour a tie goes to depends on the runtime's float rounding of the
coordinate, and the cotangent must go where the forward pass took the value from.
Axes that the sizes copy from the input's own shape (the batch and channel axes, as
both PyTorch exporters write them) and axes with a constant scale of 1 are left
alone; a crop or a scale the axes share (keep_aspect_ratio_policy) may move any axis.
tf_crop_and_resize's roi gets a cotangent through the derivative of ``W`` by the
crop's start and end.

GridSample and DeformConv read the image at arbitrary points: per axis two (linear)
or four (cubic) taps with weights, combined over the axes into flat indices.  The
image's cotangent is ``dY`` times the weights, scattered onto those indices (ScatterND,
reduction add); the grid's (offsets') cotangent is the weights' derivatives by the
coordinates against the image gathered there (GatherND-like Gather on the image laid
out as rows of channels).  GridSample's nearest mode reads the picked pixels off the
node itself (the runtime's GridSample of the pixels' indices) and gives the grid a
zero cotangent.  DeformConv is the same bilinear sampling (zeros outside) at the kernel
taps moved by the offsets, times the mask, contracted with the weight like Conv's
im2col columns: dW, dB, dmask, doffset and dX all follow from the columns' cotangent
``W^T dY``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper

from ..graph import np_dtype
from .registry import register
from ._common import const_value, dims_vec, fail, known_rank

DOUBLE = TensorProto.DOUBLE


def _attr_str(ctx, name: str, default: str) -> str:
    v = ctx.attr(name, default)
    return v.decode() if isinstance(v, bytes) else v


# ------------------------------------------------------------------------- coordinates
def source_coordinate(mode: str, x: np.ndarray, scale: float, n_in: int, n_out: int, roi=(0.0, 1.0)) -> np.ndarray:
    """x_original of output positions ``x`` under ``coordinate_transformation_mode`` (ONNX Resize's formulas).

    As the specification (and onnx.reference) writes them, align_corners, pytorch_half_pixel and
    tf_crop_and_resize divide by the output width ``scale * n_in``, not by the rounded output size: the two
    differ when scales are given and ``scale * n_in`` is not an integer (onnxruntime and PyTorch use the
    rounded size there; the rule follows the specification)."""
    width = scale * n_in
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = n_out / width
        offset = n_in / 2 * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if width != 1 else np.full_like(x, -0.5)
    if mode == "align_corners":
        return x * (n_in - 1) / (width - 1) if width != 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_crop_and_resize":
        start, end = roi
        if width != 1:
            return x * (end - start) * (n_in - 1) / (width - 1) + start * (n_in - 1)
        return np.full_like(x, (end - start) * (n_in - 1) / 2 + start * (n_in - 1))
    raise ValueError(f"unknown coordinate_transformation_mode {mode!r}")


# ------------------------------------------------------------------------- coefficients
def tap_window(mode: str, scale: float, antialias: bool) -> tuple[int, float]:
    """``(start, support)``: the taps of one output are the inputs ``left + i`` for ``i`` in
    ``[start, 2 - start)`` (``left = ceil(x_original) - 1``), weighted by the kernel at
    ``(i - ratio) * support``.  Without antialias (or when upsampling) support is 1: two taps (linear),
    four (cubic); antialias widens the kernel by ``1 / scale`` when downsampling."""
    reach = 1 if mode == "linear" else 2
    support = min(scale, 1.0) if antialias else 1.0
    return math.floor(-reach / support) + 1, support


def kernel(mode: str, a: float, arg: np.ndarray) -> np.ndarray:
    """The interpolation kernel at ``arg``: the tent ``max(0, 1 - |t|)`` or Keys' cubic with coefficient ``a``
    (``(a + 2)|t|^3 - (a + 3)|t|^2 + 1`` up to 1, ``a|t|^3 - 5a|t|^2 + 8a|t| - 4a`` up to 2, 0 beyond)."""
    t = np.abs(arg)
    if mode == "linear":
        return np.clip(1 - t, 0, 1)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def interpolation_matrix(n_in: int, n_out: int, scale: float, *, mode: str, coordinate_mode: str,
                         cubic_coeff_a: float = -0.75, exclude_outside: bool = False, roi=(0.0, 1.0),
                         antialias: bool = False) -> np.ndarray:
    """W (n_out x n_in) of ``linear`` or ``cubic`` Resize along one axis (y = W @ x): the taps of each
    x_original (:func:`tap_window`), clamped to the edges, weighted by the kernel (normalised with antialias
    and exclude_outside, taps outside the input dropped with exclude_outside), no weight at all where
    tf_crop_and_resize extrapolates."""
    xs = source_coordinate(coordinate_mode, np.arange(n_out, dtype=np.float64), scale, n_in, n_out, roi)
    start, support = tap_window(mode, scale, antialias)
    taps = np.arange(start, 2 - start, dtype=np.float64)
    left = np.ceil(xs) - 1                # the left neighbour: ratio in (0, 1], 1 when x is an integer
    ratio = xs - left
    coeffs = kernel(mode, cubic_coeff_a, (taps[None, :] - ratio[:, None]) * support)
    if antialias:
        coeffs = coeffs / coeffs.sum(axis=1, keepdims=True)
    idx = (left[:, None] + taps[None, :]).astype(np.int64)
    if exclude_outside:
        coeffs = np.where((idx >= 0) & (idx < n_in), coeffs, 0.0)
        total = coeffs.sum(axis=1, keepdims=True)
        coeffs = coeffs / np.where(total == 0, 1.0, total)
    if coordinate_mode == "tf_crop_and_resize":
        coeffs[(xs < 0) | (xs > n_in - 1)] = 0.0     # extrapolation_value: a constant, no cotangent
    w = np.zeros((n_out, n_in))
    rows = np.repeat(np.arange(n_out), len(taps))
    np.add.at(w, (rows, np.clip(idx, 0, n_in - 1).ravel()), coeffs.ravel())
    return w


def nearest_matrix(ctx, axis: int, rank: int) -> str:
    """W (n_out x n_in) of ``nearest`` Resize along ``axis``, as a graph tensor: the node's own Resize of
    the source index (0 .. n_in - 1 along ``axis``, broadcast to X's shape) names the picked neighbours.
    The size of the axis may be known only at run time."""
    b, X = ctx.b, ctx.x[0]
    dtype = np_dtype(b.elem_type(X))
    n_in = (b.shape(X) or [None] * rank)[axis]
    if isinstance(n_in, int):
        positions = b.const(np.arange(n_in), dtype, hint="resize_index")
        shape = [1] * rank
        shape[axis] = n_in
        line = b.const(np.arange(n_in).reshape(shape), dtype, hint="resize_index")
    else:
        n = b.op("Squeeze", dims_vec(b, X, axis, axis + 1), b.ints([0]))
        positions = b.op("Cast", b.op("Range", b.const(0, np.int64), n, b.const(1, np.int64)), to=b.elem_type(X))
        line = b.op("Reshape", positions, b.ints([1] * axis + [-1] + [1] * (rank - axis - 1)))
    index = b.op("Expand", line, b.shape_of(X))
    attrs = {a.name: helper.get_attribute_value(a) for a in ctx.node.attribute}
    if _attr_str(ctx, "coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
        attrs["extrapolation_value"] = -1.0     # extrapolated outputs match no index: no cotangent
    picked = b.op("Resize", index, *ctx.x[1:], **attrs)
    others = [i for i in range(rank) if i != axis]
    source = b.reduce("ReduceMax", picked, others, keepdims=0) if others else picked     # (n_out,)
    hit = b.op("Equal", b.unsqueeze(source, [1]), positions)
    return b.op("Cast", hit, to=b.elem_type(X))


# ------------------------------------------------------------------------- static geometry
def _static_scales(ctx, shape_in, axes, out_shape):
    """Per resized axis: (scale, output size or None), from constant scales, or from sizes (constant,
    else the inferred output shape) with ``keep_aspect_ratio_policy``; None when they are known only
    at run time (the output shape alone does not give the scale a policy other than stretch shares)."""
    b = ctx.b
    scales_in, sizes_in = _scales_and_sizes(ctx)
    scales = const_value(b, scales_in) if scales_in else None
    if scales_in and scales is None:
        return None
    if scales is not None and scales.size:
        return {a: (float(s), None) for a, s in zip(axes, np.asarray(scales, np.float64).tolist())}
    policy = _attr_str(ctx, "keep_aspect_ratio_policy", "stretch")
    sizes = const_value(b, sizes_in) if sizes_in else None
    if sizes is not None:
        sizes = [int(v) for v in np.asarray(sizes).ravel()]
    elif out_shape is not None and policy == "stretch":
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
    if policy == "stretch":
        return {a: (r, size) for (a, r), size in zip(ratios.items(), sizes)}
    common = min(ratios.values()) if policy == "not_larger" else max(ratios.values())
    return {a: (common, int(common * shape_in[a] + 0.5) if isinstance(shape_in[a], int) else None) for a in axes}


def _static_geometry(ctx, shape_in, axes):
    """``(axis, n_in, n_out, scale, roi)`` of every axis that Resize changes, or None when a changed
    axis, its scale, its size or the roi of tf_crop_and_resize is known only at run time."""
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
            return None
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
    dtype = np_dtype(b.elem_type(X))
    options = dict(mode=mode, coordinate_mode=_attr_str(ctx, "coordinate_transformation_mode", "half_pixel"),
                   cubic_coeff_a=float(ctx.attr("cubic_coeff_a", -0.75)),
                   exclude_outside=bool(ctx.attr("exclude_outside", 0)), antialias=bool(ctx.attr("antialias", 0)))
    for axis, n_in, n_out, scale, roi in geometry:
        if mode == "nearest":
            yield axis, nearest_matrix(ctx, axis, rank)
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
    """(axis, position in scales/sizes) of every axis Resize may change, from what the graph tells: a
    constant scale of 1; with sizes (stretch), a size copied from the input's own shape (or equal to its
    static size) or an output dimension equal to the input's; with scales known only at run time, or a scale
    the axes share (keep_aspect_ratio_policy), an axis of size 1 in and out.  A crop (tf_crop_and_resize)
    may change any axis."""
    b = ctx.b
    scales_in, sizes_in = _scales_and_sizes(ctx)
    scales = const_value(b, scales_in) if scales_in else None
    if scales is not None and np.size(scales) == 0:
        scales, scales_in = None, ""
    out_shape = b.shape(ctx.y[0]) or [None] * len(shape_in)
    crop = _attr_str(ctx, "coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize"
    shared = not scales_in and _attr_str(ctx, "keep_aspect_ratio_policy", "stretch") != "stretch"
    sources = None
    if not scales_in and sizes_in:
        sources = _entry_sources(b, sizes_in, ctx.x[0], _producers(b))
        if sources is not None and len(sources) != len(axes):
            sources = None
    resized = []
    for j, a in enumerate(axes):
        same = shape_in[a] is not None and out_shape[a] == shape_in[a]
        if crop:
            kept = False
        elif scales is not None:
            kept = float(np.ravel(scales)[j]) == 1.0
        elif scales_in or shared:    # a scale other than 1 may keep a size: only an axis of one row is safe
            kept = same and shape_in[a] == 1
        else:
            kept = same or (sources is not None and sources[j] in (("axis", a), ("value", shape_in[a])))
        if not kept:
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


def _double(b, value: float) -> str:
    return b.const(value, np.float64, hint="resize_c")


def _scalar(b, t: str) -> str:
    """A one-entry tensor as a scalar."""
    return b.op("Reshape", t, b.ints([]))


def _runtime_scale(ctx, axes, j: int) -> str:
    """The scale of entry ``j`` of the axes, a double scalar: the given scale, else ``size / n_in`` (stretch),
    or the largest (not_smaller) or smallest (not_larger) of them all, as the specification computes it."""
    b, X = ctx.b, ctx.x[0]
    scales_in, sizes_in = _scales_and_sizes(ctx)
    scales = const_value(b, scales_in) if scales_in else None
    if scales_in and not (scales is not None and np.size(scales) == 0):
        if scales is not None:
            return _double(b, float(np.ravel(scales)[j]))
        return _scalar(b, b.op("Cast", b.op("Slice", scales_in, b.ints([j]), b.ints([j + 1])), to=DOUBLE))
    dims = b.op("Cast", b.op("Gather", b.shape_of(X), b.ints(axes), axis=0), to=DOUBLE)
    ratios = b.div(b.op("Cast", sizes_in, to=DOUBLE), dims)
    policy = _attr_str(ctx, "keep_aspect_ratio_policy", "stretch")
    if policy == "stretch":
        return _scalar(b, b.op("Slice", ratios, b.ints([j]), b.ints([j + 1])))
    return b.op("ReduceMax" if policy == "not_smaller" else "ReduceMin", ratios, keepdims=0)


def _runtime_roi(ctx, axis: int, j: int, axes) -> tuple[str, str]:
    """(start, end) of the roi of tf_crop_and_resize along ``axis`` (entry ``j`` of the axes), double scalars."""
    b, roi = ctx.b, ctx.x[1]
    shape = b.shape(roi)
    half = shape[0] // 2 if shape is not None and len(shape) == 1 and isinstance(shape[0], int) else len(axes)
    pos = j if half == len(axes) else axis

    def entry(k):
        return _scalar(b, b.op("Cast", b.op("Slice", roi, b.ints([k]), b.ints([k + 1])), to=DOUBLE))
    return entry(pos), entry(half + pos)


def _runtime_coordinates(b, mode: str, x: str, scale: str, n_in: str, n_out: str, lo=None, hi=None):
    """x_original of the output positions ``x`` (double), the graph form of :func:`source_coordinate`; for
    tf_crop_and_resize also its derivatives by the roi's start and end."""
    one, half = _double(b, 1.0), _double(b, 0.5)
    width = b.mul(scale, n_in)
    is_one = b.op("Equal", width, one)
    safe = b.where(is_one, one, b.sub(width, one))
    pixel = b.sub(b.div(b.add(x, half), scale), half)
    if mode == "half_pixel":
        return pixel, None, None
    if mode == "half_pixel_symmetric":
        offset = b.mul(b.mul(n_in, half), b.sub(one, b.div(n_out, width)))
        return b.add(offset, pixel), None, None
    if mode == "pytorch_half_pixel":
        return b.where(is_one, _double(b, -0.5), pixel), None, None
    if mode == "align_corners":
        return b.where(is_one, _double(b, 0.0), b.div(b.mul(x, b.sub(n_in, one)), safe)), None, None
    if mode == "asymmetric":
        return b.div(x, scale), None, None
    if mode == "tf_crop_and_resize":
        span = b.sub(n_in, one)
        d_hi = b.where(is_one, b.mul(span, half), b.div(b.mul(x, span), safe))
        d_lo = b.sub(span, d_hi)
        return b.add(b.mul(b.sub(hi, lo), d_hi), b.mul(lo, span)), d_lo, d_hi
    raise ValueError(f"unknown coordinate_transformation_mode {mode!r}")


def _kernel_graph(b, mode: str, a: float, arg: str, const=None) -> tuple[str, str]:
    """The graph form of :func:`kernel` at ``arg``, with its derivative by ``arg``; ``const(v)`` makes the
    scalar constants (double by default)."""
    d = const or (lambda v: _double(b, float(v)))
    t, sign = b.op("Abs", arg), b.op("Sign", arg)
    if mode == "linear":
        k = b.op("Max", b.sub(d(1), t), d(0))
        return k, b.neg(b.mul(b.cast_like(b.op("Less", t, d(1)), t), sign))
    near = b.add(b.mul(b.mul(b.sub(b.mul(d(a + 2), t), d(a + 3)), t), t), d(1))
    far = b.sub(b.mul(b.add(b.mul(b.sub(b.mul(d(a), t), d(5 * a)), t), d(8 * a)), t), d(4 * a))
    d_near = b.mul(b.sub(b.mul(d(3 * (a + 2)), t), d(2 * (a + 3))), t)
    d_far = b.add(b.mul(b.sub(b.mul(d(3 * a), t), d(10 * a)), t), d(8 * a))
    is_near, is_far = b.op("LessOrEqual", t, d(1)), b.op("Less", t, d(2))
    k = b.where(is_near, near, b.where(is_far, far, d(0)))
    return k, b.mul(b.where(is_near, d_near, b.where(is_far, d_far, d(0))), sign)


def _runtime_weights(ctx, axis: int, j: int, axes, mode: str, want_roi: bool):
    """``(W, dW/droi_start, dW/droi_end)`` of a linear or cubic axis, built at run time from the
    specification's formulas (the graph form of :func:`interpolation_matrix`, in double precision), the
    derivatives None unless ``want_roi``.  Sizes, scales and the roi may all be known only at run time."""
    b, X, Y = ctx.b, ctx.x[0], ctx.y[0]
    et = b.elem_type(X)
    d = lambda v: _double(b, float(v))  # noqa: E731
    n_in = _scalar(b, b.op("Cast", dims_vec(b, X, axis, axis + 1), to=DOUBLE))
    n_out_i = _scalar(b, dims_vec(b, Y, axis, axis + 1))
    x = b.op("Cast", b.op("Range", b.const(0, np.int64), n_out_i, b.const(1, np.int64)), to=DOUBLE)
    scale = _runtime_scale(ctx, axes, j)
    coordinate_mode = _attr_str(ctx, "coordinate_transformation_mode", "half_pixel")
    crop = coordinate_mode == "tf_crop_and_resize"
    lo, hi = _runtime_roi(ctx, axis, j, axes) if crop else (None, None)
    x_ori, d_lo, d_hi = _runtime_coordinates(b, coordinate_mode, x, scale, n_in,
                                             b.op("Cast", n_out_i, to=DOUBLE), lo, hi)
    antialias, exclude = bool(ctx.attr("antialias", 0)), bool(ctx.attr("exclude_outside", 0))
    reach = 1 if mode == "linear" else 2
    if antialias:
        support = b.op("Min", scale, d(1))
        start = b.add(b.op("Floor", b.div(d(-reach), support)), d(1))
        taps = b.op("Range", start, b.sub(d(2), start), d(1))
    else:
        support = d(1)
        taps = b.const(np.arange(1 - reach, 1 + reach), np.float64, hint="resize_taps")
    left = b.sub(b.op("Ceil", x_ori), d(1))
    ratio = b.sub(x_ori, left)
    arg = b.mul(b.sub(b.unsqueeze(taps, [0]), b.unsqueeze(ratio, [1])), support)     # (n_out, taps)
    k, dk = _kernel_graph(b, mode, float(ctx.attr("cubic_coeff_a", -0.75)), arg)
    dk = b.mul(dk, b.neg(support))                                                   # by x_original
    idx = b.add(b.unsqueeze(left, [1]), b.unsqueeze(taps, [0]))
    last = b.sub(n_in, d(1))
    if exclude:
        inside = b.op("Cast", b.op("And", b.op("GreaterOrEqual", idx, d(0)), b.op("LessOrEqual", idx, last)), to=DOUBLE)
        k, dk = b.mul(k, inside), b.mul(dk, inside)
    if antialias or exclude:
        total = b.op("ReduceSum", k, b.ints([1]), keepdims=1)
        safe = b.where(b.op("Equal", total, d(0)), d(1), total)
        k = b.div(k, safe)
        dk = b.div(b.sub(dk, b.mul(k, b.op("ReduceSum", dk, b.ints([1]), keepdims=1))), safe)
    if crop:                                   # extrapolation_value: a constant, no cotangent
        valid = b.op("And", b.op("GreaterOrEqual", x_ori, d(0)), b.op("LessOrEqual", x_ori, last))
        valid = b.unsqueeze(b.op("Cast", valid, to=DOUBLE), [1])
        k, dk = b.mul(k, valid), b.mul(dk, valid)
    clamped = b.op("Max", b.op("Min", idx, last), d(0))
    onehot = b.op("Cast", b.op("Equal", b.unsqueeze(clamped, [2]), b.op("Range", d(0), n_in, d(1))), to=DOUBLE)

    def matrix(coeffs):                        # (n_out, n_in): the coefficients summed onto their inputs
        return b.op("ReduceSum", b.mul(onehot, b.unsqueeze(coeffs, [2])), b.ints([1]), keepdims=0)
    w = b.op("Cast", matrix(k), to=et)
    if not want_roi:
        return w, None, None
    dw = matrix(dk)
    return (w, b.op("Cast", b.mul(dw, b.unsqueeze(d_lo, [1])), to=et),
            b.op("Cast", b.mul(dw, b.unsqueeze(d_hi, [1])), to=et))


def _runtime_matrices(ctx, shape_in, axes, mode: str, want_roi: bool):
    """(axis, W, dW/droi_start, dW/droi_end) per axis Resize may change, W (n_out x n_in) built at run
    time: for nearest read off the runtime's own Resize (of an identity basis, or with a crop or a shared
    scale of the source index through the node itself), else from the specification's formulas."""
    rank = len(shape_in)
    crop = _attr_str(ctx, "coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize"
    stretch = _attr_str(ctx, "keep_aspect_ratio_policy", "stretch") == "stretch"
    for axis, j in _runtime_resized_axes(ctx, shape_in, axes):
        if mode != "nearest":
            yield (axis,) + _runtime_weights(ctx, axis, j, axes, mode, want_roi)
        elif crop or not stretch:
            yield axis, nearest_matrix(ctx, axis, rank), None, None
        else:
            yield axis, ctx.b.op("Transpose", _runtime_matrix(ctx, axis, j), perm=[1, 0]), None, None


def _transposed(b, g: str, matrices, rank: int) -> str:
    """``g x_a W_a^T`` along every (axis, W) of ``matrices``."""
    for axis, w in matrices:
        perm = list(range(rank))
        perm[axis], perm[-1] = perm[-1], perm[axis]
        moved = g if axis == rank - 1 else b.op("Transpose", g, perm=perm)
        moved = b.op("MatMul", moved, w)          # (..., n_out) @ (n_out, n_in)
        g = moved if axis == rank - 1 else b.op("Transpose", moved, perm=perm)
    return g


def _roi_gradient(ctx, matrices, axes, rank: int) -> str:
    """The cotangent of tf_crop_and_resize's roi: for the start (end) along axis a,
    ``sum(X * (dY x_a dW_a^T x_others W^T))`` with ``dW_a`` the derivative of that axis' matrix."""
    b, X, roi = ctx.b, ctx.x[0], ctx.x[1]
    shape = b.shape(roi)
    half = shape[0] // 2 if shape is not None and len(shape) == 1 and isinstance(shape[0], int) else len(axes)
    entries = {}
    for axis, _, d_lo, d_hi in matrices:
        j = axes.index(axis)
        pos = j if half == len(axes) else axis
        for k, dw in ((pos, d_lo), (half + pos, d_hi)):
            mats = [(a, dw if a == axis else w) for a, w, _, _ in matrices]
            total = b.op("ReduceSum", b.mul(_transposed(b, ctx.dy[0], mats, rank), X), keepdims=1)
            entries[k] = b.op("Reshape", total, b.ints([1]))
    zero = b.const([0.0], np_dtype(b.elem_type(X)), hint="resize_zero")
    return b.cast_like(b.op("Concat", *[entries.get(k, zero) for k in range(2 * half)], axis=0), roi)


# ------------------------------------------------------------------------- the rule
@register("Resize", tag="nonlinear")
def vjp_resize(ctx):
    """dX = dY x_a W_a^T along each resized axis a (W_a: the interpolation matrix of that axis); with
    tf_crop_and_resize (linear, cubic) the roi's cotangent too."""
    b, X, dy = ctx.b, ctx.x[0], ctx.dy[0]
    mode = _attr_str(ctx, "mode", "nearest")
    if mode not in ("nearest", "linear", "cubic"):
        raise fail(ctx, f"unknown mode {mode!r}; expected nearest, linear or cubic")
    if ctx.needs(2):
        raise fail(ctx, "its scales depend on the attributed input; a gradient through the scales is not "
                        "supported")
    shape_in = b.shape(X)
    if shape_in is None:
        raise fail(ctx, "the rank of its input is unknown")
    rank = len(shape_in)
    axes = ctx.attr("axes", None)
    axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a for a in axes]
    crop = _attr_str(ctx, "coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize"
    want_roi = crop and mode != "nearest" and ctx.needs(1)   # nearest: piecewise constant in the roi
    geometry = _static_geometry(ctx, shape_in, axes)
    if geometry is not None:
        matrices = [(axis, w, None, None) for axis, w in _static_matrices(ctx, geometry, mode, rank)]
    else:
        matrices = list(_runtime_matrices(ctx, shape_in, axes, mode, want_roi))
    grads = [None] * len(ctx.x)
    if ctx.needs(0):
        grads[0] = _transposed(b, dy, [(axis, w) for axis, w, _, _ in matrices], rank)
    if want_roi:
        grads[1] = _roi_gradient(ctx, matrices, axes, rank)
    return grads


# ------------------------------------------------------------------------- sampling at arbitrary points
# GridSample and DeformConv read an image at arbitrary (per output) source coordinates.  Along each
# spatial axis a coordinate picks a few taps (2 linear, 4 cubic) with weights; the taps of all axes combine
# into flat indices into the image and products of weights.  Values are gathered at those indices (Gather
# on the image laid out as rows of channels), the image's cotangent scattered back onto them (ScatterND,
# reduction add), and the coordinates' cotangents are the weights' derivatives against the gathered values.
def _cast_to(b, t: str, elem_type) -> str:
    return t if elem_type is None or b.elem_type(t) == elem_type else b.op("Cast", t, to=elem_type)


def _reflect(b, u: str, lo: str, hi: str, const) -> tuple[str, str]:
    """``u`` reflected at the borders ``lo`` and ``hi`` until it lies between them (a triangle wave of
    period ``2 (hi - lo)``), and the slope (+1 or -1) of the reflected coordinate; ``lo`` where the borders
    meet."""
    span = b.sub(hi, lo)
    period = b.add(span, span)
    flat = b.op("Equal", period, const(0.0))
    safe = b.where(flat, const(1.0), period)
    t = b.sub(u, lo)
    t = b.sub(t, b.mul(safe, b.op("Floor", b.div(t, safe))))
    inner = b.op("LessOrEqual", t, span)
    out = b.where(flat, lo, b.where(inner, b.add(lo, t), b.sub(b.add(lo, period), t)))
    return out, b.where(inner, const(1.0), const(-1.0))


def _axis_taps(b, u: str, size: str, mode: str, padding: str, align_corners: bool, dtype):
    """Taps along one axis of the source coordinates ``u`` (B, P), in pixels of an axis of ``size`` (a scalar
    of u's type), as GridSample reads them: padding_mode reflection reflects a coordinate outside
    [-0.5, size - 0.5] ([0, size - 1] with align_corners); then the taps (floor(u) and its right neighbour,
    or the four of Keys' cubic with a = -0.75) outside the axis read zeros, the edge (border) or their
    reflection.  Border clamps the taps, not the coordinate, as onnxruntime and PyTorch do (the same for
    linear; for cubic, onnx.reference clamps the coordinate into the image first and differs from both).
    Returns ``(index, weight, slope)``, each (B, P, taps): int64 indices into the axis, the weights, and the
    weights' derivatives by ``u`` (``dtype``: u's numpy type)."""
    const = lambda v: b.const(v, dtype, hint="gs_c")  # noqa: E731
    last = b.sub(size, const(1.0))
    lo, hi = (const(0.0), last) if align_corners else (const(-0.5), b.sub(size, const(0.5)))
    slope = None
    if padding == "reflection":
        outside = b.op("Or", b.op("Less", u, lo), b.op("Greater", u, hi))
        reflected, sign = _reflect(b, u, lo, hi, const)
        u, slope = b.where(outside, reflected, u), b.where(outside, sign, const(1.0))
    x0 = b.op("Floor", u)
    t = b.unsqueeze(b.sub(u, x0), [-1])
    if mode == "linear":
        offsets = [0.0, 1.0]
        weight = b.op("Concat", b.sub(const(1.0), t), t, axis=-1)
        dweight = b.op("Expand", b.const(np.array([-1.0, 1.0]), dtype, hint="gs_slope"),
                       b.shape_of(weight))
    else:
        offsets = [-1.0, 0.0, 1.0, 2.0]
        toward = b.const(np.array([1.0, 1.0, -1.0, -1.0]), dtype, hint="gs_sign")
        dist = b.add(b.mul(t, toward), b.const(np.array([1.0, 0.0, 1.0, 2.0]), dtype, hint="gs_dist"))
        weight, dweight = _kernel_graph(b, "cubic", -0.75, dist, const)
        dweight = b.mul(dweight, toward)
    idx = b.add(b.unsqueeze(x0, [-1]), b.const(np.array(offsets), dtype, hint="gs_offsets"))
    if padding == "zeros":
        inside = b.cast_like(b.op("And", b.op("GreaterOrEqual", idx, const(0.0)), b.op("LessOrEqual", idx, last)), u)
        weight, dweight = b.mul(weight, inside), b.mul(dweight, inside)
    elif padding == "reflection":
        idx = _reflect(b, idx, lo, hi, const)[0]
    idx = b.op("Cast", b.op("Clip", idx, const(0.0), last), to=TensorProto.INT64)
    if slope is not None:
        dweight = b.mul(dweight, b.unsqueeze(slope, [-1]))
    return idx, weight, dweight


def _combined_taps(b, taps: list, strides: list) -> tuple[str, str, list]:
    """The taps of all axes combined (every tap of one axis with every tap of the others): flat indices
    ``sum_d index_d * stride_d``, weights ``prod_d weight_d`` and, per axis, the derivative of the weight by
    that axis' coordinate, each (B, P, K)."""
    k = len(taps)

    def spread(t, d):                      # (B, P, T) -> (B, P, 1, .., T at 2 + d, .., 1)
        others = [2 + e for e in range(k) if e != d]
        return b.unsqueeze(t, others) if others else t
    flat = weight = None
    for d, (idx, w, _) in enumerate(taps):
        term = b.mul(spread(idx, d), strides[d])
        flat = term if flat is None else b.add(flat, term)
        weight = spread(w, d) if weight is None else b.mul(weight, spread(w, d))
    slopes = []
    for d, (_, _, dw) in enumerate(taps):
        s = spread(dw, d)
        for e, (_, w, _) in enumerate(taps):
            if e != d:
                s = b.mul(s, spread(w, e))
        slopes.append(s)
    flat3 = b.ints([0, 0, -1])
    return b.op("Reshape", flat, flat3), b.op("Reshape", weight, flat3), [b.op("Reshape", s, flat3) for s in slopes]


def _image_rows(b, image: str, batch: str, channels: str) -> str:
    """An image (B, C, spatial...) as rows of channels: (B * S, C), row ``b S + s`` = pixel s of item b."""
    three = b.op("Reshape", image, b.op("Concat", batch, channels, b.ints([-1]), axis=0))
    return b.op("Reshape", b.op("Transpose", three, perm=[0, 2, 1]), b.op("Concat", b.ints([-1]), channels, axis=0))


def _rows_to_image(b, rows: str, batch: str, channels: str, like_shape: str) -> str:
    """The inverse of :func:`_image_rows`: (B * S, C) -> (B, C, spatial...) with the shape ``like_shape``."""
    three = b.op("Reshape", rows, b.op("Concat", batch, b.ints([-1]), channels, axis=0))
    return b.op("Reshape", b.op("Transpose", three, perm=[0, 2, 1]), like_shape)


def _batch_offsets(b, batch: str, size: str) -> str:
    """``[0, S, 2S, ...]`` shaped (B, 1, 1): item b's first row among :func:`_image_rows`."""
    items = b.op("Range", b.const(0, np.int64), _scalar(b, batch), b.const(1, np.int64))
    return b.op("Reshape", b.mul(items, size), b.ints([-1, 1, 1]))


def _scatter_rows(b, zeros: str, index: str, updates: str) -> str:
    """``zeros`` (rows, C) with ``updates`` (..., C) added onto rows ``index`` (...)."""
    return b.op("ScatterND", zeros, b.unsqueeze(index, [-1]), updates, reduction="add")


# ------------------------------------------------------------------------- GridSample
_GRID_MODES = {"bilinear": "linear", "linear": "linear", "bicubic": "cubic", "cubic": "cubic", "nearest": "nearest"}


def grid_sample_attrs(node) -> tuple[str, str, bool]:
    """``(mode, padding_mode, align_corners)`` of a GridSample node, GridSample-16's mode names mapped to
    GridSample-20's (linear, cubic, nearest)."""
    def text(name, default):
        v = _attr(node, name, default)
        return v.decode() if isinstance(v, bytes) else v
    mode = text("mode", "linear")
    return _GRID_MODES.get(mode, mode), text("padding_mode", "zeros"), bool(_attr(node, "align_corners", 0))


def grid_sample_vjp(ctx, X: str, grid: str, dy: str, need_x: bool = True, need_grid: bool = True):
    """``(dX, dgrid)`` of ``Y = GridSample(X, grid)`` (the attributes of ``ctx.node``) at ``X`` and ``grid``
    for the output cotangent ``dy``; None for what is not asked.  ``dX`` does not depend on X's value
    (GridSample is linear in X).  Nearest: the runtime's own GridSample of the pixels' indices names the
    pixel each output read (ties follow the runtime's rounding), and the grid gets a zero cotangent."""
    b, node = ctx.b, ctx.node
    mode, padding, align_corners = grid_sample_attrs(node)
    if mode not in ("linear", "cubic", "nearest"):
        raise fail(ctx, f"unknown mode {mode!r}")
    if padding not in ("zeros", "border", "reflection"):
        raise fail(ctx, f"unknown padding_mode {padding!r}")
    rank = known_rank(ctx, X)
    k = rank - 2
    xt, gt = b.elem_type(X), b.elem_type(grid)
    gdtype = np_dtype(gt or TensorProto.FLOAT)
    const = lambda v: b.const(v, gdtype, hint="gs_c")  # noqa: E731
    batch, channels = dims_vec(b, X, 0, 1), dims_vec(b, X, 1, 2)
    sizes = [dims_vec(b, X, 2 + d, 3 + d) for d in range(k)]
    strides, stride = [None] * k, b.ints([1])
    for d in reversed(range(k)):
        strides[d] = stride
        stride = b.mul(stride, sizes[d])
    pixels = stride                                                          # S, [1]
    dv = b.op("Transpose", b.op("Reshape", dy, b.op("Concat", batch, channels, b.ints([-1]), axis=0)), perm=[0, 2, 1])
    zeros_rows = b.op("Reshape", b.zeros_like(X), b.op("Concat", b.ints([-1]), channels, axis=0)) if need_x else None
    offsets = _batch_offsets(b, batch, pixels)
    dX = dgrid = None
    if mode == "nearest":
        if need_x:
            spatial = b.op("Concat", *sizes, axis=0)
            image = b.op("Cast", b.op("Range", b.const(1, np.int64), b.add(_scalar(b, pixels), b.const(1, np.int64)),
                                      b.const(1, np.int64)), to=xt)
            image = b.op("Expand", b.op("Reshape", image, b.op("Concat", b.ints([1, 1]), spatial, axis=0)),
                         b.op("Concat", batch, b.ints([1]), spatial, axis=0))
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            picked = b.op("Reshape", b.op("GridSample", image, grid, **attrs), b.ints([0, -1]))   # (N, P)
            picked = b.sub(b.op("Cast", b.op("Round", picked), to=TensorProto.INT64), b.const(1, np.int64))
            valid = b.cast_like(b.op("GreaterOrEqual", picked, b.const(0, np.int64)), dv)
            index = b.add(b.op("Max", picked, b.const(0, np.int64)), b.squeeze(offsets, [2]))
            rows = _scatter_rows(b, zeros_rows, index, b.mul(dv, b.unsqueeze(valid, [-1])))
            dX = _rows_to_image(b, rows, batch, channels, b.shape_of(X))
        if need_grid:
            dgrid = b.zeros_like(grid)
        return dX, dgrid
    taps, scales = [], []
    for d in range(k):
        size = b.cast_like(_scalar(b, sizes[d]), const(0.0))
        c = b.op("Reshape", b.op("Gather", grid, b.const(k - 1 - d, np.int64), axis=-1), b.ints([0, -1]))   # (N, P)
        if align_corners:   # as onnxruntime and onnx.reference write them
            scale = b.div(b.sub(size, const(1.0)), const(2.0))
            u = b.mul(b.div(b.add(c, const(1.0)), const(2.0)), b.sub(size, const(1.0)))
        else:
            scale = b.div(size, const(2.0))
            u = b.div(b.sub(b.mul(b.add(c, const(1.0)), size), const(1.0)), const(2.0))
        taps.append(_axis_taps(b, u, size, mode, padding, align_corners, gdtype))
        scales.append(scale)
    flat, weight, slopes = _combined_taps(b, taps, strides)
    index = b.add(flat, offsets)                                             # (N, P, K) rows of the image
    if need_x:
        updates = b.mul(b.unsqueeze(dv, [2]), b.unsqueeze(_cast_to(b, weight, xt), [-1]))
        dX = _rows_to_image(b, _scatter_rows(b, zeros_rows, index, updates), batch, channels, b.shape_of(X))
    if need_grid:
        values = b.op("Gather", _image_rows(b, X, batch, channels), index, axis=0)      # (N, P, K, C)
        dot = _cast_to(b, b.op("ReduceSum", b.mul(values, b.unsqueeze(dv, [2])), b.ints([-1]), keepdims=0), gt)
        comps = [None] * k
        for d in range(k):
            du = b.mul(b.op("ReduceSum", b.mul(slopes[d], dot), b.ints([2]), keepdims=0), scales[d])   # (N, P)
            comps[k - 1 - d] = b.unsqueeze(b.op("Reshape", du, b.op("Shape", grid, end=-1)), [-1])
        dgrid = b.op("Concat", *comps, axis=-1)
    return dX, dgrid


@register("GridSample", tag="nonlinear")
def vjp_grid_sample(ctx):
    """GridSample: dX scatters dY through the sampling weights; dgrid is the weights' derivative by the
    coordinates against the sampled values (0 for nearest)."""
    dX, dgrid = grid_sample_vjp(ctx, ctx.x[0], ctx.x[1], ctx.dy[0], ctx.needs(0), ctx.needs(1))
    return [dX, dgrid]


# ------------------------------------------------------------------------- AffineGrid
# AffineGrid is linear in theta: grid[n, s, i] = sum_j theta[n, i, j] * h[s, j], with h[s] the homogeneous
# base coordinates (x, y[, z], 1) of output point s.  So dtheta[n, i, j] = sum_s dY[n, s, i] * h[s, j].  The
# base coordinates come from the node's own attributes through AffineGrid itself: the basis theta whose every
# row picks coordinate j returns h[:, j] in each channel.
def affine_grid_base(ctx, theta: str, size: str, r: int) -> str:
    """h as an (r + 1, points) matrix: AffineGrid of the r + 1 basis thetas, channel 0, flattened."""
    b = ctx.b
    basis = np.zeros((r + 1, r, r + 1))
    for j in range(r + 1):
        basis[j, :, j] = 1.0
    sizes = b.op("Concat", b.ints([r + 1]), b.op("Slice", size, b.ints([1]), b.ints([r + 2])), axis=0)
    align = next((a.i for a in ctx.node.attribute if a.name == "align_corners"), 0)
    grid = b.op("AffineGrid", b.const(basis, np_dtype(b.elem_type(theta))), sizes, align_corners=align)
    first = b.op("Gather", grid, b.ints([0]), axis=r + 1)
    return b.reshape(first, b.ints([r + 1, -1]))


@register("AffineGrid", tag="linear", since=20)
def vjp_affine_grid(ctx):
    """AffineGrid: dtheta[n, i, j] = sum over output points s of dY[n, s, i] * h[s, j]."""
    theta, size = ctx.x
    b = ctx.b
    size_shape, theta_shape = b.shape(size), b.shape(theta)
    if size_shape is not None and isinstance(size_shape[0], int):
        r = size_shape[0] - 2
    elif theta_shape is not None and isinstance(theta_shape[1], int):
        r = theta_shape[1]
    else:
        raise fail(ctx, "the number of spatial axes (the length of size) is unknown")
    rows = b.reshape(ctx.dy[0], b.op("Concat", dims_vec(b, ctx.dy[0], 0, 1), b.ints([-1, r]), axis=0))
    dtheta = b.op("Einsum", rows, affine_grid_base(ctx, theta, size, r), equation="nsi,js->nij")
    return [dtheta, None]


# ------------------------------------------------------------------------- DeformConv
# DeformConv samples the image bilinearly (zeros outside) at every kernel tap moved by its offset, scales
# the samples by the mask and contracts them with the weight like Conv's im2col columns:
#   columns[n, c, k, o] = mask[n, g(c), k, o] * bilinear(X[n, c], base_k,o + offset[n, g(c), k, :, o])
#   Y[n, m, o] = B[m] + sum_{c in group(m), k} W[m, c, k] columns[n, c, k, o]
# (g(c): the offset group of channel c).  Everything is laid out with the items (n, offset group) as B and
# the points (kernel tap, output position) as P: the sampling core above does the rest.
@dataclass(frozen=True)
class DeformGeometry:
    kernel: tuple
    strides: tuple
    dilations: tuple
    begin: tuple
    group: int
    offset_group: int
    channels: int          # C
    out_channels: int      # M

    @property
    def taps(self) -> int:
        return int(np.prod(self.kernel))


def deform_geometry(ctx) -> DeformGeometry:
    """The static geometry of a DeformConv node (2-D, static channels and kernel)."""
    b, X, W = ctx.b, ctx.x[0], ctx.x[1]
    xs, ws = b.shape(X), b.shape(W)
    if xs is None or len(xs) != 4:
        raise fail(ctx, "only 2-D DeformConv (a 4-D input of known rank) is supported, as onnx.reference and "
                        "onnxruntime implement it")
    if ws is None or not all(isinstance(d, int) for d in ws) or not isinstance(xs[1], int):
        raise fail(ctx, "the weight's shape and the input's channels must be static")
    kernel = tuple(ctx.attr("kernel_shape", None) or ws[2:])
    n = len(kernel)
    pads = list(ctx.attr("pads", None) or [0] * (2 * n))
    geo = DeformGeometry(kernel, tuple(ctx.attr("strides", None) or [1] * n),
                         tuple(ctx.attr("dilations", None) or [1] * n), tuple(pads[:n]),
                         int(ctx.attr("group", 1)), int(ctx.attr("offset_group", 1)), xs[1], ws[0])
    if geo.channels % geo.offset_group or geo.channels % geo.group or geo.out_channels % geo.group:
        raise fail(ctx, "channels not divisible by group or offset_group")
    return geo


def deform_points(ctx, geo: DeformGeometry, offset: str) -> list:
    """The source coordinates of every (item, point) per spatial axis, each (N * offset_group, taps * outputs):
    ``-pad + stride * o + dilation * k + offset``."""
    b, et = ctx.b, ctx.b.elem_type(ctx.x[0])
    n = len(geo.kernel)
    dt = np_dtype(et)
    outs = [dims_vec(b, offset, 2 + d, 3 + d) for d in range(n)]
    moved = b.op("Reshape", offset, b.op("Concat", dims_vec(b, offset, 0, 1),
                                         b.ints([geo.offset_group, geo.taps, n, -1]), axis=0))   # (N, G, K, n, O)
    coords = []
    for d in range(n):
        shape = [1] * (2 * n)
        shape[d] = geo.kernel[d]
        along_kernel = b.const((geo.dilations[d] * np.arange(geo.kernel[d])).reshape(shape), dt, hint="dc_k")
        o = b.op("Cast", b.op("Range", b.const(0, np.int64), _scalar(b, outs[d]), b.const(1, np.int64)), to=et)
        o = b.add(b.mul(o, b.const(float(geo.strides[d]), dt)), b.const(float(-geo.begin[d]), dt))
        o = b.op("Reshape", o, b.ints([1] * (n + d) + [-1] + [1] * (n - d - 1)))
        full = b.op("Expand", b.add(along_kernel, o), b.op("Concat", b.ints(list(geo.kernel)), *outs, axis=0))
        base = b.op("Reshape", full, b.ints([geo.taps, -1]))                     # (K, O)
        off = b.op("Gather", moved, b.const(d, np.int64), axis=3)                  # (N, G, K, O)
        coords.append(b.op("Reshape", b.add(off, base), _items_points(ctx, geo)))
    return coords


def deform_taps(ctx, geo: DeformGeometry, offset: str):
    """``(index, weight, slopes)`` of the bilinear taps of every point (zeros outside the image), indices
    into the rows of :func:`deform_rows`."""
    b, X = ctx.b, ctx.x[0]
    n = len(geo.kernel)
    dt = np_dtype(b.elem_type(X))
    sizes = [dims_vec(b, X, 2 + d, 3 + d) for d in range(n)]
    strides, stride = [None] * n, b.ints([1])
    for d in reversed(range(n)):
        strides[d] = stride
        stride = b.mul(stride, sizes[d])
    taps = []
    for d, u in enumerate(deform_points(ctx, geo, offset)):
        size = b.cast_like(_scalar(b, sizes[d]), b.const(0.0, dt))
        taps.append(_axis_taps(b, u, size, "linear", "zeros", True, dt))
    flat, weight, slopes = _combined_taps(b, taps, strides)
    items = b.mul(dims_vec(b, X, 0, 1), b.ints([geo.offset_group]))
    return b.add(flat, _batch_offsets(b, items, stride)), weight, slopes


def deform_rows(ctx, geo: DeformGeometry, X: str) -> str:
    """X (N, C, spatial) as rows (N * G * S, C / G): the pixels of each (item, offset group)."""
    b = ctx.b
    cg = geo.channels // geo.offset_group
    grouped = b.op("Reshape", X, b.op("Concat", b.ints([-1, cg]), b.op("Shape", X, start=2), axis=0))
    items = b.mul(dims_vec(b, X, 0, 1), b.ints([geo.offset_group]))
    return _image_rows(b, grouped, items, b.ints([cg]))


def deform_mask(ctx, geo: DeformGeometry, mask: str | None) -> str | None:
    """The mask as (N * G, P, 1), or None without a mask."""
    if not mask:
        return None
    return ctx.b.unsqueeze(ctx.b.op("Reshape", mask, _items_points(ctx, geo)), [-1])


def _items_points(ctx, geo: DeformGeometry) -> str:
    """The shape (N * G, P) as an int64 vector."""
    b = ctx.b
    items = b.mul(dims_vec(b, ctx.x[0], 0, 1), b.ints([geo.offset_group]))
    return b.op("Concat", items, b.ints([-1]), axis=0)


def deform_columns(ctx, geo: DeformGeometry, rows: str, taps, mask3: str | None):
    """``(values, sampled, columns)``: the image at the taps (N * G, P, 4, C / G), the bilinear samples
    (N * G, P, C / G) and the samples times the mask."""
    b = ctx.b
    index, weight, _ = taps
    values = b.op("Gather", rows, index, axis=0)
    sampled = b.op("ReduceSum", b.mul(values, b.unsqueeze(_cast_to(b, weight, b.elem_type(ctx.x[0])), [-1])),
                   b.ints([2]), keepdims=0)
    return values, sampled, (b.mul(sampled, mask3) if mask3 else sampled)


def _columns_to_conv(ctx, geo: DeformGeometry, columns: str) -> str:
    """Columns (N * G, P, C / G) as Conv's im2col matrix per group: (N, group, C / group * K, O)."""
    b = ctx.b
    batch = dims_vec(b, ctx.x[0], 0, 1)
    t = b.op("Reshape", columns, b.op("Concat", batch, b.ints([geo.offset_group, geo.taps, -1,
                                                                geo.channels // geo.offset_group]), axis=0))
    t = b.op("Transpose", t, perm=[0, 1, 4, 2, 3])                                     # (N, G, C/G, K, O)
    return b.op("Reshape", t, b.op("Concat", batch, b.ints([geo.group, geo.channels // geo.group * geo.taps, -1]),
                                   axis=0))


def _conv_to_columns(ctx, geo: DeformGeometry, t: str) -> str:
    """The inverse of :func:`_columns_to_conv`."""
    b = ctx.b
    batch, cg = dims_vec(b, ctx.x[0], 0, 1), geo.channels // geo.offset_group
    t = b.op("Reshape", t, b.op("Concat", batch, b.ints([geo.offset_group, cg, geo.taps, -1]), axis=0))
    t = b.op("Transpose", t, perm=[0, 1, 3, 4, 2])                                     # (N, G, K, O, C/G)
    return b.op("Reshape", t, b.op("Concat", b.mul(batch, b.ints([geo.offset_group])), b.ints([-1, cg]), axis=0))


def deform_weight(ctx, geo: DeformGeometry, W: str) -> str:
    """W (M, C / group, k...) as (group, M / group, C / group * K)."""
    return ctx.b.op("Reshape", W, ctx.b.ints([geo.group, geo.out_channels // geo.group, -1]))


def deform_column_cotangent(ctx, geo: DeformGeometry, W: str, dy: str) -> str:
    """The columns' cotangent (N * G, P, C / G): ``W^T dY`` per group."""
    b = ctx.b
    dys = b.op("Reshape", dy, b.op("Concat", dims_vec(b, dy, 0, 1), b.ints([geo.group, geo.out_channels // geo.group,
                                                                            -1]), axis=0))
    return _conv_to_columns(ctx, geo, b.op("MatMul", b.op("Transpose", deform_weight(ctx, geo, W), perm=[0, 2, 1]),
                                             dys))


def deform_sample_vjp(ctx, geo: DeformGeometry, taps, values, dsampled: str, need_x: bool, need_offset: bool):
    """``(dX, doffset)`` of the bilinear samples at the taps for their cotangent ``dsampled`` (N * G, P, C / G);
    ``values`` (the image at the taps) is needed for the offsets only."""
    b, X, offset = ctx.b, ctx.x[0], ctx.x[2]
    index, weight, slopes = taps
    dX = doffset = None
    if need_x:
        cg = geo.channels // geo.offset_group
        zeros = b.op("Reshape", b.zeros_like(X), b.ints([-1, cg]))
        updates = b.mul(b.unsqueeze(dsampled, [2]), b.unsqueeze(_cast_to(b, weight, b.elem_type(X)), [-1]))
        items = b.mul(dims_vec(b, X, 0, 1), b.ints([geo.offset_group]))
        dX = _rows_to_image(b, _scatter_rows(b, zeros, index, updates), items, b.ints([cg]), b.shape_of(X))
    if need_offset:
        dot = _cast_to(b, b.op("ReduceSum", b.mul(values, b.unsqueeze(dsampled, [2])), b.ints([-1]), keepdims=0),
                       b.elem_type(offset))
        shape = b.op("Concat", dims_vec(b, offset, 0, 1), b.ints([geo.offset_group, geo.taps, 1, -1]), axis=0)
        parts = [b.op("Reshape", b.op("ReduceSum", b.mul(s, dot), b.ints([2]), keepdims=0), shape) for s in slopes]
        doffset = b.op("Reshape", b.op("Concat", *parts, axis=3), b.shape_of(offset))
    return dX, doffset


@register("DeformConv", tag="nonlinear")
def vjp_deform_conv(ctx):
    """DeformConv: the columns' cotangent ``W^T dY`` goes through the mask (dmask: against the samples) and
    the bilinear sampling (dX: scattered through the weights; doffset: the weights' derivatives against the
    image at the taps); dW correlates dY with the columns, dB sums dY."""
    b, dy = ctx.b, ctx.dy[0]
    X, W, offset = ctx.x[:3]
    mask = ctx.x[4] if len(ctx.x) > 4 and ctx.x[4] else None
    geo = deform_geometry(ctx)
    needs = [ctx.needs(i) for i in range(len(ctx.x))]
    grads = [None] * len(ctx.x)
    taps = deform_taps(ctx, geo, offset)
    mask3 = deform_mask(ctx, geo, mask)
    values = sampled = columns = None
    if needs[1] or needs[2] or (mask and needs[4]):
        values, sampled, columns = deform_columns(ctx, geo, deform_rows(ctx, geo, X), taps, mask3)
    if needs[1]:
        cols = _columns_to_conv(ctx, geo, columns)
        per_group = b.ints([geo.group, geo.out_channels // geo.group, -1])
        dys = b.op("Reshape", dy, b.op("Concat", dims_vec(b, dy, 0, 1), per_group, axis=0))   # (N, group, M/g, O)
        dw = b.op("ReduceSum", b.op("MatMul", dys, b.op("Transpose", cols, perm=[0, 1, 3, 2])), b.ints([0]), keepdims=0)
        grads[1] = b.op("Reshape", dw, b.shape_of(W))
    if len(ctx.x) > 3 and ctx.x[3] and needs[3]:
        grads[3] = b.op("ReduceSum", dy, b.ints([0, 2, 3]), keepdims=0)
    if needs[0] or needs[2] or (mask and needs[4]):
        dcols = deform_column_cotangent(ctx, geo, W, dy)
        if mask and needs[4]:
            grads[4] = b.op("Reshape", b.op("ReduceSum", b.mul(dcols, sampled), b.ints([-1]), keepdims=0),
                            b.shape_of(mask))
        dsampled = b.mul(dcols, mask3) if mask3 else dcols
        grads[0], grads[2] = deform_sample_vjp(ctx, geo, taps, values, dsampled, needs[0], needs[2])
    return grads
