"""Linear maps: Gemm, MatMul, Conv, ConvTranspose."""
from __future__ import annotations

from . import register


@register("Gemm")
def vjp_gemm(ctx):
    """Y = alpha * op(A) @ op(B) + beta * C."""
    b, dy = ctx.b, ctx.dy[0]
    A, B = ctx.x[0], ctx.x[1]
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    ta, tb = ctx.attr("transA", 0), ctx.attr("transB", 0)
    if alpha != 1.0:
        dy = b.mul(dy, b.like(alpha, dy))
    grads = [None, None, None]
    if ctx.needs(0):   # dA = dY @ op(B)^T, transposed back when transA
        grads[0] = (b.op("Gemm", B, dy, transA=tb, transB=1) if ta
                    else b.op("Gemm", dy, B, transA=0, transB=1 - tb))
    if ctx.needs(1):
        grads[1] = (b.op("Gemm", dy, A, transA=1, transB=ta) if tb
                    else b.op("Gemm", A, dy, transA=1 - ta, transB=0))
    if len(ctx.x) > 2 and ctx.needs(2):
        from ..backward import unbroadcast
        dc = ctx.dy[0] if beta == 1.0 else b.mul(ctx.dy[0], b.like(beta, ctx.dy[0]))
        grads[2] = unbroadcast(b, dc, ctx.x[2], ctx.y[0])
    return grads
