"""Control flow: If, Loop and Scan.

Each rule builds the backward pass of a subgraph as a subgraph of its own, with
the same walk (and so the same modified rules) as the outer graph:

* ``If``: a second ``If`` on the same condition; each branch recomputes its
  forward nodes and walks back from the outer cotangents of the If's outputs to
  every active outer tensor either branch reads (zeros where a branch does not).
* ``Loop`` and ``Scan``: the forward node also keeps, as extra scan outputs, the
  loop-carried values at the start of every iteration; a reverse ``Loop`` then
  runs the iterations backwards, recomputes one iteration's body from the kept
  values, and walks it back.  Loop-carried cotangents flow from one reverse
  iteration to the one before; cotangents of outer tensors the body reads are
  summed over iterations in extra loop-carried values; scanned inputs get their
  cotangent slices as scan outputs of the reverse loop.  The trip count is read
  at run time from the kept values, so loops that stop on a condition work too.

For DeepLIFT a Loop's body meets its reference in a loop of its own: the forward
``Loop`` is run a second time on the references of everything it reads (the other
half of the stacked batch ``[inputs; references]``, or the other copy of the
forward pass under ``batch_size``), for exactly as many iterations, and the reverse
loop recomputes iteration ``i`` of both runs, so each body tensor's reference is
the same tensor of the reference run (:class:`onnxplain.rules.PairedPartner`).
This holds whatever the loop iterates over: a loop over the rows of the batch
(iteration ``i`` reads row ``i``, whose reference row the reference run reads at
the same iteration) as well as a loop over time that carries the whole batch.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import UnsupportedOperatorError
from ..graph import FLOAT_TYPES, GraphBuilder, all_names, outer_reads, subgraphs
from ._common import differs_from_reference
from .registry import register

_LAST = np.iinfo(np.int64).max


# ---------------------------------------------------------------------- If
@register("If", tag="compound")
def vjp_if(ctx):
    """Both branches' backward passes, selected by the same condition."""
    b, node = ctx.b, ctx.node
    branches = {a.name: a.g for a in node.attribute if a.name in ("then_branch", "else_branch")}
    outer = sorted(set().union(*(outer_reads(g) for g in branches.values())) & ctx.active)
    if not outer:
        return [None]
    backward_branches = {}
    for key, g in branches.items():
        branch = b.child()
        _recompute(branch, g)
        seeds = {}
        for out, dy in zip(g.output, ctx.dy):
            if dy is not None:
                _add_seed(branch, seeds, out.name, dy)
        grads = ctx.walk(branch, seeds, outer)
        for t in outer:
            branch.outputs.append(b.typed(branch.op("Identity", grads[t]), b.elem_type(t)))
        backward_branches[key] = branch.subgraph(f"{key}_backward")
    results = b.op("If", ctx.x[0], outputs=len(outer), **backward_branches)
    results = [results] if isinstance(results, str) else results
    ctx.outer.update(zip(outer, results))
    return [None]


# ---------------------------------------------------------------------- Loop
@register("Loop", tag="compound")
def vjp_loop(ctx):
    """Reverse loop over the iterations of ``Loop(M, cond, v_initial...)``."""
    b, node = ctx.b, ctx.node
    body = _body(node)
    states = [vi.name for vi in body.input[2:]]
    n_states = len(states)
    _require_tensors(node, list(body.input[2:]) + list(body.output[1:]))
    kept = _keep_per_iteration(b, node, body, [body.input[0].name] + states, stacked_by_loop=True)
    iterations = b.reshape(kept[0], b.ints([-1]))
    kept_states = [_unstack_loop_output(b, k, b.shape_of(v)) for k, v in zip(kept[1:], node.input[2:])]
    for k, v in zip(kept_states, node.input[2:]):
        # every iteration's value is taken to be shaped like the initial one (the reshape above): say so, so
        # that the recomputed body knows its ranks (LayerNormalization, Softmax... need them)
        if b.shape(v) is not None:
            b.set_type(k, b.elem_type(v), (None,) + tuple(b.shape(v)))
    trip = _count(b, iterations, 0)
    scan_dy = {body.output[1 + n_states + k].name: dy for k, dy in enumerate(ctx.dy[n_states:])}

    def iteration_values(rev, i):
        values = {body.input[0].name: i, body.input[1].name: rev.const(True, np.bool_)}
        values.update({s: rev.op("Gather", kept_s, i, axis=0) for s, kept_s in zip(states, kept_states)})
        return values

    reference = None
    # a body holding control flow of its own keeps the stacked pairing (its If / Scan rules walk stacked halves)
    if ctx.ref is not None and not (ctx.ref.stacked and any(subgraphs(n) for n in body.node)):
        ref_body, renamed, ref_kept, pairs = _reference_loop(ctx, node, body, trip, kept[1:])

        def reference_values(rev, i):
            values = {renamed[body.input[0].name]: i, renamed[body.input[1].name]: rev.const(True, np.bool_)}
            values.update({renamed[s]: rev.op("Gather", k, i, axis=0) for s, k in zip(states, ref_kept)})
            return values
        reference = (ref_body, reference_values, pairs)

    def slice_seeds(rev, i):
        return {name: rev.op("Gather", dy, i, axis=0) for name, dy in scan_dy.items() if dy is not None}

    carried = _reverse_iterations(ctx, body, trip, states, [body.output[1 + k].name for k in range(n_states)],
                                  list(ctx.dy[:n_states]), node.output[:n_states], iteration_values, slice_seeds,
                                  scanned=[], reference=reference)
    return [None, None] + carried[0]


def _reference_loop(ctx, node: onnx.NodeProto, body: onnx.GraphProto, trip: str, kept: list[str]):
    """DeepLIFT: the forward ``Loop`` (with its kept values) run again on the references of what it reads.

    The copy runs exactly ``trip`` iterations (its condition held true), so that iteration ``i`` of the copy
    is the reference of iteration ``i`` of the forward loop even where the loop stops on a condition.
    Returns ``(body of the copy, body name -> copy name, the copy's kept states (iterations, *state),
    partner map of every body tensor and outer tensor the body reads)``."""
    b = ctx.b
    outer = sorted(outer_reads(body))
    partner = {t: _partner_of(ctx, node, t) for t in outer}
    renamed = {t: b.fresh(f"{t}__ref") for t in sorted(all_names(body) - set(outer))}
    for t, new in renamed.items():
        if b.elem_type(t) is not None:
            b.set_type(new, b.elem_type(t), b.shape(t))
    ref_body = onnx.GraphProto()
    ref_body.CopyFrom(body)
    _rename_graph(ref_body, {**renamed, **partner})
    always = b.fresh("reference_cond")
    ref_body.node.append(helper.make_node("Constant", [], [always], name=b.fresh("onnxplain_reference_cond"),
                                          value=numpy_helper.from_array(np.array(True))))
    ref_body.output[0].name = always
    initial = [_partner_of(ctx, node, v) for v in node.input[2:]]
    outputs = [b.fresh(f"{o}__ref") if o else "" for o in node.output]
    b.op("Loop", b.reshape(trip, b.ints([])), b.const(True, np.bool_), *initial, outputs=outputs, body=ref_body)
    ref_kept = []
    for k, v in zip(kept, initial):
        stacked = outputs[list(node.output).index(k)]
        ref_kept.append(_unstack_loop_output(b, stacked, b.shape_of(v)))
        b.set_type(ref_kept[-1], b.elem_type(k), b.shape(k))
    pairs = {t: renamed[t] for t in renamed}
    pairs.update(partner)
    return ref_body, renamed, ref_kept, pairs


def _partner_of(ctx, node: onnx.NodeProto, t: str) -> str:
    """The reference of ``t``, read by a Loop, for the Loop's reference run (``t`` itself where it is the same
    for a row and its reference)."""
    if not t or (t not in ctx.active and ctx.ref.stacked and not differs_from_reference(ctx, t)):
        return t
    # a scalar computed from the input (attributed or not: a scale ReduceSum(x) is both) has no rows to pair
    if ctx.ref.stacked and ctx.b.rank(t) == 0:
        name = node.name or node.output[0]
        raise UnsupportedOperatorError([node], f"DeepLIFT through the Loop node {name!r}: it reads {t!r}, a scalar that "
                                               f"is computed from the input, so the rows and their references (run "
                                               f"in one batch) cannot each get their own value of it; explain this "
                                               f"model with batch_size=1")
    return ctx.ref(t)


def _rename_graph(graph: onnx.GraphProto, mapping: dict) -> None:
    """Rename tensors throughout ``graph`` and its subgraphs (inputs, outputs, initializers, nodes)."""
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        vi.name = mapping.get(vi.name, vi.name)
    for init in graph.initializer:
        init.name = mapping.get(init.name, init.name)
    for n in graph.node:
        n.input[:] = [mapping.get(i, i) for i in n.input]
        n.output[:] = [mapping.get(o, o) for o in n.output]
        for g in subgraphs(n):
            _rename_graph(g, mapping)


# ---------------------------------------------------------------------- Scan
@register("Scan", tag="compound", since=9)
def vjp_scan(ctx):
    """Reverse loop over the iterations of ``Scan(states..., scan_inputs...)``."""
    b, node = ctx.b, ctx.node
    body = _body(node)
    n_scan = ctx.attr("num_scan_inputs")
    n_states = len(node.input) - n_scan
    states = [vi.name for vi in body.input[:n_states]]
    slices = [vi.name for vi in body.input[n_states:]]
    n_scan_out = len(body.output) - n_states
    in_axes = list(ctx.attr("scan_input_axes", [0] * n_scan))
    in_dirs = list(ctx.attr("scan_input_directions", [0] * n_scan))
    out_axes = list(ctx.attr("scan_output_axes", [0] * n_scan_out))
    out_dirs = list(ctx.attr("scan_output_directions", [0] * n_scan_out))
    _require_tensors(node, list(body.input) + list(body.output))
    kept_states = _keep_per_iteration(b, node, body, states, out_axes, out_dirs)
    scanned = list(node.input[n_states:])
    trip = _count(b, scanned[0], in_axes[0])
    last = b.sub(trip, b.const(1, np.int64))
    b.set_type(last, TensorProto.INT64, ())
    scan_dy = list(ctx.dy[n_states:n_states + n_scan_out])

    # iteration i reads (and writes) element i of a scanned axis, or element T-1-i in the reverse direction
    def iteration_values(rev, i):
        mirrored = rev.sub(last, i)
        values = {s: rev.op("Gather", kept_s, i, axis=0) for s, kept_s in zip(states, kept_states)}
        for name, x, axis, reverse in zip(slices, scanned, in_axes, in_dirs):
            values[name] = rev.op("Gather", x, mirrored if reverse else i, axis=axis)
        return values

    def slice_seeds(rev, i):
        mirrored = rev.sub(last, i)
        seeds = {}
        for out, dy, axis, reverse in zip(body.output[n_states:], scan_dy, out_axes, out_dirs):
            if dy is not None:
                _add_seed(rev, seeds, out.name, rev.op("Gather", dy, mirrored if reverse else i, axis=axis))
        return seeds

    active_slices = [k for k, x in enumerate(scanned) if x in ctx.active]
    carried, stacked = _reverse_iterations(
        ctx, body, trip, states, [o.name for o in body.output[:n_states]], list(ctx.dy[:n_states]),
        node.output[:n_states], iteration_values, slice_seeds, scanned=[slices[k] for k in active_slices],
        scanned_shapes=[_shape_without(b, scanned[k], in_axes[k]) for k in active_slices])
    dxs = [None] * n_scan
    for k, rows in zip(active_slices, stacked):
        # the reverse loop stacks iteration T-1 first: put the slices back in the forward scan's order
        ordered = rows if in_dirs[k] else b.op("Slice", rows, b.ints([-1]), b.ints([-_LAST]), b.ints([0]),
                                                b.ints([-1]))
        dxs[k] = _move_axis_from_front(b, ordered, scanned[k], in_axes[k])
    return carried + dxs


# ---------------------------------------------------------------------- shared machinery
def _reverse_iterations(ctx, body: onnx.GraphProto, trip: str, states: list[str], state_outputs: list[str],
                        final_dy: list, final_values: list[str], iteration_values, slice_seeds, scanned: list[str],
                        scanned_shapes: list[str] = (), reference=None):
    """Emit the reverse loop; return (cotangents of the initial states, stacked slice cotangents of ``scanned``).

    ``iteration_values(rev, i)`` gives the body inputs' values at forward
    iteration ``i``; ``slice_seeds(rev, i)`` the cotangents of the body's scan
    output slices at that iteration.  Float states carry cotangents; the outer
    tensors the body reads that depend on an attributed input get theirs summed.
    ``scanned_shapes`` are the shapes (1-D int64 tensors) of one slice of each of ``scanned``.
    ``reference`` (DeepLIFT): ``(body of the reference run, values of its inputs at iteration i, partner
    map)``; the reverse body recomputes both runs' iteration and walks with the partner map.
    """
    b = ctx.b
    float_states = [k for k, s in enumerate(states) if _body_type(body, s) in FLOAT_TYPES]
    outer = sorted(outer_reads(body) & ctx.active)
    rev = b.child()
    j = rev.fresh("reverse_iteration")
    rev.inputs += [helper.make_tensor_value_info(j, TensorProto.INT64, []),
                   helper.make_tensor_value_info(rev.fresh("cond"), TensorProto.BOOL, [])]
    b.set_type(j, TensorProto.INT64, ())
    d_states = [rev.fresh(f"d_{states[k]}") for k in float_states]
    sums = [rev.fresh(f"d_{t}_sum") for t in outer]
    for name, et in zip(d_states + sums, [_body_type(body, states[k]) for k in float_states]
                        + [b.elem_type(t) for t in outer]):
        rev.inputs.append(b.typed(name, et))
        b.set_type(name, et)

    i = rev.sub(rev.sub(trip, rev.const(1, np.int64)), j)
    values = iteration_values(rev, i)
    for name, value in values.items():
        rev.op("Identity", value, outputs=[name])
    _recompute(rev, body)
    walk_ref = None
    if reference is not None:
        ref_body, reference_values, pairs = reference
        for name, value in reference_values(rev, i).items():
            rev.op("Identity", value, outputs=[name])
        _recompute(rev, ref_body)
        walk_ref = ctx.ref.paired(rev, pairs, [init.name for init in b.initializers])
    seeds = slice_seeds(rev, i)
    for k, d in zip(float_states, d_states):
        _add_seed(rev, seeds, state_outputs[k], d)
    wrt = [states[k] for k in float_states] + list(scanned) + outer
    grads = ctx.walk(rev, seeds, list(dict.fromkeys(wrt)), ref=walk_ref)

    rev.outputs.append(b.typed(rev.op("Identity", rev.const(True, np.bool_)), TensorProto.BOOL))
    for k in float_states:
        rev.outputs.append(b.typed(rev.op("Identity", grads[states[k]]), _body_type(body, states[k])))
    for t, total in zip(outer, sums):
        rev.outputs.append(b.typed(rev.add(total, grads[t]), b.elem_type(t)))
    for s in scanned:
        rev.outputs.append(b.typed(rev.unsqueeze(grads[s], [0]), _body_type(body, s)))

    initial = [final_dy[k] if final_dy[k] is not None else b.zeros_like(final_values[k]) for k in float_states]
    initial += [b.zeros_like(t) for t in outer]
    n_out = len(float_states) + len(outer) + len(scanned)
    results = b.op("Loop", b.reshape(trip, b.ints([])), b.const(True, np.bool_), *initial,
                   outputs=n_out, body=rev.subgraph("reverse_body")) if n_out else []
    results = [results] if isinstance(results, str) else results
    d_initial = [None] * len(states)
    for k, r in zip(float_states, results):
        d_initial[k] = r
    ctx.outer.update(zip(outer, results[len(float_states):len(float_states) + len(outer)]))
    slices = [_unstack_loop_output(b, r, shape) for r, shape in
              zip(results[len(float_states) + len(outer):], scanned_shapes)]
    return d_initial, slices


def _unstack_loop_output(b: GraphBuilder, stacked: str, item_shape: str) -> str:
    """A Loop scan output whose items were given a leading axis of 1, as ``(iterations, *item_shape)``.

    ONNX stacks a Loop's scan outputs along a new axis 0; ``onnx.reference``
    concatenates them along their axis 0 instead.  With items shaped
    ``(1, *item)`` both give the same values, and the reshape makes them agree.
    """
    return b.reshape(stacked, b.op("Concat", b.ints([-1]), item_shape, axis=0))


def _keep_per_iteration(b: GraphBuilder, node: onnx.NodeProto, body: onnx.GraphProto, names: list[str],
                        out_axes: list | None = None, out_dirs: list | None = None,
                        stacked_by_loop: bool = False) -> list[str]:
    """Make the forward node also output ``names`` (body inputs) of every iteration, stacked on axis 0.

    With ``stacked_by_loop`` each value gets a leading axis of 1 first (see :func:`_unstack_loop_output`)."""
    kept = []
    for name in names:
        inner = b.fresh(f"{name}_kept")
        if stacked_by_loop:
            body.node.append(helper.make_node("Unsqueeze", [name, b.ints([0])], [inner], name=b.fresh("onnxplain_keep")))
        else:
            body.node.append(helper.make_node("Identity", [name], [inner], name=b.fresh("onnxplain_keep")))
        body.output.append(b.typed(inner, _body_type(body, name)))
        kept.append(b.fresh(f"{name}_per_iteration"))
        node.output.append(kept[-1])
        shape = _body_shape(body, name)
        b.set_type(kept[-1], _body_type(body, name), None if shape is None or stacked_by_loop else (None,) + shape)
        if out_axes is not None:
            out_axes.append(0)
            out_dirs.append(0)
    if out_axes is not None:   # Scan: the kept values are scanned along axis 0, in iteration order
        _set_ints(node, "scan_output_axes", out_axes)
        _set_ints(node, "scan_output_directions", out_dirs)
    return kept


def _recompute(region: GraphBuilder, graph: onnx.GraphProto) -> None:
    """Copy a subgraph's nodes (and its initializers, as constants) into ``region``, with their types.

    The subgraph's inputs must already be produced in ``region`` (or be none, as an If branch's)."""
    for init in graph.initializer:
        region.op("Constant", outputs=[init.name], value=init)
    for n in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        region.nodes.append(copy)
    region.infer_types(region.nodes)


def _add_seed(region: GraphBuilder, seeds: dict, name: str, dy: str) -> None:
    """Seed ``name`` with ``dy``; a tensor that is several outputs at once takes their sum."""
    seeds[name] = region.add(seeds[name], dy) if name in seeds else dy


def _count(b: GraphBuilder, t: str, axis: int) -> str:
    """The length of ``t`` along ``axis``, as a 0-d int64 tensor."""
    n = b.op("Gather", b.shape_of(t), b.const(axis, np.int64), axis=0)
    b.set_type(n, TensorProto.INT64, ())
    return n


def _shape_without(b: GraphBuilder, t: str, axis: int) -> str:
    """The shape of ``t`` with ``axis`` removed (1-D int64): the shape of one scanned slice."""
    rank = b.rank(t)
    if axis < 0:
        if rank is None:
            raise UnsupportedOperatorError.unknown_rank(t)
        axis += rank
    shape = b.shape_of(t)
    return b.op("Concat", b.op("Slice", shape, b.ints([0]), b.ints([axis])),
                b.op("Slice", shape, b.ints([axis + 1]), b.ints([_LAST])), axis=0)


def _move_axis_from_front(b: GraphBuilder, t: str, like: str, axis: int) -> str:
    """Move axis 0 of ``t`` to position ``axis`` (of a tensor of ``like``'s rank)."""
    rank = b.rank(like)
    if axis < 0:
        if rank is None:
            raise UnsupportedOperatorError.unknown_rank(like)
        axis += rank
    if axis == 0:
        return t
    if rank is None:
        raise UnsupportedOperatorError.unknown_rank(like)
    perm = list(range(1, axis + 1)) + [0] + list(range(axis + 1, rank))
    return b.op("Transpose", t, perm=perm)


def _body(node: onnx.NodeProto) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == "body")


def _body_input(body: onnx.GraphProto, name: str) -> onnx.ValueInfoProto:
    return next(vi for vi in body.input if vi.name == name)


def _body_type(body: onnx.GraphProto, name: str) -> int:
    return _body_input(body, name).type.tensor_type.elem_type


def _body_shape(body: onnx.GraphProto, name: str) -> tuple | None:
    tt = _body_input(body, name).type.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)


def _require_tensors(node: onnx.NodeProto, values) -> None:
    """Loop-carried values and scan slices must be tensors (not sequences or optionals)."""
    bad = [vi.name for vi in values if vi.type.HasField("sequence_type") or vi.type.HasField("optional_type")]
    if bad:
        raise UnsupportedOperatorError([node], f"{node.op_type} node {node.name or node.output[0]!r} carries "
                                               f"non-tensor values {bad} (sequences or optionals); only tensors "
                                               f"can get cotangents. The perturbation methods work on this model.")


def _set_ints(node: onnx.NodeProto, name: str, values: list[int]) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, list(values)))

