"""Spectral ops: DFT (opsets 17 and 20) and STFT.

Both are linear in the signal, so the cotangent of the signal is the adjoint map applied to the output's
cotangent, with the real inner product of the packed ``[..., 2]`` (real, imaginary) tensors: for a
complex-linear map ``F`` that adjoint is ``F^H``.  Writing ``n`` for the transform length
(``dft_length``), ``N`` for the signal's length along the axis and ``h = n // 2 + 1``:

* forward DFT ``Y = P F z`` (``F[k, m] = exp(-2 pi i k m / n)``, ``P`` keeps the first ``h`` bins when
  ``onesided``, ``z`` the signal cut or zero-padded to ``n``): ``dz = n IDFT(dY)`` with ``dY`` zero-padded
  back to ``n`` bins (the emitted DFT's own ``dft_length`` pads it), then cut or zero-padded back to ``N``
  (samples cut off by the forward pass get 0, zeros it appended give nothing back); a real signal
  (last dimension 1) takes the real part.
* inverse DFT ``Y = conj(F) z / n``: ``dz = DFT(dY) / n``, fitted back to ``N`` the same way.
* inverse one-sided DFT (IRFFT, real output ``y[m] = sum_k w_k Re(X_k e^{2 pi i k m / n}) / n`` over the
  first ``h`` bins, ``w_0 = 1``, ``w_{n/2} = 1`` for even ``n``, 2 elsewhere; the imaginary parts of those two
  bins do not matter): ``dX_k = w_k RFFT(dy)_k / n``, written ``D + (D shifted by one bin, cut to the
  doubled bins 1 .. n - h)``, fitted back from ``h`` to ``N`` bins.
* STFT ``y[b, f] = P F (w * x[b, f s : f s + T])``: each frame's cotangent ``du = T IDFT(dY)`` (real part
  for a real signal), the signal's ``w * du`` added back over the overlapping frames (ScatterElements with
  ``reduction="add"``), the window's ``sum_{b, f} <du, frame>`` (frames gathered again).  With both signal
  and window attributed STFT is bilinear; these are its partial derivatives.

Cost: every backward DFT is one DFT node of the same length as the forward one (onnxruntime and
onnx.reference run their FFTs; no ``n x n`` matrix is built), plus O(size) slicing, padding and, for STFT,
one scatter-add and one gather of ``B * frames * T`` elements.  Lengths, the axis (an input from opset 20)
and ``dft_length`` may be known only at run time; constants fold when they are known.  Only the last
dimension (1 real, 2 complex) must be static.  The rules emit only DFT variants onnxruntime runs (full
complex transforms and the one-sided transform of a real tensor), whatever variant the forward node is.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .registry import register
from ._common import const_value, fail, known_rank

# Lengths below are static ints or, when known only at run time, names of 1-element int64 tensors.


# ------------------------------------------------------------------------------ run-time integer helpers
def _vec(b, v) -> str:
    """``v`` as a 1-element int64 vector."""
    return b.ints([v]) if isinstance(v, int) else v


def _scalar(b, v) -> str:
    """``v`` as a 0-d int64 tensor (what DFT's ``dft_length`` and ``axis`` inputs take)."""
    return b.const(np.array(v, np.int64), np.int64) if isinstance(v, int) else b.op("Reshape", v, b.ints([]))


def _arith(b, op: str, a, c):
    """``a op c`` on lengths: folded when both are static ints."""
    if isinstance(a, int) and isinstance(c, int):
        return {"Add": a + c, "Sub": a - c, "Mul": a * c, "Div": a // c, "Max": max(a, c), "Min": min(a, c),
                "Mod": a % c}[op]
    return b.op(op, _vec(b, a), _vec(b, c))


def _int_input(b, name: str | None):
    """An integer scalar input: its value when it is a constant, else a 1-element int64 tensor; None when
    the input is omitted."""
    if not name:
        return None
    value = const_value(b, name)
    if value is not None and value.size == 1:
        return int(value.reshape(()))
    return b.op("Reshape", b.op("Cast", name, to=TensorProto.INT64), b.ints([1]))


def _axis_len(b, t: str, axis):
    """The size of ``t`` along ``axis`` (an int, or a 1-element int64 tensor)."""
    s = b.shape(t)
    if isinstance(axis, int) and s is not None and -len(s) <= axis < len(s) and isinstance(s[axis], int):
        return s[axis]
    return b.op("Gather", b.shape_of(t), _vec(b, axis), axis=0)


def _scale(b, t: str, n, power: int, like: str) -> str:
    """``t * n`` (``power`` 1) or ``t / n`` (``power`` -1), ``n`` a length, constants typed like ``like``."""
    if isinstance(n, int):
        return b.mul(t, b.like(float(n) if power == 1 else 1.0 / n, like))
    f = b.cast_like(n, like)
    return b.mul(t, f) if power == 1 else b.div(t, f)


# ---------------------------------------------------------------------------- slicing and padding along an axis
class _Axis:
    """One axis of the tensors a rule handles: a static int or a run-time length-1 vector (DFT-20's ``axis`` input),
    with the rank needed to pad along it before Pad took an ``axes`` input (opset 18)."""

    def __init__(self, b, axis, rank: int):
        self.b, self.axis, self.rank = b, axis, rank

    def vec(self) -> str:
        return _vec(self.b, self.axis)

    def slice(self, t: str, start, end) -> str:
        return self.b.op("Slice", t, _vec(self.b, start), _vec(self.b, end), self.vec())

    def pad(self, t: str, begin, end) -> str:
        """``t`` with ``begin`` zeros before and ``end`` zeros after it along the axis."""
        b = self.b
        if isinstance(begin, int) and isinstance(end, int) and begin == end == 0:
            return t
        static = isinstance(begin, int) and isinstance(end, int)
        if b.opset >= 18:
            amounts = b.ints([begin, end]) if static else b.op("Concat", _vec(b, begin), _vec(b, end), axis=0)
            return b.op("Pad", t, amounts, None, self.vec())
        a = self.axis % self.rank   # before opset 18 the axis is an attribute: static
        if static:
            pads = [0] * (2 * self.rank)
            pads[a], pads[self.rank + a] = begin, end
            return b.op("Pad", t, b.ints(pads))
        pieces = [b.ints([0] * a), _vec(b, begin), b.ints([0] * (self.rank - 1)), _vec(b, end),
                  b.ints([0] * (self.rank - a - 1))]
        return b.op("Pad", t, b.op("Concat", *pieces, axis=0))

    def fit(self, t: str, have, want) -> str:
        """``t`` (``have`` long along the axis) cut to its first ``want`` entries or zero-padded up to them."""
        if isinstance(have, int) and isinstance(want, int):
            if want < have:
                return self.slice(t, 0, want)
            return self.pad(t, 0, want - have)
        t = self.slice(t, 0, want)   # a no-op when want >= have (Slice clamps)
        return self.pad(t, 0, _arith(self.b, "Max", _arith(self.b, "Sub", want, have), 0))


def dft(b, t: str, axis, *, inverse: int = 0, onesided: int = 0, length=None) -> str:
    """A DFT node of this opset: ``axis`` as an attribute before opset 20, as an input from it on."""
    n = "" if length is None else _scalar(b, length)
    common = dict(inverse=inverse or None, onesided=onesided or None)
    if b.opset >= 20:
        return b.op("DFT", t, n, _scalar(b, axis), **common)
    return b.op("DFT", t, n or None, axis=axis, **common)


def _real_part(b, t: str) -> str:
    return b.op("Slice", t, b.ints([0]), b.ints([1]), b.ints([-1]))


def _components(ctx, x: str) -> int:
    """1 for a real signal, 2 for a complex one: the static last dimension of ``x``."""
    s = ctx.b.shape(x)
    c = s[-1] if s else None
    if c not in (1, 2):
        raise fail(ctx, f"the last dimension of {x!r} (1: real, 2: complex) must be static, got shape {s}")
    return c


# ------------------------------------------------------------------------------------------------ DFT
def _dft_rule(ctx, axis):
    b, x, dy = ctx.b, ctx.x[0], ctx.dy[0]
    grads = [None] * len(ctx.x)
    if not ctx.needs(0):
        return grads
    rank = known_rank(ctx, x)
    c = _components(ctx, x)
    if isinstance(axis, int) and not (-rank <= axis <= rank - 2):
        raise fail(ctx, f"axis {axis} is out of range for an input of rank {rank}")
    ax = _Axis(b, axis, rank)
    inverse, onesided = int(ctx.attr("inverse", 0)), int(ctx.attr("onesided", 0))
    have = _axis_len(b, x, axis)
    n = _int_input(b, ctx.x[1] if len(ctx.x) > 1 else None)
    if inverse and onesided:   # IRFFT: y (n real samples) from the first h = n // 2 + 1 bins
        if n is None:
            n = _arith(b, "Mul", _arith(b, "Sub", have, 1), 2)
        h = _arith(b, "Add", _arith(b, "Div", n, 2), 1)
        d = dft(b, dy, axis, onesided=1)                     # (h bins): RFFT of the real cotangent
        doubled = _arith(b, "Sub", n, h)                      # bins 1 .. n - h appear twice in the spectrum
        twice = ax.pad(ax.slice(d, 1, _arith(b, "Add", doubled, 1)), 1, _arith(b, "Sub", _arith(b, "Sub", h, 1),
                                                                                 doubled))
        g = _scale(b, b.add(d, twice), n, -1, x)
        g = ax.fit(g, h, have)
    elif inverse:              # y = conj(F) z / n: dz = F dy / n
        if n is None:
            n = have
        g = ax.fit(_scale(b, dft(b, dy, axis), n, -1, x), n, have)
    else:                      # y = P F z: dz = n IDFT(P^T dy), P^T by the DFT's own zero-padding to n
        if n is None:
            n = have
        g = dft(b, dy, axis, inverse=1, length=n if onesided else None)
        g = ax.fit(_scale(b, g, n, 1, x), n, have)
    grads[0] = _real_part(b, g) if c == 1 else g
    return grads


@register("DFT", tag="linear", since=17)
def vjp_dft_17(ctx):
    """DFT-17 (axis an attribute, default 1): the adjoint transform, see the module's docstring."""
    return _dft_rule(ctx, int(ctx.attr("axis", 1)))


@register("DFT", tag="linear", since=20)
def vjp_dft_20(ctx):
    """DFT-20 (axis an input, default -2, a constant or a run-time scalar): the adjoint transform."""
    axis = _int_input(ctx.b, ctx.x[2] if len(ctx.x) > 2 else None)
    return _dft_rule(ctx, -2 if axis is None else axis)


# ------------------------------------------------------------------------------------------------ STFT
def _frame_positions(b, frames, length, step) -> str:
    """``(frames, length)`` int64: sample ``f * step + t`` read by tap ``t`` of frame ``f``."""
    if all(isinstance(v, int) for v in (frames, length, step)):
        return b.const(np.arange(frames)[:, None] * step + np.arange(length)[None, :], np.int64, hint="frames")
    zero, one = b.const(0, np.int64), b.const(1, np.int64)
    starts = b.mul(b.op("Range", zero, _scalar(b, frames), one), _scalar(b, step))
    taps = b.op("Range", zero, _scalar(b, length), one)
    return b.add(b.unsqueeze(starts, [1]), b.unsqueeze(taps, [0]))


@register("STFT", tag="nonlinear", since=17)
def vjp_stft(ctx):
    """STFT: ``y[b, f] = P F (w * frame_f(x_b))``.  The signal gets ``w * T IDFT(P^T dy)`` summed over the
    overlapping frames, the window ``sum_{b, f} <T IDFT(P^T dy), frame_f(x_b)>`` (real parts for a real signal)."""
    b, x, dy = ctx.b, ctx.x[0], ctx.dy[0]
    grads = [None] * len(ctx.x)
    want_x, want_w = ctx.needs(0), ctx.needs(2)
    if not (want_x or want_w):
        return grads
    if known_rank(ctx, x) != 3:
        raise fail(ctx, f"expected a signal of rank 3 (batch, samples, 1 or 2), got shape {b.shape(x)}")
    c = _components(ctx, x)
    window = ctx.x[2] if len(ctx.x) > 2 and ctx.x[2] else None
    length = _int_input(b, ctx.x[3] if len(ctx.x) > 3 else None)
    win_len = None if window is None else _axis_len(b, window, 0)
    if length is None:
        length = win_len if window is not None else _axis_len(b, x, 1)
    elif isinstance(win_len, int) and isinstance(length, int) and win_len != length:
        raise fail(ctx, f"the window has {win_len} taps but frame_length is {length}")
    step = _int_input(b, ctx.x[1])
    onesided = int(ctx.attr("onesided", 1))
    sy = b.shape(ctx.y[0])
    frames = sy[1] if sy is not None and len(sy) == 4 and isinstance(sy[1], int) else _axis_len(b, dy, 1)

    du = dft(b, dy, 2, inverse=1, length=length if onesided else None)   # (B, frames, T, 2)
    du = _scale(b, du, length, 1, x)
    if c == 1:
        du = _real_part(b, du)
    positions = _frame_positions(b, frames, length, step)
    if want_x:
        g = du if window is None else b.mul(du, b.unsqueeze(window, [1]))
        updates = b.op("Reshape", g, b.ints([0, -1, c]))
        where = b.op("Expand", b.op("Reshape", positions, b.ints([1, -1, 1])), b.shape_of(updates))
        grads[0] = b.op("ScatterElements", b.zeros_like(x), where, updates, axis=1, reduction="add")
    if want_w:
        taken = b.op("Gather", x, positions, axis=1)                     # (B, frames, T, c)
        grads[2] = b.reduce_sum(b.mul(du, taken), [0, 1, 3], keepdims=0)
    return grads
