"""Emitting ONNX nodes: fresh names, constants and small op helpers.

A :class:`GraphBuilder` starts from a normalised model and collects the nodes,
initializers, inputs and outputs of the explanation graph.  Every helper returns
the *name* of the tensor it produced, so rules read like the maths they emit.
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
#: prefix of the names of the nodes an explanation graph adds (the model's own nodes keep theirs)
NODE_PREFIX = "onnxplain_"


def np_dtype(elem_type: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


class GraphBuilder:
    """Collects nodes and constants on top of a model's forward graph."""

    def __init__(self, model: onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # rules may edit forward nodes (e.g. add MaxPool's Indices output)
        model = copy
        self.model = model
        self.graph = model.graph
        self.opset = _default_opset(model)
        self.nodes: list[onnx.NodeProto] = list(self.graph.node)
        self.initializers: list[onnx.TensorProto] = list(self.graph.initializer)
        self.metadata: dict[str, str] = {}   # the graph's metadata_props (what a method tells its caller)
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._types: dict[str, tuple[int, tuple | None]] = {}
        self._used = set()
        self._consts: dict[tuple, str] = {}
        self._counter = itertools.count()
        for vi in itertools.chain(self.graph.input, self.graph.output, self.graph.value_info):
            self._record_value_info(vi)
        for init in self.graph.initializer:
            self._types[init.name] = (init.data_type, tuple(init.dims))
            self._used.add(init.name)
        for node in self.graph.node:
            self._used.update(node.input)
            self._used.update(node.output)
            for g in subgraphs(node):
                self._used.update(all_names(g))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR and node.op_type == "Constant":
                    self._types[node.output[0]] = (attr.t.data_type, tuple(attr.t.dims))

    # ------------------------------------------------------------------ names and types
    def _record_value_info(self, vi: onnx.ValueInfoProto) -> None:
        self._used.add(vi.name)
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            return
        shape = None
        if tt.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        self._types[vi.name] = (tt.elem_type, shape)

    def fresh(self, hint: str = "t") -> str:
        """A tensor name not used anywhere in the graph."""
        hint = hint.replace("/", "_").replace(":", "_").strip("_") or "t"
        while True:
            name = f"{hint}__{next(self._counter)}"
            if name not in self._used:
                self._used.add(name)
                return name

    def reserve(self, name: str) -> str:
        if name in self._used:
            raise ValueError(f"tensor name {name!r} is already used in the model")
        self._used.add(name)
        return name

    def rename(self, old: str, new: str) -> str:
        """Rename tensor ``old`` to ``new`` wherever a node (or a subgraph) reads or writes it."""
        _rename_in(self.nodes, old, new)
        if old in self._types:
            self._types[new] = self._types[old]
        self._used.add(new)
        return new

    def redirect_reads(self, old: str, new: str) -> str:
        """Make every node (and subgraph) that reads ``old`` read ``new``; ``old``'s producer is kept."""
        _rename_in(self.nodes, old, new, outputs=False)
        if old in self._types:
            self._types[new] = self._types[old]
        self._used.add(new)
        return new

    def elem_type(self, name: str) -> int | None:
        t = self._types.get(name)
        return t[0] if t else None

    def shape(self, name: str) -> tuple | None:
        """Static shape: ints for known dims, strings for symbolic ones, None when unknown."""
        t = self._types.get(name)
        return t[1] if t else None

    def rank(self, name: str) -> int | None:
        s = self.shape(name)
        return None if s is None else len(s)

    def set_type(self, name: str, elem_type: int, shape=None) -> None:
        self._types[name] = (elem_type, None if shape is None else tuple(shape))

    def is_float(self, name: str) -> bool:
        return self.elem_type(name) in FLOAT_TYPES

    # ------------------------------------------------------------------ emission
    def op(self, op_type: str, *inputs: str | None, outputs: int | list[str] = 1, domain: str = "",
           hint: str | None = None, **attrs) -> str | list[str]:
        """Append one node; return its output name (or names when ``outputs`` > 1)."""
        if isinstance(outputs, int):
            names = [self.fresh(hint or op_type.lower()) for _ in range(outputs)]
        else:
            names = list(outputs)
        ins = ["" if i is None else i for i in inputs]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        node = helper.make_node(op_type, ins, names, name=self.fresh(f"{NODE_PREFIX}{op_type}"), domain=domain, **attrs)
        self.nodes.append(node)
        return names[0] if len(names) == 1 and isinstance(outputs, int) and outputs == 1 else names

    def const(self, value, dtype=np.float32, hint: str = "c") -> str:
        """An initializer holding ``value`` (cached for scalars and small lists)."""
        arr = np.asarray(value, dtype=dtype)
        key = None
        if arr.size <= 16:
            key = (arr.dtype.str, arr.shape, arr.tobytes())
            if key in self._consts:
                return self._consts[key]
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(arr, name))
        self._types[name] = (helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape)
        if key is not None:
            self._consts[key] = name
        return name

    def ints(self, values) -> str:
        return self.const(list(values), np.int64, hint="i")

    def like(self, value, ref: str) -> str:
        """A scalar constant of the same float type as tensor ``ref`` (cast at run time when its type is
        not recorded)."""
        et = self.elem_type(ref)
        if et is None:
            return self.cast_like(self.const(value, np.float32), ref)
        return self.const(value, np_dtype(et))

    def add_input(self, name: str, elem_type: int, shape, default: np.ndarray | None = None) -> str:
        """A graph input; with ``default`` also an initializer of the same name."""
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        self._types[name] = (elem_type, None if shape is None else tuple(shape))
        self._used.add(name)
        if default is not None:
            self.initializers.append(numpy_helper.from_array(np.asarray(default, dtype=np_dtype(elem_type)), name))
        return name

    def add_output(self, name: str, elem_type: int | None = None, shape=None) -> None:
        et = elem_type if elem_type is not None else (self.elem_type(name) or TensorProto.FLOAT)
        if shape is None:
            shape = self.shape(name)
        self.outputs.append(helper.make_tensor_value_info(name, et, None if shape is None else list(shape)))

    def build(self, name: str = "onnxplain") -> onnx.ModelProto:
        graph = helper.make_graph(topological_order(self.nodes), name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=list(self.model.opset_import))
        model.ir_version = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
        model.producer_name = "onnxplain"
        return model

    # ------------------------------------------------------------------ subgraphs
    def child(self) -> "GraphBuilder":
        """A builder for a subgraph (a loop body, an If branch) or a region of this graph.

        It has its own node list, inputs and outputs, and shares everything else
        with this builder: fresh names, known types, and constants, which stay
        initializers of the outermost graph (subgraphs read them by name).
        """
        kid = object.__new__(GraphBuilder)
        kid.__dict__.update(self.__dict__)
        kid.nodes, kid.inputs, kid.outputs = [], [], []
        return kid

    def subgraph(self, name: str) -> onnx.GraphProto:
        """The graph of a :meth:`child` builder: its nodes, inputs and outputs, no initializers."""
        return helper.make_graph(topological_order(self.nodes), self.fresh(name), self.inputs, self.outputs)

    def typed(self, name: str, elem_type: int | None = None) -> onnx.ValueInfoProto:
        """A value info of ``name`` with its known element type (shape left open: it may vary per iteration)."""
        return helper.make_value_info(name, helper.make_tensor_type_proto(
            elem_type if elem_type is not None else (self.elem_type(name) or TensorProto.FLOAT), None))

    def infer_types(self, nodes: list[onnx.NodeProto], inputs=()) -> None:
        """Record the types and shapes that ONNX shape inference finds for ``nodes`` (subgraphs included).

        ``inputs`` are value infos of tensors the nodes read that are not known to
        this builder (a body's own inputs); everything else they read from outside
        is declared with the type recorded here.  Tensors inference cannot type
        stay unknown.
        """
        declared = {vi.name: vi for vi in inputs}
        produced = {o for n in nodes for o in n.output if o}
        outside = sorted(set().union(*(node_reads(n) for n in nodes)) - produced - set(declared)) if nodes else []
        small = {i.name: i for i in self.initializers if i.name in outside and np.prod(i.dims) <= 64}
        for name in outside:
            if name in small:   # small constants (axes, shapes) let inference find shapes
                continue
            if self.elem_type(name) is not None:
                shape = self.shape(name)
                declared[name] = helper.make_tensor_value_info(
                    name, self.elem_type(name), None if shape is None else [d if d is not None else None for d in shape])
        graph = helper.make_graph(list(nodes), "infer", list(declared.values()), [], list(small.values()))
        model = helper.make_model(graph, opset_imports=list(self.model.opset_import))
        model.ir_version = self.model.ir_version or helper.find_min_ir_version_for(list(model.opset_import), True)
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:   # inference is a help here, never a requirement: unknown types stay unknown
            return
        for vi in declared.values():
            self._record_value_info(vi)
        _record_graph_types(self, inferred.graph)

    # ------------------------------------------------------------------ small op helpers
    def add(self, a, b): return self.op("Add", a, b)
    def sub(self, a, b): return self.op("Sub", a, b)
    def mul(self, a, b): return self.op("Mul", a, b)
    def div(self, a, b): return self.op("Div", a, b)
    def neg(self, a): return self.op("Neg", a)

    def sum(self, names: list[str]) -> str:
        if len(names) == 1:
            return names[0]
        if len(names) == 2:
            return self.add(*names)
        return self.op("Sum", *names)

    def shape_of(self, x: str) -> str:
        return self.op("Shape", x)

    def reshape(self, x: str, shape: str) -> str:
        return self.op("Reshape", x, shape)

    def reshape_exact(self, x: str, shape: str) -> str:
        """Reshape to ``shape`` holding actual sizes (read with Shape at run time, or static; no -1 and no
        0 meaning "copy"): from opset 14 with ``allowzero=1``, so a zero-size dimension stays 0 instead of
        copying x's size at that position."""
        return self.op("Reshape", x, shape, allowzero=1 if self.opset >= 14 else None)

    def reshape_like(self, x: str, ref: str) -> str:
        return self.reshape_exact(x, self.shape_of(ref))

    def zeros_like(self, x: str) -> str:
        """Zeros shaped and typed like ``x`` (cast at run time when its type is not recorded)."""
        et = self.elem_type(x)
        zeros = self.op("ConstantOfShape", self.shape_of(x),
                        value=numpy_helper.from_array(np.zeros(1, np_dtype(et or TensorProto.FLOAT))))
        return zeros if et is not None else self.cast_like(zeros, x)

    def cast_like(self, x: str, ref: str) -> str:
        return self.op("CastLike", x, ref)

    def reduce_sum(self, x: str, axes, keepdims: int = 1) -> str:
        return self.op("ReduceSum", x, self.ints(axes), keepdims=keepdims)

    def reduce(self, op_type: str, x: str, axes, keepdims: int = 1) -> str:
        """ReduceMean/ReduceMax/... in whichever form this opset takes."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, x, self.ints(axes), keepdims=keepdims)
        return self.op(op_type, x, axes=list(axes), keepdims=keepdims)

    def unsqueeze(self, x: str, axes) -> str:
        return self.op("Unsqueeze", x, self.ints(axes))

    def squeeze(self, x: str, axes) -> str:
        return self.op("Squeeze", x, self.ints(axes))

    def where(self, cond, a, b): return self.op("Where", cond, a, b)

    def sign_pm1(self, z: str) -> str:
        """+1 where z >= 0, -1 elsewhere (as float like z)."""
        return self.where(self.op("GreaterOrEqual", z, self.like(0.0, z)), self.like(1.0, z), self.like(-1.0, z))

    # ------------------------------------------------------------------ broadcasting
    def unbroadcast(self, g: str, x: str, y: str) -> str:
        """Sum ``g`` (shaped like ``y``) down to the shape of ``x`` (numpy broadcasting undone)."""
        sx, sy = self.shape(x), self.shape(y)
        if sx is not None and sy is not None and sx == sy and all(d is not None for d in sx):
            return g
        if sx is not None and sy is not None and all(isinstance(d, int) for d in sx + sy):
            lead = len(sy) - len(sx)
            axes = list(range(lead)) + [lead + i for i, d in enumerate(sx) if d == 1 and sy[lead + i] != 1]
            if axes:
                g = self.reduce_sum(g, axes, keepdims=1)
            return g if not lead else self.reshape_exact(g, self.ints(sx))
        return self._unbroadcast_dynamic(g, x, sx, sy)

    def _unbroadcast_dynamic(self, g: str, x: str, sx, sy) -> str:
        """Broadcast axes found at run time: where the padded shape of x differs from g's.

        Works with unknown ranks too: the padding of x's shape is computed from the ranks at run time.
        """
        shape_x, shape_g = self.shape_of(x), self.shape_of(g)
        if sx is not None and sy is not None:
            lead = len(sy) - len(sx)
            padded = self.op("Concat", self.ints([1] * lead), shape_x, axis=0) if lead else shape_x
            positions = self.ints(range(len(sy)))
        else:
            rank_g, rank_x = self.op("Size", shape_g), self.op("Size", shape_x)
            ones = self.op("ConstantOfShape", self.reshape(self.sub(rank_g, rank_x), self.ints([1])),
                           value=numpy_helper.from_array(np.ones(1, np.int64)))
            padded = self.op("Concat", ones, shape_x, axis=0)
            positions = self.op("Range", self.const(0, np.int64), rank_g, self.const(1, np.int64))
        differs = self.op("Not", self.op("Equal", padded, shape_g))
        axes = self.op("Compress", positions, differs, axis=0)
        summed = self.op("ReduceSum", g, axes, keepdims=1, noop_with_empty_axes=1)
        return self.reshape_exact(summed, shape_x)


def topological_order(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Nodes ordered so that every tensor is produced before it is read (stable otherwise)."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [{producer[t] for t in node_reads(n) if t in producer} for n in nodes]
    order, state = [], [0] * len(nodes)   # 0 new, 1 on the stack, 2 placed
    for root in range(len(nodes)):
        stack = [(root, iter(sorted(deps[root])))]
        if state[root]:
            continue
        state[root] = 1
        while stack:
            i, it = stack[-1]
            nxt = next((d for d in it if state[d] != 2), None)
            if nxt is None:
                stack.pop()
                state[i] = 2
                order.append(nodes[i])
            elif state[nxt] == 1:
                raise ValueError(f"the graph has a cycle through node {nodes[nxt].name!r}")
            else:
                state[nxt] = 1
                stack.append((nxt, iter(sorted(deps[nxt]))))
    return order


def node_reads(node: onnx.NodeProto) -> set[str]:
    """Tensors a node reads, including the outer-scope names its subgraphs read."""
    names = {i for i in node.input if i}
    for g in subgraphs(node):
        names.update(outer_reads(g))
    return names


def outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph (or its own subgraphs) reads from the scopes around it."""
    local = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    for n in graph.node:
        local.update(n.output)
    found = {t for n in graph.node for t in node_reads(n) if t not in local}
    found.update(o.name for o in graph.output if o.name not in local)   # an output may be an outer tensor
    return found


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held in a node's attributes (If's branches, Loop's and Scan's body)."""
    found = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            found.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            found.extend(attr.graphs)
    return found


def all_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a graph and its subgraphs define or read."""
    names = {vi.name for vi in graph.input} | {vi.name for vi in graph.output} | {i.name for i in graph.initializer}
    for n in graph.node:
        names.update(n.input)
        names.update(n.output)
        for g in subgraphs(n):
            names.update(all_names(g))
    names.discard("")
    return names


def _record_graph_types(b: GraphBuilder, graph: onnx.GraphProto) -> None:
    """Record inferred types; the symbols inference invents (``unk__N``) are unknown dims, since two
    inference runs may give the same symbol to different dims."""
    for vi in itertools.chain(graph.input, graph.output, graph.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            b._record_value_info(vi)
            shape = b.shape(vi.name)
            if shape is not None and any(isinstance(d, str) and d.startswith("unk__") for d in shape):
                b.set_type(vi.name, b.elem_type(vi.name),
                           [None if isinstance(d, str) and d.startswith("unk__") else d for d in shape])
    for n in graph.node:
        for g in subgraphs(n):
            _record_graph_types(b, g)


def redirect_reads(nodes, old: str, new: str) -> None:
    """Make every node of ``nodes`` (and of their subgraphs) that reads ``old`` read ``new``."""
    _rename_in(nodes, old, new, outputs=False)


def _rename_in(nodes, old: str, new: str, outputs: bool = True) -> None:
    for node in nodes:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if outputs and name == old:
                node.output[i] = new
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rename_in(attr.g.node, old, new, outputs)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _rename_in(g.node, old, new, outputs)


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")


def clean_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with constant shape arithmetic folded, repeated subexpressions merged and dead nodes
    removed, by onnxscript's optimizer (which keeps the standard domains; checked here).

    Graph inputs are never folded, those with a default initializer (method parameters) included,
    so every value a client may feed still reaches the graph.  Inputs, outputs, their names and
    the opset stay as they were (checked); the optimised graph computes the same numbers.  Subgraphs
    (If branches, Loop and Scan bodies: control flow, expanded recurrent layers) are folded and
    pruned too (the optimizer merges repeats at the top level only), still read outer values by the
    same names, and are held to the same standard domains.
    """
    import logging

    inputs = {vi.name for vi in model.graph.input}
    defaults = [init for init in model.graph.initializer if init.name in inputs]
    bare = onnx.ModelProto()
    bare.CopyFrom(model)                 # defaults set aside: the optimizer would read their shapes as fixed
    del bare.graph.initializer[:]
    bare.graph.initializer.extend(init for init in model.graph.initializer if init.name not in inputs)
    quiet = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.ERROR)
    try:
        cleaned = _optimized(bare)
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    cleaned.graph.initializer.extend(defaults)
    foreign = {n.domain for n in nodes_everywhere(cleaned.graph)} - set(STANDARD_DOMAINS)
    if foreign or len(cleaned.functions):
        raise RuntimeError(f"the graph optimizer left non-standard ops (domains {sorted(foreign)}, "
                           f"{len(cleaned.functions)} functions); onnxplain's graphs must stay standard")
    for what in ("input", "output"):
        before = [vi.name for vi in getattr(model.graph, what)]
        after = [vi.name for vi in getattr(cleaned.graph, what)]
        if before != after:
            raise RuntimeError(f"the graph optimizer changed the graph's {what}s from {before} to {after}; "
                               f"clients feed and read them by name")
    cleaned.ir_version = model.ir_version
    return cleaned


def _optimized(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxscript's ``optimize`` (inlining, constant folding, its rewrite rules, dead-node removal, constant
    lifting, common subexpressions), without the rules that take ``x + c``, ``x - c``, ``x * c`` and ``x / c``
    for no-ops whenever ``c`` is *near* 0 or 1: they match constants within 1e-8 of zero and 1e-5 of one, so
    they delete the ``+ 1e-9`` of a normaliser's denominator (MeanVarianceNormalization's, a LayerNorm
    epsilon of 1e-12) and would change what the model computes."""
    import onnx_ir as ir
    from onnx_ir.passes import common as common_passes
    from onnxscript import rewriter
    from onnxscript.optimizer import constant_folding
    from onnxscript.rewriter.rules.common import _no_op, dropout_inference_rule, dropout_zero_rule

    kept = {id(dropout_zero_rule), id(dropout_inference_rule)}   # exact no-ops: kept
    approximate = {id(rule) for rule in _no_op.rules.rules} - kept
    rules = [r for r in rewriter._DEFAULT_REWRITE_RULES if id(r) not in approximate]
    limits = dict(input_size_limit=constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                  output_size_limit=constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT)
    passes = ir.passes.Sequential(
        common_passes.InlinePass(),
        ir.passes.PassManager([constant_folding.FoldConstantsPass(shape_inference=True, **limits),
                               rewriter.RewritePass(rules), common_passes.RemoveUnusedNodesPass(),
                               common_passes.RemoveUnusedFunctionsPass(), common_passes.RemoveUnusedOpsetsPass()],
                              steps=2, early_stop=True),
        common_passes.RemoveUnusedNodesPass(),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common_passes.LiftSubgraphInitializersToMainGraphPass(),
        common_passes.DeduplicateInitializersPass(),
        common_passes.CommonSubexpressionEliminationPass(),
        common_passes.OutputFixPass(),
        common_passes.NameFixPass())
    model_ir = ir.serde.deserialize_model(model)
    passes(model_ir)
    return ir.serde.serialize_model(model_ir)


def nodes_everywhere(graph: onnx.GraphProto):
    """Every node of ``graph`` and of the subgraphs (If branches, Loop and Scan bodies) its nodes hold."""
    for node in graph.node:
        yield node
        for g in subgraphs(node):
            yield from nodes_everywhere(g)
