"""Helpers that several rule families share: failures that name the node, static-shape checks, constant
values and shape vectors, what a reduction or a normalisation needs to know of its axes, and the window
geometry of Conv and pooling (where each window sits, and the transpose that spreads a cotangent back
over the windows)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..errors import UnsupportedOperatorError
from ..graph import np_dtype


# ------------------------------------------------------------------------------------ failures and shapes
def all_static(dims) -> bool:
    """Whether every dimension of ``dims`` is a static int."""
    return dims is not None and all(isinstance(d, int) for d in dims)


def rank_or_fail(b, x: str) -> tuple:
    """The static shape of ``x``; an error when even its rank is unknown."""
    s = b.shape(x)
    if s is None:
        raise UnsupportedOperatorError.unknown_rank(x)
    return s


def fail(ctx, why: str) -> UnsupportedOperatorError:
    """The error raised when the rule of ``ctx.node`` cannot be built, saying why."""
    node = ctx.node
    return UnsupportedOperatorError([node], f"cannot build the backward pass of {node.op_type} node "
                                            f"{node.name or node.output[0]!r}: {why}")


# ---------------------------------------------------------------------------- constants and shapes
def const_value(b, name: str | None) -> np.ndarray | None:
    """The value of ``name`` when it is an initializer or a Constant node's output, else None."""
    if not name or any(vi.name == name for vi in b.graph.input):
        return None  # an initializer that is also a graph input may be fed another value
    for init in b.initializers:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in b.nodes:
        if node.op_type == "Constant" and node.output[0] == name and node.attribute:
            value = onnx.helper.get_attribute_value(node.attribute[0])
            if isinstance(value, onnx.TensorProto):
                return numpy_helper.to_array(value)
            return np.asarray(value) if isinstance(value, (int, float, list)) else None
    return None


def static_shape(b, x: str) -> tuple | None:
    """x's shape when every dimension is a known integer, else None."""
    s = b.shape(x)
    return tuple(s) if s is not None and all(isinstance(d, int) for d in s) else None


def shape_vec(b, x: str) -> str:
    """x's shape as an int64 vector: a constant when fully static, a Shape node otherwise."""
    s = static_shape(b, x)
    return b.ints(s) if s is not None else b.shape_of(x)


def dims_vec(b, x: str, start: int = 0, end: int | None = None) -> str:
    """x's dims ``start:end`` (Python slice semantics, negative allowed) as an int64 vector."""
    s = b.shape(x)
    if s is not None and all(isinstance(d, int) for d in s[start:end]):
        return b.ints(list(s[start:end]))
    if end == 0:
        return b.ints([])
    return b.op("Shape", x, start=start, end=end)


# ---------------------------------------------------------------------------- reductions and normalisation
class Reduction:
    """What a reduction rule needs: its axes (a list, a tensor name, or None for the default)."""

    def __init__(self, ctx, axes_from_input: bool):
        self.ctx, self.b = ctx, ctx.b
        self.x, self.y = ctx.x[0], ctx.y[0]
        self.keepdims = ctx.attr("keepdims", 1)
        self.noop = ctx.attr("noop_with_empty_axes", 0)
        if axes_from_input:
            name = ctx.x[1] if len(ctx.x) > 1 and ctx.x[1] else None
            value = const_value(self.b, name)
            self.axes = name if value is None else ([int(a) for a in value.reshape(-1)] or None)
        else:
            axes = ctx.attr("axes")
            self.axes = [int(a) for a in axes] if axes else None

    def keep(self, t: str) -> str:
        """A tensor shaped like y, reshaped so that it broadcasts against x."""
        if self.keepdims or self.axes is None:  # all axes reduced to a scalar, or nothing reduced
            return t
        axes = self.axes if isinstance(self.axes, str) else self.b.ints(self.axes)
        return self.b.op("Unsqueeze", t, axes)

    def sum_keep(self, t: str) -> str:
        """ReduceSum of a tensor shaped like x over the same axes, keeping dims."""
        axes = self.axes if isinstance(self.axes, str) or self.axes is None else self.b.ints(self.axes)
        return self.b.op("ReduceSum", t, axes, keepdims=1, noop_with_empty_axes=self.noop or None)

    def reduce_keep(self, op_type: str, t: str) -> str:
        """``op_type`` (ReduceMax, ReduceMean, ...) of a tensor shaped like x over the same axes, keeping dims."""
        if isinstance(self.axes, str):    # an axes input, opset 18 on
            return self.b.op(op_type, t, self.axes, keepdims=1, noop_with_empty_axes=self.noop or None)
        if self.axes is None:
            return self.b.op(op_type, t, keepdims=1, noop_with_empty_axes=self.noop or None)
        return self.b.reduce(op_type, t, self.axes)

    def expand(self, t: str) -> str:
        return self.b.op("Expand", t, shape_vec(self.b, self.x))

    def count(self) -> str:
        """Number of elements reduced into each output, as a float scalar."""
        sx, sy = static_shape(self.b, self.x), static_shape(self.b, self.y)
        if sx is not None and sy is not None:
            return self.b.like(float(np.prod(sx)) / float(max(np.prod(sy), 1)), self.x)
        n = self.b.div(self.b.op("Size", self.x), self.b.op("Size", self.y))
        return self.b.cast_like(n, self.x)


def masked(b, dy: str, cond: str) -> str:
    """dy where ``cond`` holds, 0 elsewhere, emitted as ``dy * float(cond)``: onnxruntime runs Cast + Mul
    faster than a Where against a broadcast zero (the hottest op of a ReLU network's backward pass)."""
    return b.mul(dy, b.cast_like(cond, dy))


def known_rank(ctx, x: str) -> int:
    """The rank of ``x``; an error naming the node when it is unknown."""
    r = ctx.b.rank(x)
    if r is None:
        raise fail(ctx, f"the rank of {x!r} is unknown")
    return r


def normalised_count(b, x: str, axes) -> str:
    """Number of elements normalised together, as a scalar of x's type."""
    s = b.shape(x)
    dims = [s[a] for a in axes] if s is not None else [None]
    if all(isinstance(d, int) for d in dims):
        return b.like(float(np.prod(dims)), x)
    size = b.op("ReduceProd", b.op("Gather", b.shape_of(x), b.ints(axes), axis=0), keepdims=0)
    return b.cast_like(size, x)


def per_channel(b, t: str, rank: int) -> str:
    """(C,) -> (C, 1, ..., 1): broadcasts against (N, C, ...)."""
    return b.unsqueeze(t, list(range(1, rank - 1))) if rank > 2 else t


# ---------------------------------------------------------------------------- window geometry
@dataclass(frozen=True)
class Window:
    """Where a Conv/pool window sits along each spatial axis, with pads resolved.

    ``out`` is the number of output positions per axis (None where the input size is unknown).
    """

    kernel: tuple
    strides: tuple
    dilations: tuple
    begin: tuple
    end: tuple
    out: tuple | None

    @property
    def span(self) -> tuple:
        """Extent of one window: (k - 1) * d + 1."""
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations))


def window(ctx, spatial, kernel, ceil_mode: bool = False) -> Window:
    """Resolve strides, dilations and pads (explicit or auto_pad) of a Conv/pool node.

    ``spatial`` holds the input's static spatial sizes (ints, or strings/None when unknown).
    SAME_* follows the ONNX formula with the total padding clipped at zero (TensorFlow's rule);
    ceil_mode drops a last window that would start in the right padding (ONNX, PyTorch).
    """
    n = len(kernel)
    strides = tuple(ctx.attr("strides", None) or [1] * n)
    dilations = tuple(ctx.attr("dilations", None) or [1] * n)
    auto_pad = ctx.attr("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    known = all_static(spatial)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if not known:
            raise fail(ctx, f"auto_pad={auto_pad} needs static spatial sizes, got {tuple(spatial)}")
        out = [-(-x // s) for x, s in zip(spatial, strides)]
        total = [max(0, (o - 1) * s + e - x) for o, s, e, x in zip(out, strides, span, spatial)]
        small = [t // 2 for t in total]
        begin = small if auto_pad == "SAME_UPPER" else [t - m for t, m in zip(total, small)]
        end = [t - bg for t, bg in zip(total, begin)]
        return Window(tuple(kernel), strides, dilations, tuple(begin), tuple(end), tuple(out))
    pads = [0] * (2 * n) if auto_pad == "VALID" else list(ctx.attr("pads", None) or [0] * (2 * n))
    begin, end = tuple(pads[:n]), tuple(pads[n:])
    out = None
    if known:
        out = []
        for x, s, e, pb, pe in zip(spatial, strides, span, begin, end):
            num = x + pb + pe - e
            o = (-(-num // s) if ceil_mode else num // s) + 1
            if ceil_mode and (o - 1) * s >= x + pb:
                o -= 1
            out.append(o)
        out = tuple(out)
    return Window(tuple(kernel), strides, dilations, begin, end, out)


def shape_tail(b, x: str, prefix, start: int = 2) -> str:
    """Concat(prefix, Shape(x)[start:]) as an int64 shape vector."""
    tail = b.op("Shape", x, start=start)
    return b.op("Concat", b.ints(prefix), tail, axis=0) if len(prefix) else tail


def spread(b, g: str, weight: str, win: Window, x: str, spatial, group: int = 1, wshape=None) -> str:
    """Transpose of a windowed linear map (Conv's dX, pooling): spread ``g`` back through ``weight``,
    cropped or zero-padded so that its spatial sizes are the forward input's (rows no window read
    get no gradient).  ``wshape`` = (M, C/G, k...), needed when ``group`` > 1."""
    if group != 1:
        return _spread_grouped(b, g, weight, win, x, spatial, group, wshape)
    n = len(win.kernel)
    common = dict(strides=list(win.strides), dilations=list(win.dilations))
    if all_static(spatial) and win.out is not None:
        end, extra, outpad = [], [], []
        for x_len, o, s, e, pb in zip(spatial, win.out, win.strides, win.span, win.begin):
            excess = s * (o - 1) + e - pb - x_len   # > 0: crop it at the end; < 0: append zero rows
            end.append(max(excess, 0))
            short = max(-excess, 0)
            outpad.append(short if short < s else 0)
            extra.append(0 if short < s else short)
        y = b.op("ConvTranspose", g, weight, pads=list(win.begin) + end,
                 output_padding=outpad if any(outpad) else None, **common)
        if any(extra):
            y = b.op("Pad", y, b.ints([0] * (n + 2) + [0, 0] + extra))
        return y
    # Spatial sizes unknown: un-cropped ConvTranspose with the largest output padding, then keep
    # rows [pb, pb + x) of each axis (the output padding guarantees they exist).
    outpad = [s - 1 for s in win.strides]
    y = b.op("ConvTranspose", g, weight, pads=[0] * (2 * n),
             output_padding=outpad if any(outpad) else None, **common)
    return _keep_rows(b, y, win, x)


def _keep_rows(b, y: str, win: Window, x: str) -> str:
    """Rows [pb, pb + size of x) of every spatial axis of ``y``, sizes read at run time."""
    n = len(win.kernel)
    starts = b.ints(list(win.begin))
    ends = b.op("Add", b.op("Shape", x, start=2), starts)
    return b.op("Slice", y, starts, ends, b.ints(list(range(2, n + 2))))


def _spread_grouped(b, g: str, weight: str, win: Window, x: str, spatial, group: int, wshape) -> str:
    """Grouped transpose as a grouped Conv: zeros between the rows of g (stride), weight regrouped
    (M, C/G, k) -> (C, M/G, k) and flipped, padded by span - 1 (onnx.reference's grouped
    ConvTranspose mixes up its groups, so it is not used)."""
    n = len(win.kernel)
    M, cg, kernel = wshape[0], wshape[1], list(wshape[2:])
    axes = b.ints(list(range(2, n + 2)))
    w = b.op("Reshape", weight, b.ints([group, M // group, cg] + kernel))
    w = b.op("Transpose", w, perm=[0, 2, 1] + list(range(3, n + 3)))
    w = b.op("Reshape", w, b.ints([group * cg, M // group] + kernel))
    w = b.op("Slice", w, b.ints([-1] * n), b.ints([-2 ** 63] * n), axes, b.ints([-1] * n))
    z = g
    if any(s > 1 for s in win.strides):   # insert s - 1 zeros between rows: a 1x1 ConvTranspose of ones
        ones = b.const(np.ones((1, 1) + (1,) * n), np_dtype(b.elem_type(x) or TensorProto.FLOAT))
        z = b.op("Reshape", g, shape_tail(b, g, [-1, 1]))
        z = b.op("ConvTranspose", z, ones, strides=list(win.strides))
        z = b.op("Reshape", z, shape_tail(b, z, [-1, M]))
    conv = dict(dilations=list(win.dilations), group=group)
    if all_static(spatial) and win.out is not None:
        lo = [e - 1 - pb for e, pb in zip(win.span, win.begin)]
        hi = [pb + x_len - s * (o - 1) - 1
              for x_len, o, s, pb in zip(spatial, win.out, win.strides, win.begin)]
        if any(p < 0 for p in lo + hi):   # negative padding: crop the rows first
            big = 2 ** 62
            z = b.op("Slice", z, b.ints([max(-p, 0) for p in lo]), b.ints([p if p < 0 else big for p in hi]), axes)
        return b.op("Conv", z, w, pads=[max(p, 0) for p in lo + hi], **conv)
    full = b.op("Conv", z, w, pads=[e - 1 for e in win.span] + [e + s - 2 for e, s in zip(win.span, win.strides)],
                **conv)
    return _keep_rows(b, full, win, x)


# ------------------------------------------------------------- transposed convolution as ordinary convolutions
def phase_form_fits(win: Window, spatial) -> bool:
    """Whether :func:`spread_by_phases` can transpose this window: static sizes, and no dilation along an
    axis with a stride (along such an axis the taps of one phase are not evenly spaced)."""
    return (all_static(spatial) and win.out is not None
            and all(s == 1 or d == 1 for s, d in zip(win.strides, win.dilations)))


def phase_weight(weight: np.ndarray, strides, group: int) -> np.ndarray:
    """The weight of :func:`spread_by_phases`, computed once when the graph is built.

    From a Conv weight ``(M, C/G, k...)``: for every phase ``r`` of the strides (``prod(strides)`` of
    them) the taps ``k = r + s t`` of each axis, zero-padded to ``T = ceil(k / s)`` taps, flipped, with
    input and output channels swapped: ``(G * P * C/G, M/G, T...)``, output channels ordered
    (group, phase..., channel) so that a grouped Conv keeps its groups.
    """
    M, cg = weight.shape[:2]
    kernel = weight.shape[2:]
    n = len(kernel)
    taps = [-(-k // s) for k, s in zip(kernel, strides)]
    padded = np.pad(weight, [(0, 0), (0, 0)] + [(0, t * s - k) for t, s, k in zip(taps, strides, kernel)])
    split = padded.reshape((group, M // group, cg) + tuple(v for t, s in zip(taps, strides) for v in (t, s)))
    split = np.flip(split, axis=tuple(3 + 2 * i for i in range(n)))              # flip the taps of every axis
    order = [0] + [4 + 2 * i for i in range(n)] + [2, 1] + [3 + 2 * i for i in range(n)]
    out = split.transpose(order)                                               # (G, s..., C/G, M/G, T...)
    return np.ascontiguousarray(out.reshape((group * int(np.prod(strides)) * cg, M // group) + tuple(taps)))


def spread_by_phases(b, g: str, weight: np.ndarray, win: Window, spatial, group: int = 1) -> str:
    """Conv's input cotangent (the transpose of the Conv over ``win``) as one ordinary Conv.

    A stride ``s`` splits every input row ``j = s q + r`` into ``s`` phases; phase ``r`` receives
    ``sum_t w[r + s t] g[q - t]``, a stride-1 convolution of ``g`` with the phase's taps flipped.  All
    phases run as the output channels of one Conv (weight: :func:`phase_weight`, a constant), then
    are interleaved back (DepthToSpace, or Reshape/Transpose/Reshape) and cropped to the input's rows.
    With stride 1 this is the Conv over the flipped, transposed weight (dilation kept).  Only the
    rows ``q`` whose phases land inside the input are computed.  Needs :func:`phase_form_fits`.
    """
    n = len(win.kernel)
    C = weight.shape[1] * group
    taps = [-(-k // s) for k, s in zip(win.kernel, win.strides)]
    dil = [d if s == 1 else 1 for s, d in zip(win.strides, win.dilations)]
    lo_q = [pb // s for pb, s in zip(win.begin, win.strides)]
    hi_q = [-(-(pb + x) // s) for pb, x, s in zip(win.begin, spatial, win.strides)]
    begin = [d * (t - 1) - q for d, t, q in zip(dil, taps, lo_q)]
    end = [(h - q) - o - bg + d * (t - 1) for h, q, o, bg, d, t in zip(hi_q, lo_q, win.out, begin, dil, taps)]
    axes = list(range(2, n + 2))
    if any(p < 0 for p in begin + end):                                         # negative padding: crop first
        g = b.op("Slice", g, b.ints([max(-p, 0) for p in begin]), b.ints([p if p < 0 else 2 ** 62 for p in end]),
                 b.ints(axes))
    w = b.const(phase_weight(weight, win.strides, group), weight.dtype, hint="w_phases")
    y = b.op("Conv", g, w, pads=[max(p, 0) for p in begin + end], dilations=dil,
             group=group if group != 1 else None)
    y = _interleave_phases(b, y, win.strides, group, C // group, [h - q for h, q in zip(hi_q, lo_q)])
    start = [pb - s * q for pb, s, q in zip(win.begin, win.strides, lo_q)]
    if any(start) or any(s * (h - q) != x for s, h, q, x in zip(win.strides, hi_q, lo_q, spatial)):
        y = b.op("Slice", y, b.ints(start), b.ints([a + x for a, x in zip(start, spatial)]), b.ints(axes))
    return y


def _interleave_phases(b, y: str, strides, group: int, cg: int, rows) -> str:
    """(N, G * P * C/G, Q...) with channels (group, phase..., channel) -> (N, C, Q_1 s_1, ...): row
    ``s q + r`` of an axis takes row ``q`` of phase ``r``."""
    n = len(strides)
    if all(s == 1 for s in strides):
        return y
    if n == 2 and group == 1 and strides[0] == strides[1]:
        return b.op("DepthToSpace", y, blocksize=int(strides[0]), mode="DCR")
    y = b.op("Reshape", y, b.ints([-1, group] + list(strides) + [cg] + list(rows)))
    perm = [0, 1, 2 + n] + [v for i in range(n) for v in (3 + n + i, 2 + i)]   # (N, G, C/G, Q_1, s_1, ...)
    y = b.op("Transpose", y, perm=perm)
    return b.op("Reshape", y, b.ints([-1, group * cg] + [s * r for s, r in zip(strides, rows)]))


#: Ops whose output is the shape of their input, not its values: the same for a row and its reference.
SHAPE_ONLY = ("Shape", "Size")


def differs_from_reference(ctx, name: str) -> bool:
    """Whether ``name`` (of any type: a boolean condition, integer indices) may differ between a row and its
    reference: it is computed from an attributed tensor or from an input that takes baselines, other than
    through its shape (``Expand(constant, Shape(x))`` does not vary)."""
    varying = set(ctx.active) | set(ctx.params.get("varying", ()))
    producer = {o: n for n in ctx.b.nodes for o in n.output if o}
    seen, todo = set(), [name]
    while todo:
        t = todo.pop()
        if t in varying:
            return True
        if t in seen or t not in producer or producer[t].op_type in SHAPE_ONLY:
            continue
        seen.add(t)
        todo.extend(i for i in producer[t].input if i)
    return False
