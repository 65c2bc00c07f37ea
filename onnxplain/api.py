"""Explainer: a model and a method -> one explanation graph and one session, reused."""
from __future__ import annotations

import os
import tempfile
import threading

import numpy as np
import onnx
from onnx import TensorProto

from .backward import gradient_cuts
from .converters import digest, normalize
from .errors import NoGradientPathError
from .graph import FLOAT_TYPES, GraphBuilder, clean_graph, np_dtype
from .methods import Spec, get_method
from .methods.base import Point
from .methods.base import TARGET_WEIGHTS
from .runtime import DEFAULT_MEMORY_BUDGET, Cost, RowCost, Session, rows_per_chunk, select_providers
from .targets import check_target_weights, target_weights

_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


class Explainer:
    """Explains one output of one model with one method.

    The explanation graph and its onnxruntime session are built here, once, and
    shared by every Explainer of the same (model, method, output, inputs,
    providers); :meth:`explain` only feeds them.

    Parameters
    ----------
    model: a path, bytes or ``onnx.ModelProto``.
    method: a name from :data:`onnxplain.METHODS` (or a DeepExplain alias).
    output: the model output to explain (default: the first floating-point one).
    inputs: the inputs to attribute (default: every floating-point input, for
        gradient methods every one a gradient path joins to the output; for a
        model without any, its token input: the gradient methods attribute it at
        the embedding it feeds, the perturbation methods as itself).  The
        perturbation methods attribute inputs of any dtype (token ids, bytes,
        booleans); the inputs not attributed (an attention mask) pass through.
    layer: attribute this intermediate tensor instead of the inputs (Captum's
        Layer* methods); baselines are still given for ``inputs``.
    providers: onnxruntime providers (default: CUDA when usable, else CPU).
    memory_budget: bytes one run may use for intermediate tensors; calls are
        split into chunks of rows (and of integration steps) to stay within it.
    threads: onnxruntime's intra-op threads (default: onnxruntime's choice).
    """

    def __init__(self, model, method: str = "saliency", output: str | None = None, inputs=None, layer=None,
                 providers=None, memory_budget: int | None = None, threads: int | None = None):
        self.method = get_method(method)
        self.model = normalize(model)
        self.output = _choose_output(self.model, output)
        self.spec = _spec(self.model, self.output, inputs, layer, self.method)
        if memory_budget is not None and (not isinstance(memory_budget, (int, np.integer)) or memory_budget <= 0):
            raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
        self.memory_budget = int(memory_budget or DEFAULT_MEMORY_BUDGET)
        if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
            raise ValueError(f"threads must be a positive int or None (onnxruntime's default), got {threads!r}")
        self.threads = threads
        self.providers = select_providers(providers)
        key = (digest(self.model), self.method.name, self.output, tuple(self.spec.wrt), tuple(self.spec.carriers),
               tuple(map(str, self.providers)), threads)
        with _CACHE_LOCK:
            if key not in _CACHE:
                graph = build_graph(self.model, self.method, self.spec)
                _CACHE[key] = (graph, Session(graph, self.providers, threads))
            self.graph, self.session = _CACHE[key]
        self.row_cost = RowCost(self.model, self.method.row_cost_factor)
        self._forward = None
        self._output_shapes: dict = {}

    @property
    def method_name(self) -> str:
        return self.method.name

    @property
    def inputs(self) -> list[str]:
        """The attributed inputs."""
        return list(self.spec.wrt)

    @property
    def model_inputs(self) -> list[str]:
        """The model's input names (attributed or not)."""
        return [vi.name for vi in _graph_inputs(self.model)]

    def forward(self, inputs) -> dict[str, np.ndarray]:
        """The model's own outputs for ``inputs`` (a plain forward session, built on first use)."""
        feeds = self._check_inputs(inputs)
        return self._forward_session().run(feeds)

    def _forward_session(self) -> Session:
        if self._forward is None:
            self._forward = Session(self.model, self.providers, self.threads)
        return self._forward

    def save(self, path) -> None:
        """Write the explanation graph (see :func:`convert`)."""
        _write_atomically(self.graph, path)

    def explain(self, inputs, target=None, *, target_weights=None, return_convergence_delta: bool = False,
                **params):
        """Attributions for ``inputs`` (an array, or a dict by input name).

        ``target``: Captum's forms (None, int, tuple, or one per row); or
        ``target_weights``: an array shaped like the output (DeepExplain's ys).
        Method parameters (``n_steps``, ``baselines``, ``nt_samples``, ...) vary
        per call without rebuilding anything.  Returns an array shaped like the
        input (a dict by input name when several inputs are attributed), and
        with ``return_convergence_delta=True`` a pair ``(attributions, delta)``.
        """
        if return_convergence_delta and not self.method.has_delta:
            raise ValueError(f"method {self.method.name!r} has no convergence delta")
        feeds, tw, params = self._call(inputs, target, target_weights, params)
        total, delta = self.method.run(self, feeds, tw, params)
        names = [self.spec.attribution_name(x) for x in self.spec.wrt]
        result = total[names[0]] if self.spec.single else {x: total[self.spec.attribution_name(x)]
                                                          for x in self.spec.wrt}
        return (result, delta) if return_convergence_delta else result

    def estimate(self, inputs, target=None, *, target_weights=None, **params) -> Cost:
        """What :meth:`explain` with the same arguments will run, without running it.

        Returns a :class:`~onnxplain.runtime.Cost`: the forward ``rows`` in
        total (integration steps, noisy samples, (input, reference) pairs and
        perturbations each count as rows), the session ``runs`` they are split
        into by the memory budget (and ``perturbations_per_eval`` or
        ``internal_batch_size``), and the most rows of one run.  The numbers
        come from the planning code the call itself uses.
        """
        feeds, tw, params = self._call(inputs, target, target_weights, params)
        return self.method.estimate(self, feeds, tw, params)

    # ------------------------------------------------------------------ helpers
    def _call(self, inputs, target, target_weights, params) -> tuple[dict, np.ndarray, dict]:
        """One call's checked feeds, target weights and parameters."""
        params = self.method.check_params(params)
        feeds = self._check_inputs(inputs)
        n = int(np.shape(feeds[self.spec.carriers[0]])[0])
        return feeds, self._target_weights(target, target_weights, feeds, n), params

    def row_chunks(self, part: dict, n: int, row_bytes: int) -> list[tuple[int, int]]:
        """The ``[start, stop)`` input rows of each run of ``part``: as many rows as fit the memory budget
        once each expands into the method's rows (``row_bytes``: this call's :attr:`row_cost`)."""
        step = rows_per_chunk(row_bytes, self.method.expansion(part), n, self.memory_budget)
        return [(start, min(n, start + step)) for start in range(0, n, step)]

    def run_rows(self, feeds, tw, part, wanted, row_bytes: int):
        """Run the graph with parameter feeds ``part`` over all rows, in the chunks of :meth:`row_chunks`."""
        chunks = []
        for start, stop in self.row_chunks(part, int(np.shape(tw)[0]), row_bytes):
            run = {k: v[start:stop] for k, v in feeds.items()}
            run[TARGET_WEIGHTS] = tw[start:stop]
            run.update(self.method.rows_split(part, start, stop))
            chunks.append(self.session.run(run, wanted))
        return {k: np.concatenate([c[k] for c in chunks], axis=0) for k in wanted}

    def _check_inputs(self, inputs) -> dict:
        model_inputs = _graph_inputs(self.model)
        if not isinstance(inputs, dict):
            if len(model_inputs) != 1:
                raise ValueError(f"the model has {len(model_inputs)} inputs {[vi.name for vi in model_inputs]}; "
                                 f"pass a dict by input name")
            inputs = {model_inputs[0].name: inputs}
        names = [vi.name for vi in model_inputs]
        missing = [k for k in names if k not in inputs]
        extra = [k for k in inputs if k not in names]
        if missing or extra:
            raise ValueError(f"the model's inputs are {names}; missing {missing}, unexpected {extra}")
        feeds, rows = {}, None
        for vi in model_inputs:
            feeds[vi.name] = value = _check_array(vi, inputs[vi.name])
            if rows is not None and value.shape[0] != rows:
                raise ValueError(f"all inputs need the same number of rows; {vi.name!r} has {value.shape[0]}, "
                                 f"others {rows}")
            rows = value.shape[0]
        if rows == 0:
            raise ValueError("the inputs have no rows")
        return feeds

    def _target_weights(self, target, weights, feeds, n):
        et = _elem_type(self.model, self.output)
        dtype = np_dtype(et)
        out_shape = self._output_row_shape(feeds)
        if weights is not None:
            if target is not None:
                raise ValueError("give either target or target_weights, not both")
            return check_target_weights(weights, out_shape, n, dtype)
        return target_weights(target, out_shape, n, dtype)

    def _output_row_shape(self, feeds) -> tuple:
        shape = _static_shape(self.model, self.output)
        if shape is not None and all(isinstance(d, int) for d in shape[1:]):
            return tuple(shape[1:])
        key = tuple((k, v.shape[1:]) for k, v in feeds.items())   # symbolic dims (a sequence length):
        if key not in self._output_shapes:                         # ask the model, once per row shape
            one = {k: v[:1] for k, v in feeds.items()}
            self._output_shapes[key] = tuple(self._forward_session().run(one, [self.output])[self.output].shape[1:])
        return self._output_shapes[key]


def build_graph(model: onnx.ModelProto, method, spec: Spec) -> onnx.ModelProto:
    """The explanation graph of ``method`` over a normalised ``model``, cleaned (:func:`clean_graph`)."""
    b = GraphBuilder(model)
    method.build(b, spec)
    graph = clean_graph(b.build(f"onnxplain_{method.name}"))
    onnx.checker.check_model(graph)
    return graph


def explain(model, inputs, method: str = "saliency", target=None, **kwargs):
    """One-shot :meth:`Explainer.explain` (the graph and session are cached all the same)."""
    ctor = {k: kwargs.pop(k) for k in ("output", "providers", "memory_budget", "layer", "threads") if k in kwargs}
    if "inputs_to_attribute" in kwargs:
        ctor["inputs"] = kwargs.pop("inputs_to_attribute")
    return Explainer(model, method, **ctor).explain(inputs, target, **kwargs)


def convert(model, path, method: str = "saliency", output: str | None = None, inputs=None, layer=None,
            defaults: dict | None = None, **more_defaults):
    """Write the standalone explanation graph of ``method`` to ``path``.

    Keyword arguments (e.g. ``n_steps=20``) set the graph's default parameters,
    stored as initializers that a client may override by feeding the input of
    the same name; ``defaults`` takes them as a dict too, which is how integrated
    gradients' quadrature (its parameter ``method``) is given:
    ``defaults={"method": "riemann_left"}``.  The file is written atomically:
    nothing is left behind on error.
    """
    m = get_method(method, **{**(defaults or {}), **more_defaults})
    model = normalize(model)
    spec = _spec(model, _choose_output(model, output), inputs, layer, m)
    graph = build_graph(model, m, spec)
    _write_atomically(graph, path)
    return graph


# ---------------------------------------------------------------------- model facts
def _graph_inputs(model):
    inits = {i.name for i in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def _elem_type(model, name):
    for vi in list(model.graph.output) + list(model.graph.value_info) + list(model.graph.input):
        if vi.name == name:
            return vi.type.tensor_type.elem_type
    return TensorProto.FLOAT


def _static_shape(model, name):
    for vi in list(model.graph.output) + list(model.graph.value_info):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                         for d in vi.type.tensor_type.shape.dim)
    return None


def _choose_output(model, output):
    names = [o.name for o in model.graph.output]
    if output is not None:
        if output not in names:
            raise ValueError(f"output {output!r} is not an output of the model; its outputs are {names}")
        if model.graph.output[names.index(output)].type.tensor_type.elem_type not in FLOAT_TYPES:
            raise ValueError(f"output {output!r} is not floating point; only float outputs can be explained")
        return output
    for o in model.graph.output:
        if o.type.tensor_type.elem_type in FLOAT_TYPES:
            return o.name
    hint = ""
    if any(not o.type.HasField("tensor_type") for o in model.graph.output):
        hint = ("; its outputs include sequences or maps (a scikit-learn classifier converted with ZipMap): "
                "convert it with options={'zipmap': False}, or use onnxplain.converters.from_sklearn")
    raise ValueError(f"the model has no floating-point output to explain (outputs: {names}){hint}")


def _spec(model, output, inputs, layer=None, method=None) -> Spec:
    """Which tensors get attributions (points), which inputs take baselines (carriers), which pass through.

    By default every floating-point input is attributed (for gradient and
    modified-rule methods: every one that a gradient path joins to the output,
    as long as one does); a model with none has its first token input (integers
    feeding an embedding Gather) attributed: at that Gather's output by the
    gradient methods, as itself by the perturbation methods (``forward_only``),
    which take inputs of any dtype and, for a model with neither float nor token
    inputs, attribute every input.  ``inputs`` names them explicitly; ``layer``
    attributes an intermediate tensor instead, with baselines for ``inputs``.  A
    named input or layer that reaches the output only through steps with no
    gradient (a Cast to an integer type, Floor, ArgMax, a comparison, a Shape) is
    refused with :class:`~onnxplain.errors.NoGradientPathError` by those methods.
    """
    graph_inputs = _graph_inputs(model)
    names = [vi.name for vi in graph_inputs]
    floats = [vi.name for vi in graph_inputs if vi.type.tensor_type.elem_type in FLOAT_TYPES]
    tokens = token_embeddings(model)
    as_themselves = method is not None and method.forward_only   # perturbations feed the values themselves
    cut = (lambda tensor: None) if method is None or method.forward_only else \
        gradient_cuts(model, output, method.overrides)
    if inputs is None:
        chosen = floats or list(tokens)[:1] or (names if as_themselves else [])
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
    for vi in graph_inputs:
        if vi.name in chosen and len(vi.type.tensor_type.shape.dim) == 0:
            raise ValueError(f"input {vi.name!r} has no batch dimension; onnxplain needs batch-first inputs")
    if layer is not None:
        points = [Point(layer, _check_layer(model, layer))]
    else:
        points = [Point(x, x, x) if x in floats or as_themselves else Point(x, tokens[x]) for x in chosen]
    for p in points:
        node = cut(p.tensor)
        if node is not None:
            raise NoGradientPathError(p.key, output, node, "layer" if layer is not None else "input")
    if method is not None and not method.supports_layers and not all(p.is_input for p in points):
        what = "the model's inputs (of any dtype)" if as_themselves else "floating-point inputs"
        raise ValueError(f"method {method.name!r} attributes {what} only; "
                         f"{'layer=' if layer else 'token inputs'} needs another method")
    return Spec(model, output, points, chosen, [x for x in names if x not in chosen])


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
    for vi in _graph_inputs(model):
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


def _check_array(vi, value) -> np.ndarray:
    tt = vi.type.tensor_type
    expected = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim)
    want = np_dtype(tt.elem_type)
    try:
        arr = np.asarray(value)
    except Exception as e:
        raise ValueError(f"input {vi.name!r}: expected an array of {want} with shape {expected}: {e}") from e
    if want.kind == "f" and arr.dtype.kind not in "f":
        raise ValueError(f"input {vi.name!r} must be a floating-point array ({want}), got dtype {arr.dtype}")
    if want.kind in "iu" and arr.dtype.kind not in "iu":
        raise ValueError(f"input {vi.name!r} must be an integer array ({want}), got dtype {arr.dtype}")
    if want.kind == "b" and arr.dtype.kind != "b":
        raise ValueError(f"input {vi.name!r} must be a boolean array, got dtype {arr.dtype}")
    if arr.ndim != len(expected) or any(isinstance(e, int) and e != g for e, g in zip(expected[1:], arr.shape[1:])):
        raise ValueError(f"input {vi.name!r} must have shape {expected} (batch first), got {arr.shape}")
    return np.ascontiguousarray(arr.astype(want, copy=False))


def _write_atomically(model: onnx.ModelProto, path) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {path!r}: folder {folder!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".onnxplain-", suffix=".onnx")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
