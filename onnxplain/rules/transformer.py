"""Relevance rules for transformers: Conservative LRP (Ali et al., ICML 2022) and AttnLRP (Achtibat et al.,
ICML 2024), as override tables over the standard VJP rules.

In the ``x * c`` formulation a tensor's cotangent is its relevance divided by it (``R_t = t * c_t``), so a rule
is a modified backward step and the attribution is ``input * modified gradient``.

Both tables share:

* every unary nonlinearity (GELU, ReLU, Tanh, ...; tag ``nonlinear``, flagged ``unary``): epsilon-LRP's rule,
  ``c_z = c_y * y / (z + eps * s(z))`` (:func:`~onnxplain.rules.lrp.epsilon_unary`), which is also AttnLRP's
  identity rule (relevance passed on unchanged, epsilon-stabilised).  A GELU written out as
  ``x * (1 + erf(x / sqrt 2))`` (the TorchScript exporter below opset 20) is recognised at its Mul and given
  the same rule as a whole (:func:`erf_gate`);
* normalisation with its scale taken as a constant: ``LayerNormalization`` backpropagates as
  ``(x - mean(x)) * inv * gamma + beta`` with ``inv = 1 / std`` constant, ``c_x = inv (g - mean(g))``,
  ``g = c_y * gamma``.  A normalisation written out (LayerNorm or RMSNorm as ReduceMean / Pow / Sqrt / Div, or
  ``x * Reciprocal(Sqrt(...))``) is recognised by its divisor: a Div whose divisor, or a Mul whose factor
  (``Reciprocal`` or ``1 / ...`` of it), is produced by a ``Sqrt`` of an active tensor takes that factor as
  a constant.  Other spellings of ``1 / std`` (``Pow(v, -0.5)``) are not recognised and keep their gradient.

CP-LRP (:data:`CP_LRP`) in addition gives Softmax no backward for its input: attention probabilities are
constants, relevance flows through the value path only (Ali et al.'s "AH-rule").

AttnLRP (:data:`ATTN_LRP`) keeps Softmax's plain gradient: with ``s = softmax(x)`` and ``R_y = s * c_y``,
``x * s * (c_y - sum(s c_y)) = x * (R_y - s * sum(R_y))``, the paper's softmax rule (its Proposition 3.1,
the first-order Taylor decomposition at ``x`` with the bias term absorbed), so it does not conserve relevance
exactly.  Bilinear products of two active tensors (MatMul such as ``Q K^T`` and ``softmax . V``, elementwise
Mul of two active tensors) take the uniform rule: the plain product-rule gradient halved for each input, so
each receives half the relevance and the sum is conserved (``x * c`` of a bilinear product gives each
operand the full ``R``).  A product with one active operand is linear in it and keeps its gradient.
Einsum and Gemm of two active operands keep their plain gradients (not covered).

Peers: the LXT library (AttnLRP, CP-LRP) and Zennit apply the rules to PyTorch modules; these tables apply them
to the ONNX ops as exported, so a GELU or a normalisation spelt in a way not recognised above takes the rules
of its ops one by one.  The tests hold the tables against the same rules applied by hand in PyTorch (detached
tensors), not against LXT.
"""
from __future__ import annotations

from ..vjp import register
from . import NONLINEAR_UNARY, standard_rule
from .lrp import epsilon_unary


def _producer(ctx, i: int):
    """The forward node that made input ``i`` of the node (None for graph inputs and constants)."""
    if ctx.forward is None or i >= len(ctx.node.input):
        return None
    return ctx.forward.producer.get(ctx.node.input[i])


def _made_by(node, op: str) -> bool:
    return node is not None and node.op_type == op


def _is_constant(ctx, name: str) -> bool:
    return name not in ctx.active


def _sqrt_of_active(ctx, node) -> bool:
    """``node`` is a Sqrt of a tensor that depends on the attributed input (a standard deviation)."""
    return _made_by(node, "Sqrt") and node.input[0] in ctx.active


def _inverse_std(ctx, i: int) -> bool:
    """Input ``i`` of a Mul is ``1 / sqrt(...)`` of an active tensor: Reciprocal(Sqrt) or Div(constant, Sqrt)."""
    node = _producer(ctx, i)
    if node is None or ctx.node.input[i] not in ctx.active or ctx.forward is None:
        return False
    below = ctx.forward.producer.get(node.input[-1]) if node.input else None
    if node.op_type == "Reciprocal":
        return _sqrt_of_active(ctx, below)
    return node.op_type == "Div" and _is_constant(ctx, node.input[0]) and _sqrt_of_active(ctx, below)


def erf_gate(ctx) -> int | None:
    """Which input of a Mul is the argument ``x`` of a written-out GELU ``x * (1 + erf(x / k))`` (the exporter's
    form, with constants ``k`` and ``1``; the factor 0.5 is a Mul of its own), or None."""
    if ctx.forward is None or len(ctx.node.input) != 2:
        return None
    for gate in (0, 1):
        x = ctx.node.input[1 - gate]
        add = _producer(ctx, gate)
        if not _made_by(add, "Add"):
            continue
        for j in (0, 1):
            erf = ctx.forward.producer.get(add.input[j])
            if _made_by(erf, "Erf") and _is_constant(ctx, add.input[1 - j]):
                scaled = ctx.forward.producer.get(erf.input[0])
                if scaled is not None and scaled.op_type in ("Div", "Mul") and scaled.input[0] == x \
                        and _is_constant(ctx, scaled.input[1]):
                    return 1 - gate
    return None


def _plain(ctx) -> list:
    return standard_rule(ctx.node.op_type, ctx.opset).fn(ctx)


def _with_constant_factor(ctx, factor: int) -> list:
    """The plain gradient of the node with input ``factor`` held constant."""
    grads = _plain(ctx)
    grads[factor] = None
    return grads


def _gelu_as_unary(ctx, x: int) -> list:
    """A written-out GELU's Mul ``y = x * gate(x)`` as one unary nonlinearity of ``x`` (epsilon / identity rule)."""
    b, z, y = ctx.b, ctx.x[x], ctx.y[0]
    stabilised = b.add(z, b.mul(b.cast_like(ctx.params["epsilon"], z), b.sign_pm1(z)))
    grads = [None, None]
    grads[x] = b.mul(ctx.dy[0], b.div(y, stabilised))
    return grads


def _mul_rule(ctx, bilinear_half: bool) -> list:
    x = erf_gate(ctx)
    if x is not None:
        return _gelu_as_unary(ctx, x)
    for i in (0, 1):
        if _inverse_std(ctx, i):
            return _with_constant_factor(ctx, i)
    if bilinear_half and ctx.needs(0) and ctx.needs(1):
        return _halved(ctx)
    return _plain(ctx)


def _halved(ctx) -> list:
    """The plain gradient of a bilinear product, halved for each input (the uniform rule)."""
    half = ctx.b.like(0.5, ctx.y[0])
    return [None if g is None else ctx.b.mul(g, half) for g in _plain(ctx)]


def cp_mul(ctx):
    """Mul: a written-out GELU as one unary (epsilon rule), ``x * (1 / std)`` with the scale constant, else plain."""
    return _mul_rule(ctx, bilinear_half=False)


def attn_mul(ctx):
    """Mul as :func:`cp_mul`, and the uniform rule (each gradient halved) when both factors are active."""
    return _mul_rule(ctx, bilinear_half=True)


def attn_matmul(ctx):
    """MatMul of two active operands (``Q K^T``, ``softmax . V``): the uniform rule; else the plain gradient."""
    if ctx.needs(0) and ctx.needs(1):
        return _halved(ctx)
    return _plain(ctx)


def constant_std_div(ctx):
    """Div by ``Sqrt`` of an active tensor (a written-out normalisation): the divisor is a constant."""
    if len(ctx.node.input) > 1 and _sqrt_of_active(ctx, _producer(ctx, 1)):
        return _with_constant_factor(ctx, 1)
    return _plain(ctx)


def _axes(ctx, rank: int) -> list[int]:
    axis = int(ctx.attr("axis", -1))
    return list(range(axis + rank if axis < 0 else axis, rank))


def constant_std_layer_norm(ctx):
    """LayerNormalization with ``inv = 1 / sqrt(var + eps)`` a constant: ``c_x = inv (g - mean(g))``,
    ``g = c_y * scale`` (the mean's own output, when used, passes its cotangent on; InvStdDev's carries none)."""
    b, X, scale = ctx.b, ctx.x[0], ctx.x[1]
    from ..vjp._common import known_rank
    axes = _axes(ctx, known_rank(ctx, X))
    eps = b.like(float(ctx.attr("epsilon", 1e-5)), X)
    centred = b.sub(X, b.reduce("ReduceMean", X, axes))
    inv = b.op("Reciprocal", b.op("Sqrt", b.add(b.reduce("ReduceMean", b.mul(centred, centred), axes), eps)))
    grads = [None] * len(ctx.x)
    if not ctx.needs(0):
        return grads
    parts = []
    if ctx.dy[0] is not None:
        g = b.mul(ctx.dy[0], scale)
        parts.append(b.mul(inv, b.sub(g, b.reduce("ReduceMean", g, axes))))
    if len(ctx.dy) > 1 and ctx.dy[1] is not None:     # Mean = ReduceMean(X): linear
        n = b.cast_like(b.op("ReduceProd", b.op("Gather", b.shape_of(X), b.ints(axes)), keepdims=0), X)
        parts.append(b.op("Expand", b.div(b.cast_like(ctx.dy[1], X), n), b.shape_of(X)))
    grads[0] = b.sum(parts) if parts else None
    return grads


def no_softmax_backward(ctx):
    """Softmax: the attention probabilities are constants (no cotangent for the scores)."""
    return [None] * len(ctx.x)


#: Elementwise products and quotients: their rules return cotangents at the output's shape (the walk sums them
#: back to each input's).
_BROADCAST = ("Mul", "Div")


def transformer_table(rules: dict) -> dict:
    """An override table from a mapping op type -> rule (Mul and Div marked as broadcasting, as their standard
    rules are)."""
    table: dict = {}
    for op, fn in rules.items():
        register(op, table=table, broadcast=op in _BROADCAST)(fn)
    return table


_SHARED = {**{op: epsilon_unary for op in NONLINEAR_UNARY}, "LayerNormalization": constant_std_layer_norm,
           "Div": constant_std_div}

#: Conservative LRP's override table.
CP_LRP = transformer_table({**_SHARED, "Softmax": no_softmax_backward, "Mul": cp_mul})

#: AttnLRP's override table (Softmax keeps its standard rule).
ATTN_LRP = transformer_table({**_SHARED, "Mul": attn_mul, "MatMul": attn_matmul})
