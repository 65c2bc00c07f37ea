"""The Open Inference Protocol's view of one Explainer: tensor metadata, request checks, results.

Nothing here imports a server: a request arrives as named numpy arrays with their
protocol datatypes, and leaves as named numpy arrays.  The same facts describe a
Triton model repository's ``config.pbtxt`` (see :mod:`onnxplain.serve.triton`).

Request inputs are the model's own inputs, ``target`` (one integer, or one tuple
of indices, per row) or ``target_weights`` (shaped like the explained output),
and the method's parameters under the names ``Explainer.explain`` takes them
(``n_steps``, ``baselines``, ``stdevs``...; integrated gradients' quadrature
``method`` is called ``integration`` to keep it apart from the attribution
method).  How each parameter travels comes from its declaration (see
:func:`request_form` and :mod:`onnxplain.methods.params`).  A parameter of one value (an
int, float, bool or string: ``n_steps``, ``stdevs``, ``composite``...) and ``target`` as
one class index for every row may instead be a request-level parameter
(``{"inputs": [...], "parameters": {"n_steps": 32}}``): :meth:`Interface.with_request_parameters`
turns each into the tensor it would have been, so both travel through the same checks
(a string is read as a BYTES input is: ``"auto"``, a composite's name).  Giving one both
ways is refused; the keys clients and KServe put there themselves
(:data:`RESERVED_REQUEST_PARAMETERS`) are left alone.  Outputs are the attributions,
``delta`` where the method has one, and the model's own outputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from ..methods.params import Param


#: ONNX element types -> the protocol's datatypes (Triton's, without the TYPE_ prefix)
DATATYPES = {
    TensorProto.FLOAT: "FP32", TensorProto.DOUBLE: "FP64", TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16", TensorProto.INT8: "INT8", TensorProto.INT16: "INT16",
    TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.UINT8: "UINT8",
    TensorProto.UINT16: "UINT16", TensorProto.UINT32: "UINT32", TensorProto.UINT64: "UINT64",
    TensorProto.BOOL: "BOOL", TensorProto.STRING: "BYTES",
}
INTEGER_DATATYPES = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
FLOAT_DATATYPES = ("FP16", "FP32", "FP64")

TARGET = "target"
TARGET_WEIGHTS = "target_weights"
DELTA = "delta"

#: request-level parameter keys that belong to the protocol's clients and servers, not to the method: tritonclient's
#: (``tritonclient.utils.TRITON_RESERVED_REQUEST_PARAMS``: sequences, priority, timeout, headers, binary outputs;
#: and every key starting with ``triton_``) and KServe's (``content_type``; ``binary_data_output`` too)
RESERVED_REQUEST_PARAMETERS = frozenset({"sequence_id", "sequence_start", "sequence_end", "priority", "timeout",
                                         "headers", "binary_data_output", "content_type"})
RESERVED_REQUEST_PREFIX = "triton_"


def reserved_parameter(key: str) -> bool:
    """Whether a request-level parameter belongs to the protocol's clients and servers (left alone)."""
    return key in RESERVED_REQUEST_PARAMETERS or key.startswith(RESERVED_REQUEST_PREFIX)

#: the request forms a request-level parameter (one scalar value) can stand for
SCALAR_FORMS = ("int", "float", "bool", "string")

#: the request form of each kind of (single-tensor) method parameter; see :func:`request_form`
_FORMS = {"int": "int", "float": "float", "bool": "bool", "str": "string", "choice": "string", "ints": "ints"}


def request_form(param: Param) -> str | None:
    """How a method parameter (its declaration, :class:`onnxplain.methods.Param`) travels in a request.

    One tensor: ``"int"``, ``"float"``, ``"bool"``, ``"string"`` (a one-value tensor) or ``"ints"``
    (a list of integers, shape ``[K]``).  One tensor per attributed input (``per_input``):
    ``"like_input"`` (``(-1, *row)`` of the input's datatype: baselines), ``"mask"`` (``(-1, *row)``
    integers: feature masks) or ``"noise"`` (``(-1, -1, *row)``: samples, rows, one row).  None: no
    request carries it (``request=None``: a progress bar draws on the server's terminal).  A
    declaration of no known form is a ValueError.
    """
    if param.request_name is None:
        return None
    if param.per_input and param.kind == "array":
        form = {("input", 1): "like_input", ("int", 1): "mask", ("input", 2): "noise"}.get((param.dtype, param.leading))
    else:
        form = _FORMS.get(param.kind)
    if form is None:
        raise ValueError(f"method parameter {param.name!r} (kind {param.kind!r}{', per input' if param.per_input else ''}"
                         f") has no request form; give it one in onnxplain.serve.protocol.request_form")
    return form


class RequestError(ValueError):
    """A request the protocol layer refuses; the message names what was expected."""


@dataclass(frozen=True)
class Tensor:
    """A tensor as the protocol describes it: name, datatype and shape (-1 for a dynamic axis)."""

    name: str
    datatype: str
    shape: tuple

    def as_dict(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Parameter:
    """A method parameter as an optional request input: which ``explain`` keyword, and for which input."""

    tensor: Tensor
    keyword: str
    kind: str
    carrier: str | None = None     # the attributed input a per-input parameter belongs to
    words: tuple = ()              # strings it takes besides its kind's values (Param.words): a BYTES tensor


def datatype_of(elem_type: int) -> str:
    if elem_type not in DATATYPES:
        raise ValueError(f"ONNX element type {TensorProto.DataType.Name(elem_type)} has no protocol datatype")
    return DATATYPES[elem_type]


def value_info_tensor(vi, name: str | None = None) -> Tensor:
    """The protocol tensor of an ONNX value (dims without a fixed size are -1)."""
    tt = vi.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
    return Tensor(name or vi.name, datatype_of(tt.elem_type), dims)


class Interface:
    """Inputs, outputs and parameters of one served Explainer, and the checks of its requests.

    ``defaults`` are method parameters every request starts from (a request's own
    parameter inputs override them).
    """

    def __init__(self, explainer, defaults: dict | None = None):
        self.explainer = explainer
        self.defaults = dict(defaults or {})
        explainer.method.check_params(self.defaults)     # unknown parameters fail at start-up
        graph = explainer.model.graph
        inits = {i.name for i in graph.initializer}
        self.model_inputs = [value_info_tensor(vi) for vi in graph.input if vi.name not in inits]
        self.model_outputs = [value_info_tensor(vo) for vo in graph.output if vo.type.HasField("tensor_type")]
        explained = next(o for o in graph.output if o.name == explainer.output)
        self.explained = value_info_tensor(explained)
        self.attributions = [self._attribution(key) for key in explainer.spec.wrt]
        self.parameters = self._parameters()
        self.vocabularies = lookup_tables(explainer.model)

    # ------------------------------------------------------------------ metadata
    @property
    def inputs(self) -> list[Tensor]:
        """Every request input: the model's, the target's two forms, the method parameters (all optional
        but the model's)."""
        out = self.explained
        rank_target = max(1, len(out.shape) - 1)
        target = Tensor(TARGET, "INT64", (-1,) if rank_target == 1 else (-1, rank_target))
        weights = Tensor(TARGET_WEIGHTS, out.datatype, (-1,) + tuple(out.shape[1:]))
        return self.model_inputs + [target, weights] + [p.tensor for p in self.parameters]

    @property
    def outputs(self) -> list[Tensor]:
        delta = [Tensor(DELTA, "FP64", (-1,))] if self.explainer.method.has_delta else []
        return self.attributions + delta + self.model_outputs

    def _attribution(self, key: str) -> Tensor:
        """The attribution's tensor: as the explanation graph declares it when the graph returns it (its shape
        can differ from the attributed tensor's: Grad-CAM's map, upsampled or not, summed over channels or not,
        per call), else shaped like the attributed tensor (the forward-only methods)."""
        spec = self.explainer.spec
        name = spec.attribution_name(key)
        declared = next((o for o in self.explainer.graph.graph.output if o.name == name), None)
        if declared is not None and declared.type.HasField("tensor_type"):
            return value_info_tensor(declared, name)
        point = next(p for p in spec.points if p.key == key)
        graph = self.explainer.model.graph
        infos = list(graph.input) + list(graph.value_info) + list(graph.output)
        vi = next(v for v in infos if v.name == point.tensor)
        return value_info_tensor(vi, spec.attribution_name(key))

    def _parameters(self) -> list[Parameter]:
        spec = self.explainer.spec
        by_name = {t.name: t for t in self.model_inputs}
        method = self.explainer.method
        declared = {p.name: p for p in method.parameters}
        undeclared = [k for k in method.defaults if k not in declared]
        if undeclared:
            raise ValueError(f"method {method.name!r} has parameter(s) {undeclared} without a declaration (Param), "
                             f"so no request form")
        params = []
        for keyword in method.defaults:
            param = declared[keyword]
            kind = request_form(param)
            if kind is None:
                continue
            name = param.request_name
            if param.per_input:
                for carrier in spec.carriers:
                    x = by_name[carrier]
                    params.append(Parameter(_per_input_tensor(spec.param(name, carrier), kind, x),
                                            keyword, kind, carrier))
            else:
                params.append(Parameter(_scalar_tensor(name, kind), keyword, kind, words=param.words))
        return params

    # ------------------------------------------------------------------ requests
    @property
    def scalar_names(self) -> list[str]:
        """The names a request-level parameter may have: ``target`` (one class index for every row) and the
        method parameters of one value."""
        return [TARGET] + [p.tensor.name for p in self.parameters if p.kind in SCALAR_FORMS]

    def with_request_parameters(self, tensors: dict[str, tuple[str, np.ndarray]],
                                parameters: dict | None) -> dict[str, tuple[str, np.ndarray]]:
        """The request's tensors with its request-level parameters (``{name: int | float | bool | str}``) added as
        the tensors they stand for, for :meth:`call` to check like any input: an int is INT64, a float FP64
        (an int given for a float parameter too), a bool BOOL, a string BYTES, each of shape [1] (``target``:
        shape [], one index for every row).  Reserved keys (:data:`RESERVED_REQUEST_PARAMETERS`) are skipped; a
        name given both ways, an unknown name and a value that is not one scalar are RequestErrors."""
        merged = dict(tensors)
        accepted = self.scalar_names
        for name, value in (parameters or {}).items():
            if reserved_parameter(name):
                continue
            if name not in accepted:
                as_input = name in {t.name for t in self.inputs}
                raise RequestError(f"unknown request parameter {name!r}"
                                   f"{' (give it as a request input: it is not one value)' if as_input else ''}; "
                                   f"this model takes the request parameters {accepted} (one int, float, bool or "
                                   f"string each; the others as request inputs)")
            if name in tensors:
                raise RequestError(f"{name!r} is given both as a request input and as a request parameter; "
                                   f"give it once")
            merged[name] = self._parameter_tensor(name, value)
        return merged

    def _parameter_tensor(self, name: str, value) -> tuple[str, np.ndarray]:
        if isinstance(value, (bool, np.bool_)):
            datatype, array = "BOOL", np.array([bool(value)])
        elif isinstance(value, (int, np.integer)):
            kind = next((p.kind for p in self.parameters if p.tensor.name == name), None)
            datatype, array = ("FP64", np.array([value], np.float64)) if kind == "float" else \
                ("INT64", np.array([value], np.int64))
        elif isinstance(value, (float, np.floating)):
            datatype, array = "FP64", np.array([value], np.float64)
        elif isinstance(value, str):
            datatype, array = "BYTES", np.array([value.encode("utf-8")], dtype=object)
        else:
            raise RequestError(f"request parameter {name!r} must be one int, float, bool or string, got "
                               f"{type(value).__name__} {value!r}; give lists and arrays as request inputs")
        if name == TARGET:
            array = array.reshape(())
        return datatype, array

    def call(self, tensors: dict[str, tuple[str, np.ndarray]], wanted: list[str] | None):
        """Check a request (tensors by name: ``(datatype, array)``) and return the explain call:
        ``(inputs, target, target_weights, params, wanted outputs)``."""
        expected = {t.name: t for t in self.inputs}
        unknown = [k for k in tensors if k not in expected]
        if unknown:
            raise RequestError(f"unknown input(s) {unknown}; this model takes {list(expected)} (the model's "
                               f"inputs {[t.name for t in self.model_inputs]} are required, the others optional)")
        missing = [t.name for t in self.model_inputs if t.name not in tensors]
        if missing:
            raise RequestError(f"missing input(s) {missing}; the model's inputs "
                               f"{[t.name for t in self.model_inputs]} are required")
        wanted = self._wanted(wanted)
        arrays = {}
        for name, (datatype, array) in tensors.items():
            arrays[name] = _check_tensor(expected[name], datatype, array, self._accepts(name))
        inputs = {t.name: arrays[t.name] for t in self.model_inputs}
        axes = self.explainer.batch_axes     # unbatched inputs (a sample rate, a weight) have no rows
        rows = {name: a.shape[axes.get(name, 0)] for name, a in inputs.items()
                if a.ndim and axes.get(name, 0) is not None and a.ndim > axes.get(name, 0)}
        if len(set(rows.values())) > 1:
            raise RequestError(f"every model input needs the same number of rows (the batch); got {rows}")
        if not self.explainer.method.forward_only:
            self._refuse_non_finite(inputs)
        self._refuse_unknown_ids(arrays)
        target, weights = self._target(arrays)
        params = dict(self.defaults)
        params.update(self._params(arrays))
        return inputs, target, weights, params, wanted

    def _accepts(self, name: str) -> tuple:
        """The datatypes a request input may have: exactly the model's for its inputs, any of the kind for
        the parameters (a client's np.int32 is as good as np.int64)."""
        param = next((p for p in self.parameters if p.tensor.name == name), None)
        words = ("BYTES",) if param is not None and param.words else ()   # one of the words, as a string
        if name == TARGET or (param is not None and param.kind in ("int", "ints", "mask")):
            return INTEGER_DATATYPES + words
        if param is not None and param.kind == "float":
            return FLOAT_DATATYPES + words
        if param is not None and param.kind == "bool" and words:
            return ("BOOL",) + words
        if param is not None and param.kind == "like_input":   # token inputs take integer ids
            own = param.tensor.datatype
            return FLOAT_DATATYPES if own in FLOAT_DATATYPES else INTEGER_DATATYPES
        return ()

    def _wanted(self, wanted):
        names = [t.name for t in self.outputs]
        if not wanted:
            return names
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise RequestError(f"unknown output(s) {unknown}; this model returns {names}")
        return list(dict.fromkeys(wanted))

    def _refuse_non_finite(self, inputs: dict) -> None:
        for name, a in inputs.items():
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise RequestError(f"input {name!r} holds NaN or infinite values; method "
                                   f"{self.explainer.method.name!r} differentiates the model and needs finite "
                                   f"inputs (the perturbation methods can take them)")

    def _refuse_unknown_ids(self, arrays) -> None:
        """Token ids (and integer baselines of token inputs) outside a lookup table the model reads them with are
        the request's mistake: refused by name before anything runs."""
        carried = {p.tensor.name: p.carrier for p in self.parameters if p.kind == "like_input"}
        for name, a in arrays.items():
            source = name if name in self.vocabularies else carried.get(name)
            if source not in self.vocabularies or a.dtype.kind not in "iu" or not a.size:
                continue
            for node, rows in self.vocabularies[source]:
                outside = (a < -rows) | (a >= rows)
                if outside.any():
                    where = tuple(int(i) for i in np.argwhere(outside)[0])
                    raise RequestError(f"input {name!r} holds token id {int(a[where])} at index {list(where)}, "
                                       f"outside the vocabulary of the lookup table {node!r} ({rows} entries: "
                                       f"ids 0..{rows - 1}); give ids the model's tokenizer produces")

    def _target(self, arrays):
        target, weights = arrays.get(TARGET), arrays.get(TARGET_WEIGHTS)
        if target is not None and weights is not None:
            raise RequestError(f"give either {TARGET!r} or {TARGET_WEIGHTS!r}, not both")
        if weights is not None and not np.isfinite(weights).all():
            raise RequestError(f"{TARGET_WEIGHTS!r} holds NaN or infinite values")
        if target is None:
            return None, weights
        per_row = len(self.explained.shape) - 1
        if target.ndim == 0:             # one class index for every row (a request-level parameter)
            return int(target), None
        if target.ndim == 1:
            return [int(t) for t in target], None
        if target.ndim == 2 and target.shape[1] == per_row:
            return [tuple(int(i) for i in row) for row in target], None
        raise RequestError(f"{TARGET!r} must hold one index per row (shape [N]) or, for an output with several "
                           f"non-batch dimensions, one tuple per row (shape [N, {per_row}]); got shape "
                           f"{list(target.shape)}")

    def _params(self, arrays) -> dict:
        params, per_input = {}, {}
        for p in self.parameters:
            if p.tensor.name not in arrays:
                continue
            value = _parameter_value(p, arrays[p.tensor.name])
            if p.carrier is not None and len(self.explainer.spec.carriers) > 1:
                per_input.setdefault(p.keyword, {})[p.carrier] = value
            else:
                params[p.keyword] = value
        params.update(per_input)
        return params

    # ------------------------------------------------------------------ results
    def results(self, inputs, target, weights, params, wanted) -> dict[str, np.ndarray]:
        """Run the explanation (and the forward pass when the model's outputs are wanted)."""
        ex = self.explainer
        names = {t.name: key for t, key in zip(self.attributions, ex.spec.wrt)}
        out = {}
        if any(w in names or w == DELTA for w in wanted):
            with_delta = DELTA in wanted
            result = ex.explain(inputs, target, target_weights=weights, return_convergence_delta=with_delta,
                                **params)
            attr, delta = result if with_delta else (result, None)
            attr = attr if isinstance(attr, dict) else {ex.spec.wrt[0]: attr}
            out.update({name: attr[key] for name, key in names.items()})
            if with_delta:
                out[DELTA] = np.asarray(delta, dtype=np.float64)
        model_outputs = [w for w in wanted if w not in out and w != DELTA and w not in names]
        if model_outputs:
            forward = ex.forward(inputs)
            out.update({k: forward[k] for k in model_outputs})
        return {w: out[w] for w in wanted}


# ---------------------------------------------------------------------- token ids
def lookup_tables(model) -> dict[str, list[tuple[str, int]]]:
    """The lookup tables integer model inputs index: ``{input: [(node name, rows), ...]}``.

    A lookup is a Gather whose indices are the input (directly or through Cast, Identity or Reshape-like ops that
    keep the values) and whose data is an initializer or a Constant of known size along the gathered axis (an
    embedding).  Gather takes ids in ``-rows..rows-1`` (negative ones count from the end), so those pass.
    """
    graph = model.graph
    inits = {i.name: tuple(i.dims) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            inits[node.output[0]] = tuple(node.attribute[0].t.dims)
    integer = (TensorProto.INT64, TensorProto.INT32, TensorProto.INT16, TensorProto.INT8, TensorProto.UINT8,
               TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64)
    origin = {vi.name: vi.name for vi in graph.input
              if vi.name not in inits and vi.type.tensor_type.elem_type in integer}
    tables: dict[str, list[tuple[str, int]]] = {}
    for node in graph.node:               # nodes are in topological order
        if node.op_type in ("Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten") and node.input \
                and node.input[0] in origin:
            origin[node.output[0]] = origin[node.input[0]]
        elif node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in origin \
                and node.input[0] in inits:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            dims = inits[node.input[0]]
            if dims and -len(dims) <= axis < len(dims):
                tables.setdefault(origin[node.input[1]], []).append((node.name or node.output[0], int(dims[axis])))
    return tables


# ---------------------------------------------------------------------- tensors
def _scalar_tensor(name: str, kind: str) -> Tensor:
    datatype = {"int": "INT64", "float": "FP32", "bool": "BOOL", "string": "BYTES", "ints": "INT64"}[kind]
    return Tensor(name, datatype, (-1,) if kind == "ints" else (1,))


def _per_input_tensor(name: str, kind: str, x: Tensor) -> Tensor:
    row = tuple(x.shape[1:])
    if kind == "mask":
        return Tensor(name, "INT64", (-1,) + row)
    if kind == "noise":
        return Tensor(name, x.datatype, (-1, -1) + row)
    return Tensor(name, x.datatype, (-1,) + row)


def _check_tensor(expected: Tensor, datatype: str, array: np.ndarray, accepts: tuple) -> np.ndarray:
    allowed = accepts or (expected.datatype,)
    if datatype not in allowed:
        wanted = expected.datatype if not accepts else " or ".join(allowed)
        raise RequestError(f"input {expected.name!r} must have datatype {wanted}, got {datatype}")
    if accepts:          # targets and method parameters take several forms, which explain checks
        return array
    shape = tuple(array.shape)
    fits = len(shape) == len(expected.shape) and all(e in (-1, g) for e, g in zip(expected.shape, shape))
    if not fits:
        raise RequestError(f"input {expected.name!r} must have shape {list(expected.shape)} (-1: any size), "
                           f"got {list(shape)}")
    return array


def _word_value(p: Parameter, a: np.ndarray) -> str:
    """One string of a BYTES tensor (UTF-8), for a parameter that takes words."""
    words = " or ".join(repr(w) for w in p.words)
    if a.size != 1:
        raise RequestError(f"parameter {p.tensor.name!r} as a string is one value (shape [1], such as {words}), got "
                           f"shape {list(a.shape)}")
    v = a.reshape(-1)[0]
    try:
        return v.decode("utf-8") if isinstance(v, bytes) else str(v)
    except UnicodeDecodeError as e:
        raise RequestError(f"parameter {p.tensor.name!r}: a string is UTF-8 text such as {words}: {e}") from e


def _parameter_value(p: Parameter, a: np.ndarray):
    """A request tensor as the ``explain`` keyword's value (a string tensor of a parameter with words: the
    string, which explain checks against the declaration)."""
    if p.words and a.dtype == object:
        return _word_value(p, a)
    if p.kind in ("int", "float", "bool", "string"):
        if a.size != 1:
            raise RequestError(f"parameter {p.tensor.name!r} is one value (shape [1]), got shape {list(a.shape)}")
        v = a.reshape(-1)[0]
        if p.kind == "string":
            return v.decode("utf-8") if isinstance(v, bytes) else str(v)
        if p.kind == "float" and not np.isfinite(v):
            raise RequestError(f"parameter {p.tensor.name!r} must be finite, got {v}")
        return {"int": int, "float": float, "bool": bool}[p.kind](v)
    if p.kind == "ints":
        if a.ndim != 1:
            raise RequestError(f"parameter {p.tensor.name!r} is a list of integers (shape [K]), "
                               f"got shape {list(a.shape)}")
        return tuple(int(v) for v in a)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise RequestError(f"parameter {p.tensor.name!r} holds NaN or infinite values")
    return a
