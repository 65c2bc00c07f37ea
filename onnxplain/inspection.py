"""What a model offers to explain: its inputs, outputs, ops, and which methods can run on it."""
from __future__ import annotations

import collections

import onnx

from .backward import missing_rules
from .converters import load_model, normalize
from .converters.normalize import batch_axes_of, batch_problems
from .errors import ModelError
from .graph import FLOAT_TYPES, GraphBuilder


def inspect(model, output: str | None = None, batch_axes: dict | None = None) -> dict:
    """Facts about ``model`` (a path, bytes or ModelProto) as a plain dict.

    Keys: ``inputs`` and ``outputs`` (name, type, shape), ``opsets``, ``ops``
    (op histogram), ``attributed`` (what the Explainer attributes by default),
    ``layers`` (floating-point tensors that ``layer=`` accepts), ``batch_axes``
    (each input's batch axis, None when unbatched), and ``methods``: for every
    method whether it is available on the explained output (default: the first
    floating-point one) and, when not, every op without a rule and its nodes
    (or why the model cannot be explained at all, e.g. an output that is not
    batch first).
    """
    from .api import _choose_output, _graph_inputs, _spec, batch_refusal
    from .methods import METHODS, get_method

    raw = load_model(model)
    m = normalize(raw, batch_axes=batch_axes)
    axes = batch_axes_of(m, batch_axes)
    problems = batch_problems(m, axes)
    facts = {
        "ir_version": raw.ir_version,
        "producer": " ".join(x for x in (raw.producer_name, raw.producer_version) if x),
        "opsets": {(imp.domain or "ai.onnx"): imp.version for imp in raw.opset_import},
        "inputs": [value_facts(vi) for vi in _graph_inputs(m)],
        "outputs": [value_facts(vi) for vi in m.graph.output],
        "nodes": len(raw.graph.node),
        "ops": dict(collections.Counter(op_name(n) for n in raw.graph.node).most_common()),
        "functions": [f.name for f in raw.functions],
        "layers": [vi.name for vi in m.graph.value_info if vi.type.tensor_type.elem_type in FLOAT_TYPES],
        "batch_axes": axes,
    }
    try:
        out = _choose_output(m, output)
        if problems:
            raise ModelError(batch_refusal(problems))
    except ValueError as e:
        facts.update(output=None, attributed=[],
                     methods={name: _availability(get_method(name), None, str(e)) for name in METHODS})
        return facts
    facts["output"] = out
    methods, attributed = {}, []
    for name in METHODS:
        method = get_method(name)
        try:
            spec = _spec(m, out, None, None, method, unbatched=[x for x, k in axes.items() if k is None])
        except ValueError as e:
            methods[name] = _availability(method, None, str(e))
            continue
        attributed = attributed or list(spec.wrt)
        if method.forward_only:
            methods[name] = _availability(method, [], "")
            continue
        b = GraphBuilder(m)
        missing = missing_rules(b.nodes, [p.tensor for p in spec.points], [out], b, method.overrides)
        methods[name] = _availability(method, missing, "")
    facts["attributed"] = attributed
    facts["methods"] = methods
    return facts


def _availability(method, missing, reason: str) -> dict:
    by_op = collections.defaultdict(list)
    for node in missing or []:
        by_op[op_name(node)].append(node.name or node.output[0])
    if missing and not reason:
        reason = "no backward rule for " + ", ".join(sorted(by_op))
    return {"available": missing is not None and not missing, "forward_only": method.forward_only,
            "reason": reason, "missing": dict(by_op)}


def op_name(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def value_facts(vi: onnx.ValueInfoProto) -> dict:
    t = vi.type
    if not t.HasField("tensor_type"):
        return {"name": vi.name, "type": t.WhichOneof("value") or "?", "shape": "?"}
    tt = t.tensor_type
    try:
        dtype = str(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
    except Exception:
        dtype = onnx.TensorProto.DataType.Name(tt.elem_type).lower()
    if not tt.HasField("shape"):
        shape = "?"
    else:
        shape = "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
                                for d in tt.shape.dim) + "]"
    return {"name": vi.name, "type": dtype, "shape": shape}
