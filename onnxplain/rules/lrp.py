"""Layer-wise relevance propagation as modified gradients: epsilon-LRP (Bach et al., 2015; Ancona et al., 2018).

At a unary nonlinearity ``y = f(z)`` (tag ``nonlinear``, flagged ``unary`` in :mod:`onnxplain.vjp.registry`)
the cotangent is ``dy * f(z) / (z + eps * s(z))`` with ``s(z) = +1 where z >= 0, else -1``; every other op
keeps its gradient, so the attribution ``x * modified gradient`` redistributes relevance layer by layer.

A table is built from a mapping op type -> rule by :func:`lrp_table`; other LRP variants (composites that give
some layers a rule of their own) are mappings of the same kind.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx

from ..vjp import register
from . import NONLINEAR_UNARY


def epsilon_unary(ctx):
    """``dz = dy * y / (z + eps * s(z))``."""
    b, z, y = ctx.b, ctx.x[0], ctx.y[0]
    stabilised = b.add(z, b.mul(b.cast_like(ctx.params["epsilon"], z), b.sign_pm1(z)))
    return [b.mul(ctx.dy[0], b.div(y, stabilised))] + [None] * (len(ctx.x) - 1)


def lrp_table(rules: Mapping[str, Callable]) -> dict:
    """An override table giving each op type of ``rules`` its rule (from opset 1 on)."""
    table: dict = {}
    for op, fn in rules.items():
        register(op, table=table)(fn)
    return table


#: epsilon-LRP's override table: :func:`epsilon_unary` at every unary nonlinearity.
EPSILON = lrp_table({op: epsilon_unary for op in NONLINEAR_UNARY})


# ----------------------------------------------------------------------------------- beyond epsilon: the lrp method
# In the x * c formulation a tensor's cotangent c_t is its relevance divided by it (R_t = t * c_t).  At a layer
# y = F(x, W, b) with output relevance R = y * c_y, every rule of the family below returns c_x with R_x = x * c_x:
#   Wp = a1 W + a2 W+,  Wn = a1 W + a2 W-  (biases alike),  x+ = max(x, 0),  x- = min(x, 0)
#   den_p = F(x+, Wp, bp) + F(x-, Wn),  den_n = F(x+, Wn, bn) + F(x-, Wp)
#   s_p = R (u [y > 0] + alpha) / stab(den_p),  s_n = R (u [y < 0] - beta) / stab(den_n)
#   c_x = where(x > 0, Wp^T s_p + Wn^T s_n, Wn^T s_p + Wp^T s_n)
# epsilon: a1=1, a2=0, u=1 (den_p = den_n = y, stabilised by epsilon); gamma: a1=1, a2=gamma, u=1; alpha_beta:
# a1=0, a2=1, u=0 (z_plus: alpha=1, beta=0); pass: epsilon with a vanishing stabiliser (LRP-0, the gradient).
# The rule of each layer is a row of a per-call table (``lrp_rules``), so composites change without a rebuild.
# flat, w_square and z_box give R_x itself and run at first layers only (see :mod:`.lrp_composites`).
# Each layer computes only the terms its coefficients leave non-zero: ``If`` nodes on the coefficients pick an
# epsilon branch (one transposed application), a half branch (s_n = 0) or the general formula, and at a first
# layer the input rule chosen (see :func:`lrp_layer`); only the taken branch runs.

#: columns of a layer's coefficients (a row of the rule table times the rule matrix)
COEFFICIENTS = ("a1", "a2", "u", "alpha", "beta", "stab", "general", "flat", "w_square", "z_box")


def pass_unary(ctx):
    """Relevance passes unchanged (Zennit's ``Pass``): ``c_z = c_y * y / z`` where ``z != 0``, else 0."""
    b, z, y = ctx.b, ctx.x[0], ctx.y[0]
    zero = b.op("Equal", z, b.like(0.0, z))
    ratio = b.where(zero, b.like(0.0, z), b.div(y, b.where(zero, b.like(1.0, z), z)))
    return [b.mul(ctx.dy[0], ratio)] + [None] * (len(ctx.x) - 1)


class LayerRules:
    """What the layer rules of one explanation graph read: each layer's row of the rule table (by node), the
    rule matrix built from the parameter feeds, and the z_box bounds."""

    def __init__(self, b, layers: dict, table: str, params: dict, tiny: float):
        self.b, self.layers, self.table, self.low, self.high = b, layers, table, params["low"], params["high"]
        p = params
        one, zero = b.like(1.0, p["epsilon"]), b.like(0.0, p["epsilon"])
        tiny = b.like(tiny, p["epsilon"])
        st = p["stabilizer"]
        rows = {  # a1, a2, u, alpha, beta, stab, general, flat, w_square, z_box
            "epsilon": (one, zero, one, zero, zero, p["epsilon"], one, zero, zero, zero),
            "z_plus": (zero, one, zero, one, zero, st, one, zero, zero, zero),
            "alpha_beta": (zero, one, zero, p["alpha"], p["beta"], st, one, zero, zero, zero),
            "gamma": (one, p["gamma"], one, zero, zero, st, one, zero, zero, zero),
            "pass": (one, zero, one, zero, zero, tiny, one, zero, zero, zero),
            "flat": (zero, zero, zero, zero, zero, st, zero, one, zero, zero),
            "w_square": (zero, zero, zero, zero, zero, st, zero, zero, one, zero),
            "z_box": (zero, zero, zero, zero, zero, st, zero, zero, zero, one),
        }
        from .lrp_composites import RULE_NAMES
        flat_rows = [b.reshape(v, b.ints([1, 1])) for name in RULE_NAMES for v in rows[name]]
        self.matrix = b.reshape(b.op("Concat", *flat_rows, axis=0), b.ints([len(RULE_NAMES), len(COEFFICIENTS)]))

    def coefficients(self, layer) -> dict:
        """The scalars of ``layer``'s rule this call."""
        b = self.b
        row = b.op("Gather", self.table, b.ints([layer.index]), axis=0)
        coef = b.reshape(b.op("MatMul", row, self.matrix), b.ints([len(COEFFICIENTS)]))
        return {name: b.op("Gather", coef, b.const(i, np.int64), axis=0) for i, name in enumerate(COEFFICIENTS)}


class _Layer:
    """Forward and transposed applications of one layer node with modified operands."""

    def __init__(self, ctx, data: int):
        self.ctx, self.b, self.node, self.data = ctx, ctx.b, ctx.node, data
        self.x, self.w = ctx.x[data], ctx.x[1 - data]
        self.bias = ctx.x[2] if ctx.node.op_type != "MatMul" and len(ctx.x) > 2 and ctx.x[2] else None
        self.ftype = self.b.elem_type(ctx.y[0])

    def on(self, region) -> "_Layer":
        """This layer, emitting into ``region`` (a branch of an ``If``)."""
        copy = object.__new__(_Layer)
        copy.__dict__.update(self.__dict__)
        copy.b = region
        return copy

    def typed(self, t: str, like: str) -> str:
        self.b.set_type(t, self.b.elem_type(like) or self.ftype, self.b.shape(like))
        return t

    def _inputs(self, x: str, w: str, bias: str | None) -> list[str]:
        inputs = list(self.ctx.x)
        inputs[self.data], inputs[1 - self.data] = x, w
        if len(inputs) > 2:
            inputs[2] = bias or ""
        return inputs

    def forward(self, x: str, w: str, bias: str | None = None) -> str:
        b = self.b
        out = b.fresh(f"{self.node.name or self.node.op_type}__lrp")
        node = onnx.helper.make_node(self.node.op_type, self._inputs(x, w, bias), [out],
                                     name=b.fresh(f"{self.node.name or self.node.op_type}__lrp"))
        node.attribute.extend(self.node.attribute)
        b.nodes.append(node)
        return self.typed(out, self.ctx.y[0])

    def transpose(self, w: str, s: str) -> str:
        """``W'^T s`` for the data input (the standard rule of the node with ``w`` as its weight)."""
        from . import standard_rule
        from ..backward import VJPContext
        node = onnx.helper.make_node(self.node.op_type, self._inputs(self.x, w, self.bias), list(self.node.output),
                                     name=self.node.name)
        node.attribute.extend(self.node.attribute)
        sub = VJPContext(self.b, node, [self.typed(s, self.ctx.y[0])], frozenset({self.x}), params=self.ctx.params,
                         rules=self.ctx.rules, forward=self.ctx.forward)
        return standard_rule(self.node.op_type, self.b.opset).fn(sub)[self.data]


def _stab(b, d: str, st: str) -> str:
    return b.add(d, b.mul(st, b.sign_pm1(d)))


def _signed_parts(b, t: str) -> tuple[str, str]:
    pos = b.op("Relu", t)
    return pos, b.sub(t, pos)


def _choose(b, cond: str, then_fn, else_fn, like: str) -> str:
    """An ``If`` on the scalar ``cond``: ``then_fn(region)`` or ``else_fn(region)``, each emitting its nodes into
    a branch of its own (reading outer tensors by name), so only the taken one runs; the result is typed as
    ``like``."""
    et = b.elem_type(like)
    branches = {}
    for key, fn in (("then_branch", then_fn), ("else_branch", else_fn)):
        region = b.child()
        region.outputs.append(b.typed(region.op("Identity", fn(region)), et))
        branches[key] = region.subgraph(key)
    out = b.op("If", cond, **branches)
    b.set_type(out, et, b.shape(like))
    return out


def _is(b, value: str, target: float) -> str:
    return b.op("Equal", value, b.like(target, value))


def _all(b, *conds: str) -> str:
    out = conds[0]
    for c in conds[1:]:
        out = b.op("And", out, c)
    return out


def _picked(b, k: dict, name: str) -> str:
    return b.op("Greater", k[name], b.like(0.5, k[name]))


def lrp_layer(ctx):
    """The lrp method's rule at a Conv, ConvTranspose, Gemm or MatMul layer (see the formulas above); a node
    that is not one of the graph's layers (a MatMul of two activations) keeps its gradient.

    The layer's coefficients select, at run time, which of these branches (``If`` nodes: only the taken one
    runs) computes ``c_x``, each the general formula with the terms that vanish left out:

    - a2 = alpha = beta = 0 (epsilon, pass): ``Wp = Wn = a1 W``, ``den_p = den_n = a1 y``, so
      ``c_x = W^T (a1 u R |sign y| / stab(a1 y))``: one transposed application, no forward one;
    - u = beta = 0 (z_plus, alpha_beta with beta = 0): ``s_n = 0``, so ``c_x = where(x > 0, Wp^T s_p, Wn^T s_p)``;
    - else the general formula.

    Where the layer's input has no negative element, ``F(x-, .) = 0`` is left out of the denominators.  At a
    first layer the input rules (z_box, flat, w_square, in that order of precedence) each run only when chosen.
    """
    from . import standard_rule
    rules: LayerRules | None = ctx.params.get("lrp")
    layer = rules.layers.get(id(ctx.node)) if rules is not None else None
    if layer is None:
        return standard_rule(ctx.node.op_type, ctx.opset).fn(ctx)
    b, L = ctx.b, _Layer(ctx, layer.data)
    k = rules.coefficients(layer)
    relevance = b.mul(ctx.y[0], ctx.dy[0])
    grads = [None] * len(ctx.x)
    if layer.first:
        grads[layer.data] = _input_relevance(b, L, rules, k, relevance)
    else:
        grads[layer.data] = _layer_cotangent(b, L, k, relevance)
    return grads


def _layer_cotangent(b, L: "_Layer", k: dict, relevance: str) -> str:
    """``c_x`` of the layer's rule: the epsilon branch, the half branch or the general one (see :func:`lrp_layer`)."""
    cheap = _all(b, _is(b, k["a2"], 0.0), _is(b, k["alpha"], 0.0), _is(b, k["beta"], 0.0))
    half = _all(b, _is(b, k["u"], 0.0), _is(b, k["beta"], 0.0))
    flat_x = b.reshape(L.x, b.ints([-1]))
    nonneg = b.op("GreaterOrEqual", b.reduce("ReduceMin", flat_x, [0], keepdims=0), b.like(0.0, L.x))
    return _choose(b, cheap, lambda r: _epsilon_branch(L.on(r), k, relevance),
                   lambda r: _choose(r, half, lambda q: _half_branch(L.on(q), k, relevance, nonneg),
                                     lambda q: _general_branch(L.on(q), k, relevance, nonneg), L.x), L.x)


def _epsilon_branch(L: "_Layer", k: dict, relevance: str) -> str:
    """a2 = alpha = beta = 0: ``c_x = W^T (a1 u R |sign y| / stab(a1 y))``."""
    b, y = L.b, L.ctx.y[0]
    mask = b.op("Abs", b.op("Sign", y))
    scale = b.cast_like(b.mul(k["a1"], k["u"]), y)
    s = b.div(b.mul(b.mul(relevance, mask), scale), _stab(b, b.mul(b.cast_like(k["a1"], y), y), k["stab"]))
    return L.transpose(L.w, s)


def _modified(L: "_Layer", k: dict):
    """``Wp, Wn, bp, bn`` of the general formula."""
    b, w = L.b, L.w
    wp_, wn_ = (L.typed(t, w) for t in _signed_parts(b, w))
    wp = L.typed(b.add(b.mul(k["a1"], w), b.mul(k["a2"], wp_)), w)
    wn = L.typed(b.add(b.mul(k["a1"], w), b.mul(k["a2"], wn_)), w)
    bp = bn = None
    if L.bias:
        bias_p, bias_n = _signed_parts(b, L.bias)
        bp = b.add(b.mul(k["a1"], L.bias), b.mul(k["a2"], bias_p))
        bn = b.add(b.mul(k["a1"], L.bias), b.mul(k["a2"], bias_n))
    return wp, wn, bp, bn


def _split_forward(L: "_Layer", nonneg: str, w_pos: str, bias: str | None, w_neg: str) -> str:
    """``F(x+, w_pos, bias) + F(x-, w_neg)``; where x has no negative element, ``F(x, w_pos, bias)`` alone."""
    def both(r):
        M = L.on(r)
        xp, xn = (M.typed(t, M.x) for t in _signed_parts(r, M.x))
        return r.add(M.forward(xp, w_pos, bias), M.forward(xn, w_neg))
    return _choose(L.b, nonneg, lambda r: L.on(r).forward(L.x, w_pos, bias), both, L.ctx.y[0])


def _half_branch(L: "_Layer", k: dict, relevance: str, nonneg: str) -> str:
    """u = beta = 0: ``s_n = 0``, ``c_x = where(x > 0, Wp^T s_p, Wn^T s_p)`` with ``s_p = alpha R / stab(den_p)``."""
    b, x = L.b, L.x
    wp, wn, bp, _ = _modified(L, k)
    s_p = b.div(b.mul(relevance, k["alpha"]), _stab(b, _split_forward(L, nonneg, wp, bp, wn), k["stab"]))
    return b.where(b.op("Greater", x, b.like(0.0, x)), L.transpose(wp, s_p), L.transpose(wn, s_p))


def _general_branch(L: "_Layer", k: dict, relevance: str, nonneg: str) -> str:
    """The general formula (four forward and four transposed applications; two forward ones where x >= 0)."""
    b, x, y = L.b, L.x, L.ctx.y[0]
    wp, wn, bp, bn = _modified(L, k)
    den_p = _split_forward(L, nonneg, wp, bp, wn)
    den_n = _split_forward(L, nonneg, wn, bn, wp)
    zero = b.like(0.0, y)
    pos = b.op("Cast", b.op("Greater", y, zero), to=L.ftype)
    neg = b.op("Cast", b.op("Less", y, zero), to=L.ftype)
    s_p = b.div(b.mul(relevance, b.add(b.mul(k["u"], pos), k["alpha"])), _stab(b, den_p, k["stab"]))
    s_n = b.div(b.mul(relevance, b.sub(b.mul(k["u"], neg), k["beta"])), _stab(b, den_n, k["stab"]))
    return b.where(b.op("Greater", x, b.like(0.0, x)),
                   b.add(L.transpose(wp, s_p), L.transpose(wn, s_n)),
                   b.add(L.transpose(wn, s_p), L.transpose(wp, s_n)))


def _input_relevance(b, L: "_Layer", rules: LayerRules, k: dict, relevance: str) -> str:
    """At a first layer: the relevance of its input itself, that of z_box, flat or w_square when one is chosen
    (in that order of precedence), else ``x * c_x``; only the chosen one is computed."""
    x = L.x
    own = lambda r: r.mul(x, _layer_cotangent(r, L.on(r), k, relevance))  # noqa: E731
    w_square = lambda r: _choose(r, _picked(b, k, "w_square"), lambda q: _w_square(L.on(q), k, relevance), own, x)  # noqa: E731
    flat = lambda r: _choose(r, _picked(b, k, "flat"), lambda q: _flat(L.on(q), k, relevance), w_square, x)  # noqa: E731
    return _choose(b, _picked(b, k, "z_box"), lambda q: _z_box(L.on(q), rules, k, relevance), flat, x)


def _ones_like(L: "_Layer", t: str) -> str:
    b = L.b
    return L.typed(b.op("Expand", b.like(1.0, t), b.shape_of(t)), t)


def _flat(L: "_Layer", k: dict, relevance: str) -> str:
    b = L.b
    ones_w = _ones_like(L, L.w)
    return L.transpose(ones_w, b.div(relevance, _stab(b, L.forward(_ones_like(L, L.x), ones_w), k["stab"])))


def _w_square(L: "_Layer", k: dict, relevance: str) -> str:
    b, w = L.b, L.w
    w2 = L.typed(b.mul(w, w), w)
    den = L.forward(_ones_like(L, L.x), w2, b.mul(L.bias, L.bias) if L.bias else None)
    return L.transpose(w2, b.div(relevance, _stab(b, den, k["stab"])))


def _z_box(L: "_Layer", rules: LayerRules, k: dict, relevance: str) -> str:
    b, x, w, y = L.b, L.x, L.w, L.ctx.y[0]
    shape = b.shape_of(x)
    wp_, wn_ = (L.typed(t, w) for t in _signed_parts(b, w))
    low = L.typed(b.op("Expand", b.cast_like(rules.low, x), shape), x)
    high = L.typed(b.op("Expand", b.cast_like(rules.high, x), shape), x)
    bias_p, bias_n = _signed_parts(b, L.bias) if L.bias else (None, None)
    den = b.sub(b.sub(y, L.forward(low, wp_, bias_p)), L.forward(high, wn_, bias_n))
    s = b.div(relevance, _stab(b, den, k["stab"]))
    return b.sub(b.sub(b.mul(x, L.transpose(w, s)), b.mul(low, L.transpose(wp_, s))), b.mul(high, L.transpose(wn_, s)))


def lrp_overrides() -> dict:
    """The lrp method's override table: :func:`lrp_layer` at the layer ops, :func:`pass_unary` at every unary
    nonlinearity and at BatchNormalization (one left unfolded passes relevance on, as Zennit's ``Pass``)."""
    from .lrp_composites import LAYER_OPS
    table = {op: pass_unary for op in NONLINEAR_UNARY}
    table["BatchNormalization"] = pass_unary
    table.update({op: lrp_layer for op in LAYER_OPS})
    return lrp_table(table)


#: the lrp method's override table
LRP_RULES = lrp_overrides()
