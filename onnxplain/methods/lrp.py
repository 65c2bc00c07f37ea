"""Layer-wise relevance propagation with a rule per linear layer, chosen by a composite (Zennit's composites).

The graph folds every BatchNormalization that follows a Conv, ConvTranspose or Gemm into that layer
(:mod:`onnxplain.rules.canonize`), then propagates relevance with the rules of :mod:`onnxplain.rules.lrp`
(epsilon, z_plus, alpha_beta, gamma, pass at every layer; flat, w_square, z_box at first layers; relevance
passed unchanged at every unary nonlinearity).  A per-call rule table (``lrp_rules``, one one-hot row per
layer over :data:`onnxplain.rules.lrp_composites.RULE_NAMES`, layers in graph order, their node names in the
graph's metadata ``lrp_layers``) picks each layer's rule, so the composite, the mapping and every rule
parameter change per call without a rebuild; ``If`` nodes on the rule's coefficients make each layer compute
only what its rule needs (epsilon and pass: one transposed application; z_plus: two of each kind at most).
"""
from __future__ import annotations

import json

import numpy as np
import onnx

from ..backward import backward, with_bodies
from ..rules.canonize import fold_batch_norms
from ..rules.lrp import LRP_RULES, LayerRules
from ..rules.lrp_composites import COMPOSITES, RULE_NAMES, assign_rules, linear_layers, parse_composite, rule_table
from .base import (Method, Spec, declare_param, declare_target_weights, emit_attribution, emit_outputs, ex_float,
                   open_forward, per_row_sum)
from .params import Param

#: the stabiliser of the pass rule at a linear layer (LRP-0): the smallest normal number of the float type
_TINY = {np.dtype(np.float32): float(np.finfo(np.float32).tiny), np.dtype(np.float64): float(np.finfo(np.float64).tiny),
         np.dtype(np.float16): float(np.finfo(np.float16).tiny)}
_SCALARS = ("epsilon", "stabilizer", "gamma", "alpha", "beta")


class LRP(Method):
    """LRP with Zennit's composites: the attribution is the relevance of the input, ``R_out = target_weights *
    output`` redistributed layer by layer (Zennit's attribution with ``attr_output = target_weights * output``).

    Matches Zennit 1.0's ``EpsilonPlus``, ``EpsilonPlusFlat``, ``EpsilonGammaBox`` and ``EpsilonAlpha2Beta1``
    with ``SequentialMergeBatchNorm``, with these deliberate differences: Zennit's Norm rule at additions and
    average pools is the plain gradient here (Norm with a vanishing stabiliser: relevance split in proportion to
    the summands); "first layer" is the layer reading the attributed input (see :mod:`.lrp_composites`);
    ``low``/``high`` broadcast the numpy way (per-channel bounds of an image: shape ``(C, 1, 1)``).  ``delta``
    is ``output - sum(attributions)`` per row (the relevance the biases and stabilisers absorbed), as
    epsilon_lrp's.  A MatMul whose bias comes as a separate Add keeps that bias out of its rule.
    """

    name = "lrp"
    captum = "`LRP` (Zennit's composites; Captum has epsilon/gamma/alpha-beta rules per layer)"
    deepexplain = "–"
    table_note = "the composite picks each layer's rule; BatchNormalization folded into its layer"
    aliases = ("lrp_composite",)
    overrides = LRP_RULES
    has_delta = True
    row_cost_factor = 10.0   # at most (gamma, alpha_beta): four forwards and four transposes of every layer
    parameters = (
        Param("composite", "epsilon_plus", "choice", f"which rule each layer gets: a composite, or a mapping op type / "
              f"node name / first -> rule ({', '.join(RULE_NAMES)}) as a dict or 'Conv=z_plus,first=flat'",
              choices=COMPOSITES, own_check=True),
        Param("epsilon", 1e-6, "float", "the epsilon rule's stabiliser, added to its denominators with their sign"),
        Param("stabilizer", 1e-6, "float", "the stabiliser of the other LRP rules' denominators"),
        Param("gamma", 0.25, "float", "the gamma rule's weight of the positive contributions"),
        Param("alpha", 2.0, "float", "the alpha_beta rule's weight of positive contributions (alpha - beta = 1)"),
        Param("beta", 1.0, "float", "the alpha_beta rule's weight of negative contributions"),
        Param("low", 0.0, "float", "the z_box rule's lowest input value"),
        Param("high", 1.0, "float", "the z_box rule's highest input value"),
    )

    def __init__(self):
        self._layers: tuple | None = None

    # ------------------------------------------------------------------ graph
    def build(self, b, spec: Spec) -> None:
        wrt = [p.tensor for p in spec.points]
        fold_batch_norms(b, keep=wrt)
        layers = linear_layers(b.nodes, wrt)
        nodes = _layer_nodes(b.nodes, layers)
        b.metadata["lrp_layers"] = json.dumps([layer.name for layer in layers])
        direct = {p.key for p in spec.points if any(layer.first and layer.source == p.tensor for layer in layers)}
        inside, outputs = open_forward(b, spec)
        for name, internal in inside.items():
            b.op("Identity", name, outputs=[internal])
        tw = declare_target_weights(b, spec)
        ftype = b.elem_type(spec.output)
        params = {k: declare_param(b, k, ftype, 0, np.asarray(self.defaults[k])) for k in _SCALARS}
        rank = _bound_rank(spec)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(ftype)
        for k in ("low", "high"):
            params[k] = declare_param(b, k, ftype, rank, _bound(self.defaults[k], rank, dtype))
        table = declare_param(b, "lrp_rules", ftype, 2,
                              rule_table(assign_rules(parse_composite(self.defaults["composite"]), layers), dtype))
        tiny = _TINY.get(np.dtype(dtype), 1e-30)
        rules = LayerRules(b, {id(node): layer for node, layer in zip(nodes, layers)}, table, params, tiny)
        picked = emit_outputs(b, spec, outputs, None, None)
        fed = {p.key: inside[p.carrier] if p.is_input else p.tensor for p in spec.points}
        grads = backward(b, outputs[spec.output], tw, list(fed.values()), overrides=self.overrides,
                         params={"lrp": rules})
        totals = []
        for point in spec.points:
            t = fed[point.key]
            attr = grads[t] if point.key in direct else b.mul(t, grads[t])
            totals.append(emit_attribution(b, spec, point, attr))
        explained = per_row_sum(b, b.mul(tw, picked[spec.output]), b.rank(spec.output))
        b.op("Sub", explained, b.sum(totals), outputs=["delta"])
        b.add_output("delta", b.elem_type(spec.output), [b.shape(spec.output)[0]])

    def reference_rows(self, b, total, block):
        return b.ints([0])

    # ------------------------------------------------------------------ calls
    def check_params(self, params):
        p = super().check_params(params)
        parse_composite(p["composite"])
        for k in ("epsilon", "stabilizer"):
            if not np.isscalar(p[k]) or not p[k] > 0:
                raise ValueError(f"{k} must be a positive float, got {p[k]!r}")
        for k in ("gamma", "alpha", "beta"):
            if not np.isscalar(p[k]) or not p[k] >= 0:
                raise ValueError(f"{k} must be a non-negative float (the {k} of LRP's rules), got {p[k]!r}")
        if abs(float(p["alpha"]) - float(p["beta"]) - 1.0) > 1e-12:
            raise ValueError(f"the alpha_beta rule needs alpha - beta = 1 (conserving relevance), got alpha="
                             f"{p['alpha']!r}, beta={p['beta']!r}")
        if not p["low"] <= p["high"]:
            raise ValueError("the z_box rule's low must not exceed high")
        return p

    def layers(self, spec: Spec) -> list:
        """The graph's layers (as the graph was built: functions written out, in graph order)."""
        if self._layers is None or self._layers[0] is not spec.model:
            nodes = with_bodies(spec.model, self.overrides).graph.node
            self._layers = (spec.model, linear_layers(list(nodes), [p.tensor for p in spec.points]))
        return self._layers[1]

    def parts(self, params, spec, inputs, bytes_per_row, budget):
        dtype = ex_float(spec)
        table = rule_table(assign_rules(params["composite"], self.layers(spec)), dtype)
        rank = _bound_rank(spec)
        feeds = {k: np.asarray(params[k], dtype=dtype) for k in _SCALARS}
        feeds.update({k: _bound(params[k], rank, dtype) for k in ("low", "high")})
        feeds["lrp_rules"] = table
        return [feeds]


def _layer_nodes(nodes, layers) -> list:
    """The nodes of ``layers`` (from :func:`linear_layers`), in their order."""
    by_name = {}
    for node in nodes:
        by_name.setdefault(node.name or node.output[0], node)
    return [by_name[layer.name] for layer in layers]


def _bound_rank(spec: Spec) -> int:
    """The rank of one row of the first attributed tensor (the rank of the ``low``/``high`` feeds)."""
    name = spec.points[0].tensor
    g = spec.model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return max(len(vi.type.tensor_type.shape.dim) - 1, 0)
    return 0


def _bound(value, rank: int, dtype) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim > rank:
        raise ValueError(f"low/high must broadcast against one row of the attributed input (rank {rank} at most), "
                         f"got shape {arr.shape}")
    return arr.reshape((1,) * (rank - arr.ndim) + arr.shape)
