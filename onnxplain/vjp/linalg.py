"""Linear maps: Gemm, MatMul, Einsum, Conv, ConvTranspose, and the window geometry that pooling shares.

The cotangent of a linear map is its transpose applied to ``dy``: Gemm and
MatMul multiply by the other operand transposed, Einsum contracts ``dy`` with the other
operands onto the subscripts of the one it differentiates, Conv spreads ``dy`` back with
a ConvTranspose of the same weight and ConvTranspose gathers it with a Conv.
Windows (kernel, strides, dilations, resolved pads) are read from the node's
attributes and the static spatial sizes; the batch dimension is never read.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from ..errors import UnsupportedOperatorError
from ..graph import np_dtype
from . import register


# ------------------------------------------------------------------------------------ helpers
def _sum_to(b, g: str, g_shape, x: str, x_shape) -> str:
    """Sum ``g`` (static shape ``g_shape``) down to ``x``'s shape with the walker's unbroadcast."""
    from ..backward import unbroadcast
    et = b.elem_type(g) or b.elem_type(x)
    b.set_type(g, et, g_shape)
    if b.shape(x) is None:
        b.set_type(x, b.elem_type(x) or et, x_shape)
    return unbroadcast(b, g, x, g)


def _broadcast_dims(a, c) -> tuple:
    """Numpy broadcast of two static shapes (ints, symbol strings, None for unknown)."""
    n = max(len(a), len(c))
    a, c = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(c)) + tuple(c)
    out = []
    for da, dc in zip(a, c):
        if da == 1:
            out.append(dc)
        elif dc == 1 or da == dc:
            out.append(da)
        elif isinstance(da, int):
            out.append(da)
        elif isinstance(dc, int):
            out.append(dc)
        else:
            out.append(None)
    return tuple(out)


def _swap_last(b, x: str, rank: int) -> str:
    """Transpose of the last two axes."""
    return b.op("Transpose", x, perm=list(range(rank - 2)) + [rank - 1, rank - 2])


def _perm01(b, x: str, rank: int) -> str:
    """Swap the first two axes (batch <-> channels)."""
    return b.op("Transpose", x, perm=[1, 0] + list(range(2, rank)))


def _known(dims) -> bool:
    return dims is not None and all(isinstance(d, int) for d in dims)


def _rank_or_fail(b, x: str) -> tuple:
    s = b.shape(x)
    if s is None:
        raise UnsupportedOperatorError.unknown_rank(x)
    return s


def _fail(ctx, why: str) -> UnsupportedOperatorError:
    node = ctx.node
    return UnsupportedOperatorError([node], f"cannot build the backward pass of {node.op_type} node "
                                            f"{node.name or node.output[0]!r}: {why}")


# --------------------------------------------------------------------------------------- Gemm
@register("Gemm")
def vjp_gemm(ctx):
    """Y = alpha op(A) op(B) + beta C: dA = alpha dY op(B)^T, dB = alpha op(A)^T dY, dC = beta dY."""
    b, dy = ctx.b, ctx.dy[0]
    A, B = ctx.x[0], ctx.x[1]
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    ta, tb = ctx.attr("transA", 0), ctx.attr("transB", 0)
    scale = None if alpha == 1.0 else alpha
    grads = [None] * len(ctx.x)
    if ctx.needs(0):   # d op(A) = dY op(B)^T; transposed back when transA
        grads[0] = (b.op("Gemm", B, dy, transA=tb, transB=1, alpha=scale) if ta
                    else b.op("Gemm", dy, B, transA=0, transB=1 - tb, alpha=scale))
    if ctx.needs(1):   # d op(B) = op(A)^T dY; transposed back when transB
        grads[1] = (b.op("Gemm", dy, A, transA=1, transB=ta, alpha=scale) if tb
                    else b.op("Gemm", A, dy, transA=1 - ta, transB=0, alpha=scale))
    if len(ctx.x) > 2 and ctx.x[2] and ctx.needs(2):
        from ..backward import unbroadcast
        dc = dy if beta == 1.0 else b.mul(dy, b.like(beta, ctx.y[0]))
        grads[2] = unbroadcast(b, dc, ctx.x[2], ctx.y[0])
    return grads


# ------------------------------------------------------------------------------------- MatMul
@register("MatMul")
def vjp_matmul(ctx):
    """Y = A @ B (numpy rules): dA = dY @ B^T, dB = A^T @ dY, summed over broadcast batch dims."""
    b, (A, B), dy = ctx.b, ctx.x, ctx.dy[0]
    sa, sb = _rank_or_fail(b, A), _rank_or_fail(b, B)
    if not sa or not sb:
        raise _fail(ctx, "MatMul operands must have rank >= 1")
    # 1-D operands are promoted to matrices ((K,) @ -> (1, K); @ (K,) -> (K, 1)) and dY gets the
    # promoted axes back, so every product below is an ordinary (batched) matrix product.
    a1, b1 = len(sa) == 1, len(sb) == 1
    sa2 = (1,) + tuple(sa) if a1 else tuple(sa)
    sb2 = tuple(sb) + (1,) if b1 else tuple(sb)
    axes = ([-2] if a1 else []) + ([-1] if b1 else [])
    dy2 = b.unsqueeze(dy, axes) if axes else dy
    batch = _broadcast_dims(sa2[:-2], sb2[:-2])
    A2, B2 = _promote(b, A, sa2, a1, 0), _promote(b, B, sb2, b1, -1)
    grads = [None, None]
    if ctx.needs(0):
        g = b.op("MatMul", dy2, _swap_last(b, B2, len(sb2)))
        g = _sum_to(b, g, batch + sa2[-2:], A2, sa2)
        grads[0] = b.squeeze(g, [0]) if a1 else g
    if ctx.needs(1):
        g = b.op("MatMul", _swap_last(b, A2, len(sa2)), dy2)
        g = _sum_to(b, g, batch + sb2[-2:], B2, sb2)
        grads[1] = b.squeeze(g, [-1]) if b1 else g
    return grads


def _promote(b, x: str, shape2, is_vector: bool, axis: int) -> str:
    """A 1-D MatMul operand as the matrix the product treats it as (Unsqueeze at ``axis``)."""
    if not is_vector:
        return x
    x2 = b.unsqueeze(x, [axis])
    b.set_type(x2, b.elem_type(x), shape2)
    return x2


# ------------------------------------------------------------------------------------- Einsum
def _einsum_terms(ctx) -> tuple[list[str], str]:
    """The operands' and the output's subscripts, one letter per axis: implicit output made explicit,
    each "..." spelt out with fresh letters (right-aligned, shared across operands; a size-1 axis that
    broadcasts against a larger one gets a letter of its own, so that it is summed in the backward pass)."""
    b = ctx.b
    eq = ctx.attr("equation")
    eq = (eq.decode() if isinstance(eq, bytes) else eq).replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    shapes = [_rank_or_fail(b, x) for x in ctx.x]
    if len(terms) != len(shapes):
        raise _fail(ctx, f"equation {eq!r} has {len(terms)} operands, the node {len(shapes)}")
    if not arrow:   # implicit form: "..." first, then the letters seen once, in ASCII order
        once = [c for c in sorted(set(lhs)) if c.isalpha() and lhs.count(c) == 1]
        rhs = ("..." if "..." in lhs else "") + "".join(once)
    spare = (c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in eq)
    n_ell = []
    for t, s in zip(terms, shapes):
        n = len(s) - (len(t) - 3 if "..." in t else len(t))
        if n < 0 or (n and "..." not in t):
            raise _fail(ctx, f"term {t!r} of {eq!r} does not match an operand of rank {len(s)}")
        n_ell.append(n)
    width = max(n_ell, default=0)
    shared = [next(spare) for _ in range(width)]
    spelt = []
    for t, s, n in zip(terms, shapes, n_ell):
        letters = []
        for j in range(n):
            p = width - n + j
            dims = _ellipsis_dims(shapes, terms, n_ell, width, p)
            own = s[_ellipsis_start(t) + j] == 1 and any(d != 1 for d in dims)
            letters.append(next(spare) if own else shared[p])
        spelt.append(t.replace("...", "".join(letters)))
    return spelt, rhs.replace("...", "".join(shared))


def _ellipsis_start(term: str) -> int:
    return term.index("...") if "..." in term else 0


def _ellipsis_dims(shapes, terms, n_ell, width: int, p: int) -> set:
    """Sizes (ints, symbols or None) of the operands' axes at ellipsis position ``p`` (right-aligned)."""
    dims = set()
    for s, t, n in zip(shapes, terms, n_ell):
        j = p - (width - n)
        if 0 <= j < n:
            dims.add(s[_ellipsis_start(t) + j])
    return dims


@register("Einsum")
def vjp_einsum(ctx):
    """y = einsum(x_1, ..., x_n): dx_i = einsum(dy, x_j (j != i)) onto x_i's subscripts,
    broadcast along the subscripts that only x_i has (it was summed over them alone)."""
    b, dy = ctx.b, ctx.dy[0]
    terms, out = _einsum_terms(ctx)
    grads = [None] * len(ctx.x)
    for i, target in enumerate(terms):
        if not ctx.needs(i):
            continue
        if len(set(target)) != len(target):
            raise _fail(ctx, f"repeated subscripts (a diagonal) in term {target!r} are not supported")
        others = [(t, x) for j, (t, x) in enumerate(zip(terms, ctx.x)) if j != i]
        seen = set(out).union(*[set(t) for t, _ in others])
        keep = "".join(c for c in target if c in seen)
        equation = ",".join([out] + [t for t, _ in others]) + "->" + keep
        g = b.op("Einsum", dy, *[x for _, x in others], equation=equation)
        alone = [k for k, c in enumerate(target) if c not in seen]
        if alone:
            g = b.op("Expand", b.unsqueeze(g, alone), b.shape_of(ctx.x[i]))
        grads[i] = g
    return grads


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
    known = _known(spatial)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if not known:
            raise _fail(ctx, f"auto_pad={auto_pad} needs static spatial sizes, got {tuple(spatial)}")
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


def _shape_tail(b, x: str, prefix, start: int = 2) -> str:
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
    if _known(spatial) and win.out is not None:
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
        z = b.op("Reshape", g, _shape_tail(b, g, [-1, 1]))
        z = b.op("ConvTranspose", z, ones, strides=list(win.strides))
        z = b.op("Reshape", z, _shape_tail(b, z, [-1, M]))
    conv = dict(dilations=list(win.dilations), group=group)
    if _known(spatial) and win.out is not None:
        lo = [e - 1 - pb for e, pb in zip(win.span, win.begin)]
        hi = [pb + x_len - s * (o - 1) - 1
              for x_len, o, s, pb in zip(spatial, win.out, win.strides, win.begin)]
        if any(p < 0 for p in lo + hi):   # negative padding: crop the rows first
            big = 2 ** 62
            z = b.op("Slice", z, b.ints([max(-p, 0) for p in lo]), b.ints([-p if p < 0 else big for p in hi]), axes)
        return b.op("Conv", z, w, pads=[max(p, 0) for p in lo + hi], **conv)
    full = b.op("Conv", z, w, pads=[e - 1 for e in win.span] + [e + s - 2 for e, s in zip(win.span, win.strides)],
                **conv)
    return _keep_rows(b, full, win, x)


def conv_weight_grad(b, x: str, g: str, win: Window, group: int, channels: int, kernel) -> str:
    """dW[m, c, k] = sum_{n,i} g[n, m, i] x_pad[n, grp(m) C/G + c, s i + d k]: a Conv of x (batch as
    channels) by g (batch as input channels) with stride and dilation swapped, cropped to the kernel."""
    n = len(win.kernel)
    rank = n + 2
    xt = _perm01(b, x, rank)                                   # (C, N, S...)
    if group != 1:
        cg = channels // group
        xt = b.op("Reshape", xt, _shape_tail(b, x, [group, cg, -1]))         # (G, C/G, N, S...)
        xt = b.op("Transpose", xt, perm=[1, 0] + list(range(2, n + 3)))        # (C/G, G, N, S...)
        xt = b.op("Reshape", xt, _shape_tail(b, x, [cg, -1]))                # (C/G, G*N, S...)
    w = _perm01(b, g, rank)                                     # (M, N, S_out...)
    full = b.op("Conv", xt, w, strides=list(win.dilations), dilations=list(win.strides),
                pads=list(win.begin) + list(win.end), group=group if group != 1 else None)
    full = b.op("Slice", full, b.ints([0] * n), b.ints(list(kernel)), b.ints(list(range(2, rank))))
    return _perm01(b, full, rank)                               # (M, C/G, k...)


def _bias_grad(b, dy: str, rank: int) -> str:
    """dB[m] = sum of dY over batch and spatial axes."""
    return b.reduce_sum(dy, [0] + list(range(2, rank)), keepdims=0)


def _kernel(ctx, w: str) -> tuple:
    ks = ctx.attr("kernel_shape", None)
    if ks:
        return tuple(ks)
    sw = ctx.b.shape(w)
    if sw is None or not _known(sw[2:]):
        raise _fail(ctx, f"the kernel size is unknown (weight {w!r} has shape {sw}); set kernel_shape")
    return tuple(sw[2:])


def _spatial(ctx, x: str):
    sx = _rank_or_fail(ctx.b, x)
    if len(sx) < 3:
        raise _fail(ctx, f"expected an input of rank >= 3, got shape {sx}")
    return tuple(sx[2:]), len(sx)


def _weight_shape(ctx, w: str, kernel) -> tuple:
    """(M, C/G, k...) of a Conv weight: its static shape, or channel counts of Y and X."""
    sw = ctx.b.shape(w)
    if _known(sw):
        return tuple(sw)
    group = int(ctx.attr("group", 1))
    return (_channels(ctx, ctx.y[0], "output"), _channels(ctx, ctx.x[0], "input") // group) + tuple(kernel)


def _channels(ctx, name: str, what: str) -> int:
    s = ctx.b.shape(name)
    if s is None or len(s) < 2 or not isinstance(s[1], int):
        raise _fail(ctx, f"the channel count of {what} {name!r} must be static (shape {s})")
    return s[1]


# --------------------------------------------------------------------------------------- Conv
@register("Conv")
def vjp_conv(ctx):
    """Y = conv(X, W) + B: dX = conv_transpose(dY, W) (same window), dW = corr(X, dY), dB = sum dY."""
    b, dy = ctx.b, ctx.dy[0]
    X, W = ctx.x[0], ctx.x[1]
    spatial, rank = _spatial(ctx, X)
    kernel = _kernel(ctx, W)
    win = window(ctx, spatial, kernel)
    group = int(ctx.attr("group", 1))
    grads = [None] * len(ctx.x)
    if ctx.needs(0):
        grads[0] = spread(b, dy, W, win, X, spatial, group, _weight_shape(ctx, W, kernel) if group != 1 else None)
    if ctx.needs(1):
        grads[1] = conv_weight_grad(b, X, dy, win, group, _channels(ctx, X, "input"), kernel)
    if len(ctx.x) > 2 and ctx.x[2] and ctx.needs(2):
        grads[2] = _bias_grad(b, dy, rank)
    return grads


# ------------------------------------------------------------------------------ ConvTranspose
def _conv_transpose_window(ctx, in_spatial, kernel) -> Window:
    """The Conv window whose transpose this ConvTranspose is (pads resolved per the ONNX spec)."""
    n = len(kernel)
    strides = tuple(ctx.attr("strides", None) or [1] * n)
    dilations = tuple(ctx.attr("dilations", None) or [1] * n)
    outpad = list(ctx.attr("output_padding", None) or [0] * n)
    out_shape = ctx.attr("output_shape", None)
    auto_pad = ctx.attr("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if out_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if not _known(in_spatial):
            raise _fail(ctx, "output_shape/auto_pad need static spatial sizes")
        target = list(out_shape)[-n:] if out_shape else [x * s for x, s in zip(in_spatial, strides)]
        total = [s * (x - 1) + p + e - t for s, x, p, e, t in zip(strides, in_spatial, outpad, span, target)]
        if any(t < 0 for t in total):
            raise _fail(ctx, "output_shape larger than the transposed convolution's reach is not supported")
        if auto_pad == "SAME_UPPER":
            begin = [t // 2 for t in total]
        else:
            begin = [t - t // 2 for t in total]
        end = [t - bg for t, bg in zip(total, begin)]
    elif auto_pad == "VALID":
        begin, end = [0] * n, [0] * n
    else:
        pads = list(ctx.attr("pads", None) or [0] * (2 * n))
        begin, end = pads[:n], pads[n:]
    out = tuple(in_spatial) if _known(in_spatial) else None
    return Window(tuple(kernel), strides, dilations, tuple(begin), tuple(end), out)


@register("ConvTranspose")
def vjp_conv_transpose(ctx):
    """Y = conv_transpose(X, W) + B: dX = conv(dY, W) (same window), dW = corr(dY, X), dB = sum dY."""
    b, dy = ctx.b, ctx.dy[0]
    X, W = ctx.x[0], ctx.x[1]
    spatial, rank = _spatial(ctx, X)
    kernel = _kernel(ctx, W)
    win = _conv_transpose_window(ctx, spatial, kernel)
    group = int(ctx.attr("group", 1))
    grads = [None] * len(ctx.x)
    if ctx.needs(0):
        grads[0] = b.op("Conv", dy, W, strides=list(win.strides), dilations=list(win.dilations),
                        pads=list(win.begin) + list(win.end), group=group if group != 1 else None)
    if ctx.needs(1):
        grads[1] = conv_weight_grad(b, dy, X, win, group, _channels(ctx, ctx.y[0], "output"), kernel)
    if len(ctx.x) > 2 and ctx.x[2] and ctx.needs(2):
        grads[2] = _bias_grad(b, dy, rank)
    return grads
