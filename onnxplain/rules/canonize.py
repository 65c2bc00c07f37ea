"""Graph rewrites that put a model in the form the LRP rules expect (canonization).

:func:`fold_batch_norms` merges every inference-mode BatchNormalization that directly follows a Conv,
ConvTranspose or Gemm (read by nothing else) into that layer's weight and bias, so the LRP rule of the
layer sees the affine map the pair computes.  This is Zennit's ``SequentialMergeBatchNorm`` canonizer,
done on the explanation graph: ``W' = W * s`` per output channel, ``b' = (b - mean) * s + beta`` with
``s = scale / sqrt(var + epsilon)``.  The forward pass is unchanged (up to rounding).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

#: layers a BatchNormalization can be folded into, with the axis of their weight that holds output channels
FOLDABLE = ("Conv", "ConvTranspose", "Gemm")


def fold_batch_norms(b, keep=()) -> int:
    """Fold each BatchNormalization that follows a foldable layer into it (edits ``b`` in place); return
    how many were folded.  Tensors in ``keep`` (attributed layers, graph outputs) are never folded away."""
    values = _constants(b)
    keep = set(keep) | {o.name for o in b.graph.output}
    readers: dict[str, int] = {}
    for node in b.nodes:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    producer = {o: node for node in b.nodes for o in node.output}
    folded = []
    for bn in b.nodes:
        if bn.op_type != "BatchNormalization" or len([o for o in bn.output if o]) != 1:
            continue
        layer = producer.get(bn.input[0])
        if layer is None or layer.op_type not in FOLDABLE or readers.get(bn.input[0], 0) != 1 or bn.input[0] in keep:
            continue
        params = [values.get(n) for n in bn.input[1:5]]
        weight = values.get(layer.input[1]) if len(layer.input) > 1 else None
        bias_name = layer.input[2] if len(layer.input) > 2 and layer.input[2] else None
        bias = values.get(bias_name) if bias_name else None
        if any(p is None for p in params) or weight is None or (bias_name and bias is None):
            continue
        merged = _merged(layer, weight, bias, params, _attr(bn, "epsilon", 1e-5))
        if merged is None:
            continue
        w_new, b_new = merged
        inputs = list(layer.input) + [""] * (3 - len(layer.input))
        inputs[1] = b.const(w_new.astype(weight.dtype), weight.dtype, hint=f"{layer.name or 'layer'}__folded_w")
        inputs[2] = b.const(b_new.astype(weight.dtype), weight.dtype, hint=f"{layer.name or 'layer'}__folded_b")
        del layer.input[:]
        layer.input.extend(inputs)
        layer.output[0] = bn.output[0]
        if layer.op_type == "Gemm":
            _set_attr(layer, "beta", 1.0)
        folded.append(bn)
    for bn in folded:
        b.nodes.remove(bn)
    return len(folded)


def _merged(layer, weight: np.ndarray, bias, params, eps: float):
    """``(W', b')`` of ``layer`` followed by a BatchNormalization with ``params`` (scale, shift, mean, var)."""
    scale, shift, mean, var = (np.asarray(p, dtype=np.float64) for p in params)
    s = scale / np.sqrt(var + eps)
    w = weight.astype(np.float64)
    if layer.op_type == "Conv":
        out_axis = 0
    elif layer.op_type == "ConvTranspose":
        if int(_attr(layer, "group", 1)) != 1:
            return None
        out_axis = 1
    else:   # Gemm: Y = alpha A op(B) + beta C, output features on op(B)'s last axis
        if w.ndim != 2:
            return None
        out_axis = 0 if _attr(layer, "transB", 0) else 1
        w = w * float(_attr(layer, "alpha", 1.0))
        _set_attr(layer, "alpha", 1.0)
    if w.shape[out_axis] != s.shape[0]:
        return None
    shape = [1] * w.ndim
    shape[out_axis] = -1
    if bias is None:
        b0 = np.zeros_like(s)
    else:
        b0 = np.asarray(bias, dtype=np.float64)
        b0 = b0.reshape(-1) if b0.size == s.size else np.broadcast_to(b0, s.shape)
        if layer.op_type == "Gemm":
            b0 = b0 * float(_attr(layer, "beta", 1.0))
    return w * s.reshape(shape), (b0 - mean) * s + shift


def _constants(b) -> dict:
    fed = {vi.name for vi in b.graph.input}
    values = {init.name: numpy_helper.to_array(init) for init in b.initializers if init.name not in fed}
    for node in b.nodes:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _set_attr(node, name: str, value: float) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(onnx.helper.make_attribute(name, value))
