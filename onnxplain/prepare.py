"""The one model-preparation pipeline: a model as given -> the batch-first model an explanation graph is
built on, the attribution spec of a method, and the explanation graph itself.

Steps, each a public function the Explainer, :func:`onnxplain.convert` and :func:`onnxplain.inspect` share:

1. :func:`batch_first_model`: normalise (converters.normalize: check, inline functions, upgrade opsets, infer
   shapes), find each input's batch axis, drop the outputs that are not batch first, move every batched input
   batch first; :func:`prepare` does it once per model source (cached) and picks the explained output;
2. :func:`attribution_spec` (:func:`make_spec` on a bare model): which tensors get attributions (inputs, the
   embedding a token input feeds, or a layer), which inputs take baselines, which pass through;
3. :func:`build_graph`: the method's explanation graph, checked; :func:`own_layouts` gives a standalone graph
   its inputs' own layouts back.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from .backward import gradient_cuts, with_bodies
from .cache import cached_model
from .converters.normalize import (batch_axes_of, batch_problems, digest, from_batch_first_perm, normalize, rows_mixed,
                                   to_batch_first)
from .errors import ModelError, NoGradientPathError
from .graph import FLOAT_TYPES, GraphBuilder, clean_graph, np_dtype, redirect_reads
from .spec import Point, Spec

#: the size of a symbolic non-batch dimension (a sequence length) in made-up inputs
DEFAULT_LENGTH = 16


@dataclass(frozen=True)
class Prepared:
    """A model ready to be explained: normalised, batched inputs batch first (shared: do not modify it)."""

    model: onnx.ModelProto
    batch_axes: dict         # each input's batch axis in the caller's layout (None: unbatched)
    digest: str
    output: str              # the explained output

    @property
    def unbatched(self) -> list[str]:
        return unbatched_inputs(self.batch_axes)

    @property
    def moved(self) -> list[str]:
        return moved_inputs(self.batch_axes)


def prepare(model, batch_axes=None, output: str | None = None) -> Prepared:
    """``model`` (a path, bytes or ModelProto) prepared for explaining ``output`` (default: the first
    floating-point output): :func:`normalized`, then :func:`choose_output`."""
    m, axes, d = normalized(model, batch_axes, output)
    return Prepared(m, axes, d, choose_output(m, output))


def attribution_spec(prepared: Prepared, method, inputs=None, layer=None, batch_size=None) -> Spec:
    """What ``method`` attributes on ``prepared`` (:func:`make_spec`), its ``batch_size`` checked, and the
    layouts the method can take checked."""
    spec = make_spec(prepared.model, prepared.output, inputs, layer, method, unbatched=prepared.unbatched,
                     moved=prepared.moved)
    spec.batch_size = check_batch_size(batch_size)
    check_attributed_layouts(spec, method, prepared.batch_axes)
    return spec


def normalized(model, batch_axes=None, output: str | None = None) -> tuple[onnx.ModelProto, dict, str]:
    """:func:`batch_first_model` of ``model``, and its digest; a path (same size and modification time) or
    bytes seen before with the same ``batch_axes`` and ``output`` are not normalised again.  The model
    returned is shared: do not modify it."""
    if isinstance(model, (str, os.PathLike)) and os.path.isfile(model):
        st = os.stat(model)
        source = ("path", os.path.abspath(os.fspath(model)), st.st_size, st.st_mtime_ns)
    elif isinstance(model, (bytes, bytearray, memoryview)):
        source = ("bytes", hashlib.sha256(model).hexdigest())
    else:
        source = None
    axes_key = _axes_key(batch_axes)
    if source is None or axes_key is False:
        m, axes = batch_first_model(model, batch_axes, output)
        return m, axes, digest(m)

    def make() -> tuple:
        m, axes = batch_first_model(model, batch_axes, output)
        return m, axes, digest(m)
    found = cached_model((source, axes_key, output), make)
    m, axes, d = found
    return m, dict(axes), d


def _check_rows_independent(model: onnx.ModelProto, spec: Spec) -> None:
    """Refuse a model in which one row's output depends on the other rows, unless every row runs on its own
    (``batch_size=1``)."""
    if spec.batch_size != 1:
        refusal = mixed_rows_refusal(model, spec.output, spec.unbatched)
        if refusal:
            raise ModelError(refusal)


def mixed_rows_refusal(model: onnx.ModelProto, output: str, unbatched=()) -> str | None:
    """Why a (batch-first) model cannot be explained on stacked batches, or None: a node on the way to
    ``output`` makes one row's result depend on the other rows (a normalisation over the batch), so the
    integration steps, references and perturbations a method stacks with the rows would change it."""
    axes = {vi.name: None if vi.name in unbatched else 0 for vi in graph_inputs(model)}
    mixed = rows_mixed(model, axes, [output])
    if not mixed:
        return None
    listed = "; ".join(f"node {name!r}: {why}" for name, why in mixed.items())
    return (f"the model mixes the rows of a batch ({listed}), so one row's output depends on the other rows, and "
            f"on the integration steps, references or perturbations a method stacks with them. Build the "
            f"Explainer with batch_size=1 to explain each row run on its own")


def _axes_key(batch_axes):
    """``batch_axes`` as part of a cache key; False when it is not a dict (it is then refused, uncached)."""
    if batch_axes is None:
        return None
    if not isinstance(batch_axes, dict):
        return False
    try:
        return tuple(sorted((str(k), v) for k, v in batch_axes.items()))
    except TypeError:
        return False


def build_graph(model: onnx.ModelProto, method, spec: Spec, clean: bool = True) -> onnx.ModelProto:
    """The explanation graph of ``method`` over a normalised ``model``, cleaned (:func:`clean_graph`) unless
    ``clean`` is False (a diagnostic graph built once, where the optimizer's time would dominate)."""
    _check_rows_independent(model, spec)
    b = GraphBuilder(model if method.forward_only else with_bodies(model, method.overrides))
    method.build(b, spec)
    graph = b.build(f"onnxplain_{method.name}")
    graph = clean_graph(graph) if clean else graph
    if b.metadata:
        onnx.helper.set_model_props(graph, b.metadata)
    onnx.checker.check_model(graph)
    return graph


def batch_first_model(model, batch_axes=None, output: str | None = None) -> tuple[onnx.ModelProto, dict]:
    """The normalised model with every batched input batch first, and each input's batch axis.

    Outputs that are not batch first are left out of it (see :func:`without_unbatched_outputs`).
    """
    m, axes, problems = normalized_with_batch_axes(model, batch_axes)
    m = with_layer_output(m, output)
    return to_batch_first(without_unbatched_outputs(m, problems, output), axes), axes


def with_layer_output(m: onnx.ModelProto, output: str | None) -> onnx.ModelProto:
    """``m`` with the intermediate tensor ``output`` made an output of it, so that a unit of a layer is
    explained as an output is (Captum's Neuron* methods: ``output=`` the layer's tensor, ``target=`` the unit's
    index, the neuron selector); ``m`` itself when ``output`` is None, already an output, or no tensor of it
    (:func:`choose_output` then says so)."""
    if output is None or output in {o.name for o in m.graph.output}:
        return m
    if not any(output in node.output for node in m.graph.node):
        return m
    vi = next((v for v in m.graph.value_info if v.name == output), None)
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        raise ValueError(f"tensor {output!r} has no type and shape after shape inference, so it cannot be "
                         f"explained as an output; explain a tensor whose rank is known")
    with_output = onnx.ModelProto()
    with_output.CopyFrom(m)
    with_output.graph.output.append(vi)
    return with_output


def normalized_with_batch_axes(model, batch_axes=None) -> tuple[onnx.ModelProto, dict, dict]:
    """The normalised model (inputs in their own layout), each input's batch axis (``batch_axes`` as given,
    the others detected), and the outputs that are not batch first, with why (:func:`batch_problems`)."""
    m = normalize(model, batch_axes=batch_axes)
    axes = batch_axes_of(m, batch_axes)
    return m, axes, batch_problems(m, axes)


def without_unbatched_outputs(m: onnx.ModelProto, problems: dict, output: str | None) -> onnx.ModelProto:
    """``m`` without the outputs that have no batch axis first (``problems``: from batch_problems).

    An explanation graph runs the model on an expanded batch, so it cannot return such an output's
    value for the inputs (a mean over the batch, a sum over rows); the other outputs are explained as
    usual.  Raises :class:`ModelError` when ``output`` is one of them, or when no floating-point output
    is left to explain by default.
    """
    if not problems:
        return m
    floats = [o.name for o in m.graph.output if o.type.tensor_type.elem_type in FLOAT_TYPES]
    if output in problems:
        raise ModelError(batch_refusal({output: problems[output]}))
    if output is None and all(name in problems for name in floats):
        raise ModelError(batch_refusal(problems))
    kept = onnx.ModelProto()
    kept.CopyFrom(m)
    del kept.graph.output[:]
    kept.graph.output.extend(o for o in m.graph.output if o.name not in problems)
    return kept


def batch_refusal(problems: dict) -> str:
    """Why a model whose outputs are not batch first cannot be explained (``problems``: from batch_problems)."""
    listed = "; ".join(f"output {name!r} {why}" for name, why in problems.items())
    return (f"{listed}. onnxplain explains models whose outputs are batch first, one output row per input row "
            f"(batch_axes gives the inputs' batch axes; the outputs' is axis 0)")


def moved_inputs(axes: dict) -> list[str]:
    """Inputs batched on another axis than 0."""
    return [name for name, axis in axes.items() if axis]


def unbatched_inputs(axes: dict) -> list[str]:
    return [name for name, axis in axes.items() if axis is None]


def check_batch_size(batch_size):
    if batch_size is None:
        return None
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (the most rows the model may see per run) or None, "
                         f"got {batch_size!r}")
    return int(batch_size)


def check_attributed_layouts(spec: Spec, method, axes: dict) -> None:
    """Perturbation methods take windows and masks in the layout of one row: batch-first inputs only."""
    moved = [x for x in spec.wrt if axes.get(x)]
    if moved and method.forward_only:
        raise ValueError(f"method {method.name!r} cannot attribute {moved}, whose batch axis is not 0 (its windows, "
                         f"masks and baselines are given per row); attribute them with a gradient method, or "
                         f"attribute the batch-first inputs only")


def _inverse(perm: list) -> list:
    return [perm.index(i) for i in range(len(perm))]


def own_layouts(graph: onnx.ModelProto, spec: Spec, axes: dict) -> onnx.ModelProto:
    """A copy of the explanation graph of a batch-first model that takes and gives inputs with batch
    axis ``k > 0`` (and their baselines and attributions) in their own layout: Transposes at its boundary."""
    if not any(axes.values()):
        return graph
    copy = onnx.ModelProto()
    copy.CopyFrom(graph)
    graph = copy
    g = graph.graph
    front, back = [], []
    for x, k in axes.items():
        if not k:
            continue
        # the input and its baselines (batch axis k), SmoothGrad's noise (samples first: axis k + 1)
        lead = {x: 0}
        if x in spec.carriers:
            lead.update({spec.param("baselines", x): 0, spec.param("noise", x): 1})
        for vi in g.input:
            if vi.name not in lead:
                continue
            inner = f"{vi.name}__batch_first"
            redirect_reads(g.node, vi.name, inner)
            j = lead[vi.name]
            rank = len(vi.type.tensor_type.shape.dim)
            own = list(range(j)) + [j + p for p in from_batch_first_perm(rank - j, k)]
            front.append(onnx.helper.make_node("Transpose", [vi.name], [inner], perm=_inverse(own)))
            _permute_dims(vi, own)
        for init in g.initializer:   # a default stored for a transposed input follows its layout
            if init.name in lead and len(init.dims) > k + lead[init.name]:
                j = lead[init.name]
                init.CopyFrom(onnx.numpy_helper.from_array(
                    np.moveaxis(onnx.numpy_helper.to_array(init), j, j + k), init.name))
        if x in spec.wrt:
            name = spec.attribution_name(x)
            inner = f"{name}__batch_first"
            for node in g.node:
                node.output[:] = [inner if o == name else o for o in node.output]
            # nodes that read the attributions (the delta's sums: the cleaned graph reads the output
            # itself once the builder's Identity is gone) take them batch first too
            redirect_reads(g.node, name, inner)
            vi = next(v for v in g.output if v.name == name)
            back.append(onnx.helper.make_node("Transpose", [inner], [name],
                                              perm=from_batch_first_perm(len(vi.type.tensor_type.shape.dim), k)))
            _permute_dims(vi, from_batch_first_perm(len(vi.type.tensor_type.shape.dim), k))
    if front or back:
        nodes = front + list(g.node) + back
        del g.node[:]
        g.node.extend(nodes)
        onnx.checker.check_model(graph)
    return graph


def _permute_dims(vi, perm: list[int]) -> None:
    dims = list(vi.type.tensor_type.shape.dim)
    copies = [onnx.TensorShapeProto.Dimension() for _ in dims]
    for c, j in zip(copies, perm):
        c.CopyFrom(dims[j])
    del vi.type.tensor_type.shape.dim[:]
    vi.type.tensor_type.shape.dim.extend(copies)


def graph_inputs(model):
    inits = {i.name for i in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def elem_type(model, name):
    for vi in list(model.graph.output) + list(model.graph.value_info) + list(model.graph.input):
        if vi.name == name:
            return vi.type.tensor_type.elem_type
    return TensorProto.FLOAT


def static_shape(model, name):
    for vi in list(model.graph.output) + list(model.graph.value_info):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                         for d in vi.type.tensor_type.shape.dim)
    return None


def choose_output(model, output):
    names = [o.name for o in model.graph.output]
    if output is not None:
        if output not in names:
            raise ValueError(f"output {output!r} is not an output of the model nor a tensor of it; its outputs "
                             f"are {names}")
        tt = model.graph.output[names.index(output)].type.tensor_type
        if tt.elem_type not in FLOAT_TYPES:
            raise ValueError(f"output {output!r} is not floating point; only float outputs can be explained")
        if tt.HasField("shape") and len(tt.shape.dim) == 0:
            raise ValueError(f"output {output!r} is a scalar without a batch dimension; onnxplain explains outputs "
                             f"with one row per input row")
        return output
    for o in model.graph.output:
        tt = o.type.tensor_type
        if tt.elem_type in FLOAT_TYPES and not (tt.HasField("shape") and len(tt.shape.dim) == 0):
            return o.name
    hint = ""
    if any(not o.type.HasField("tensor_type") for o in model.graph.output):
        hint = ("; its outputs include sequences or maps (a scikit-learn classifier converted with ZipMap): "
                "convert it with options={'zipmap': False}, or use onnxplain.converters.from_sklearn")
    raise ValueError(f"the model has no floating-point output to explain (outputs: {names}){hint}")


def make_spec(model, output, inputs, layer=None, method=None, unbatched=(), moved=()) -> Spec:
    """Which tensors get attributions (points), which inputs take baselines (carriers), which pass through.

    By default every batched floating-point input is attributed (for gradient
    and modified-rule methods: every one that a gradient path joins to the
    output, as long as one does); a model with none has its first token input
    (integers feeding an embedding Gather) attributed: at that Gather's output
    by the gradient methods, as itself by the perturbation methods
    (``forward_only``), which take inputs of any dtype and, for a model with
    neither float nor token inputs, attribute every batched input.  ``inputs``
    names them explicitly; ``layer`` attributes an intermediate tensor instead,
    with baselines for ``inputs``.  ``unbatched`` inputs are passed through
    unchanged and cannot be attributed.  A named input or layer that reaches
    the output only through steps with no gradient (a Cast to an integer type,
    Floor, ArgMax, a comparison, a Shape) is refused with
    :class:`~onnxplain.errors.NoGradientPathError` by those methods.
    """
    model_inputs = graph_inputs(model)
    names = [vi.name for vi in model_inputs]
    if inputs is not None:
        refused = [x for x in ([inputs] if isinstance(inputs, str) else list(inputs)) if x in unbatched]
        if refused:
            raise ValueError(f"cannot attribute {refused}: they have no batch axis (batch_axes None), so no row has "
                             f"a value of its own; attribute batched inputs")
    floats = [vi.name for vi in model_inputs
              if vi.type.tensor_type.elem_type in FLOAT_TYPES and vi.name not in unbatched]
    tokens = {x: t for x, t in token_embeddings(model).items() if x not in unbatched}
    batched = [x for x in names if x not in unbatched]
    as_themselves = method is not None and method.forward_only   # perturbations feed the values themselves
    cut = (lambda tensor: None) if method is None or method.forward_only else \
        gradient_cuts(model, output, method.overrides)
    if inputs is None:
        if as_themselves:   # windows and masks are per row: inputs batched on another axis pass through
            floats, batched = [x for x in floats if x not in moved], [x for x in batched if x not in moved]
            tokens = {x: t for x, t in tokens.items() if x not in moved}
        chosen = floats or list(tokens)[:1] or (batched if as_themselves else [])
        if len(chosen) > 1 and any(cut(x) is None for x in chosen):
            chosen = [x for x in chosen if cut(x) is None]    # attribute the inputs a gradient reaches
        if not chosen:
            raise ValueError(f"the model has no floating-point input and no token input feeding an embedding "
                             f"to attribute (inputs: {names}); the perturbation methods attribute inputs of any "
                             f"dtype")
    else:
        chosen = [inputs] if isinstance(inputs, str) else list(inputs)
        bad = [x for x in chosen if x not in (names if as_themselves else floats + list(tokens))]
        if bad and as_themselves:
            raise ValueError(f"cannot attribute {bad}: not inputs of the model, whose inputs are {names}")
        if bad:
            raise ValueError(f"cannot attribute {bad}: attributable inputs are the floating-point inputs {floats} "
                             f"and the token inputs feeding an embedding {list(tokens)} (the perturbation "
                             f"methods attribute inputs of any dtype)")
    for vi in model_inputs:
        if vi.name in chosen and len(vi.type.tensor_type.shape.dim) == 0:
            raise ValueError(f"input {vi.name!r} has no batch dimension; onnxplain needs batch-first inputs")
    if layer is None and method is not None and method.default_layer is not None:
        layer = method.default_layer(model, output, chosen)   # Grad-CAM's: the last feature map
    if layer is None and method is not None and method.needs_layer:
        raise ValueError(f"method {method.name!r} attributes a layer: give layer= (a tensor of the model)")
    guides = layer is not None and method is not None and method.layer_guides   # the layer weighs the inputs'
    if layer is not None and not guides:
        points = [Point(layer, _check_layer(model, layer))]
    else:
        if guides:
            _check_layer(model, layer)
        points = [Point(x, x, x) if x in floats or as_themselves else Point(x, tokens[x]) for x in chosen]
    for p in points:
        node = cut(p.tensor)
        if node is not None:
            raise NoGradientPathError(p.key, output, node, "layer" if layer is not None else "input")
    if method is not None and not method.supports_layers and not all(p.is_input for p in points):
        what = "the model's inputs (of any dtype)" if as_themselves else "floating-point inputs"
        raise ValueError(f"method {method.name!r} attributes {what} only; "
                         f"{'layer=' if layer and not guides else 'token inputs'} needs another method")
    return Spec(model, output, points, chosen, [x for x in names if x not in chosen and x not in unbatched],
                [x for x in names if x in unbatched], layer=layer)


_SHAPE_ONLY = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast")


def token_embeddings(model) -> dict[str, str]:
    """Integer inputs that feed exactly one Gather on a float table: input name -> that Gather's output.

    The ids may pass through shape-only ops first (GPT-2 reshapes them to (-1, seq)).
    """
    inits = {i.name: i.data_type for i in model.graph.initializer}
    floats = {vi.name for vi in model.graph.value_info if vi.type.tensor_type.elem_type in FLOAT_TYPES}
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for k, name in enumerate(n.input):
            readers.setdefault(name, []).append((n, k))
    found = {}
    for vi in graph_inputs(model):
        if vi.type.tensor_type.elem_type not in (TensorProto.INT64, TensorProto.INT32):
            continue
        ids, gathers = [vi.name], []
        while ids:
            for node, k in readers.get(ids.pop(), []):
                if node.op_type == "Gather" and k == 1 and (inits.get(node.input[0]) in FLOAT_TYPES
                                                            or node.input[0] in floats):
                    gathers.append(node)
                elif node.op_type in _SHAPE_ONLY and k == 0 and node.output[0] not in floats:
                    ids.append(node.output[0])
        if len(gathers) == 1:
            found[vi.name] = gathers[0].output[0]
    return found


def _check_layer(model, layer: str) -> str:
    produced = {o for n in model.graph.node for o in n.output}
    if layer not in produced:
        raise ValueError(f"layer {layer!r} is not a tensor computed by the model; onnxplain.inspect(model) lists "
                         f"the model's tensors")
    info = {vi.name: vi for vi in model.graph.value_info}
    vi = info.get(layer)
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        raise ValueError(f"the shape of layer {layer!r} is unknown after shape inference; onnxplain needs its rank")
    if vi.type.tensor_type.elem_type not in FLOAT_TYPES:
        raise ValueError(f"layer {layer!r} is not floating point")
    return layer


def made_up_inputs(model, batch: int, length: int = DEFAULT_LENGTH, seed: int = 0,
                   batch_axes: dict | None = None) -> dict[str, np.ndarray]:
    """``batch`` rows for every input of a normalised, batch-first ``model``: uniform [0, 1) floats, integer
    inputs 1 (a token id every vocabulary has, a mask that keeps everything), booleans True; symbolic
    non-batch dimensions ``length``.  ``batch_axes`` (an Explainer's): an input with axis ``k`` gets its
    rows on axis ``k`` (its own layout), one with ``None`` is unbatched and made whole."""
    if not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in graph_inputs(model):
        tt = vi.type.tensor_type
        axis = (batch_axes or {}).get(vi.name, 0)
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else length for d in tt.shape.dim]
        shape, dtype = dims if axis is None else [int(batch)] + dims[1:], np_dtype(tt.elem_type)
        if tt.elem_type in FLOAT_TYPES:
            value = rng.random(shape).astype(dtype)
        else:
            value = np.ones(shape, dtype)
        feeds[vi.name] = np.moveaxis(value, 0, axis) if axis else value
    return feeds
