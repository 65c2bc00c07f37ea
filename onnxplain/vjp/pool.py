"""Pooling: MaxPool, AveragePool, GlobalMaxPool, GlobalAveragePool.

MaxPool routes each output's cotangent to the input element its window picked (the
node's own ``Indices`` output, flat over N*C*H*W): MaxUnpool where windows do not overlap,
a scatter-add where they do; AveragePool spreads ``dy / count``
back over each window with a ConvTranspose of ones.  Window geometry is shared with
Conv (:func:`onnxplain.vjp._common.window`).
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from dataclasses import replace

from ..graph import np_dtype
from .registry import RULES, register
from ._common import all_static, fail, masked, shape_tail, spread, window
from .shape import flat_positions


def _spatial(ctx):
    s = ctx.b.shape(ctx.x[0])
    if s is None or len(s) < 3:
        raise fail(ctx, f"expected an input of known rank >= 3, got shape {s}")
    return tuple(s[2:])


def _dtype(b, ref: str):
    return np_dtype(b.elem_type(ref) or TensorProto.FLOAT)


# ------------------------------------------------------------------------------------ MaxPool
@register("MaxPool", tag="nonlinear")
def vjp_max_pool(ctx):
    """dX = scatter-add of dY at each window's argmax (the Indices output, flat over N*C*spatial)."""
    b, X, dy = ctx.b, ctx.x[0], ctx.dy[0]
    if dy is None:
        return [None]
    indices = max_pool_indices(ctx)
    unpool = _unpool_attrs(ctx)
    if unpool is not None:   # windows that do not overlap: each input element is picked at most once
        if relu_mask_at_pool(ctx):
            Y = ctx.y[0]
            dy = masked(b, dy, b.op("Greater", Y, b.like(0.0, Y)))
        return [b.op("MaxUnpool", dy, indices, b.shape_of(X), **unpool)]
    flat = b.op("Reshape", b.zeros_like(X), b.ints([-1]))
    g = b.op("ScatterElements", flat, b.op("Reshape", indices, b.ints([-1])),
             b.op("Reshape", dy, b.ints([-1])), axis=0, reduction="add")
    return [b.reshape_like(g, X)]


def relu_mask_at_pool(ctx) -> bool:
    """Whether this MaxPool applies the gradient mask of the Relu that feeds it, at the pooled size.

    With ``Y = MaxPool(X)``, ``X = Relu(Z)`` and windows apart, the gradient reaches each window's
    maximum only, where ``X`` equals ``Y``: Relu's mask ``[X > 0]`` there is ``[Y > 0]``.  Masking
    dY before the unpool (a quarter of the elements for 2x2 windows) and passing the gradient through
    the Relu unmasked gives the same dZ, ties included, without three elementwise passes over the
    large tensor.  Only when the pool alone reads X, X's own cotangent is not asked for, and both ops
    keep their standard rules (a method's modified Relu rule is never bypassed)."""
    walk = ctx.forward
    if walk is None or ctx.node.op_type != "MaxPool":
        return False
    X = ctx.node.input[0]
    relu = walk.producer.get(X)
    return (relu is not None and relu.op_type == "Relu" and walk.only_reader(X) is ctx.node
            and X not in walk.kept and ctx.rules.get("Relu") is RULES.get("Relu")
            and ctx.rules.get("MaxPool") is RULES.get("MaxPool") and _unpool_attrs(ctx) is not None)


def relu_mask_moved_to_pool(ctx) -> bool:
    """Whether the MaxPool that alone reads this Relu's output applies the Relu's mask (:func:`relu_mask_at_pool`)."""
    walk = ctx.forward
    pool = None if walk is None else walk.only_reader(ctx.node.output[0])
    return pool is not None and pool.op_type == "MaxPool" and relu_mask_at_pool(replace(ctx, node=pool, dy=[None]))


def _unpool_attrs(ctx) -> dict | None:
    """MaxUnpool attributes for a MaxPool whose windows do not overlap (stride >= window extent on
    every axis; 1 to 3 spatial axes, static sizes), else None.

    MaxUnpool writes dY at the Indices into zeros shaped like X: onnxruntime runs it faster than
    zeros + ScatterElements (about 25% off the pair in the benchmark CNN's layers), and with windows
    apart no index repeats, so writing equals adding.  Its kernel and pads are chosen so that the
    shape they imply is X's own: runtimes that decode the flat Indices over that implied shape
    (onnx.reference does) then agree with those that use ``output_shape``.
    """
    spatial = _spatial(ctx)
    kernel = list(ctx.attr("kernel_shape"))
    if not all_static(spatial) or not 1 <= len(spatial) <= 3:
        return None
    win = window(ctx, spatial, kernel, bool(ctx.attr("ceil_mode", 0)))
    if win.out is None or any(s < e for s, e in zip(win.strides, win.span)):
        return None
    reach = [(o - 1) * s for o, s in zip(win.out, win.strides)]
    end = [max(0, r - x + 1) for r, x in zip(reach, spatial)]
    implied = [x - r + e for x, r, e in zip(spatial, reach, end)]     # (O - 1) s - pads + kernel = X
    return dict(kernel_shape=implied, strides=list(win.strides), pads=[0] * len(spatial) + end)


def max_pool_indices(ctx) -> str:
    """Name of a row-major Indices tensor for this MaxPool: the node's own output when it has one
    (appended to the node when it has not), or a second MaxPool's where that cannot be used."""
    b, node = ctx.b, ctx.node
    spatial = _spatial(ctx)
    n = len(spatial)
    strides = list(ctx.attr("strides", None) or [1] * n)
    dilations = list(ctx.attr("dilations", None) or [1] * n)
    if n <= 2 and all(s == 1 for s in strides) and all(d == 1 for d in dilations):
        return _unit_stride_indices(ctx, spatial)
    storage = ctx.attr("storage_order", 0)
    has = len(node.output) > 1 and node.output[1]
    if has and storage == 0:
        return node.output[1]
    if not has and storage == 0:
        name = b.fresh(f"{node.output[0]}_argmax")
        if len(node.output) > 1:
            node.output[1] = name
        else:
            node.output.append(name)
        b.set_type(name, TensorProto.INT64, b.shape(node.output[0]))
        return name
    # storage_order=1 makes the node's Indices column-major: pool once more for row-major ones
    return b.op("MaxPool", ctx.x[0], outputs=2, **_attrs(node, drop=("storage_order",)))[1]


def _attrs(node, drop=()) -> dict:
    out = {}
    for a in node.attribute:
        if a.name in drop:
            continue
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _unit_stride_indices(ctx, spatial) -> str:
    """Indices of a stride-1, dilation-1 MaxPool, from a copy pooled over X with a trailing size-1
    axis of dilation 2: the same windows and the same flat indices, but onnx.reference computes its
    Indices correctly only when some stride or dilation differs from 1 (its other code path decodes
    the window offsets wrongly and is not flat over N*C)."""
    b, X = ctx.b, ctx.x[0]
    n = len(spatial)
    kernel = list(ctx.attr("kernel_shape"))
    attrs = _attrs(ctx.node, drop=("storage_order", "ceil_mode", "pads", "auto_pad", "strides", "dilations"))
    auto_pad = ctx.attr("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") and not all_static(spatial):
        attrs["auto_pad"] = auto_pad      # the dummy axis (kernel 1) needs no padding either way
    else:
        win = window(ctx, spatial, kernel)
        attrs["pads"] = list(win.begin) + [0] + list(win.end) + [0]
    attrs.update(kernel_shape=kernel + [1], strides=[1] * (n + 1), dilations=[1] * n + [2])
    _, indices = b.op("MaxPool", b.unsqueeze(X, [-1]), outputs=2, **attrs)
    return indices


# -------------------------------------------------------------------------------- AveragePool
@register("AveragePool", tag="linear")
def vjp_average_pool(ctx):
    """dX = conv_transpose(dY / count, ones) per channel; count = taps averaged by each window."""
    b, X, dy = ctx.b, ctx.x[0], ctx.dy[0]
    win, spatial, ceil_mode = pool_window(ctx)
    include_pad = bool(ctx.attr("count_include_pad", 0))
    dtype = _dtype(b, X)
    if win.out is not None:
        count = _window_counts(spatial, win, include_pad)
        scale = (b.like(1.0 / float(count.flat[0]), X) if np.all(count == count.flat[0])
                 else b.const(1.0 / count, dtype, hint="inv_count"))
    elif ceil_mode:
        raise fail(ctx, "ceil_mode needs static spatial sizes")
    else:
        scale = _dynamic_inv_count(b, X, win, include_pad, dtype)
    return [window_sum_transpose(b, b.mul(dy, scale), win, X, spatial)]


def pool_window(ctx):
    """(window, spatial sizes, ceil mode) of an AveragePool or LpPool node: its kernel, strides, dilations,
    pads, auto_pad and ceil_mode resolved."""
    spatial = _spatial(ctx)
    auto_pad = ctx.attr("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    ceil_mode = bool(ctx.attr("ceil_mode", 0)) and auto_pad == "NOTSET"   # VALID/SAME sizes are floor sizes
    return window(ctx, spatial, tuple(ctx.attr("kernel_shape")), ceil_mode), spatial, ceil_mode


def window_sum_transpose(b, g: str, win, X: str, spatial) -> str:
    """The transpose of summing each window of X (per channel): every output's ``g`` added back onto the taps
    of its window (a ConvTranspose of ones), shaped like X."""
    g = b.op("Reshape", g, b.ints([-1, 1] + list(win.out)) if win.out is not None else shape_tail(b, g, [-1, 1]))
    ones = b.const(np.ones((1, 1) + tuple(win.kernel)), _dtype(b, X), hint="ones_kernel")
    return b.reshape_like(spread(b, g, ones, win, X, spatial), X)


@register("LpPool", tag="nonlinear")
def vjp_lp_pool(ctx):
    """y = (sum over the window of |x|^p)^(1/p): dx = (window-sum transpose of dy * y^(1-p)) * |x|^(p-1) sign(x);
    0 from a window whose entries are all 0 (y = 0, where the p-norm has no derivative)."""
    b, X, y, dy = ctx.b, ctx.x[0], ctx.y[0], ctx.dy[0]
    win, spatial, ceil_mode = pool_window(ctx)
    if ceil_mode and win.out is None:
        raise fail(ctx, "ceil_mode needs static spatial sizes")
    return [b.mul(window_sum_transpose(b, b.mul(dy, lp_pool_outer(b, y, ctx.attr("p", 2))), win, X, spatial),
                  lp_pool_inner(b, X, ctx.attr("p", 2)))]


def lp_pool_outer(b, y: str, p: int) -> str:
    """d y / d S for y = S^(1/p), times p: ``y^(1-p)``, 0 where y = 0."""
    if p == 1:
        return b.add(b.zeros_like(y), b.like(1.0, y))
    zero = b.op("Equal", y, b.like(0.0, y))
    return b.where(zero, b.like(0.0, y), b.op("Pow", b.where(zero, b.like(1.0, y), y), b.like(1.0 - p, y)))


def lp_pool_inner(b, x: str, p: int) -> str:
    """d |x|^p / d x, over p: ``|x|^(p-1) sign(x)``."""
    if p == 1:
        return b.op("Sign", x)
    if p == 2:
        return x
    return b.mul(b.op("Pow", b.op("Abs", x), b.like(p - 1.0, x)), b.op("Sign", x))


def _window_counts(spatial, win, include_pad: bool) -> np.ndarray:
    """Divisor of each output position: taps inside the input (or inside the padded input)."""
    counts = None
    for x, k, s, d, pb, pe, o in zip(spatial, win.kernel, win.strides, win.dilations, win.begin, win.end, win.out):
        lo, hi = (-pb, x + pe) if include_pad else (0, x)
        taps = np.arange(o)[:, None] * s - pb + np.arange(k)[None, :] * d
        c = ((taps >= lo) & (taps < hi)).sum(axis=1).astype(np.float64)
        counts = c if counts is None else np.multiply.outer(counts, c)
    return counts


def _dynamic_inv_count(b, X: str, win, include_pad: bool, dtype) -> str:
    """1 / count when the spatial sizes are only known at run time (floor mode): the kernel size,
    or, excluding padding, a Conv of ones over a ones image shaped like one channel of X."""
    if include_pad or not any(win.begin + win.end):
        return b.const(1.0 / float(np.prod(win.kernel)), dtype)
    one = b.op("ConstantOfShape", shape_tail(b, X, [1, 1]),
               value=helper.make_tensor("one", helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), [1], [1]))
    ones_k = b.const(np.ones((1, 1) + tuple(win.kernel)), dtype, hint="ones_kernel")
    count = b.op("Conv", one, ones_k, strides=list(win.strides), dilations=list(win.dilations),
                 pads=list(win.begin) + list(win.end))
    return b.op("Reciprocal", count)


# ----------------------------------------------------------------------------- Global pooling
@register("GlobalAveragePool", tag="linear")
def vjp_global_average_pool(ctx):
    """dX = dY / (number of spatial positions), broadcast over the spatial axes."""
    b, X, dy = ctx.b, ctx.x[0], ctx.dy[0]
    spatial = _spatial(ctx)
    if all_static(spatial):
        inv = b.like(1.0 / float(np.prod(spatial)), X)
    else:
        size = b.op("ReduceProd", b.op("Shape", X, start=2), keepdims=0)
        inv = b.op("Reciprocal", b.cast_like(size, X))
    return [b.op("Expand", b.mul(dy, inv), b.shape_of(X))]


@register("GlobalMaxPool", tag="nonlinear")
def vjp_global_max_pool(ctx):
    """dX = dY at the first argmax of each (n, c) spatial extent, zero elsewhere."""
    b, X, dy = ctx.b, ctx.x[0], ctx.dy[0]
    spatial = _spatial(ctx)
    flat = b.op("Reshape", X, b.ints([0, 0, -1]))
    arg = b.op("ArgMax", flat, axis=2, keepdims=1)                       # (N, C, 1)
    if all_static(spatial):
        pos = b.const(np.arange(int(np.prod(spatial))), np.int64, hint="positions")
    else:
        size = b.op("Squeeze", b.op("Shape", flat, start=2), b.ints([0]))
        pos = b.op("Range", b.const(0, np.int64), size, b.const(1, np.int64))
    mask = b.op("Equal", pos, arg)                                     # (N, C, H*W)
    g = b.where(mask, b.op("Reshape", dy, b.ints([0, 0, 1])), b.like(0.0, X))
    return [b.reshape_like(g, X)]


# ------------------------------------------------------------------------------------ MaxUnpool
@register("MaxUnpool", tag="linear")
def vjp_max_unpool(ctx):
    """Y = zeros with X written at the flat Indices (over N*C*H*W of Y, as MaxPool gives them):
    dX = dY read back at those indices, for the element of X written last where indices repeat (a MaxPool
    with overlapping windows picks one element twice); an element another overwrote gets 0.  Which one
    is kept is read by writing X's own flat positions the same way (the runtime writes in order).  With
    ``output_shape``, onnxruntime reads the indices flat over that shape (onnx.reference over the unpadded
    one): the rule reads them over dY's shape, as the runtime that runs it."""
    b, dy = ctx.b, ctx.dy[0]
    flat = b.ints([-1])
    indices = b.reshape(ctx.x[1], flat)
    order = b.reshape(flat_positions(b, ctx.x[0]), flat)
    unwritten = b.op("ConstantOfShape", b.reshape(b.op("Size", dy), b.ints([1])),
                     value=numpy_helper.from_array(np.array([-1], np.int64)))
    kept = b.op("Gather", b.op("ScatterElements", unwritten, indices, order, axis=0), indices, axis=0)
    picked = b.op("Gather", b.reshape(dy, flat), indices, axis=0)
    picked = b.where(b.op("Equal", kept, order), picked, b.like(0.0, dy))
    return [b.reshape_exact(picked, b.shape_of(ctx.x[0])), None] + [None] * (len(ctx.x) - 2)
