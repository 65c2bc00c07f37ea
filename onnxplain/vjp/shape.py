"""Shape and data movement: Reshape, Transpose, Concat, Slice, Gather, ... and non-differentiable ops.

Every rule here moves the cotangent back to where the forward pass took its
values from.  Rules read static shapes when they are fully known and emit
``Shape``-based ops otherwise, so a dynamic batch dimension stays dynamic.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import UnsupportedOperatorError
from .registry import identity, register, zero
from ._common import const_value, dims_vec, fail, shape_vec, static_shape  # noqa: F401  (also used here)

I64_MAX = np.iinfo(np.int64).max

# Dropout at inference is the identity; its mask output is boolean and has no cotangent.
identity("Identity", "Dropout")
# Outputs that are integers, booleans, random draws or piecewise constant: the walk stops here
# (Floor, Ceil, Round and Sign have float outputs whose derivative is zero almost everywhere).
zero("Shape", "Size", "Constant", "ConstantOfShape", "Range", "NonZero",
     "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor",
     "IsNaN", "IsInf", "ArgMax", "ArgMin", "RandomNormal", "RandomUniform", "RandomNormalLike",
     "RandomUniformLike", "Bernoulli", "Multinomial", "EyeLike", "Sign", "Floor", "Ceil", "Round",
     "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot")


# ---------------------------------------------------------------------------------------- helpers
def reshape_to(b, g: str, x: str) -> str:
    """Reshape ``g`` to the shape of ``x`` (zero-size dims kept literally)."""
    return b.reshape_exact(g, shape_vec(b, x))


def dim_vec(b, x: str, axis: int) -> str:
    """x's size along ``axis`` (negative counts from the end) as a 1-element int64 vector."""
    return dims_vec(b, x, axis, None if axis == -1 else axis + 1)


def concat_ints(b, *vecs: str) -> str:
    """Concatenated int64 vectors, folded into one constant when they all are constants."""
    values = [const_value(b, v) for v in vecs]
    if all(v is not None for v in values):
        return b.ints([int(i) for v in values for i in v.reshape(-1)])
    return b.op("Concat", *vecs, axis=0)


def ones_like_vec(b, v: str) -> str:
    """An int64 vector of ones as long as the int64 vector ``v``."""
    return b.op("ConstantOfShape", b.shape_of(v), value=numpy_helper.from_array(np.ones(1, np.int64)))


def flat_positions(b, x: str) -> str:
    """An int64 tensor shaped like ``x`` holding each element's row-major flat index."""
    n = b.op("Size", x)
    r = b.op("Range", b.const(0, np.int64), n, b.const(1, np.int64))
    return b.reshape_exact(r, shape_vec(b, x))


def scatter_flat(b, x: str, positions: str, g: str, add: bool) -> str:
    """Zeros shaped like ``x`` with ``g`` written (or added) at the flat ``positions``."""
    flat = b.ints([-1])
    zeros = b.reshape(b.zeros_like(x), flat)
    out = b.op("ScatterElements", zeros, b.reshape(positions, flat), b.reshape(g, flat), axis=0,
               reduction="add" if add else None)
    return reshape_to(b, out, x)


def _none(ctx, first):
    return [first] + [None] * (len(ctx.x) - 1)


# ---------------------------------------------------------------------------------------- reshapes
@register("Reshape", "Flatten", "Squeeze", "Unsqueeze", tag="linear")
def vjp_reshape(ctx):
    """Ops that only change the shape: dx = reshape(dy, shape(x))."""
    return _none(ctx, reshape_to(ctx.b, ctx.dy[0], ctx.x[0]))


@register("Transpose", tag="linear")
def vjp_transpose(ctx):
    """dx = transpose(dy, inverse(perm)); the default perm (reversed axes) is its own inverse."""
    perm = ctx.attr("perm")
    if perm is None:
        return [ctx.b.op("Transpose", ctx.dy[0])]
    return [ctx.b.op("Transpose", ctx.dy[0], perm=[int(i) for i in np.argsort(perm)])]


@register("ReverseSequence", tag="linear")
def vjp_reverse_sequence(ctx):
    """A permutation that is its own inverse: dx = reverse_sequence(dy) with the same lengths and axes."""
    return [ctx.b.op("ReverseSequence", ctx.dy[0], ctx.x[1], batch_axis=ctx.attr("batch_axis", 1),
                     time_axis=ctx.attr("time_axis", 0)), None]


@register("Expand", tag="linear", broadcast=True)
def vjp_expand(ctx):
    """dx = dy summed over the broadcast axes (done by the walker)."""
    return [ctx.dy[0], None]


# ---------------------------------------------------------------------------------------- joins and splits
@register("Concat", tag="linear")
def vjp_concat(ctx):
    """dx_i = dy[..., offset_i : offset_i + size_i, ...] along the concat axis (one Split)."""
    b = ctx.b
    if len(ctx.x) == 1:
        return [ctx.dy[0]]
    axis = ctx.attr("axis")
    split = concat_ints(b, *[dim_vec(b, x, axis) for x in ctx.x])
    parts = b.op("Split", ctx.dy[0], split, axis=axis, outputs=len(ctx.x))
    return [p if ctx.needs(i) else None for i, p in enumerate(parts)]


@register("Split", tag="linear")
def vjp_split(ctx):
    """dx = concat(dy_0, ..., dy_k) along the split axis; outputs without cotangent give zeros."""
    parts = [ctx.dy_or_zeros(k) for k in range(len(ctx.y))]
    return _none(ctx, ctx.b.op("Concat", *parts, axis=ctx.attr("axis", 0)))


@register("Tile", tag="linear")
def vjp_tile(ctx):
    """dx = sum over r_i of reshape(dy, (r0, d0, r1, d1, ...))."""
    b = ctx.b
    x, repeats = ctx.x[0], ctx.x[1]
    reps = const_value(b, repeats)
    rank = int(reps.size) if reps is not None else b.rank(x)
    s = static_shape(b, x)
    if s is not None and reps is not None:
        split = b.ints([v for pair in zip(reps.reshape(-1).tolist(), s) for v in pair])
    else:
        pairs = b.op("Concat", b.unsqueeze(repeats, [1]), b.unsqueeze(b.shape_of(x), [1]), axis=1)
        split = b.reshape(pairs, b.ints([-1]))
    g = b.reshape_exact(ctx.dy[0], split)
    if rank is not None:
        return [b.reduce_sum(g, list(range(0, 2 * rank, 2)), keepdims=0), None]
    two = b.const(2, np.int64)
    axes = b.op("Range", b.const(0, np.int64), b.mul(b.op("Size", repeats), two), two)
    return [b.op("ReduceSum", g, axes, keepdims=0), None]


# ---------------------------------------------------------------------------------------- indexing
def _slice_as_pad(b, x: str, starts, ends, axes, steps) -> list[int] | None:
    """Pads that undo a unit-step Slice whose sliced dims are static, or None when that does not apply."""
    s = b.shape(x)
    if s is None or starts is None or ends is None:
        return None
    rank = len(s)
    axes = list(range(len(starts))) if axes is None else [int(a) + rank if a < 0 else int(a) for a in axes]
    if steps is not None and any(int(t) != 1 for t in steps):
        return None
    if not all(isinstance(s[a], int) for a in axes):
        return None
    pads = [0] * (2 * rank)
    for a, st, en in zip(axes, starts.tolist(), ends.tolist()):
        d = s[a]
        st = min(max(st + d if st < 0 else st, 0), d)
        en = min(max(en + d if en < 0 else en, 0), d)
        pads[a] = st
        pads[a + rank] = d - st - max(en - st, 0)
    return pads


@register("Slice", tag="linear")
def vjp_slice(ctx):
    """dx = zeros(x) with dy written at the sliced positions.

    Unit steps over static dims: a zero Pad.  Otherwise the same Slice applied
    to the flat positions of x says where each element of dy came from, which
    covers negative steps, clamping and dynamic shapes alike.
    """
    b = ctx.b
    x = ctx.x[0]
    args = list(ctx.x[1:]) + [""] * (5 - len(ctx.x))
    vals = [const_value(b, a) if a else None for a in args]
    known = all(v is not None or not a for v, a in zip(vals, args))
    pads = _slice_as_pad(b, x, *vals) if known else None
    if pads is not None:
        return _none(ctx, b.op("Pad", ctx.dy[0], b.ints(pads)))
    while args and not args[-1]:
        args.pop()
    src = b.op("Slice", flat_positions(b, x), *[a or None for a in args])
    return _none(ctx, scatter_flat(b, x, src, ctx.dy[0], add=False))


@register("Gather", tag="nonlinear")
def vjp_gather(ctx):
    """dx = zeros(x) with dy added at the gathered indices along the axis (repeats accumulate)."""
    b = ctx.b
    x, idx = ctx.x
    axis, rank = ctx.attr("axis", 0), b.rank(x)
    if rank is not None and axis < 0:
        axis += rank
    # dy reshaped to (x dims before axis, n indices, x dims after axis)
    before = dims_vec(b, x, 0, axis)
    after = b.ints([]) if axis == -1 else dims_vec(b, x, axis + 1)
    count = b.reshape(b.op("Size", idx), b.ints([1]))           # indices gathered (may be 0)
    g = b.reshape_exact(ctx.dy[0], concat_ints(b, before, count, after))
    # indices made non-negative, laid along the axis and broadcast over the other dims
    size = dim_vec(b, x, axis)
    if b.elem_type(idx) != onnx.TensorProto.INT64:
        size = b.cast_like(size, idx)
    ids = b.op("Mod", idx, size)
    if rank is not None:
        lay = b.ints([1] * axis + [-1] + [1] * (rank - axis - 1))
    else:
        lay = concat_ints(b, ones_like_vec(b, before), b.ints([-1]), ones_like_vec(b, after))
    ids = b.op("Expand", b.reshape(ids, lay), b.shape_of(g))
    return [b.op("ScatterElements", b.zeros_like(x), ids, g, axis=axis, reduction="add"), None]


@register("GatherElements", tag="nonlinear")
def vjp_gather_elements(ctx):
    """dx = zeros(x) with dy added at the gathered positions along the axis."""
    b = ctx.b
    axis = ctx.attr("axis", 0)
    size = dim_vec(b, ctx.x[0], axis)
    if b.elem_type(ctx.x[1]) != onnx.TensorProto.INT64:
        size = b.cast_like(size, ctx.x[1])
    ids = b.op("Mod", ctx.x[1], size)
    return [b.op("ScatterElements", b.zeros_like(ctx.x[0]), ids, ctx.dy[0], axis=axis, reduction="add"), None]


# ---------------------------------------------------------------------------------------- padding
def _unpad(b, g: str, pads: str, axes: str | None, rank: int | None) -> str:
    """The cotangent of a constant Pad: crop what was padded, zero-pad what was cropped.

    Done as a Slice then a Pad with non-negative pads (onnx.reference cannot crop with Pad).
    """
    p, a = const_value(b, pads), const_value(b, axes)
    if p is not None and (axes is None or a is not None) and (rank is not None or axes is None):
        p = p.reshape(-1).tolist()
        n = len(p) // 2
        rank = n if rank is None else rank
        ax = list(range(n)) if axes is None else [int(i) % rank for i in a.reshape(-1)]
        begins, ends = [0] * rank, [0] * rank
        for i, k in enumerate(ax):
            begins[k], ends[k] = p[i], p[i + n]
        crop = [k for k in range(rank) if begins[k] > 0 or ends[k] > 0]
        if crop:
            g = b.op("Slice", g, b.ints([max(begins[k], 0) for k in crop]),
                     b.ints([-ends[k] if ends[k] > 0 else I64_MAX for k in crop]), b.ints(crop))
        grow = [max(-v, 0) for v in begins + ends]
        return b.op("Pad", g, b.ints(grow)) if any(grow) else g
    # pads (or axes) known only at run time
    half = b.op("Div", b.shape_of(pads), b.ints([2]))
    begins = b.op("Slice", pads, b.ints([0]), half)
    ends = b.op("Slice", pads, half, b.ints([I64_MAX]))
    zero = b.const(0, np.int64)
    if axes is None:
        ax = b.op("Range", zero, b.squeeze(half, [0]), b.const(1, np.int64))
    else:
        ax = axes
    stops = b.sub(b.op("Gather", b.shape_of(g), ax), b.op("Max", ends, zero))
    g = b.op("Slice", g, b.op("Max", begins, zero), stops, ax)
    grow = b.op("Max", b.neg(pads), zero)
    return b.op("Pad", g, grow, None, axes) if axes else b.op("Pad", g, grow)


@register("Pad", tag="linear")
def vjp_pad(ctx):
    """constant mode: dx = dy with the padding cropped off (and the cropping zero-padded back);
    edge/reflect/wrap: dy is added into each output position's source, found by padding
    x's flat positions; the constant value gets the sum of dy over the padded positions."""
    b = ctx.b
    mode = ctx.attr("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    x, pads = ctx.x[0], ctx.x[1]
    axes = ctx.x[3] if len(ctx.x) > 3 and ctx.x[3] else None
    grads = [None] * len(ctx.x)
    if mode == "constant":
        if ctx.needs(0):
            grads[0] = _unpad(b, ctx.dy[0], pads, axes, b.rank(x))
        if ctx.needs(2):
            mask = b.op("Pad", b.zeros_like(x), pads, b.like(1.0, x), *([axes] if axes else []))
            grads[2] = b.op("ReduceSum", b.mul(ctx.dy[0], mask), keepdims=0)
        return grads
    if mode not in ("edge", "reflect", "wrap"):
        raise UnsupportedOperatorError([ctx.node])
    src = b.op("Pad", flat_positions(b, x), pads, *([None, axes] if axes else []), mode=mode)
    grads[0] = scatter_flat(b, x, src, ctx.dy[0], add=True)
    return grads


# ---------------------------------------------------------------------------------------- Col2Im
def col2im_sources(image, block, strides, dilations, pads) -> np.ndarray:
    """For Col2Im: the flat position, in the zero-padded image, of every column entry (block offset ``k``,
    block ``l``), shaped (prod(block), L): pixel ``l * strides + k * dilations`` along each axis, ``k`` and
    ``l`` in row-major order (as Col2Im and torch's fold lay them)."""
    n = len(image)
    padded = [i + pads[d] + pads[d + n] for d, i in enumerate(image)]
    span = [(k - 1) * d + 1 for k, d in zip(block, dilations)]
    blocks = [(p - e) // s + 1 for p, e, s in zip(padded, span, strides)]
    k = np.indices(block).reshape(n, -1)          # (n, K)
    ell = np.indices(blocks).reshape(n, -1)       # (n, L)
    coords = [ell[d][None, :] * strides[d] + k[d][:, None] * dilations[d] for d in range(n)]
    return np.ravel_multi_index(coords, padded).astype(np.int64)


def _col2im_sources_at_run_time(b, image: str, block: str, strides, dilations, pads) -> str:
    """:func:`col2im_sources` computed in the graph, from image and block shapes known only at run time: for
    each axis ``d`` the pixel ``l_d * s_d + k_d * dil_d`` as a tensor with ``k_d`` at dim ``d`` and ``l_d``
    at dim ``n + d``, times the flat stride of the padded axis; summed (broadcast) and reshaped to (K, L)."""
    n = len(strides)
    i64 = lambda v: b.const(v, np.int64)   # noqa: E731
    size = lambda t, d: b.squeeze(b.op("Gather", t, b.ints([d]), axis=0), [0])   # noqa: E731
    padded = [b.add(size(image, d), i64(pads[d] + pads[d + n])) for d in range(n)]
    parts, stride, counts = [], i64(1), []
    for d in reversed(range(n)):
        blk = size(block, d)
        span = b.add(b.mul(b.sub(blk, i64(1)), i64(dilations[d])), i64(1))
        count = b.add(b.div(b.sub(padded[d], span), i64(strides[d])), i64(1))
        k = b.reshape(b.op("Range", i64(0), blk, i64(1)), b.ints([1] * d + [-1] + [1] * (2 * n - d - 1)))
        ell = b.reshape(b.op("Range", i64(0), count, i64(1)), b.ints([1] * (n + d) + [-1] + [1] * (n - d - 1)))
        pixel = b.add(b.mul(ell, i64(strides[d])), b.mul(k, i64(dilations[d])))
        parts.append(b.mul(pixel, stride))
        stride = b.mul(stride, padded[d])
        counts.append(count)
    flat = parts[0]
    for part in parts[1:]:     # Add, not Sum: Sum takes no integers
        flat = b.add(flat, part)
    K = b.op("ReduceProd", block, keepdims=1)
    L = b.reshape(_product(b, counts), b.ints([1]))
    return b.reshape_exact(flat, b.op("Concat", K, L, axis=0)), b.reshape(stride, b.ints([1]))


def _product(b, scalars: list) -> str:
    out = scalars[0]
    for t in scalars[1:]:
        out = b.mul(out, t)
    return out


@register("Col2Im", tag="linear")
def vjp_col2im(ctx):
    """y = Col2Im(x): entry (c * K + k, l) of x is added to pixel ``l * strides + k * dilations - pads`` of
    channel c (K = prod(block_shape)).  Linear, so dx is its adjoint, the im2col of dy: dy zero-padded by the
    pads, its pixels flattened, then gathered at the source of every column entry (:func:`col2im_sources`,
    constant indices computed when the graph is built from constant image and block shapes; computed in
    the graph when those are inputs)."""
    b, x, dy = ctx.b, ctx.x[0], ctx.dy[0]
    n = b.rank(dy) - 2 if b.rank(dy) is not None else None
    if n is None:
        shape = b.shape(ctx.x[1])
        n = shape[0] if shape is not None and isinstance(shape[0], int) else None
    if n is None:
        raise fail(ctx, "the number of spatial axes is unknown")
    strides = list(ctx.attr("strides", None) or [1] * n)
    dilations = list(ctx.attr("dilations", None) or [1] * n)
    pads = list(ctx.attr("pads", None) or [0] * (2 * n))
    image, block = const_value(b, ctx.x[1]), const_value(b, ctx.x[2])
    if image is not None and block is not None:
        image, block = [int(v) for v in image.reshape(-1)], [int(v) for v in block.reshape(-1)]
        sources = b.const(col2im_sources(image, block, strides, dilations, pads), np.int64, hint="col2im_sources")
        pixels = b.ints([int(np.prod([i + pads[d] + pads[d + n] for d, i in enumerate(image)]))])
    else:
        sources, pixels = _col2im_sources_at_run_time(b, ctx.x[1], ctx.x[2], strides, dilations, pads)
    g = dy
    if any(pads):
        g = b.op("Pad", g, b.ints([0, 0] + pads[:n] + [0, 0] + pads[n:]))
    g = b.reshape_exact(g, b.op("Concat", b.op("Shape", dy, end=2), pixels, axis=0))
    g = b.op("Gather", g, sources, axis=2)     # (N, C, K, L)
    return [reshape_to(b, g, x), None, None]


# ---------------------------------------------------------------------------------------- data movement
def _moved_positions(b, node, x: str, rest: list) -> str:
    """The node run on the flat positions of ``x`` in place of ``x`` (its other inputs ``rest`` as they are):
    each output element's source position.  Positions travel as float64 (exact below 2**53), since the
    runtime's DepthToSpace and SpaceToDepth take no integers."""
    positions = b.op("Cast", flat_positions(b, x), to=TensorProto.DOUBLE)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    moved = b.op(node.op_type, positions, *rest, **attrs)
    return b.op("Cast", moved, to=TensorProto.INT64)


@register("DepthToSpace", "SpaceToDepth", "Compress", tag="linear")
def vjp_moves_data(ctx):
    """Ops that move or select elements without computing with them (DepthToSpace and SpaceToDepth in either
    mode, Compress along an axis or flattened): dx = dy added back at each output element's source, found by
    running the node on x's flat positions (every mode and attribute is then the node's own)."""
    b, x = ctx.b, ctx.x[0]
    sources = _moved_positions(b, ctx.node, x, list(ctx.x[1:]))
    return [scatter_flat(b, x, sources, ctx.dy[0], add=True)] + [None] * (len(ctx.x) - 1)


@register("OptionalGetElement", tag="linear")
def vjp_optional_get_element(ctx):
    """OptionalGetElement of a plain tensor (opset 18) is the identity; of an optional, no cotangent can be
    handed to the optional (onnxplain attributes tensors only)."""
    if ctx.b.elem_type(ctx.x[0]) is None:
        raise fail(ctx, "its input is an optional, not a tensor: only tensor inputs are attributed")
    return [ctx.dy[0]]
