"""The reverse walk: from the explained output back to the attributed inputs.

Everything shared by the rules lives here and nowhere else: which tensors get
cotangents (only those that depend on an attributed input and are floating
point), summing the cotangents of tensors used more than once, undoing
broadcasting (with :meth:`onnxplain.graph.GraphBuilder.unbroadcast`), reading
NaN as 0 where a ``Where`` drops it, and finding the op that cuts every gradient
path from a tensor to the output.  Each op's own maths is one small rule in
:mod:`onnxplain.vjp`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from .errors import UnsupportedOperatorError
from .graph import FLOAT_TYPES, GraphBuilder, node_reads, outer_reads, subgraphs, topological_order
from .vjp import RULES, Rule


@dataclass(frozen=True)
class Forward:
    """The forward nodes of one walk: which node makes each tensor and which read it, and the tensors
    whose own cotangent is asked for (seeds, attributed tensors, graph outputs).  Rules that read a
    neighbour (a Relu whose mask its MaxPool applies) look here."""

    producer: dict
    readers: dict
    kept: frozenset

    @classmethod
    def of(cls, nodes, kept) -> "Forward":
        producer, readers = {}, {}
        for node in nodes:
            for o in node.output:
                if o:
                    producer[o] = node
            for name in node_reads(node):
                readers.setdefault(name, []).append(node)
        return cls(producer, readers, frozenset(kept))

    def only_reader(self, name: str) -> onnx.NodeProto | None:
        """The one node that reads ``name``, or None when none or several do."""
        found = self.readers.get(name, ())
        return found[0] if len(found) == 1 else None


@dataclass
class VJPContext:
    """What a rule sees of one node: names of its forward values and output cotangents."""

    b: GraphBuilder
    node: onnx.NodeProto
    dy: list[str | None]
    active: frozenset = field(repr=False)
    ref: object = None      # DeepLIFT: maps a tensor to its reference rows (rules.Partner)
    params: dict = field(default_factory=dict)  # graph tensors a modified rule reads (e.g. eps)
    reads: dict = field(default_factory=dict)   # forward tensors the rule reads under another name (NaN-safe)
    rules: dict = field(default_factory=dict, repr=False)  # the table in use (standard + a method's overrides)
    #: cotangents of outer-scope tensors that the node's subgraphs read (filled by control-flow rules)
    outer: dict = field(default_factory=dict)
    forward: Forward | None = field(default=None, repr=False)   # the walk's forward nodes

    @property
    def x(self) -> list[str]:
        return [self.reads.get(n, n) for n in self.node.input]

    @property
    def y(self) -> list[str]:
        return [self.reads.get(n, n) for n in self.node.output]

    @property
    def opset(self) -> int:
        return self.b.opset

    def needs(self, i: int) -> bool:
        """Whether input ``i`` should receive a cotangent."""
        return i < len(self.node.input) and self.node.input[i] in self.active

    def attr(self, name: str, default=None):
        for a in self.node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def dy_or_zeros(self, k: int) -> str:
        return self.dy[k] if self.dy[k] is not None else self.b.zeros_like(self.node.output[k])

    def walk(self, region: GraphBuilder, seeds: dict[str, str], wrt: list[str], ref=None) -> dict[str, str]:
        """The backward pass of the nodes of ``region`` (a child builder: a loop body, a branch, an
        expansion of a fused op), with this walk's rules, modified-rule parameters and, for DeepLIFT,
        a partner map of the region's own tensors (a body's tensors are split at their own axis 0).
        ``ref``: the partner map to use instead (a loop whose reference iterations run in a loop of
        their own, :mod:`onnxplain.vjp.control_flow`)."""
        if ref is not None:
            return reverse_walk(region, seeds, wrt, self.rules, ref, self.params)
        if self.ref is not None and not self.ref.stacked:
            name = self.node.name or self.node.output[0]
            raise UnsupportedOperatorError([self.node], f"DeepLIFT's rules inside the {self.node.op_type} node {name!r} "
                                           f"(a loop body, a branch or a recurrent layer's cell) pair each row with its "
                                           f"reference in one batch, but with batch_size the inputs and the references "
                                           f"run through separate copies of the forward pass; explain this model "
                                           f"without batch_size")
        ref = None if self.ref is None else type(self.ref)(region)
        return reverse_walk(region, seeds, wrt, self.rules, ref, self.params)


def active_tensors(nodes, wrt, b: GraphBuilder) -> set[str]:
    """Floating-point tensors that depend on one of ``wrt``."""
    active = set(wrt)
    for node in nodes:
        if any(i in active for i in node.input if i) or _subgraph_reads(node, active):
            active.update(o for o in node.output if o and _may_be_float(b, o))
    return active


def needed_tensors(nodes, outputs) -> set[str]:
    """Tensors that the given outputs depend on (also through what a subgraph reads)."""
    needed = set(outputs)
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            needed.update(node_reads(node))
    return needed


def path_nodes(nodes, wrt, outputs, b: GraphBuilder):
    active = active_tensors(nodes, wrt, b)
    needed = needed_tensors(nodes, outputs)
    # nodes downstream of an attributed tensor (never the producer of one: layers are attributed as they are)
    on_path = [n for n in nodes
               if any(o in needed and o in active for o in n.output)
               and (any(i in active for i in n.input if i) or _subgraph_reads(n, active))]
    return on_path, active


def gradient_cut(nodes, x: str, output: str, b: GraphBuilder, overrides: dict | None = None):
    """The node that cuts every gradient path from ``x`` to ``output``, or None.

    None when ``output`` does not depend on ``x`` at all, or when a path of floating-point tensors
    through ops that pass gradients joins them.  Otherwise the first node (in graph order) that reads
    a tensor gradients reach from ``x`` and feeds ``output`` without passing them on: a Cast to an
    integer or boolean type, Shape, a comparison, Floor, ArgMax...
    """
    needed = needed_tensors(nodes, [output])
    if x not in needed:
        return None
    rules = _table(overrides)
    flowing = {x}
    for node in nodes:
        if any(i in flowing for i in node.input if i) or _subgraph_reads(node, flowing):
            rule = _lookup(rules, node, b.opset)
            if rule is None or not rule.cuts:
                flowing.update(o for o in node.output if o and _may_be_float(b, o))
    if output in flowing:
        return None
    for node in nodes:
        if (any(i in flowing for i in node.input if i) or _subgraph_reads(node, flowing)) and \
                any(o in needed and o not in flowing for o in node.output):
            return node
    return None


def gradient_cuts(model: onnx.ModelProto, output: str, overrides: dict | None = None):
    """``cut(tensor)``: :func:`gradient_cut` of ``tensor`` in ``model`` (a normalised model), memoised."""
    b = GraphBuilder(model)
    found: dict = {}

    def cut(tensor: str):
        if tensor not in found:
            found[tensor] = gradient_cut(b.nodes, tensor, output, b, overrides)
        return found[tensor]
    return cut


def missing_rules(nodes, wrt, outputs, b: GraphBuilder, overrides: dict | None = None) -> list[onnx.NodeProto]:
    """The nodes between ``wrt`` and ``outputs`` that no rule (standard or override) covers."""
    on_path, active = path_nodes(nodes, wrt, outputs, b)
    return _uncovered(on_path, _table(overrides), b, active)


def _table(overrides: dict | None) -> dict:
    """The standard rules with a method's modified rules on top (the standard table is never edited)."""
    return {**RULES, **(overrides or {})}


def _uncovered(nodes, rules: dict, b: GraphBuilder, active) -> list[onnx.NodeProto]:
    """Nodes without a rule, and inside the subgraphs of those with one, the body nodes without one."""
    missing = []
    for n in nodes:
        if _lookup(rules, n, b.opset) is None:
            missing.append(n)
        else:
            for g in subgraphs(n):
                missing.extend(_uncovered_in_body(g, rules, b, active))
    return missing


def _uncovered_in_body(graph: onnx.GraphProto, rules: dict, b: GraphBuilder, active) -> list[onnx.NodeProto]:
    """The nodes of a subgraph, between its inputs (and the active tensors it reads) and its outputs,
    that no rule covers."""
    body = b.child()
    body.infer_types(list(graph.node), list(graph.input))
    wrt = [vi.name for vi in graph.input if vi.type.tensor_type.elem_type in FLOAT_TYPES]
    wrt += sorted(outer_reads(graph) & set(active))
    on_path, inner = path_nodes(list(graph.node), wrt, [o.name for o in graph.output], body)
    return _uncovered(on_path, rules, body, inner)


@dataclass(frozen=True)
class Step:
    """One node's step of a backward pass: the cotangents that reached its outputs (None where none did) and
    those its rule gave to its active inputs (and to outer tensors its subgraphs read), as tensor names."""
    node: onnx.NodeProto
    dy: tuple
    given: tuple           # ((input name, cotangent name), ...)


def backward(b: GraphBuilder, output: str, seed: str, wrt: list[str], overrides: dict | None = None,
             ref=None, params: dict | None = None, record: list | None = None) -> dict[str, str]:
    """Emit the backward pass of ``output`` seeded with ``seed``.

    Returns a map from each name in ``wrt`` to the name of its cotangent.
    ``overrides`` maps op types to modified rules (DeepLIFT, LRP, ...): the
    standard table is never edited.  ``record``: a list that gets a :class:`Step` per node.
    """
    return reverse_walk(b, {output: seed}, wrt, _table(overrides), ref, params or {}, record)


def reverse_walk(b: GraphBuilder, seeds: dict[str, str], wrt: list[str], rules: dict, ref=None,
                 params: dict | None = None, record: list | None = None) -> dict[str, str]:
    """The backward pass of the nodes of ``b`` from several seeded tensors to ``wrt``.

    ``seeds`` maps tensors to the names of their cotangents.  Returns a map from
    each name in ``wrt`` to its cotangent (zeros where no cotangent reaches it).
    Control-flow rules call it again for their subgraphs (:meth:`VJPContext.walk`).
    ``record``: a list that gets a :class:`Step` per node walked (the top level's only).
    """
    on_path, active = path_nodes(list(b.nodes), wrt, list(seeds), b)
    missing = _uncovered(on_path, rules, b, active)
    if missing:
        raise UnsupportedOperatorError(missing)

    cot: dict[str, list[str]] = {}
    for name, seed in seeds.items():
        cot.setdefault(name, []).append(seed)
    frozen = frozenset(active)
    forward = Forward.of(b.nodes, set(seeds) | set(wrt) | {o.name for o in b.outputs})
    fragile = nan_masked_tensors(topological_order(b.nodes), b)
    safe: dict[str, str] = {}
    for node in reversed(on_path):
        if not any(o in cot for o in node.output):
            continue
        dy = [_take(b, cot, o, keep=o in wrt) for o in node.output]
        rule = _lookup(rules, node, b.opset)
        reads = {t: _nan_as_zero(b, t, safe) for t in list(node.input) + list(node.output) if t in fragile}
        # a NaN-safe copy stands for its tensor: active when it is (modified rules pair active tensors)
        seen = frozen.union(s for t, s in reads.items() if t in frozen) if reads else frozen
        ctx = VJPContext(b, node, dy, seen, ref, params or {}, reads, rules=rules, forward=forward)
        grads = rule.fn(ctx)
        if len(grads) > len(node.input):
            raise AssertionError(f"rule for {node.op_type} returned {len(grads)} cotangents for {len(node.input)} inputs")
        given = []
        for i, g in enumerate(grads):
            name = node.input[i] if i < len(node.input) else ""
            if g is None or not name or name not in active:
                continue
            if rule.broadcast:
                g = b.unbroadcast(g, name, node.output[0])
            given.append((name, g))
        given += [(name, g) for name, g in ctx.outer.items() if name in active]
        for name, g in given:
            cot.setdefault(name, []).append(g)
        if record is not None:
            record.append(Step(node, tuple(dy), tuple(given)))

    result = {}
    for x in wrt:
        result[x] = b.sum(cot[x]) if x in cot else b.zeros_like(x)
    return result


#: Ops that can make NaN from finite inputs (a Softmax over a row of -inf, 0/0, log or sqrt of a negative).
NAN_SOURCES = ("Softmax", "LogSoftmax", "Div", "Reciprocal", "Log", "Sqrt", "Pow")


def nan_masked_tensors(nodes, b: GraphBuilder) -> set[str]:
    """Forward tensors that may hold NaN where a ``Where`` downstream does not take them.

    Attention that masks whole rows computes ``Where(all_masked, 0, Softmax(scores))``: the forward
    pass is finite, but the Softmax rule multiplies its (zero) cotangent by the NaN row, and NaN * 0
    spreads over every key through the QK^T MatMul.  Rules must read such tensors with NaN replaced
    by 0 *before* they use them (masking a rule's result afterwards would also drop the valid terms
    a MatMul sums with the NaN ones).  Where the forward output is finite, a NaN value only ever
    meets a zero cotangent, so reading it as 0 changes nothing else.  The tensors are those computed
    from an op in :data:`NAN_SOURCES` (a Div only when its divisor is not a constant) that reach a
    branch of a ``Where``; in graphs without both, nothing is masked and nothing is emitted.
    """
    constants = {i.name for i in b.initializers} | {o for n in b.nodes if n.op_type == "Constant" for o in n.output}
    nan_tests = {n.output[0]: n.input[0] for n in nodes if n.op_type == "IsNaN" and n.output and n.input}
    may_be_nan: set[str] = set()
    for node in nodes:
        if _replaces_nan(node, nan_tests, may_be_nan):
            continue
        source = node.op_type in NAN_SOURCES and not (node.op_type == "Div" and node.input[1] in constants)
        if source or any(i in may_be_nan for i in node.input if i):
            may_be_nan.update(o for o in node.output if o and _may_be_float(b, o))
    if not may_be_nan:
        return set()
    before_where: set[str] = set()
    for node in reversed(nodes):
        if node.op_type == "Where":
            before_where.update(i for i in node.input[1:] if i)
        if any(o in before_where for o in node.output):
            before_where.update(i for i in node.input if i)
    return may_be_nan & before_where


def _replaces_nan(node, nan_tests: dict, may_be_nan: set) -> bool:
    """Whether ``node`` is a NaN guard ``Where(IsNaN(t), v, t)`` whose ``v`` holds no NaN: its output has
    none, whatever ``t`` holds (exporters write ``softmax.masked_fill(isnan, 0)`` after masked attention)."""
    if node.op_type != "Where" or len(node.input) != 3:
        return False
    tested, replacement, kept = nan_tests.get(node.input[0]), node.input[1], node.input[2]
    return tested is not None and tested == kept and replacement not in may_be_nan


def _nan_as_zero(b: GraphBuilder, t: str, cache: dict) -> str:
    """``t`` with NaN replaced by 0 (one Where per tensor)."""
    if t not in cache:
        cache[t] = b.where(b.op("IsNaN", t), b.like(0.0, t), t)
        b.set_type(cache[t], b.elem_type(t), b.shape(t))
    return cache[t]


def _take(b: GraphBuilder, cot: dict, name: str, keep: bool) -> str | None:
    """The summed cotangent of ``name``; kept in ``cot`` when ``name`` is itself attributed."""
    if name not in cot:
        return None
    total = b.sum(cot[name])
    if keep:
        cot[name] = [total]
    else:
        del cot[name]
    return total


def has_rule(node: onnx.NodeProto, opset: int, overrides: dict | None = None) -> bool:
    """Whether ``node`` has a standard rule (or one in ``overrides``) at ``opset``."""
    return _lookup(_table(overrides), node, opset) is not None


def with_bodies(model: onnx.ModelProto, overrides: dict | None = None) -> onnx.ModelProto:
    """``model`` with every node that has no rule (standard or in ``overrides``) written out as the standard's
    function body of its op, where it has one (:func:`onnxplain.converters.expand.expand_functions`)."""
    from .converters.expand import expand_functions
    return expand_functions(model, lambda node, opset: has_rule(node, opset, overrides))


def _lookup(rules: dict, node: onnx.NodeProto, opset: int) -> Rule | None:
    key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
    candidates = rules.get(key)
    if candidates is None:
        return None
    if isinstance(candidates, Rule):
        candidates = [candidates]
    for r in candidates:
        if r.since <= opset:
            return r
    return None


def _may_be_float(b: GraphBuilder, name: str) -> bool:
    et = b.elem_type(name)
    return et is None or b.is_float(name)


def _subgraph_reads(node: onnx.NodeProto, active: set) -> bool:
    return any(t in active for g in subgraphs(node) for t in outer_reads(g))
