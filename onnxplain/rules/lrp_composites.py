"""Which LRP rule each linear layer gets: the layers of a graph, the composites, user mappings.

A *layer* is a Conv, ConvTranspose, Gemm or MatMul node whose one attributed operand is its data and whose
weight does not depend on the attributed inputs.  A layer is *first* when it reads an attributed tensor
directly, or through ops that only move elements (Identity, Reshape, Flatten, Transpose, Squeeze,
Unsqueeze), each read by nothing else: the flat, w_square and z_box rules hand relevance to the layer's
input itself, so they apply to first layers only.  (Zennit calls "first" the first module of a matching type
in the order the modules were registered; on sequential nets the two agree.)

The composites are Zennit 1.0's (its ``Activation`` -> Pass and ``BatchNorm`` -> Pass maps hold here through
the pass rule at every unary nonlinearity and BatchNormalization left unfolded; BatchNormalization after a
layer is folded into it first, Zennit's ``SequentialMergeBatchNorm``):

- ``epsilon``: epsilon at every layer;
- ``epsilon_plus``: z_plus at convolutions, epsilon at dense layers (Gemm, MatMul);
- ``epsilon_plus_flat``: as epsilon_plus, flat at the first layer;
- ``epsilon_gamma_box``: z_box at a first convolution, gamma at the other convolutions, epsilon at dense layers;
- ``epsilon_alpha2_beta1``: alpha_beta at convolutions (alpha, beta default 2, 1), epsilon at dense layers.

A user mapping maps op types (``"Conv"``), node names, or ``"first"`` to rule names; a node's name beats
``"first"``, which beats its op type; unmapped layers get epsilon.  On the command line it is spelled
``"Conv=z_plus,first=flat"``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

#: the rules, in the order of the columns of the per-layer rule table (a one-hot row per layer)
RULE_NAMES = ("epsilon", "z_plus", "alpha_beta", "gamma", "pass", "flat", "w_square", "z_box")
#: rules that give relevance to the layer's input directly (first layers only)
INPUT_RULES = ("flat", "w_square", "z_box")
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
CONVOLUTIONS = ("Conv", "ConvTranspose")
#: ops that only move elements: relevance passes them unchanged
MOVING = ("Identity", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")
COMPOSITES = ("epsilon", "epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1")


@dataclass(frozen=True)
class Layer:
    index: int          # row of the rule table
    op: str
    name: str           # node name (its first output when unnamed)
    data: int           # which input is the data (0, or 1 for a MatMul ``W @ x``)
    first: bool
    source: str = ""    # a first layer: the attributed tensor it reads


def linear_layers(nodes, wrt) -> list[Layer]:
    """The layers among ``nodes`` (in their order) on a path from the tensors ``wrt``, first ones flagged."""
    active = set(wrt)
    readers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            if name:
                readers.setdefault(name, []).append(node)
    firsts = {}
    for t in wrt:
        node = _first_reader(t, readers)
        if node is not None:
            firsts[id(node)] = t
    layers = []
    for node in nodes:
        hit = [i for i, name in enumerate(node.input) if name in active]
        if hit and node.op_type in LAYER_OPS and len(hit) == 1 and hit[0] in (0, 1) \
                and (hit[0] == 0 or node.op_type == "MatMul"):
            layers.append(Layer(len(layers), node.op_type, node.name or node.output[0], hit[0], id(node) in firsts,
                                firsts.get(id(node), "")))
        if hit:
            active.update(o for o in node.output if o)
    return layers


def _first_reader(t: str, readers: dict):
    seen = 0
    while seen < 64:
        found = readers.get(t, [])
        if len(found) != 1:
            return None
        node = found[0]
        if node.op_type in MOVING and node.input[0] == t:
            t, seen = node.output[0], seen + 1
            continue
        if node.op_type in LAYER_OPS and t in node.input[:2]:
            return node if (node.input[0] == t or node.op_type == "MatMul") else None
        return None
    return None


def parse_composite(value):
    """A composite's name, or a user mapping as a dict (from a dict or ``"key=rule,key=rule"``)."""
    if isinstance(value, Mapping):
        mapping = dict(value)
    elif isinstance(value, str) and "=" in value:
        mapping = {}
        for item in value.split(","):
            key, sep, rule = item.partition("=")
            if not sep or not key.strip() or not rule.strip():
                raise ValueError(f"composite mapping {value!r}: each item must be key=rule, got {item!r}")
            mapping[key.strip()] = rule.strip()
    elif isinstance(value, str):
        name = value.strip().lower()
        if name not in COMPOSITES:
            raise ValueError(f"unknown composite {value!r}; composites: {', '.join(COMPOSITES)}, or a mapping "
                             f"(op type, node name or 'first' -> rule name) with rules {', '.join(RULE_NAMES)}")
        return name
    else:
        raise ValueError(f"composite must be a composite's name ({', '.join(COMPOSITES)}) or a mapping op type / node "
                         f"name / 'first' -> rule name, got {type(value).__name__}")
    for key, rule in mapping.items():
        if not isinstance(key, str) or not isinstance(rule, str):
            raise ValueError(f"composite mapping: keys and rules must be strings, got {key!r}: {rule!r}")
        if rule not in RULE_NAMES:
            raise ValueError(f"composite mapping {key!r}: unknown rule {rule!r}; rules: {', '.join(RULE_NAMES)}")
    return mapping


def composite_rule(composite: str, layer: Layer) -> str:
    """The rule one of :data:`COMPOSITES` gives ``layer``."""
    conv = layer.op in CONVOLUTIONS
    if composite == "epsilon":
        return "epsilon"
    if composite == "epsilon_plus_flat" and layer.first:
        return "flat"
    if composite in ("epsilon_plus", "epsilon_plus_flat"):
        return "z_plus" if conv else "epsilon"
    if composite == "epsilon_gamma_box":
        return ("z_box" if layer.first else "gamma") if conv else "epsilon"
    return "alpha_beta" if conv else "epsilon"      # epsilon_alpha2_beta1


def assign_rules(composite, layers: list[Layer]) -> list[str]:
    """Each layer's rule under ``composite`` (a name or a mapping, see :func:`parse_composite`); a mapping whose
    key names nothing in the graph, or an input rule at a layer that is not first, is a ValueError."""
    composite = parse_composite(composite)
    if isinstance(composite, str):
        return [composite_rule(composite, layer) for layer in layers]
    names, ops = {layer.name for layer in layers}, {layer.op for layer in layers}
    for key in composite:
        if key != "first" and key not in names and key not in ops:
            raise ValueError(f"composite mapping key {key!r} is neither an op type of a linear layer in this graph "
                             f"({', '.join(sorted(ops)) or 'none'}), nor one of their node names, nor 'first'; "
                             f"layers: {', '.join(sorted(names)) or 'none'}")
    rules = []
    for layer in layers:
        rule = composite.get(layer.name) or (composite.get("first") if layer.first else None) \
            or composite.get(layer.op) or "epsilon"
        if rule in INPUT_RULES and not layer.first:
            raise ValueError(f"rule {rule!r} gives relevance to its layer's input directly, so it applies only to a "
                             f"first layer (one that reads the attributed input, through reshapes at most); "
                             f"{layer.op} node {layer.name!r} is not one (map 'first' instead)")
        rules.append(rule)
    return rules


def rule_table(rules: list[str], dtype=np.float32) -> np.ndarray:
    """The per-layer rule table fed to the graph: row ``i`` is one-hot over :data:`RULE_NAMES`."""
    table = np.zeros((max(len(rules), 1), len(RULE_NAMES)), dtype=dtype)
    for i, rule in enumerate(rules):
        table[i, RULE_NAMES.index(rule)] = 1
    if not rules:
        table[0, 0] = 1
    return table
