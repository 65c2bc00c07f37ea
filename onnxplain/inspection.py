"""What a model offers to explain: its inputs, outputs, ops, and which methods can run on it."""
from __future__ import annotations

import collections

import onnx

from .backward import missing_rules, with_bodies
from .converters.normalize import load_model, to_batch_first
from .errors import UnsupportedOperatorError
from .graph import FLOAT_TYPES, GraphBuilder
from .methods import METHODS, get_method
from .prepare import (choose_output, graph_inputs, make_spec, mixed_rows_refusal, moved_inputs, normalized_with_batch_axes,
                      unbatched_inputs, without_unbatched_outputs)


def inspect(model, output: str | None = None, batch_axes: dict | None = None) -> dict:
    """Facts about ``model`` (a path, bytes or ModelProto) as a plain dict.

    Keys: ``inputs`` and ``outputs`` (name, type, shape), ``opsets``, ``ops``
    (op histogram), ``attributed`` (what the Explainer attributes by default),
    ``layers`` (floating-point tensors that ``layer=`` accepts), ``batch_axes``
    (each input's batch axis, None when unbatched), and ``methods``: for every
    method whether it is available on the explained output (default: the first
    floating-point one) and, when not, the reason the Explainer would give
    (every op without a rule and its nodes, a node whose rule refuses it, an
    input that no gradient reaches, or why the model cannot be explained at
    all, e.g. an output that is not batch first).
    """
    raw = load_model(model)
    m, axes, problems = normalized_with_batch_axes(raw, batch_axes)
    facts = {
        "ir_version": raw.ir_version,
        "producer": " ".join(x for x in (raw.producer_name, raw.producer_version) if x),
        "opsets": {(imp.domain or "ai.onnx"): imp.version for imp in raw.opset_import},
        "inputs": [value_facts(vi) for vi in graph_inputs(m)],
        "outputs": [value_facts(vi) for vi in m.graph.output],
        "nodes": len(raw.graph.node),
        "ops": dict(collections.Counter(op_name(n) for n in raw.graph.node).most_common()),
        "functions": [f.name for f in raw.functions],
        "layers": [vi.name for vi in m.graph.value_info if vi.type.tensor_type.elem_type in FLOAT_TYPES],
        "batch_axes": axes,
    }
    try:
        m = without_unbatched_outputs(m, problems, output)
        out = choose_output(m, output)
    except ValueError as e:
        facts.update(output=None, attributed=[],
                     methods={name: _availability(get_method(name), None, str(e)) for name in METHODS})
        return facts
    facts["output"] = out
    m = to_batch_first(m, axes)    # the model the Explainer builds on
    mixed = mixed_rows_refusal(m, out, unbatched_inputs(axes))
    methods, attributed = {}, []
    for name in METHODS:
        method = get_method(name)
        # a method that attributes a given layer needs the plain backward pass that reaches any layer
        judged = get_method("gradient") if method.needs_layer else method
        try:
            spec = make_spec(m, out, None, None, judged, unbatched=unbatched_inputs(axes), moved=moved_inputs(axes))
        except ValueError as e:
            methods[name] = _availability(method, None, str(e))
            continue
        if mixed:
            methods[name] = _availability(method, None, mixed)
            continue
        attributed = attributed or list(spec.wrt)
        if method.forward_only:
            methods[name] = _availability(method, [], "")
            continue
        methods[name] = _availability(method, *_build_verdict(m, judged, spec, out))
    facts["attributed"] = attributed
    facts["methods"] = methods
    return facts


def _build_verdict(model, method, spec, output) -> tuple[list, str]:
    """(nodes without a rule, reason) for a method that builds a backward pass: the rule table's
    verdict, then the graph itself built as the Explainer builds it (a rule may refuse a node it covers,
    e.g. a Resize whose geometry it cannot read)."""
    b = GraphBuilder(with_bodies(model, method.overrides))
    missing = missing_rules(b.nodes, [p.tensor for p in spec.points], [output], b, method.overrides)
    if missing:
        return missing, ""
    try:
        method.build(b, spec)
    except UnsupportedOperatorError as e:
        return list(e.nodes), str(e)
    except ValueError as e:     # the method refuses this model's shapes (a map it cannot upsample to the input)
        return [], str(e)
    return [], ""


def _availability(method, missing, reason: str) -> dict:
    by_op = collections.defaultdict(list)
    for node in missing or []:
        by_op[op_name(node)].append(node.name or node.output[0])
    available = missing is not None and not missing and not reason
    if missing and not reason:
        reason = "no backward rule for " + ", ".join(sorted(by_op))
    return {"available": available, "forward_only": method.forward_only, "reason": reason,
            "missing": dict(by_op)}


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


def describe(facts: dict, name: str = "<model>") -> str:
    """:func:`inspect`'s facts as the text ``onnxplain inspect`` prints (``name``: how to call the model)."""
    from .report import text_table

    def values(kind):
        return text_table(["", "name", "type", "shape"], [["", v["name"], v["type"], v["shape"]]
                                                          for v in facts[kind]])

    def inputs():
        axes = {k: "none" if a is None else str(a) for k, a in facts["batch_axes"].items()}
        return text_table(["", "name", "type", "shape", "batch axis"],
                          [["", v["name"], v["type"], v["shape"], axes.get(v["name"], "?")] for v in facts["inputs"]])

    producer = f", produced by {facts['producer']}" if facts["producer"] else ""
    lines = [f"model:    {name}",
             f"format:   IR version {facts['ir_version']}{producer}",
             "opsets:   " + ", ".join(f"{d} {v}" for d, v in facts["opsets"].items()),
             "inputs:", inputs(), "outputs:", values("outputs"),
             f"ops ({facts['nodes']} nodes):",
             text_table(["", "op", "count"], [["", op, str(k)] for op, k in facts["ops"].items()])]
    if facts["functions"]:
        lines.append(f"local functions (inlined before explaining): {', '.join(facts['functions'])}")
    if facts["output"] is None:   # every method gives the same reason: no float output, or not batch first
        reason = next((g["reason"] for g in facts["methods"].values() if g["reason"]), "")
        lines.append(f"nothing to explain: {reason}" if reason else "no floating-point output: nothing to explain")
        return "\n".join(lines)
    lines += [f"explained output: {facts['output']!r}; attributed: {', '.join(facts['attributed']) or '-'}",
              "methods:"]
    for method, g in facts["methods"].items():
        kind = "forward only" if g["forward_only"] else "backward"
        if g["available"]:
            lines.append(f"  {method:22s} available ({kind})")
            continue
        lines.append(f"  {method:22s} NOT available: {g['reason']}")
        for op, nodes in g["missing"].items():
            listed = ", ".join(nodes[:5]) + (f" and {len(nodes) - 5} more" if len(nodes) > 5 else "")
            lines.append(f"    {op}: {len(nodes)} node(s): {listed}")
    return "\n".join(lines)
