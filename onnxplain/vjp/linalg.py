"""Linear maps: Gemm, MatMul, Einsum, Conv and ConvTranspose; and Det (multilinear in the rows).

The cotangent of a linear map is its transpose applied to ``dy``: Gemm and
MatMul multiply by the other operand transposed, Einsum contracts ``dy`` with the other
operands onto the subscripts of the one it differentiates, Conv spreads ``dy`` back with
a ConvTranspose of the same weight, or a Conv over that weight flipped and transposed where that runs
faster (:func:`conv_input_grad_form`), and ConvTranspose gathers it with a Conv.
Windows (kernel, strides, dilations, resolved pads; :mod:`onnxplain.vjp._common`) are read from the node's
attributes and the static spatial sizes; the batch dimension is never read.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .registry import register
from ._common import (Window, all_static, fail, phase_form_fits, rank_or_fail, shape_tail, spread, spread_by_phases,
                      window)
from ._common import const_value, dims_vec

#: fewest channels of X for which Conv's input cotangent runs as a Conv (see :func:`conv_input_grad_form`)
CONV_FORM_MIN_CHANNELS = 32


# ------------------------------------------------------------------------------------ helpers
def _sum_to(b, g: str, g_shape, x: str, x_shape) -> str:
    """Sum ``g`` (static shape ``g_shape``) down to ``x``'s shape with the builder's unbroadcast."""
    et = b.elem_type(g) or b.elem_type(x)
    b.set_type(g, et, g_shape)
    if b.shape(x) is None:
        b.set_type(x, b.elem_type(x) or et, x_shape)
    return b.unbroadcast(g, x, g)


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


# --------------------------------------------------------------------------------------- Gemm
@register("Gemm", tag="nonlinear")
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
        dc = dy if beta == 1.0 else b.mul(dy, b.like(beta, ctx.y[0]))
        grads[2] = b.unbroadcast(dc, ctx.x[2], ctx.y[0])
    return grads


# ------------------------------------------------------------------------------------- MatMul
@register("MatMul", tag="nonlinear")
def vjp_matmul(ctx):
    """Y = A @ B (numpy rules): dA = dY @ B^T, dB = A^T @ dY, summed over broadcast batch dims."""
    b, (A, B), dy = ctx.b, ctx.x, ctx.dy[0]
    if b.shape(A) is None and b.rank(B) == 2:
        return _matmul_by_matrix(ctx)
    sa, sb = rank_or_fail(b, A), rank_or_fail(b, B)
    if not sa or not sb:
        raise fail(ctx, "MatMul operands must have rank >= 1")
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


def _matmul_by_matrix(ctx):
    """``A @ B`` for a matrix ``B`` and an ``A`` whose rank shape inference does not know (a Squeeze without
    axes over a dimension read from data): with B of shape ``(K, N)`` the product broadcasts nothing, so
    ``dA = dY @ B^T`` has A's shape whatever its rank (a vector's too: ``(K,) @ (K, N)``), and ``dB`` sums
    ``A^T dY`` over A's leading axes, which a Reshape of A and dY to ``(-1, K)`` and ``(-1, N)`` puts on one
    axis.  Against a vector or a batch of matrices A's rank is needed (the general rule)."""
    b, (A, B), dy = ctx.b, ctx.x, ctx.dy[0]
    grads = [None, None]
    if ctx.needs(0):
        grads[0] = b.op("MatMul", dy, _swap_last(b, B, 2))
    if ctx.needs(1):
        minus_one = b.ints([-1])
        rows_a = b.reshape(A, b.op("Concat", minus_one, dims_vec(b, B, 0, 1), axis=0))
        rows_dy = b.reshape(dy, b.op("Concat", minus_one, dims_vec(b, B, 1, 2), axis=0))
        grads[1] = b.op("MatMul", _swap_last(b, rows_a, 2), rows_dy)
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
    shapes = [rank_or_fail(b, x) for x in ctx.x]
    if len(terms) != len(shapes):
        raise fail(ctx, f"equation {eq!r} has {len(terms)} operands, the node {len(shapes)}")
    if not arrow:   # implicit form: "..." first, then the letters seen once, in ASCII order
        once = [c for c in sorted(set(lhs)) if c.isalpha() and lhs.count(c) == 1]
        rhs = ("..." if "..." in lhs else "") + "".join(once)
    spare = (c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in eq)
    n_ell = []
    for t, s in zip(terms, shapes):
        n = len(s) - (len(t) - 3 if "..." in t else len(t))
        if n < 0 or (n and "..." not in t):
            raise fail(ctx, f"term {t!r} of {eq!r} does not match an operand of rank {len(s)}")
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


@register("Einsum", tag="nonlinear")
def vjp_einsum(ctx):
    """y = einsum(x_1, ..., x_n): dx_i = einsum(dy, x_j (j != i)) onto x_i's subscripts,
    broadcast along the subscripts that only x_i has (it was summed over them alone); a subscript that
    x_i repeats (a diagonal, ``ii->i``) is taken once, and the result written back on the diagonal."""
    b, dy = ctx.b, ctx.dy[0]
    terms, out = _einsum_terms(ctx)
    grads = [None] * len(ctx.x)
    for i, target in enumerate(terms):
        if not ctx.needs(i):
            continue
        unique = "".join(dict.fromkeys(target))
        others = [(t, x) for j, (t, x) in enumerate(zip(terms, ctx.x)) if j != i]
        seen = set(out).union(*[set(t) for t, _ in others])
        keep = "".join(c for c in unique if c in seen)
        equation = ",".join([out] + [t for t, _ in others]) + "->" + keep
        g = b.op("Einsum", dy, *[x for _, x in others], equation=equation)
        alone = [k for k, c in enumerate(unique) if c not in seen]
        if alone:
            sizes = b.op("Gather", b.shape_of(ctx.x[i]), b.ints([target.index(c) for c in unique]), axis=0)
            g = b.op("Expand", b.unsqueeze(g, alone), sizes)
        grads[i] = g if unique == target else _onto_diagonals(b, g, unique, target, ctx.x[i],
                                                              set("".join(terms) + out))
    return grads


def _onto_diagonals(b, g: str, unique: str, target: str, x: str, used: set) -> str:
    """``g`` (subscripts ``unique``) written onto the diagonals of ``target``, which repeats some of them:
    each repeat gets a subscript of its own (not in ``used``) and an identity matrix ties it to the first
    occurrence."""
    spare = (c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in used)
    spelt, eyes, eye_terms = [], [], []
    for k, c in enumerate(target):
        if c not in target[:k]:
            spelt.append(c)
            continue
        spelt.append(next(spare))
        n = b.op("Gather", b.shape_of(x), b.ints([k]), axis=0)
        eyes.append(b.cast_like(b.op("EyeLike", b.op("ConstantOfShape", b.op("Concat", n, n, axis=0))), x))
        eye_terms.append(c + spelt[-1])
    return b.op("Einsum", g, *eyes, equation=",".join([unique] + eye_terms) + "->" + "".join(spelt))


def conv_weight_grad(b, x: str, g: str, win: Window, group: int, channels: int, kernel) -> str:
    """dW[m, c, k] = sum_{n,i} g[n, m, i] x_pad[n, grp(m) C/G + c, s i + d k]: a Conv of x (batch as
    channels) by g (batch as input channels) with stride and dilation swapped, cropped to the kernel."""
    n = len(win.kernel)
    rank = n + 2
    xt = _perm01(b, x, rank)                                   # (C, N, S...)
    if group != 1:
        cg = channels // group
        xt = b.op("Reshape", xt, shape_tail(b, x, [group, cg, -1]))         # (G, C/G, N, S...)
        xt = b.op("Transpose", xt, perm=[1, 0] + list(range(2, n + 3)))        # (C/G, G, N, S...)
        xt = b.op("Reshape", xt, shape_tail(b, x, [cg, -1]))                # (C/G, G*N, S...)
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
    if sw is None or not all_static(sw[2:]):
        raise fail(ctx, f"the kernel size is unknown (weight {w!r} has shape {sw}); set kernel_shape")
    return tuple(sw[2:])


def _spatial(ctx, x: str):
    sx = rank_or_fail(ctx.b, x)
    if len(sx) < 3:
        raise fail(ctx, f"expected an input of rank >= 3, got shape {sx}")
    return tuple(sx[2:]), len(sx)


def _weight_shape(ctx, w: str, kernel) -> tuple:
    """(M, C/G, k...) of a Conv weight: its static shape, or channel counts of Y and X."""
    sw = ctx.b.shape(w)
    if all_static(sw):
        return tuple(sw)
    group = int(ctx.attr("group", 1))
    return (_channels(ctx, ctx.y[0], "output"), _channels(ctx, ctx.x[0], "input") // group) + tuple(kernel)


def _channels(ctx, name: str, what: str) -> int:
    s = ctx.b.shape(name)
    if s is None or len(s) < 2 or not isinstance(s[1], int):
        raise fail(ctx, f"the channel count of {what} {name!r} must be static (shape {s})")
    return s[1]


# --------------------------------------------------------------------------------------- Conv
def conv_input_grad_form(win: Window, spatial, group: int, weight) -> str:
    """Which graph computes a Conv's input cotangent: ``"conv"`` (:func:`spread_by_phases`: one Conv over
    the weight flipped and transposed when the graph is built) or ``"conv_transpose"`` (:func:`spread`).

    The rule comes from ``benchmarks/conv_backward_forms.py`` (onnxruntime 1.31, 2-core AVX2 CPU, 64
    rows, interleaved medians on a loaded machine): with stride 1 the Conv form ran 1.2-2.5x faster
    once X has 32 channels or more in three runs of four (onnxruntime runs it as a blocked-layout Conv
    like the forward's; the fourth run, under heavier load, had two such layers 0.6x), about even at
    16-24 channels, and 2-4x slower with few (3 to 8: the image's input gradient), where
    ConvTranspose wins.  With a stride
    the Conv form needs every stride phase (``prod(strides)`` times the output channels, taps padded
    with zeros: 16/9 the work for 3x3 stride 2) and an interleave, and ran 2-3x slower in every layer
    measured, strided 1x1 and 7x7 included; grouped layers already spread through a grouped Conv.  So:
    the Conv form for an ungrouped stride-1 Conv with a constant weight and at least
    :data:`CONV_FORM_MIN_CHANNELS` input channels; ConvTranspose otherwise.
    """
    channels = None if weight is None else weight.shape[1] * group
    if (weight is not None and group == 1 and all(s == 1 for s in win.strides) and phase_form_fits(win, spatial)
            and channels >= CONV_FORM_MIN_CHANNELS):
        return "conv"
    return "conv_transpose"


@register("Conv", tag="nonlinear")
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
        weight = const_value(b, W)
        if conv_input_grad_form(win, spatial, group, weight) == "conv":
            grads[0] = spread_by_phases(b, dy, weight, win, spatial, group)
        else:
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
        if not all_static(in_spatial):
            raise fail(ctx, "output_shape/auto_pad need static spatial sizes")
        target = list(out_shape)[-n:] if out_shape else [x * s for x, s in zip(in_spatial, strides)]
        # the pads the runtime resolves: negative where output_shape reaches past the kernel's last tap (those
        # outputs hold only the bias; onnxruntime and onnx.reference put an odd one at the end)
        total = [s * (x - 1) + p + e - t for s, x, p, e, t in zip(strides, in_spatial, outpad, span, target)]
        half = [t // 2 for t in total]
        begin = half if auto_pad == "SAME_UPPER" else [t - h for t, h in zip(total, half)]
        end = [t - bg for t, bg in zip(total, begin)]
    elif auto_pad == "VALID":
        begin, end = [0] * n, [0] * n
    else:
        pads = list(ctx.attr("pads", None) or [0] * (2 * n))
        begin, end = pads[:n], pads[n:]
    out = tuple(in_spatial) if all_static(in_spatial) else None
    return Window(tuple(kernel), strides, dilations, tuple(begin), tuple(end), out)


def _within_reach(b, dy: str, win: Window, rank: int) -> tuple[str, Window]:
    """A negative pad of a ConvTranspose window is output beyond the kernel's reach (bias only): the cotangent
    there reaches neither X nor W, so dY is cropped by it and the window's pad becomes 0."""
    n = len(win.kernel)
    if min(win.begin + win.end, default=0) >= 0:
        return dy, win
    axes = [a for a in range(n) if win.begin[a] < 0 or win.end[a] < 0]
    starts = [max(0, -win.begin[a]) for a in axes]
    ends = [min(-1, win.end[a]) if win.end[a] < 0 else np.iinfo(np.int64).max for a in axes]
    cropped = b.op("Slice", dy, b.ints(starts), b.ints(ends), b.ints([2 + a for a in axes]))
    return cropped, replace(win, begin=tuple(max(0, v) for v in win.begin), end=tuple(max(0, v) for v in win.end))


@register("ConvTranspose", tag="nonlinear")
def vjp_conv_transpose(ctx):
    """Y = conv_transpose(X, W) + B: dX = conv(dY, W) (same window), dW = corr(dY, X), dB = sum dY."""
    b, dy = ctx.b, ctx.dy[0]
    X, W = ctx.x[0], ctx.x[1]
    spatial, rank = _spatial(ctx, X)
    kernel = _kernel(ctx, W)
    win = _conv_transpose_window(ctx, spatial, kernel)
    group = int(ctx.attr("group", 1))
    grads = [None] * len(ctx.x)
    reached, win = _within_reach(b, dy, win, rank)
    if ctx.needs(0):
        grads[0] = b.op("Conv", reached, W, strides=list(win.strides), dilations=list(win.dilations),
                        pads=list(win.begin) + list(win.end), group=group if group != 1 else None)
    if ctx.needs(1):
        grads[1] = conv_weight_grad(b, reached, X, win, group, _channels(ctx, ctx.y[0], "output"), kernel)
    if len(ctx.x) > 2 and ctx.x[2] and ctx.needs(2):
        grads[2] = _bias_grad(b, dy, rank)
    return grads


# ------------------------------------------------------------------------------------ Det
def minor_indices(n: int):
    """For every row (or column) i of an n x n matrix, the other n - 1 indices, shaped (n, n - 1)."""
    return np.array([[j for j in range(n) if j != i] for i in range(n)], np.int64)


def matrix_size(ctx) -> tuple[int, int]:
    """(n, rank) of Det's input ``(..., n, n)``; n must be static (the minors are gathered with constant
    indices)."""
    shape = ctx.b.shape(ctx.x[0])
    if shape is None or not isinstance(shape[-1], int):
        raise fail(ctx, f"the matrix size must be static, got shape {shape}")
    return shape[-1], len(shape)


@register("Det", tag="nonlinear")
def vjp_det(ctx):
    """y = det(A) over the last two axes: dA = dy * cofactor(A), cofactor_ij = (-1)^(i+j) det(minor_ij), the
    minors gathered with constant indices and their determinants taken by Det itself: exact for singular A
    too (no inverse, which ONNX does not have).  Needs n static."""
    b, a, dy = ctx.b, ctx.x[0], ctx.dy[0]
    n, rank = matrix_size(ctx)
    if n == 1:
        return [b.unsqueeze(b.unsqueeze(dy, [-1]), [-1])]
    others = b.const(minor_indices(n), np.int64, hint="minor_indices")
    rows = b.op("Gather", a, others, axis=rank - 2)                # (..., n, n-1, n): [i, r, c]
    minors = b.op("Gather", rows, others, axis=rank)               # (..., n, n-1, n, n-1): [i, r, j, c]
    lead = list(range(rank - 2))
    minors = b.op("Transpose", minors, perm=lead + [rank - 2, rank, rank - 1, rank + 1])   # [i, j, r, c]
    signs = (-1.0) ** np.add.outer(np.arange(n), np.arange(n))
    cofactors = b.mul(b.op("Det", minors), b.cast_like(b.const(signs, np.float32), a))
    return [b.mul(b.unsqueeze(b.unsqueeze(dy, [-1]), [-1]), cofactors)]
