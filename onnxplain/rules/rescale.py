"""DeepLIFT's Rescale rule (Shrikumar et al., 2017; Ancona et al., 2018), with Shapley rules where
two activations meet, so that summation-to-delta holds on any graph.

Every rule here maps the output cotangent ``dy`` of a node to *multipliers* ``m_i`` of its inputs
such that ``sum_i m_i * (x_i - x_i_ref) = dy * (y - y_ref)`` (the difference is conserved), so the
attributions of the whole graph add up to ``f(x) - f(x_ref)`` whatever way an exporter wrote a layer:

* unary nonlinearities ``y = f(z)``: ``dy * (f(z) - f(z_ref)) / (z - z_ref)``, the gradient where
  ``|z - z_ref| < eps`` (the unique conserving multiplier of a one-input elementwise op);
* ops of several tensors that depend on the attributed input (``a * b``, ``a / b``, ``a ** b``,
  Max, Min, Mod, PRelu and Clip with active slopes or bounds) take the Shapley values of their inputs as
  players: for two players ``phi_a = 1/2 [f(a, b_ref) - f(a_ref, b_ref)] + 1/2 [f(a, b) - f(a_ref, b)]``
  and ``m_a = phi_a / (a - a_ref)``.  For bilinear maps (Mul, MatMul, Gemm, two-operand Einsum, Conv and ConvTranspose
  of an attributed input by an attributed weight) this is
  the plain gradient taken at the midpoints, ``d(AB) = dA (B + B_ref) / 2 + (A + A_ref) / 2 dB``;
  one active operand keeps the plain gradient (the map is linear in it);
* ops nonlinear in one tensor that reduce or select (ReduceMax/ReduceMin, GlobalMaxPool, Where whose
  condition and Gather whose indices depend on the input) route the difference so that it is
  conserved (cross-max, like MaxPool); piecewise-constant ops (Floor, Ceil, Round, Sign) are rescaled;
* products (ReduceProd, CumProd, ScatterND / ScatterElements with reduction mul) take the symmetric telescoping
  rule, TopK the selection rule, the max / min scatters the cross-extremum rule and Hardmax a conserving spread
  of ``Δy`` (:mod:`onnxplain.rules.rescale_products`);
* fused ops take the multipliers of one canonical decomposition under the rules above, so the result
  does not depend on whether an exporter fused them: Softmax = ``exp(z) / sum(exp(z))`` at
  ``z = x - max(x)`` (the cross-max rule at the maximum, Div's Shapley rule, Exp rescaled: every term finite),
  LogSoftmax = ``z - log(sum(exp(z)))``, LayerNormalization and
  InstanceNormalization = ``(x - mean) / sqrt(mean((x - mean) * (x - mean)) + eps) * scale + bias``.
  Gelu, HardSwish, Mish... have one input, so the unary rule is already their decomposition's.

Reference values come from :class:`onnxplain.rules.Partner` (``ctx.ref``): the expanded batch is
``[inputs; references]`` and ``ctx.ref(t)`` swaps its halves.  Tensors that do not depend on the
attributed input are the same in both halves (or have no batch axis), so they are their own reference.
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import onnx

from ..vjp import register
from ..vjp._common import Reduction, const_value, fail
from ..vjp.pool import max_pool_indices
from . import NONLINEAR_UNARY, standard_rule

RESCALE: dict = {}

#: Variadic ops (Max, Min) are Shapley-valued exactly over all subsets of their active inputs: 2**n forward
#: evaluations per node, so the number of active inputs is bounded.
MAX_PLAYERS = 4


# ------------------------------------------------------------------------------------ helpers
def _safe_ratio(b, num: str, den: str, small: str) -> str:
    """``num / den`` where ``den`` is not small, 0 elsewhere (no inf or NaN anywhere)."""
    safe = b.where(small, b.like(1.0, den), den)
    return b.div(num, safe)


def _small(ctx, delta: str) -> str:
    """``|delta| < eps``, and true where ``delta`` is NaN (``-inf - -inf`` at masked attention scores):
    the Rescale rule falls back to the gradient there."""
    b = ctx.b
    return b.op("Not", b.op("GreaterOrEqual", b.op("Abs", delta), b.cast_like(ctx.params["eps"], delta)))


def reference(ctx, t: str) -> str:
    """The reference value of input ``t``: its partner rows when it depends on the attributed input,
    ``t`` itself otherwise (constants, weights, passed-through masks)."""
    return ctx.ref(t) if t in ctx.active else t


def midpoint(ctx, t: str) -> str:
    """``(t + t_ref) / 2``, typed like ``t`` (``t`` itself when it does not depend on the input)."""
    b = ctx.b
    if t not in ctx.active:
        return t
    mid = b.mul(b.add(t, ctx.ref(t)), b.like(0.5, t))
    b.set_type(mid, b.elem_type(t), b.shape(t))
    return mid


def _rescaled(ctx, phi: str, i: int, gradient: str | None) -> str:
    """``dy * phi / (x_i - x_i_ref)``, and ``gradient`` (output-shaped) where the difference is small."""
    b, x = ctx.b, ctx.x[i]
    delta = b.sub(x, ctx.ref(x))
    small = _small(ctx, delta)
    rescaled = b.mul(ctx.dy[0], _safe_ratio(b, phi, delta, small))
    return rescaled if gradient is None else b.where(small, gradient, rescaled)


def _standard(ctx) -> list:
    return standard_rule(ctx.node.op_type, ctx.opset).fn(ctx)


def _players(ctx) -> list[int]:
    """Indices of the node's inputs that depend on the attributed input."""
    return [i for i, x in enumerate(ctx.x) if x and ctx.needs(i)]


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


# ------------------------------------------------------------------------------------ unary ops
def rescale_unary(ctx):
    """``dz = dy * (y - y_ref) / (z - z_ref)``, the gradient where ``|z - z_ref| < eps``."""
    b, z, y = ctx.b, ctx.x[0], ctx.y[0]
    dz_in, dy_out = b.sub(z, ctx.ref(z)), b.sub(y, ctx.ref(y))
    small = _small(ctx, dz_in)
    gradient = _standard(ctx)[0]
    rescaled = b.mul(ctx.dy[0], _safe_ratio(b, dy_out, dz_in, small))
    if gradient is None:   # piecewise constant: 0 where nothing moved
        gradient = b.like(0.0, z)
    return [b.where(small, gradient, rescaled)] + [None] * (len(ctx.x) - 1)


#: Piecewise-constant ops: zero gradient, but a row and its reference may sit on different steps.
PIECEWISE_CONSTANT = ("Floor", "Ceil", "Round", "Sign")

for _op in NONLINEAR_UNARY + PIECEWISE_CONSTANT:
    if _op not in ("PRelu", "Clip"):   # these take slopes / bounds that may be active: Shapley below
        register(_op, table=RESCALE)(rescale_unary)


# ------------------------------------------------------------------------------------ Shapley
def _shapley_weight(n: int, s: int) -> float:
    """Weight of a coalition of ``s`` others in player's Shapley value among ``n`` players."""
    return math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n)


@register("Max", "Min", "Pow", "PRelu", "Clip", "Mod", broadcast=True, table=RESCALE)
def shapley_elementwise(ctx):
    """Exact Shapley multipliers of an elementwise op's active inputs (``f`` re-evaluated on every mix
    of input and reference values); with one active input this is the Rescale rule ``Δy / Δx``.
    ``Pow`` with the constant exponent 2 is exact in closed form: ``m = a + a_ref``."""
    b, node = ctx.b, ctx.node
    players = _players(ctx)
    if not players:
        return [None] * len(ctx.x)
    if node.op_type == "Pow" and players == [0] and _is_constant_two(ctx, ctx.x[1]):
        return [b.mul(ctx.dy[0], b.add(ctx.x[0], ctx.ref(ctx.x[0]))), None]
    if len(players) > MAX_PLAYERS:
        raise fail(ctx, f"DeepLIFT's Shapley rule takes at most {MAX_PLAYERS} inputs that depend on the "
                         f"attributed input, this node has {len(players)}")
    attrs = _attributes(node)
    values: dict[frozenset, str] = {frozenset(players): ctx.y[0], frozenset(): ctx.ref(ctx.y[0])}

    def value(present: frozenset) -> str:
        if present not in values:
            args = [x if (i not in players or i in present) else ctx.ref(x) for i, x in enumerate(ctx.x)]
            values[present] = b.op(node.op_type, *args, **attrs)
        return values[present]

    gradients = _standard(ctx)
    grads = [None] * len(ctx.x)
    n = len(players)
    for i in players:
        others = [j for j in players if j != i]
        terms = []
        for s in range(n):
            for coalition in itertools.combinations(others, s):
                with_i, without = frozenset(coalition) | {i}, frozenset(coalition)
                gain = b.sub(value(with_i), value(without))
                w = _shapley_weight(n, s)
                terms.append(gain if w == 1.0 else b.mul(gain, b.like(w, ctx.y[0])))
        grads[i] = _rescaled(ctx, b.sum(terms), i, gradients[i])
    return grads


def _is_constant_two(ctx, name: str) -> bool:
    value = const_value(ctx.b, name)
    return value is not None and value.size == 1 and float(value.reshape(())) == 2.0


@register("Mul", broadcast=True, table=RESCALE)
@register("MatMul", "Gemm", "Einsum", "Conv", "ConvTranspose", table=RESCALE)
def shapley_bilinear(ctx):
    """Bilinear maps: the plain gradient with every active operand replaced by its midpoint
    ``(x + x_ref) / 2`` (each operand's cotangent reads only the others, so ``dA = dY (B + B_ref) / 2``
    and ``dB = (A + A_ref) / 2 dY``); with one active operand this is the plain gradient."""
    added = 2 if ctx.node.op_type in ("Gemm", "Conv", "ConvTranspose") else None   # C, a convolution's bias
    active = [i for i in _players(ctx) if i != added]
    if len(active) < 2:
        return _standard(ctx)
    if len(active) > 2:
        raise fail(ctx, f"DeepLIFT's Shapley rule for a product of {len(active)} operands that depend on the "
                         f"attributed input is not implemented (two are)")
    node = onnx.NodeProto()
    node.CopyFrom(ctx.node)
    mids = {}
    for i in active:
        mids[i] = midpoint(ctx, ctx.x[i])
        node.input[i] = mids[i]
    return standard_rule(ctx.node.op_type, ctx.opset).fn(
        dataclasses.replace(ctx, node=node, active=ctx.active | set(mids.values())))


@register("Div", broadcast=True, table=RESCALE)
def shapley_div(ctx):
    """``y = a / c``: ``m_a = (1/c + 1/c_ref) / 2`` and ``m_c = -(a + a_ref) / (2 c c_ref)`` (the
    two-player Shapley values in closed form; with ``a`` constant, ``m_c = Δy / Δc`` exactly)."""
    b, (a, c), dy = ctx.b, ctx.x, ctx.dy[0]
    c_ref = reference(ctx, c)
    da = dc = None
    if ctx.needs(0) and ctx.needs(1):
        da = b.mul(dy, b.mul(b.add(b.op("Reciprocal", c), b.op("Reciprocal", c_ref)), b.like(0.5, ctx.y[0])))
    elif ctx.needs(0):
        da = b.div(dy, c)
    if ctx.needs(1):
        a_sum = b.add(a, ctx.ref(a)) if ctx.needs(0) else b.mul(a, b.like(2.0, ctx.y[0]))
        dc = b.neg(b.div(b.mul(dy, a_sum), b.mul(b.mul(c, c_ref), b.like(2.0, ctx.y[0]))))
    return [da, dc]


# ------------------------------------------------------------------------------------ selection
def _share_by_magnitude(ctx, dz: str, own: str, other: str) -> tuple[str, str]:
    """Selections that differ between a row and its reference: the row picked an entry that moved by
    ``own``, the reference one that moved by ``other``; each entry takes the part of ``dy * Δy``
    proportional to ``|Δ|``, as the multiplier ``dy Δy / (|own| + |other|) * sign(Δ)``.  Returns that
    share (``dy Δy / (|own| + |other|)``) and where it is undefined (both entries unmoved: the plain
    gradient is used there)."""
    b = ctx.b
    total = b.add(b.op("Abs", own), b.op("Abs", other))
    small = _small(ctx, total)
    return _safe_ratio(b, b.mul(ctx.dy[0], dz), total, small), small


@register("Where", broadcast=True, table=RESCALE)
def rescale_where(ctx):
    """``y = where(cond, a, c)``.  A condition that is the same in a row and its reference routes the
    cotangent (the plain gradient, linear in a and c).  One computed from the attributed input may
    differ: the branch the row picked and the one the reference picked share ``Δy`` in proportion to
    how much each moved (:func:`_share_by_magnitude`); with equal conditions this is the gradient, and
    a branch that does not depend on the input leaves the whole of ``Δy`` to the one that does
    (``Δy / Δa``, the unique conserving answer)."""
    b, cond, y = ctx.b, ctx.x[0], ctx.y[0]
    gradients = _standard(ctx)
    if not differs_from_reference(ctx, cond):
        return gradients
    zero = b.like(0.0, y)
    cond_ref = ctx.ref(cond)
    moved = {i: b.sub(ctx.x[i], ctx.ref(ctx.x[i])) if ctx.needs(i) else zero for i in (1, 2)}
    own, other = b.where(cond, moved[1], moved[2]), b.where(cond_ref, moved[1], moved[2])
    share, small = _share_by_magnitude(ctx, b.sub(y, ctx.ref(y)), own, other)
    picks = {1: b.add(b.cast_like(cond, y), b.cast_like(cond_ref, y)),
             2: b.add(b.cast_like(b.op("Not", cond), y), b.cast_like(b.op("Not", cond_ref), y))}
    grads = [None, None, None]
    for i in (1, 2):
        if ctx.needs(i):
            grads[i] = b.where(small, gradients[i], b.mul(b.mul(share, picks[i]), b.op("Sign", moved[i])))
    return grads


@register("Gather", "GatherElements", "GatherND", table=RESCALE)
def rescale_selection(ctx):
    """Selections whose indices are computed from the input (a classifier pooling the last non-pad
    token): a row and its reference may pick different entries ``p`` and ``p'`` of the data.  The two
    share ``Δy`` in proportion to ``|x_p - x_ref_p|`` and ``|x_p' - x_ref_p'|`` (:func:`_share_by_magnitude`),
    scattered back by the row's and by the reference's own indices; with equal indices this is the plain
    gradient."""
    gradients = _standard(ctx)
    if not ctx.needs(0) or not differs_from_reference(ctx, ctx.x[1]):
        return gradients
    b, x, y, dy = ctx.b, ctx.x[0], ctx.y[0], ctx.dy[0]
    # how much the picked entries moved: the row's pick in the top half, the reference's below
    moved = b.op(ctx.node.op_type, b.sub(x, ctx.ref(x)), *ctx.x[1:], **_attributes(ctx.node))
    half = ctx.ref.half(y)
    top, bottom = _rows(b, moved, None, half), b.neg(_rows(b, moved, half, None))
    dz = b.sub(_rows(b, y, None, half), _rows(b, y, half, None))
    picked = dataclasses.replace(ctx, dy=[_rows(b, dy, None, half)])
    share, small = _share_by_magnitude(picked, dz, top, bottom)
    seed = b.op("Concat", b.where(small, picked.dy[0], b.mul(share, b.op("Sign", top))),
                b.where(small, b.like(0.0, y), b.mul(share, b.op("Sign", bottom))), axis=0)
    scattered = standard_rule(ctx.node.op_type, ctx.opset).fn(dataclasses.replace(ctx, dy=[seed]))[0]
    # the reference's pick landed on the reference rows of x: add it onto the rows it is the reference of
    x_half = ctx.ref.half(scattered)
    below = _rows(b, scattered, x_half, None)
    return [b.op("Concat", b.add(_rows(b, scattered, None, x_half), below), b.zeros_like(below), axis=0)] + \
        [None] * (len(ctx.x) - 1)


def _rows(b, t: str, start: str | None, stop: str | None) -> str:
    """Rows ``[start, stop)`` of ``t`` (from the first row / to the last when None)."""
    end = stop if stop is not None else b.ints([np.iinfo(np.int64).max])
    return b.op("Slice", t, start if start is not None else b.ints([0]), end, b.ints([0]))


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


def extremum_multipliers(ctx, x: str, z: str, keep, sum_keep, top_op: str) -> tuple[str, str, str]:
    """The cross-extremum rule's multipliers of ``x`` for its extremum ``z`` over some axes (``top_op="Max"``
    or ``"Min"``): ``ext(z, z_ref) - z_ref`` goes to the input's extremum positions and ``z - ext(z, z_ref)`` to
    the reference's, each divided by that position's ``x - x_ref`` (ties split equally); both parts vanish where
    ``x - x_ref`` does, so ``sum(m * (x - x_ref)) = z - z_ref``.  ``keep`` makes a z-shaped tensor broadcast
    against x, ``sum_keep`` sums an x-shaped one over the reduced axes keeping dims.

    Returns ``(m, small, share)``: ``m`` (0 where ``small``), the positions where nothing moved, and
    ``share``, the extremum's gradient (its positions in x, ties split), for the caller's fallback there.
    Each multiplier lies in [0, 1]."""
    b = ctx.b
    x_ref = ctx.ref(x)
    z, z_ref = keep(z), keep(ctx.ref(z))
    top = b.op(top_op, z, z_ref)
    hit, hit_ref = (b.cast_like(b.op("Equal", t, zt), x) for t, zt in ((x, z), (x_ref, z_ref)))
    share = b.div(hit, sum_keep(hit))
    to_input = b.mul(b.sub(top, z_ref), share)
    to_reference = b.div(b.mul(b.sub(z, top), hit_ref), sum_keep(hit_ref))
    delta = b.sub(x, x_ref)
    small = _small(ctx, delta)
    return _safe_ratio(b, b.add(to_input, to_reference), delta, small), small, share


def cross_extremum(ctx, keep, sum_keep, top_op: str) -> str:
    """The cross-extremum rule (:func:`extremum_multipliers`) of a reduction node to the maximum or minimum,
    with the node's own gradient where nothing moved."""
    m, small, _ = extremum_multipliers(ctx, ctx.x[0], ctx.y[0], keep, sum_keep, top_op)
    return ctx.b.where(small, _standard(ctx)[0], ctx.b.mul(keep(ctx.dy[0]), m))


def _extremum_reduction(from_input: bool):
    def rule(ctx):
        """ReduceMax / ReduceMin: the cross-extremum rule over the reduced axes."""
        r = Reduction(ctx, from_input)
        top_op = "Max" if ctx.node.op_type == "ReduceMax" else "Min"
        return [cross_extremum(ctx, r.keep, r.sum_keep, top_op)] + [None] * (len(ctx.x) - 1)
    return rule


for _op in ("ReduceMax", "ReduceMin"):
    register(_op, table=RESCALE)(_extremum_reduction(False))
    register(_op, since=18, table=RESCALE)(_extremum_reduction(True))


@register("GlobalMaxPool", table=RESCALE)
def rescale_global_max_pool(ctx):
    """GlobalMaxPool: the cross-extremum rule over the spatial axes."""
    rank = ctx.b.rank(ctx.x[0])
    if rank is None:
        raise fail(ctx, f"the rank of {ctx.x[0]!r} is unknown")
    axes = list(range(2, rank))
    return [cross_extremum(ctx, lambda t: t, lambda t: ctx.b.reduce_sum(t, axes, keepdims=1), "Max")]


@register("MaxPool", table=RESCALE)
def rescale_maxpool(ctx):
    """Cross-max rule: ``max(o, o_ref) - o_ref`` goes to the input's argmax, ``o - max(o, o_ref)``
    to the reference's argmax, each divided by that position's ``x - x_ref``."""
    b, x, o = ctx.b, ctx.x[0], ctx.y[0]
    indices = max_pool_indices(ctx)
    o_ref = ctx.ref(o)
    top = b.op("Max", o, o_ref)
    to_input = b.mul(ctx.dy[0], b.sub(top, o_ref))
    to_reference = b.mul(ctx.dy[0], b.sub(o, top))
    if ctx.ref.stacked:
        # the second half's indices point into the second half: move them onto the partner rows; only the
        # first half of the rows carries target cotangents, so keep both terms of the first half
        ref_indices = ctx.ref(b.op("Sub", indices, ctx.ref.bottom_offset(x)))
        half = ctx.ref.half(o)
        terms = [(_rows(b, to_input, None, half), _rows(b, indices, None, half)),
                 (_rows(b, to_reference, None, half), _rows(b, ref_indices, None, half))]
    else:   # the reference's own copy of the pooling: its indices point into a tensor shaped like x
        terms = [(to_input, indices), (to_reference, ctx.ref(indices))]
    updates = b.op("Concat", *[_flat(b, u) for u, _ in terms], axis=0)
    where = b.op("Concat", *[_flat(b, i) for _, i in terms], axis=0)
    zeros = b.op("ConstantOfShape", b.reshape(b.op("Size", x), b.ints([1])))
    summed = b.op("ScatterElements", b.cast_like(zeros, updates), where, updates, axis=0, reduction="add")
    dx_total = b.reshape_like(summed, x)
    delta = b.sub(x, ctx.ref(x))
    return [_safe_ratio(b, dx_total, delta, _small(ctx, delta))]


def _flat(b, t: str) -> str:
    return b.reshape(t, b.ints([-1]))


from . import rescale_fused, rescale_products, rescale_sampling, rescale_spectral  # noqa: E402,F401  (register more rules in RESCALE)
