"""Recurrent layers: LSTM, GRU and RNN.

The backward pass of a recurrent node is the backward pass of its *expansion*:
the same layer written as one ``Scan`` per direction over its cell equations in
standard ops (``MatMul``, ``Add``, ``Mul``, the activations), with the input
projection of every time step done by one ``MatMul`` before the scan.  The
expansion recomputes the layer's outputs next to the fused node (which keeps
running the forward pass), and the ordinary walk differentiates it: the
``Scan`` rule of :mod:`onnxplain.vjp.control_flow` runs the time steps
backwards, and a method's modified rules apply at the cell's nonlinearities,
whose tensors are batch first inside the scan body (``(batch, hidden)``).

Everything the ONNX operators define is expanded: the three directions,
``sequence_lens`` (padded steps leave the state unchanged and output zeros, and a
reverse direction starts at each sequence's own last step), initial states,
peepholes, ``clip``, LSTM's ``input_forget``, GRU's ``linear_before_reset``,
``layout`` 1 (batch first), and the activations with their ``activation_alpha``
and ``activation_beta``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import UnsupportedOperatorError
from ..graph import GraphBuilder, np_dtype
from .registry import register


@dataclass(frozen=True)
class Cell:
    """What distinguishes the three layers: gates per step, activations, and whether a cell state is carried."""

    op_type: str
    gates: int
    default_activations: tuple[str, ...]
    has_cell_state: bool


LSTM = Cell("LSTM", 4, ("Sigmoid", "Tanh", "Tanh"), True)
GRU = Cell("GRU", 3, ("Sigmoid", "Tanh"), False)
RNN = Cell("RNN", 1, ("Tanh",), False)

#: activation -> (takes alpha, takes beta, default alpha, default beta), as the ONNX operators define them
_ACTIVATIONS = {
    "relu": (False, False, 0.0, 0.0), "tanh": (False, False, 0.0, 0.0), "sigmoid": (False, False, 0.0, 0.0),
    "softsign": (False, False, 0.0, 0.0), "softplus": (False, False, 0.0, 0.0),
    "leakyrelu": (True, False, 0.01, 0.0), "thresholdedrelu": (True, False, 1.0, 0.0), "elu": (True, False, 1.0, 0.0),
    "hardsigmoid": (True, True, 0.2, 0.5),
    # no default in the ONNX operators (runtimes disagree): the node must give them
    "affine": (True, True, None, None), "scaledtanh": (True, True, None, None),
}


@register("LSTM", tag="compound")
def vjp_lstm(ctx):
    """LSTM through its expansion into a Scan over ``i, o, f, c`` gates."""
    return _through_expansion(ctx, LSTM)


@register("GRU", tag="compound")
def vjp_gru(ctx):
    """GRU through its expansion into a Scan over ``z, r, h`` gates."""
    return _through_expansion(ctx, GRU)


@register("RNN", tag="compound")
def vjp_rnn(ctx):
    """Vanilla RNN through its expansion into a Scan."""
    return _through_expansion(ctx, RNN)


def _through_expansion(ctx, cell: Cell) -> list:
    """Cotangents of the node's inputs: the walk over the node's expansion, seeded with its outputs' cotangents."""
    b = ctx.b
    region = b.child()
    outputs = expand(region, ctx.node, cell)
    region.infer_types(region.nodes)
    seeds = {o: dy for name, o, dy in zip(ctx.y, outputs, ctx.dy) if name and dy is not None}
    wrt = list(dict.fromkeys(x for i, x in enumerate(ctx.x) if ctx.needs(i)))
    grads = ctx.walk(region, seeds, wrt)
    b.nodes.extend(region.nodes)
    given, result = set(), []
    for i, x in enumerate(ctx.x):
        result.append(grads[x] if ctx.needs(i) and x not in given else None)   # an input used twice: once
        given.add(x)
    return result


# ---------------------------------------------------------------------- the expansion
@dataclass
class _Layer:
    """A recurrent node's inputs and attributes, read once."""

    node: onnx.NodeProto
    cell: Cell
    x: str
    w: str
    r: str
    bias: str | None
    lens: str | None
    h0: str | None
    c0: str | None
    peepholes: str | None
    hidden: int
    directions: list[bool]            # reverse? for each direction, in output order
    activations: list[list[tuple]]    # per direction: (name, alpha, beta) per activation
    clip: float | None
    input_forget: bool
    linear_before_reset: bool
    batch_first: bool


def expand(b: GraphBuilder, node: onnx.NodeProto, cell: Cell) -> list[str]:
    """Emit the layer of ``node`` as standard ops into ``b``; return its outputs ``(Y, Y_h[, Y_c])``."""
    layer = _read_layer(node, cell)
    x = layer.x
    if layer.batch_first:   # to (seq, batch, in) and initial states to (dirs, batch, hidden)
        x = b.op("Transpose", x, perm=[1, 0, 2])
        layer = replace(layer, **{k: b.op("Transpose", getattr(layer, k), perm=[1, 0, 2])
                                  for k in ("h0", "c0") if getattr(layer, k)})
    shape = b.shape_of(x)
    steps, batch = b.op("Slice", shape, b.ints([0]), b.ints([1])), b.op("Slice", shape, b.ints([1]), b.ints([2]))
    lens = (b.op("Cast", layer.lens, to=TensorProto.INT64) if layer.lens
            else b.op("Expand", steps, batch))
    valid = _valid_steps(b, steps, lens) if layer.lens else None
    ys, hs, cs = [], [], []
    for d, reverse in enumerate(layer.directions):
        y, h, c = _direction(b, layer, x, d, reverse, lens, batch, valid)
        ys.append(b.unsqueeze(y, [1]))
        hs.append(b.unsqueeze(h, [0]))
        cs.append(b.unsqueeze(c, [0]) if c else None)
    y = b.op("Concat", *ys, axis=1) if len(ys) > 1 else ys[0]                # (seq, dirs, batch, hidden)
    h = b.op("Concat", *hs, axis=0) if len(hs) > 1 else hs[0]                # (dirs, batch, hidden)
    c = (b.op("Concat", *cs, axis=0) if len(cs) > 1 else cs[0]) if cell.has_cell_state else None
    if layer.batch_first:
        y = b.op("Transpose", y, perm=[2, 0, 1, 3])
        h = b.op("Transpose", h, perm=[1, 0, 2])
        c = b.op("Transpose", c, perm=[1, 0, 2]) if c else None
    return [y, h] + ([c] if cell.has_cell_state else [])


def _direction(b: GraphBuilder, layer: _Layer, x: str, d: int, reverse: bool, lens: str, batch: str,
               valid: str | None):
    """One direction: the input projection of every step, then a Scan of the cell over time."""
    H, G = layer.hidden, layer.cell.gates
    index = b.const(d, np.int64)
    w_t = b.op("Transpose", b.op("Gather", layer.w, index, axis=0), perm=[1, 0])      # (in, G*H)
    r_t = b.op("Transpose", b.op("Gather", layer.r, index, axis=0), perm=[1, 0])      # (H, G*H)
    bias_w = bias_r = None
    if layer.bias:
        bias = b.op("Gather", layer.bias, index, axis=0)
        bias_w, bias_r = _columns(b, bias, 0, G * H), _columns(b, bias, G * H, 2 * G * H)
    seq = b.op("ReverseSequence", x, lens, batch_axis=1, time_axis=0) if reverse else x
    projected = b.op("MatMul", seq, w_t)
    if bias_w:
        projected = b.add(projected, bias_w)
    et = b.elem_type(layer.x) or TensorProto.FLOAT
    zeros = b.op("ConstantOfShape", b.op("Concat", batch, b.ints([H]), axis=0),
                 value=onnx.numpy_helper.from_array(np.zeros(1, np_dtype(et))))
    h0 = b.op("Gather", layer.h0, index, axis=0) if layer.h0 else zeros
    states = [h0]
    if layer.cell.has_cell_state:
        states.append(b.op("Gather", layer.c0, index, axis=0) if layer.c0 else zeros)
    peepholes = b.op("Gather", layer.peepholes, index, axis=0) if layer.peepholes else None

    body = b.child()
    step = _Step(body, layer, layer.activations[d], et, r_t, bias_r, peepholes)
    body_graph = step.build(len(states), valid is not None)
    scanned = [projected] + ([valid] if valid is not None else [])
    outs = b.op("Scan", *states, *scanned, outputs=len(states) + 1, body=body_graph, num_scan_inputs=len(scanned))
    y = outs[-1]
    if reverse:
        y = b.op("ReverseSequence", y, lens, batch_axis=1, time_axis=0)
    return y, outs[0], outs[1] if layer.cell.has_cell_state else None


def _valid_steps(b: GraphBuilder, steps: str, lens: str) -> str:
    """``(seq, batch, 1)`` booleans: step ``t`` of row ``n`` is inside its sequence (``t < lens[n]``)."""
    t = b.op("Range", b.const(0, np.int64), b.reshape(steps, b.ints([])), b.const(1, np.int64))
    return b.unsqueeze(b.op("Less", b.unsqueeze(t, [1]), b.unsqueeze(lens, [0])), [2])


def _columns(b: GraphBuilder, t: str, start: int, stop: int) -> str:
    """Columns ``[start, stop)`` of the last axis of ``t``."""
    return b.op("Slice", t, b.ints([start]), b.ints([stop]), b.ints([-1]))


class _Step:
    """The body of one direction's Scan: one time step of the cell."""

    def __init__(self, b: GraphBuilder, layer: _Layer, activations: list[tuple], et: int, r_t: str,
                 bias_r: str | None, peepholes: str | None):
        self.b, self.layer, self.acts, self.et = b, layer, activations, et
        self.r_t, self.bias_r, self.peepholes = r_t, bias_r, peepholes

    def build(self, n_states: int, masked: bool) -> onnx.GraphProto:
        b, H, G = self.b, self.layer.hidden, self.layer.cell.gates
        states = [b.fresh("h"), b.fresh("c")][:n_states]
        projected = b.fresh("projected_step")
        valid = b.fresh("valid_step") if masked else None
        for name in states:
            b.inputs.append(helper.make_tensor_value_info(name, self.et, [None, H]))
        b.inputs.append(helper.make_tensor_value_info(projected, self.et, [None, G * H]))
        if masked:
            b.inputs.append(helper.make_tensor_value_info(valid, TensorProto.BOOL, [None, 1]))
        new = {"LSTM": self.lstm, "GRU": self.gru, "RNN": self.rnn}[self.layer.cell.op_type](states, projected)
        h_new = new[0]
        if masked:   # padded steps keep the state and output zeros
            new = [b.where(valid, n, s) for n, s in zip(new, states)]
            y = b.where(valid, h_new, self.scalar(0.0))
        else:
            y = b.op("Identity", h_new)
        for name in new + [y]:
            b.outputs.append(helper.make_tensor_value_info(name, self.et, None))
        return b.subgraph(f"{self.layer.cell.op_type.lower()}_step")

    # -- the cells (ONNX's equations; gate blocks in ONNX's order)
    def lstm(self, states, projected):
        b, H = self.b, self.layer.hidden
        h, c = states
        gates = self.recurrent(projected, h, self.r_t, self.bias_r, clipped=False)
        i, o, f, g = (_columns(b, gates, k * H, (k + 1) * H) for k in range(4))
        if self.peepholes:   # the clip applies to each gate's whole input, peephole term included
            p_i, p_o, p_f = (_columns(b, self.peepholes, k * H, (k + 1) * H) for k in range(3))
            i, f = b.add(i, b.mul(p_i, c)), b.add(f, b.mul(p_f, c))
        i = self.act(0, self.clip(i))
        f = b.sub(self.scalar(1.0), i) if self.layer.input_forget else self.act(0, self.clip(f))
        c_new = b.add(b.mul(f, c), b.mul(i, self.act(1, self.clip(g))))
        if self.peepholes:
            o = b.add(o, b.mul(p_o, c_new))
        h_new = b.mul(self.act(0, self.clip(o)), self.act(2, c_new))
        return [h_new, c_new]

    def gru(self, states, projected):
        b, H = self.b, self.layer.hidden
        (h,) = states
        r_zr, r_h = _columns(b, self.r_t, 0, 2 * H), _columns(b, self.r_t, 2 * H, 3 * H)
        bias_zr = _columns(b, self.bias_r, 0, 2 * H) if self.bias_r else None
        bias_h = _columns(b, self.bias_r, 2 * H, 3 * H) if self.bias_r else None
        zr = self.recurrent(_columns(b, projected, 0, 2 * H), h, r_zr, bias_zr)
        z = self.act(0, _columns(b, zr, 0, H))
        r = self.act(0, _columns(b, zr, H, 2 * H))
        if self.layer.linear_before_reset:
            recurrent = b.op("MatMul", h, r_h)
            recurrent = b.mul(r, b.add(recurrent, bias_h) if bias_h else recurrent)
        else:
            recurrent = b.op("MatMul", b.mul(r, h), r_h)
            recurrent = b.add(recurrent, bias_h) if bias_h else recurrent
        candidate = self.act(1, self.clip(b.add(_columns(b, projected, 2 * H, 3 * H), recurrent)))
        return [b.add(candidate, b.mul(z, b.sub(h, candidate)))]   # (1 - z) * candidate + z * h

    def rnn(self, states, projected):
        (h,) = states
        return [self.act(0, self.recurrent(projected, h, self.r_t, self.bias_r))]

    # -- pieces
    def recurrent(self, projected: str, h: str, r_t: str, bias: str | None, clipped: bool = True) -> str:
        """``projected + h R^T (+ Rb)``, clipped when the node says so (unless ``clipped`` is False)."""
        b = self.b
        z = b.add(projected, b.op("MatMul", h, r_t))
        z = b.add(z, bias) if bias else z
        return self.clip(z) if clipped else z

    def clip(self, z: str) -> str:
        if self.layer.clip is None:
            return z
        return self.b.op("Clip", z, self.scalar(-self.layer.clip), self.scalar(self.layer.clip))

    def act(self, k: int, z: str) -> str:
        name, alpha, beta = self.acts[k]
        return activation(self.b, name, z, alpha, beta, self.et)

    def scalar(self, value: float) -> str:
        return self.b.const(value, np_dtype(self.et))


def activation(b: GraphBuilder, name: str, z: str, alpha: float, beta: float, elem_type: int) -> str:
    """One of the activations the recurrent operators accept, in standard ops (``z`` of ``elem_type``)."""
    key = name.lower()
    if key in ("relu", "tanh", "sigmoid", "softsign", "softplus"):
        return b.op({"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "softsign": "Softsign",
                     "softplus": "Softplus"}[key], z)
    if key in ("leakyrelu", "thresholdedrelu", "elu"):
        return b.op({"leakyrelu": "LeakyRelu", "thresholdedrelu": "ThresholdedRelu", "elu": "Elu"}[key], z,
                    alpha=float(alpha))
    if key == "hardsigmoid":
        return b.op("HardSigmoid", z, alpha=float(alpha), beta=float(beta))
    dtype = np_dtype(elem_type)
    if key == "affine":
        return b.add(b.mul(z, b.const(alpha, dtype)), b.const(beta, dtype))
    if key == "scaledtanh":
        return b.mul(b.op("Tanh", b.mul(z, b.const(beta, dtype))), b.const(alpha, dtype))
    raise AssertionError(f"unchecked activation {name!r}")


def _read_layer(node: onnx.NodeProto, cell: Cell) -> _Layer:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    ins = list(node.input) + [""] * (8 - len(node.input))
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in ("forward", "reverse", "bidirectional"):
        raise UnsupportedOperatorError([node], f"{cell.op_type} node {node.name!r}: unknown direction "
                                               f"{direction!r}; expected forward, reverse or bidirectional")
    directions = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]
    if "hidden_size" not in attrs:
        raise UnsupportedOperatorError([node], f"{cell.op_type} node {node.name!r} has no hidden_size attribute")
    return _Layer(
        node=node, cell=cell, x=ins[0], w=ins[1], r=ins[2], bias=ins[3] or None, lens=ins[4] or None,
        h0=ins[5] or None, c0=(ins[6] or None) if cell.has_cell_state else None,
        peepholes=(ins[7] or None) if cell.has_cell_state else None,
        hidden=int(attrs["hidden_size"]), directions=directions,
        activations=_activations(node, cell, attrs, len(directions)),
        clip=float(attrs["clip"]) if "clip" in attrs else None,
        input_forget=bool(attrs.get("input_forget", 0)), linear_before_reset=bool(attrs.get("linear_before_reset", 0)),
        batch_first=bool(attrs.get("layout", 0)))


def _activations(node, cell: Cell, attrs: dict, n_directions: int) -> list[list[tuple]]:
    """``(name, alpha, beta)`` per activation and direction; alphas and betas are consumed in order by the
    activations that take them, and default to the ONNX operators' own defaults."""
    names = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    per = len(cell.default_activations)
    if not names:
        names = list(cell.default_activations) * n_directions
    elif len(names) == per and n_directions == 2:
        names = names * 2
    if len(names) != per * n_directions:
        raise UnsupportedOperatorError([node], f"{cell.op_type} node {node.name!r} lists {len(names)} activations; "
                                               f"expected {per} per direction ({per * n_directions})")
    unknown = [n for n in names if n.lower() not in _ACTIVATIONS]
    if unknown:
        raise UnsupportedOperatorError([node], f"{cell.op_type} node {node.name!r}: unknown activation(s) {unknown}; "
                                               f"expected one of {sorted(_ACTIVATIONS)}")
    alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
    resolved = []
    for name in names:
        takes_alpha, takes_beta, alpha, beta = _ACTIVATIONS[name.lower()]
        if takes_alpha and alphas:
            alpha = alphas.pop(0)
        if takes_beta and betas:
            beta = betas.pop(0)
        if alpha is None or beta is None:
            raise UnsupportedOperatorError([node], f"{cell.op_type} node {node.name!r}: activation {name} needs "
                                                   f"its alpha and beta in activation_alpha and activation_beta")
        resolved.append((name, alpha, beta))
    return [resolved[d * per:(d + 1) * per] for d in range(n_directions)]
