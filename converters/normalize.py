"""The normaliser: any ONNX model in, a model every method can rewrite out.

Steps: load (path, bytes or ModelProto), check, inline local functions, upgrade
the default-domain opset to at least :data:`MIN_OPSET`, make the batch
dimension of inputs and outputs dynamic, infer shapes.  Nothing that erases
activations is run (Relu -> Clip fusions would hide the nonlinearities that
DeepLIFT and LRP need).

Inputs need not be batch first: :func:`batch_axes_of` tells which axis of each
input is its batch axis (``None`` for an unbatched input: a scalar, a flag, a
weight), only that axis is made dynamic, and :func:`to_batch_first` gives the
methods a model whose batched inputs all have the batch on axis 0.
:func:`batch_problems` finds outputs that have no batch axis first (a forward
that reduces over the rows), which no method can explain row by row, and :func:`rows_mixed` the nodes
inside the model that make one row's result depend on the others (a normalisation over the batch).
"""
from __future__ import annotations

import collections
import hashlib
import os

import onnx
from onnx import helper, shape_inference, version_converter

from onnxplain.errors import ModelError

MIN_OPSET = 17
BATCH = "batch"


def load_model(model) -> onnx.ModelProto:
    """Read a model from a path, bytes or ModelProto (a copy is returned)."""
    if isinstance(model, onnx.ModelProto):
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out
    if isinstance(model, (bytes, bytearray, memoryview)):
        try:
            return onnx.load_from_string(bytes(model))
        except Exception as e:  # protobuf raises DecodeError
            raise ModelError(f"the bytes given are not an ONNX model: {e}") from e
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise ModelError(f"no ONNX model at {path!r}")
        try:
            return onnx.load(path)
        except Exception as e:
            raise ModelError(f"{path!r} is not a readable ONNX model: {e}") from e
    raise ModelError(f"expected a path, bytes or onnx.ModelProto, got {type(model).__name__}")


def digest(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def normalize(model, min_opset: int = MIN_OPSET, dynamic_batch: bool = True, batch_axes=None) -> onnx.ModelProto:
    """Return a checked, inlined, upgraded, shape-inferred copy of ``model``.

    ``batch_axes``: the batch axis of some inputs by name (``None`` for
    unbatched ones); the others are detected (see :func:`batch_axes_of`).
    With ``dynamic_batch`` the batch axis of every batched input, and the
    first axis of every output, become the symbolic dimension ``batch``.
    """
    m = load_model(model)
    _check(m)
    _dedupe_opsets(m)
    if m.functions:
        from onnx import inliner
        m = inliner.inline_local_functions(m)
    m = _upgrade(m, min_opset)
    axes = batch_axes_of(m, batch_axes)
    if dynamic_batch:
        _make_batch_dynamic(m, axes)
    m = _infer_shapes(m)
    m.ir_version = helper.find_min_ir_version_for(list(m.opset_import), ignore_unknown=True)
    _probe_missing_shapes(m, axes)
    m.ir_version = helper.find_min_ir_version_for(list(m.opset_import), ignore_unknown=True)
    return m


def _check(m: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(m)
    except onnx.checker.ValidationError as e:
        raise ModelError(f"the model fails onnx.checker: {e}") from e
    if not m.graph.output:
        raise ModelError("the model has no outputs")


def _dedupe_opsets(m: onnx.ModelProto) -> None:
    """One opset import per domain, the highest (skl2onnx may import the default domain twice)."""
    versions: dict[str, int] = {}
    for imp in m.opset_import:
        domain = "" if imp.domain == "ai.onnx" else imp.domain
        versions[domain] = max(versions.get(domain, 0), imp.version)
    if len(versions) != len(m.opset_import):
        del m.opset_import[:]
        m.opset_import.extend(helper.make_opsetid(d, v) for d, v in versions.items())


def _opset(m: onnx.ModelProto) -> int:
    for imp in m.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def _upgrade(m: onnx.ModelProto, min_opset: int) -> onnx.ModelProto:
    version = _opset(m)
    if version >= min_opset:
        return m
    if version == 0:  # e.g. an ai.onnx.ml-only model: nothing of the default domain to convert
        m.opset_import.append(helper.make_opsetid("", min_opset))
        return m
    try:
        up = version_converter.convert_version(m, min_opset)
    except Exception as e:
        raise ModelError(f"could not upgrade the model from opset {version} to {min_opset}: {e}") from e
    changed = [vi.name for before, after in ((m.graph.input, up.graph.input), (m.graph.output, up.graph.output))
               for vi, new in zip(before, after) if _rank(vi) != _rank(new)]
    if changed:   # e.g. Scan-8's batch axis, which opset 9 dropped: the converter assumes a batch of one
        raise ModelError(f"upgrading the model from opset {version} to {min_opset} changes the rank of "
                         f"{', '.join(map(repr, changed))} (ops: {', '.join(sorted({n.op_type for n in m.graph.node}))}); "
                         f"export the model with opset {min_opset} or newer")
    return up


def _rank(vi) -> int | None:
    t = vi.type.tensor_type
    return len(t.shape.dim) if t.HasField("shape") else None


def _make_batch_dynamic(m: onnx.ModelProto, axes: dict) -> None:
    """Replace a fixed batch dimension of every batched graph input (and the first one of every
    output) by ``batch``; unbatched inputs and weights given as inputs keep their shapes."""
    targets = [(vi, axes.get(vi.name)) for vi in model_inputs(m)] + [(vi, 0) for vi in m.graph.output]
    for vi, axis in targets:
        if axis is None or not vi.type.HasField("tensor_type"):
            continue
        shape = vi.type.tensor_type.shape
        if len(shape.dim) > axis and shape.dim[axis].HasField("dim_value"):
            shape.dim[axis].dim_param = BATCH
    del m.graph.value_info[:]


# ---------------------------------------------------------------------- batch axes
def model_inputs(m: onnx.ModelProto) -> list:
    """The graph inputs a caller feeds (not weights that also have an initializer)."""
    inits = {i.name for i in m.graph.initializer}
    return [vi for vi in m.graph.input if vi.name not in inits]


def _dims(vi) -> list:
    tt = vi.type.tensor_type
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]


def _batch_symbol(m: onnx.ModelProto, given: dict):
    """The symbolic dimension that names the batch: the most frequent one on the known batch axes
    (axis 0 of the outputs, and of the inputs not in ``given``), unless an axis ``given`` names one."""
    def symbol_at(vi, axis):
        dims = _dims(vi) if vi.type.HasField("tensor_type") else []
        return dims[axis] if axis is not None and axis < len(dims) and isinstance(dims[axis], str) else None

    named = [symbol_at(vi, given[vi.name]) for vi in model_inputs(m) if vi.name in given]
    counts = collections.Counter(s for s in named if s)
    if not counts:
        found = [symbol_at(vi, 0) for vi in m.graph.output]
        found += [symbol_at(vi, 0) for vi in model_inputs(m) if vi.name not in given]
        counts = collections.Counter(s for s in found if s)
    return counts.most_common(1)[0][0] if counts else None


def batch_axes_of(m: onnx.ModelProto, given=None) -> dict:
    """The batch axis of every input the caller feeds: input name -> axis, or ``None`` when unbatched.

    ``given`` (a dict by input name) wins; for the other inputs:

    - a rank-0 input (a sample rate, a flag) is unbatched;
    - the *batch symbol* is the symbolic dimension on axis 0 of the outputs and
      inputs (e.g. ``batch``); an input that has it on axis ``k`` has batch
      axis ``k`` (a state shaped ``(layers, batch, hidden)`` has axis 1);
    - when there is a batch symbol, an input whose shape is fully static is
      unbatched (a weight given as an input);
    - an integer input read only as a shape, sizes, axes, pads or repeats operand (Reshape's shape, Resize's
      sizes, Slice's starts...: :data:`SHAPE_OPERANDS`) is unbatched: its values describe the tensors, its
      rows are not examples;
    - when there is none (a fully static export), the inputs whose axis 0 shape inference carries to axis 0
      of an output are batched and the others unbatched (a Conv's weight given as an input), when it can tell;
    - every other input has batch axis 0.
    """
    given = dict(given or {})
    inputs = {vi.name: vi for vi in model_inputs(m)}
    unknown = sorted(set(given) - set(inputs))
    if unknown:
        raise ModelError(f"batch_axes names {unknown}, which are not inputs of the model; its inputs are "
                         f"{list(inputs)}")
    for name, axis in given.items():
        rank = len(_dims(inputs[name]))
        if axis is not None and (not isinstance(axis, int) or isinstance(axis, bool) or not -rank <= axis < rank):
            raise ModelError(f"batch_axes[{name!r}] must be None or an axis of the input's {rank} dimensions, "
                             f"got {axis!r}")
        if axis is not None and axis < 0:
            given[name] = axis + rank
    symbol = _batch_symbol(m, given)
    operands = shape_operand_inputs(m)
    reaching = _reaching_output_rows(m, [n for n in inputs if n not in given and n not in operands]) \
        if symbol is None else None
    axes = {}
    for name, vi in inputs.items():
        dims = _dims(vi) if vi.type.HasField("tensor_type") else []
        if name in given:
            axes[name] = given[name]
        elif not dims or name in operands:
            axes[name] = None
        elif symbol is not None and symbol in dims:
            axes[name] = dims.index(symbol)
        elif symbol is not None and all(isinstance(d, int) for d in dims):
            axes[name] = None
        elif reaching:
            axes[name] = 0 if name in reaching else None
        else:
            axes[name] = 0
    return axes


#: the operands of each op that hold shapes, sizes, axes, pads, repeats or counts (by input index)
SHAPE_OPERANDS = {"Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "Resize": (2, 3),
                  "Upsample": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 3), "Split": (1,), "Squeeze": (1,),
                  "Unsqueeze": (1,), "TopK": (1,), "OneHot": (1,), "CenterCropPad": (1, 2), "Range": (0, 1, 2),
                  "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
                  "ReduceL1": (1,), "ReduceL2": (1,), "ReduceLogSum": (1,), "ReduceLogSumExp": (1,),
                  "ReduceSumSquare": (1,), "Col2Im": (1, 2), "AffineGrid": (1,)}
_INTEGER_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}


def shape_operand_inputs(m: onnx.ModelProto) -> set[str]:
    """The integer inputs of ``m`` that every node reading them (in the main graph) takes as a shape-like
    operand (:data:`SHAPE_OPERANDS`): a ``sizes`` or ``shape`` fed beside the data."""
    integer = {vi.name for vi in model_inputs(m) if vi.type.HasField("tensor_type")
               and vi.type.tensor_type.elem_type in _INTEGER_TYPES}
    as_operand, otherwise = set(), set()
    for node in m.graph.node:
        positions = SHAPE_OPERANDS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ()
        for i, name in enumerate(node.input):
            if name in integer:
                (as_operand if i in positions else otherwise).add(name)
    return as_operand - otherwise


def _reaching_output_rows(m: onnx.ModelProto, names: list[str]) -> set[str]:
    """In a model without a batch symbol: the inputs among ``names`` whose axis 0 becomes axis 0 of an
    output, found by giving each its own symbol there and inferring shapes (a Conv's weight given as an
    input ends on the output's channel axis, a MatMul's right operand nowhere).  Empty when there are
    fewer than two such inputs or when no symbol reaches an output (a broadcast merging two of them)."""
    candidates = [vi for vi in model_inputs(m) if vi.name in names and vi.type.HasField("tensor_type")
                  and len(vi.type.tensor_type.shape.dim) > 0]
    if len(candidates) < 2:
        return set()
    probe = _batch_probe(m, {vi.name: 0 for vi in candidates}, symbol=lambda name: f"rows_of_{name}")
    if probe is None:
        return set()
    symbols = {f"rows_of_{vi.name}": vi.name for vi in candidates}
    firsts = [_dims(vi)[0] for vi in probe.graph.output
              if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape") and _dims(vi)]
    return {symbols[d] for d in firsts if d in symbols}


def to_batch_first(m: onnx.ModelProto, axes: dict) -> onnx.ModelProto:
    """A copy of ``m`` whose inputs with batch axis ``k > 0`` are declared batch first.

    Each such input is moved back to its own layout by a Transpose at the
    start of the graph, so the model computes the same outputs; every other
    input is unchanged.
    """
    moved = {name: k for name, k in axes.items() if k}
    if not moved:
        return m
    from onnxplain.graph import redirect_reads
    out = onnx.ModelProto()
    out.CopyFrom(m)
    front = []
    for vi in out.graph.input:
        k = moved.get(vi.name)
        if k is None:
            continue
        dims = list(vi.type.tensor_type.shape.dim)
        order = [dims[k]] + dims[:k] + dims[k + 1:]
        copies = [onnx.TensorShapeProto.Dimension() for _ in order]
        for c, d in zip(copies, order):
            c.CopyFrom(d)
        del vi.type.tensor_type.shape.dim[:]
        vi.type.tensor_type.shape.dim.extend(copies)
        layout = f"{vi.name}__own_layout"
        redirect_reads(out.graph.node, vi.name, layout)
        front.append(helper.make_node("Transpose", [vi.name], [layout], name=f"{vi.name}__to_own_layout",
                                      perm=from_batch_first_perm(len(dims), k)))
    nodes = front + list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    del out.graph.value_info[:]
    return _infer_shapes(out)


def from_batch_first_perm(rank: int, axis: int) -> list[int]:
    """Transpose ``perm`` that moves axis 0 of a batch-first tensor to ``axis`` (``np.moveaxis(t, 0, axis)``)."""
    return list(range(1, axis + 1)) + [0] + list(range(axis + 1, rank))


def _batch_probe(m: onnx.ModelProto, axes: dict, symbol=lambda name: BATCH) -> onnx.ModelProto | None:
    """A copy of ``m`` whose batched inputs carry the symbol ``batch`` (or ``symbol(input name)``) on their
    batch axis (``axes``, as :func:`batch_axes_of` gives them), with the outputs' own declarations dropped and
    every shape inferred again; None when inference fails."""
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    for vi in model_inputs(probe):
        axis = axes.get(vi.name)
        if axis is not None and vi.type.HasField("tensor_type"):
            vi.type.tensor_type.shape.dim[axis].dim_param = symbol(vi.name)
    for vi in probe.graph.output:
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")
    del probe.graph.value_info[:]
    try:
        return shape_inference.infer_shapes(probe, strict_mode=False, data_prop=True)
    except Exception:
        return None


def batch_problems(m: onnx.ModelProto, axes: dict) -> dict:
    """Outputs whose first axis is not the batch: output name -> what is wrong with it.

    On :func:`_batch_probe`'s copy of ``m``, an output is refused when inference says it has no axes
    (a reduction over everything), carries ``batch`` on another axis than the
    first, or has a static first axis other than 1 and no ``batch`` axis (an
    aggregate over rows).  Outputs whose shape inference cannot tell pass.
    """
    probe = _batch_probe(m, axes)
    if probe is None:
        return {}
    problems = {}
    for vi in probe.graph.output:
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = _dims(vi)
        if not dims:
            problems[vi.name] = ("is a scalar: the forward reduces over the batch, so no row has an output "
                                 "of its own")
        elif dims[0] != BATCH and BATCH in dims:
            problems[vi.name] = (f"has the batch on axis {dims.index(BATCH)} (shape {dims}); the explained "
                                 f"model's outputs must be batch first")
        elif isinstance(dims[0], int) and dims[0] != 1 and all(d != BATCH for d in dims):
            problems[vi.name] = (f"has shape {dims} with no batch axis: the forward aggregates over the rows "
                                 f"(a sum or mean over the batch) or reshapes them to a fixed count, so no "
                                 f"row has an output of its own")
    return problems


_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def within_rank(axes, rank: int) -> set[int]:
    """``axes`` made non-negative, those outside ``[-rank, rank)`` dropped (as onnxruntime's
    MeanVarianceNormalization drops its default axis 3 on a rank-3 input)."""
    return {a + rank if a < 0 else a for a in axes if -rank <= a < rank}


def normalised_axes(node: onnx.NodeProto, rank: int, opset: int) -> set[int]:
    """The axes along which a shape-keeping op mixes the elements of its first input: normalisations,
    softmaxes, cumulative sums (an empty set for the others)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    if op == "LayerNormalization":
        axis = int(attrs.get("axis", -1))
        return set(range(axis + rank if axis < 0 else axis, rank))
    if op == "MeanVarianceNormalization":
        return within_rank(attrs.get("axes", [0, 2, 3]), rank)
    if op == "BatchNormalization" and attrs.get("training_mode", 0):
        return {0, *range(2, rank)}
    if op in ("Softmax", "LogSoftmax", "Hardmax"):
        axis = int(attrs.get("axis", -1 if opset >= 13 else 1))
        axis = axis + rank if axis < 0 else axis
        return {axis} if opset >= 13 else set(range(axis, rank))
    if op == "LpNormalization":
        return within_rank([int(attrs.get("axis", -1))], rank)
    return set()


def _value_ancestors(graph: onnx.GraphProto, outputs, not_float: set[str]) -> set[str]:
    """The tensors the given outputs are computed from through tensors not known to be of a non-float type
    (themselves included): what reaches them as a value, not only as a condition, an index or a shape."""
    producer = {o: n for n in graph.node for o in n.output if o}
    seen, todo = set(), [t for t in outputs if t not in not_float]
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in producer:
            todo.extend(i for i in producer[t].input if i and i not in not_float)
    return seen


def rows_mixed(m: onnx.ModelProto, axes: dict, outputs) -> dict:
    """Nodes on the way to ``outputs`` whose result at one row depends on the other rows of the batch:
    node name (or op type) -> why.

    On :func:`_batch_probe`'s copy of ``m``: a node that normalises (or takes a softmax) over the batch axis of
    its floating-point input, and a node whose floating-point input has the batch axis while one of its
    floating-point outputs has a static shape without it (a reduction or selection over the rows, a reshape
    that merges them), where that output reaches ``outputs`` as a value (not only through a condition, as
    ``if x.sum() > 0`` does).  Unknown shapes pass.
    """
    probe = _batch_probe(m, axes)
    if probe is None:
        return {}
    infos = [vi for vi in (*probe.graph.input, *probe.graph.value_info, *probe.graph.output)
             if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")]
    shapes = {vi.name: _dims(vi) for vi in infos}
    floats = {vi.name for vi in infos if vi.type.tensor_type.elem_type in _FLOATS}
    typed = {vi.name: vi.type.tensor_type.elem_type for vi in infos}
    typed.update((init.name, init.data_type) for init in probe.graph.initializer)
    needed = _value_ancestors(probe.graph, outputs, {t for t, et in typed.items() if et not in _FLOATS})
    opset = _opset(probe)
    mixed = {}
    for node in probe.graph.node:
        x = node.input[0] if node.input else ""
        dims = shapes.get(x)
        if not set(node.output) & needed or x not in floats or not dims or BATCH not in dims:
            continue
        label = node.name or node.op_type
        axis = dims.index(BATCH)
        if axis in normalised_axes(node, len(dims), opset):
            mixed[label] = f"{node.op_type} normalises over axis {axis} of {x!r}, its batch axis"
            continue
        for out in node.output:
            shape = shapes.get(out)
            if out in floats and shape is not None and all(isinstance(d, int) for d in shape):
                mixed[label] = (f"{node.op_type} turns {x!r} (shape {dims}) into {out!r} of static shape {shape}, "
                                f"without the batch axis")
                break
    return mixed


def _infer_shapes(m: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(m, check_type=True, strict_mode=False, data_prop=True)
    except Exception as e:
        raise ModelError(f"shape inference failed on the model: {e}") from e


def _probe_missing_shapes(m: onnx.ModelProto, axes: dict) -> None:
    """Shapes that inference could not find (ops without inference, e.g. ai.onnx.ml's Scaler),
    read off two runs of the model in onnxruntime on placeholder rows (batch 1 and 2).

    Dims that agree between the runs are kept, the others are left symbolic; nothing is
    recorded when the model does not run on placeholders.
    """
    known = {vi.name for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output)
             if vi.type.tensor_type.HasField("shape")}
    known |= {i.name for i in m.graph.initializer}
    missing = [o for n in m.graph.node for o in n.output if o and o not in known]
    if not missing:
        return
    try:
        import numpy as np
        import onnxruntime as ort

        probe = onnx.ModelProto()
        probe.CopyFrom(m)
        del probe.graph.output[:]
        probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in missing)
        so = ort.SessionOptions()
        so.log_severity_level = 4
        sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
        runs = []
        for rows in (1, 2):
            feeds = {}
            for vi in model_inputs(m):
                tt = vi.type.tensor_type
                dims = [d.dim_value if d.HasField("dim_value") else 2 for d in tt.shape.dim]
                if axes.get(vi.name) is not None:
                    dims[axes[vi.name]] = rows
                feeds[vi.name] = np.zeros(dims, dtype=onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
            runs.append(sess.run(missing, feeds))
    except Exception:   # placeholders are not valid input for every model: then shapes stay unknown
        return
    for name, first, second in zip(missing, *runs):
        if not isinstance(first, np.ndarray) or first.ndim != second.ndim:
            continue
        dims = [a if a == b else None for a, b in zip(first.shape, second.shape)]
        elem = onnx.helper.np_dtype_to_tensor_dtype(first.dtype)
        m.graph.value_info.append(onnx.helper.make_tensor_value_info(name, elem, dims))
