"""Ops the standard defines by a function body, written out as that body where they have no rule.

Attention, RMSNormalization, RotaryEmbedding, SoftmaxCrossEntropyLoss, NegativeLogLikelihoodLoss,
CenterCropPad, AffineGrid, Swish, Shrink... are each defined by the ONNX standard as a graph of simpler
ops (the schema's function body, or a body built for the node's attributes and input types).  A
backward pass through a node without a rule of its own goes through its body instead: the body's ops
have rules (standard and modified), so gradients, DeepLIFT and LRP follow the op exactly as the
standard defines it, and the result does not depend on whether an exporter fused the op.

:func:`expand_functions` rewrites the main graph once, before the explanation graph is built; a node
that has a rule, or whose body cannot be written out (no body, a body over another opset, a body with
subgraphs), is left as it is.  An If of the main graph whose condition follows from constants and static
shapes (a body's, or one an exporter wrote to check a rank) is replaced by the branch it takes, and a Range
bound that is a one-element vector (which the branch may turn into a constant) is reshaped to a scalar.
"""
from __future__ import annotations

from typing import Callable

import onnx
from onnx import defs, helper, shape_inference, version_converter

#: Passes over the graph: a body may use ops that are themselves defined by bodies.
MAX_DEPTH = 4


def expand_functions(model: onnx.ModelProto, keep: Callable[[onnx.NodeProto, int], bool]) -> onnx.ModelProto:
    """A copy of ``model`` in which every default-domain node of the main graph for which ``keep(node,
    opset)`` is false and whose op has a function body is replaced by that body, renamed so that its
    tensors are unique; shapes are inferred again after each pass.  ``model`` itself is returned when
    nothing is expanded."""
    opset = default_opset(model)
    out = model
    for depth in range(MAX_DEPTH):
        types = _types(out)
        taken = _names(out)
        nodes, changed = [], False
        for index, node in enumerate(out.graph.node):
            body = None if keep(node, opset) else function_body(node, opset, types)
            if body is None:
                nodes.append(node)
                continue
            nodes.extend(_inlined(node, body, f"{node.name or node.op_type}_{depth}_{index}", taken, opset))
            changed = True
        folded = _taken_branches(nodes, types, out.graph.initializer) if _count(nodes, "If") else nodes
        changed = changed or _count(folded, "If") < _count(nodes, "If")
        changed = _integer_constants_into_bodies(folded, out.graph.initializer, taken) or changed
        if not changed:
            return _scalar_range_bounds(out) if out is not model else out
        nodes = folded
        if out is model:
            out = onnx.ModelProto()
            out.CopyFrom(model)
        del out.graph.node[:]
        out.graph.node.extend(nodes)
        out = shape_inference.infer_shapes(out, check_type=True, strict_mode=False, data_prop=True)
    return _scalar_range_bounds(out)


def _scalar_range_bounds(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every Range bound that shape inference shows is a one-element vector reshaped to the scalar
    the standard asks for.  Bodies pass Range such vectors (AffineGrid's sizes, split from its ``size`` input)
    and runtimes accept them, but once an If is replaced by its branch a bound may become a constant, and
    onnxruntime's constant folding refuses a Range over a constant that is not a scalar."""
    types = _types(model)
    taken = _names(model)
    nodes, changed = [], False
    for node in model.graph.node:
        vectors = [i for i in node.input if node.op_type == "Range" and _one_element_vector(types.get(i))]
        if vectors:
            scalar = {}
            for name in dict.fromkeys(vectors):
                scalar[name] = _fresh(f"{name}_scalar", taken)
                empty = _fresh(f"{name}_scalar_shape", taken)
                nodes.append(helper.make_node("Constant", [], [empty], name=f"{empty}_node",
                                              value=helper.make_tensor(empty, onnx.TensorProto.INT64, [0], [])))
                nodes.append(helper.make_node("Reshape", [name, empty], [scalar[name]], name=f"{scalar[name]}_node"))
            copy = onnx.NodeProto()
            copy.CopyFrom(node)      # the caller's model is not edited
            copy.input[:] = [scalar.get(i, i) for i in node.input]
            node, changed = copy, True
        nodes.append(node)
    if not changed:
        return model
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return shape_inference.infer_shapes(model, check_type=True, strict_mode=False, data_prop=True)


def _one_element_vector(t: onnx.TypeProto | None) -> bool:
    dims = t.tensor_type.shape.dim if t is not None and t.tensor_type.HasField("shape") else None
    return dims is not None and len(dims) == 1 and dims[0].HasField("dim_value") and dims[0].dim_value == 1


def _fresh(name: str, taken: set) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


#: Integer constants of the outer graph up to this size are copied into the bodies that read them.
MAX_COPIED = 64


def _integer_constants_into_bodies(nodes: list, initializers, taken: set) -> bool:
    """Give every loop body and branch of ``nodes`` its own copy of the small integer constants it reads from
    the outer graph (axes, shapes, indices), as a Constant node inside the body: shape inference does not
    read outer values, so an Unsqueeze or Reshape inside a Scan would lose its rank.  Integers carry no
    cotangent, so the backward pass is unchanged.  Returns whether a body changed."""
    values = {i.name: i for i in initializers}
    for node in nodes:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None and node.output:
                values[node.output[0]] = value
    small = {name: t for name, t in values.items()
             if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and _size(t) <= MAX_COPIED}
    changed = False
    for index, node in enumerate(nodes):
        if any(attr.type == onnx.AttributeProto.GRAPH and _outer_reads(attr.g, small) for attr in node.attribute):
            copy = onnx.NodeProto()
            copy.CopyFrom(node)       # the caller's model is not edited
            for attr in copy.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    _copy_into(attr.g, small, taken)
            nodes[index] = copy
            changed = True
    return changed


def _outer_reads(graph: onnx.GraphProto, names: dict) -> list:
    """The tensors of ``names`` that ``graph``'s nodes read from the outer graph."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer} | \
              {o for n in graph.node for o in n.output}
    return [i for n in graph.node for i in n.input if i in names and i not in defined]


def _copy_into(graph: onnx.GraphProto, small: dict, taken: set) -> None:
    read = _outer_reads(graph, small)
    if not read:
        return
    local = {}
    for name in dict.fromkeys(read):
        fresh = f"{name}_in_{graph.name or 'body'}"
        while fresh in taken:
            fresh += "_"
        taken.add(fresh)
        local[name] = fresh
    for n in graph.node:
        for k, i in enumerate(n.input):
            if i in local:
                n.input[k] = local[i]
    copies = [helper.make_node("Constant", [], [fresh], value=small[name], name=f"{fresh}_copy")
              for name, fresh in local.items()]
    nodes = copies + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)


def _size(t: onnx.TensorProto) -> int:
    size = 1
    for d in t.dims:
        size *= d
    return size


def _count(nodes: list, op_type: str) -> int:
    return sum(n.op_type == op_type for n in nodes)


#: Ops evaluated at build time when all their inputs are known (to decide a body's If on static shapes).
FOLDABLE = {"Constant", "Shape", "Size", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And",
            "Or", "Add", "Sub", "Mul", "Cast", "CastLike", "Gather", "Concat", "Slice", "Squeeze", "Unsqueeze",
            "Identity", "Reshape"}


def _taken_branches(nodes: list, types: dict, initializers) -> list:
    """``nodes`` with every If whose condition follows from constants and static shapes replaced by the
    nodes of the branch it takes (its outputs bound by Identity): bodies branch on an input's rank or size,
    and an If whose branches differ in rank hides its output's rank from shape inference."""
    from onnx.reference import ReferenceEvaluator

    known = {i.name: onnx.numpy_helper.to_array(i) for i in initializers}
    out = []
    for node in nodes:
        if node.op_type == "If" and node.input[0] in known:
            branch = next(a.g for a in node.attribute if a.name == ("then_branch" if known[node.input[0]].all()
                                                                      else "else_branch"))
            out.extend(_taken_branches(list(branch.node), types, branch.initializer))
            out.extend(helper.make_node("Identity", [b.name], [o], name=f"{node.name}/{o}_taken")
                       for b, o in zip(branch.output, node.output))
            continue
        out.append(node)
        if node.op_type in ("Shape", "Size"):
            dims = types.get(node.input[0], onnx.TypeProto()).tensor_type.shape.dim
            if not types.get(node.input[0]) or not types[node.input[0]].tensor_type.HasField("shape") \
                    or any(not d.HasField("dim_value") for d in dims):
                continue
        elif node.op_type not in FOLDABLE or any(i and i not in known for i in node.input) \
                or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue
        if node.op_type in ("Shape", "Size"):
            shape = [d.dim_value for d in types[node.input[0]].tensor_type.shape.dim]
            import numpy as np
            probe = {node.input[0]: np.zeros(shape, np.float32)}
        else:
            probe = {i: known[i] for i in node.input if i}
        try:
            single = helper.make_model(helper.make_graph([node], "fold", [
                helper.make_tensor_value_info(i, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                for i, v in probe.items()], [helper.make_value_info(o, onnx.TypeProto()) for o in node.output]))
            values = ReferenceEvaluator(single).run(None, probe)
        except Exception:  # noqa: BLE001 - not evaluable here: the node stays as it is
            continue
        known.update(zip(node.output, values))
    return out


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def function_body(node: onnx.NodeProto, opset: int, types: dict) -> onnx.FunctionProto | None:
    """The standard's body of ``node`` at ``opset`` (built for its attributes and input types where the
    body depends on them), or None."""
    if node.domain not in ("", "ai.onnx"):
        return None
    try:
        schema = defs.get_schema(node.op_type, opset)
    except defs.SchemaError:
        return None
    body = None
    built = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
    if schema.has_context_dependent_function and built:
        inputs = [types.get(name, onnx.TypeProto()).SerializeToString() for name in node.input]
        try:
            raw = schema.get_context_dependent_function_with_opset_version(
                max(built), node.SerializeToString(), inputs)
        except Exception:  # noqa: BLE001 - the body builder refuses these types or attributes
            raw = None
        if raw:
            body = onnx.FunctionProto()
            body.ParseFromString(raw)
    versions = [v for v in schema.function_opset_versions if v <= opset]
    if body is None and schema.has_function and versions:
        body = onnx.FunctionProto()
        body.ParseFromString(schema.get_function_with_opset_version(max(versions)))
    if body is None:
        return None
    return body if _same_semantics(body, opset) else _upgraded(body, node, opset, types)


def _upgraded(body: onnx.FunctionProto, node: onnx.NodeProto, opset: int, types: dict) -> onnx.FunctionProto | None:
    """A body written for an older opset, converted to ``opset`` by onnx's version converter (its
    attribute references bound to the node's attributes first: the converter reads attribute values)."""
    written = next((o.version for o in body.opset_import if o.domain in ("", "ai.onnx")), opset)
    if written > opset:
        return None
    bound = _inlined(node, body, "body", set(), opset, keep_names=True)
    inputs = [helper.make_value_info(f, types.get(a, onnx.TypeProto()))
              for f, a in zip(body.input, node.input) if a]
    made = {o for n in bound for o in n.output}
    outputs = [helper.make_value_info(f, onnx.TypeProto()) for f in body.output if f in made]
    graph = helper.make_graph(bound, "body", inputs, outputs)
    try:
        old = helper.make_model(graph, opset_imports=[helper.make_opsetid("", written)])
        new = version_converter.convert_version(old, opset)
    except Exception:  # noqa: BLE001 - an op the converter cannot carry across
        return None
    upgraded = onnx.FunctionProto()
    upgraded.CopyFrom(body)
    del upgraded.node[:]
    upgraded.node.extend(new.graph.node)
    del upgraded.opset_import[:]
    upgraded.opset_import.extend([helper.make_opsetid("", opset)])
    return upgraded


def _same_semantics(body: onnx.FunctionProto, opset: int) -> bool:
    """Whether the body's ops mean at ``opset`` what they mean at the opset the body was written for."""
    written = next((o.version for o in body.opset_import if o.domain in ("", "ai.onnx")), opset)
    if written == opset:
        return True
    if written > opset:
        return False
    for n in body.node:
        if n.domain not in ("", "ai.onnx"):
            return False
        try:
            if defs.get_schema(n.op_type, written).since_version != defs.get_schema(n.op_type, opset).since_version:
                return False
        except defs.SchemaError:
            return False
    return True


def _inlined(node: onnx.NodeProto, body: onnx.FunctionProto, prefix: str, taken: set, opset: int,
             keep_names: bool = False) -> list:
    """The body's nodes with its formal inputs and outputs bound to the node's tensors, its own tensors
    (those of its subgraphs too) renamed ``prefix/name`` and its attribute references bound to the node's
    attributes; with ``keep_names`` only the attributes are bound."""
    names = {formal: (node.input[i] if i < len(node.input) else "") for i, formal in enumerate(body.input)}
    names.update({formal: node.output[i] for i, formal in enumerate(body.output) if i < len(node.output)})
    if keep_names:
        names = {}

    def unique(name: str) -> str:
        fresh, k = name, 0
        while fresh in taken:
            k += 1
            fresh = f"{name}_{k}"
        taken.add(fresh)
        return fresh

    def rename(t: str) -> str:
        if not t or keep_names:
            return t
        if t not in names:
            names[t] = unique(f"{prefix}/{t}")
        return names[t]

    given = {a.name: a for a in node.attribute}
    defaults = _attribute_defaults(node.op_type, opset)

    def attribute(a: onnx.AttributeProto) -> onnx.AttributeProto | None:
        if a.ref_attr_name:
            source = given.get(a.ref_attr_name) or defaults.get(a.ref_attr_name)
            if source is None:
                return None
            bound = onnx.AttributeProto()
            bound.CopyFrom(source)
            bound.name = a.name
            return bound
        if a.type == onnx.AttributeProto.GRAPH:
            copy = onnx.AttributeProto()
            copy.CopyFrom(a)
            _rename_graph(copy.g)
            return copy
        return a

    def _rename_graph(g: onnx.GraphProto) -> None:
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            vi.name = rename(vi.name)
        for init in g.initializer:
            init.name = rename(init.name)
        renamed = [one(n, k) for k, n in enumerate(g.node)]
        del g.node[:]
        g.node.extend(renamed)

    def one(n: onnx.NodeProto, k: int) -> onnx.NodeProto:
        inlined = helper.make_node(n.op_type, [rename(i) for i in n.input], [rename(o) for o in n.output],
                                   name=n.name if keep_names else unique(f"{prefix}/{n.name or n.op_type}"),
                                   domain=n.domain)
        inlined.attribute.extend(b for b in map(attribute, n.attribute) if b is not None)
        return inlined

    return [one(n, k) for k, n in enumerate(body.node)]


def _attribute_defaults(op_type: str, opset: int) -> dict:
    schema = defs.get_schema(op_type, opset)
    return {name: a.default_value for name, a in schema.attributes.items()
            if a.default_value is not None and a.default_value.type != onnx.AttributeProto.UNDEFINED}


def _types(model: onnx.ModelProto) -> dict:
    types = {vi.name: vi.type for vi in list(model.graph.input) + list(model.graph.value_info)
             + list(model.graph.output)}
    for init in model.graph.initializer:
        types.setdefault(init.name, helper.make_tensor_type_proto(init.data_type, list(init.dims)))
    return types


def _names(model: onnx.ModelProto) -> set:
    g = model.graph
    return ({vi.name for vi in list(g.input) + list(g.output) + list(g.value_info)} | {i.name for i in g.initializer}
            | {t for n in g.node for t in list(n.input) + list(n.output)} | {n.name for n in g.node})
