"""Keras 3 front-end: ``model.export(path, format="onnx")`` -> a normalised ONNX model.

Use Keras' torch backend (keras>=3.14 for a dynamic batch): it exports through
PyTorch's ONNX exporter and needs no TensorFlow.  The backend is chosen when keras is first imported, so set the
environment variable before that import::

    import os
    os.environ["KERAS_BACKEND"] = "torch"    # or: export KERAS_BACKEND=torch
    import keras

keras is imported when :func:`from_keras` is called, never when this module is.
"""
from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np
import onnx

from onnxplain.errors import ModelError

from .normalize import normalize

BACKEND_VARIABLE = "KERAS_BACKEND"


def from_keras(model, example_inputs=None, input_signature=None, input_names=None, output_names=None,
               opset: int | None = None, dynamic_batch: bool = True, **export_kwargs) -> onnx.ModelProto:
    """Export a Keras 3 model with ``model.export(format="onnx")`` and return the normalised ONNX model.

    ``example_inputs``: what the model is called with (an array, a list or a
    dict of arrays, batch first); the model is called on it once so that it is
    built.  A model with an ``Input`` layer needs none.
    ``input_signature``: passed to ``model.export`` (default: Keras' own,
    batch dimension dynamic).  ``input_names``/``output_names`` rename the
    exported graph's inputs and outputs, in Keras' flattening order; by
    default inputs keep the names of their ``Input`` layers
    (unnamed ones become ``input`` / ``input_0``...) and outputs are named ``output`` (one
    output) or after the model's ``output_names``.  ``opset`` is Keras'
    ``opset_version``.  ``dynamic_batch=False`` keeps the batch dimension as
    exported.  Other keyword arguments go to ``model.export``.  The export is
    written to a temporary directory that is always removed.
    """
    import keras

    backend = keras.backend.backend()
    _ensure_called(model, example_inputs)
    options = {"verbose": False, **export_kwargs}
    if input_signature is not None:
        options["input_signature"] = input_signature
    if opset is not None:
        options["opset_version"] = opset
    with tempfile.TemporaryDirectory(prefix="onnxplain-keras-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        try:
            with warnings.catch_warnings():
                _quiet_tracer_warnings()
                model.export(path, format="onnx", **options)
            proto = onnx.load(path)
        except Exception as e:
            if backend != "torch":
                raise ModelError(f"Keras could not export the model to ONNX with the {backend!r} backend: {e}. "
                                 f"onnxplain uses Keras' torch backend: set the environment variable "
                                 f"{BACKEND_VARIABLE}=torch before keras is first imported") from e
            raise ModelError(f"Keras could not export the model to ONNX: {e}") from e
    inits = {i.name for i in proto.graph.initializer}
    inputs = [vi for vi in proto.graph.input if vi.name not in inits]
    if dynamic_batch:
        _check_dynamic_batch(inputs, keras.__version__)
    _rename(proto, inputs, _names(input_names, inputs, None))
    keras_outputs = list(getattr(model, "output_names", None) or [])
    _rename(proto, proto.graph.output, _names(output_names, proto.graph.output, keras_outputs))
    return normalize(proto, dynamic_batch=dynamic_batch)


def _ensure_called(model, example_inputs) -> None:
    """Call the model once (Keras exports only models that were called): on the examples, else on zeros."""
    if example_inputs is not None:
        model(example_inputs, training=False)
        return
    if getattr(model, "_called", True):
        return
    import keras

    try:
        structure = model.input          # functional: the Input layers, in the structure the model is called with
    except (AttributeError, ValueError):
        inputs = list(getattr(model, "inputs", None) or [])       # Sequential: one Input layer
        structure = inputs[0] if len(inputs) == 1 else (inputs or None)
    if structure is None:
        raise ValueError("the Keras model has never been called and has no Input layer: pass example_inputs")
    zeros = keras.tree.map_structure(
        lambda t: np.zeros((1,) + tuple(d or 1 for d in t.shape[1:]), dtype=t.dtype), structure)
    model(zeros, training=False)


def _check_dynamic_batch(inputs, version: str) -> None:
    """Keras before 3.14 exports a batch of 1 on the torch backend, baked into the graph: refuse it."""
    fixed = [vi.name for vi in inputs if vi.type.tensor_type.shape.dim
             and vi.type.tensor_type.shape.dim[0].HasField("dim_value")]
    if fixed:
        raise ModelError(f"Keras {version} exported inputs {fixed} with a fixed batch dimension. A dynamic batch "
                         f"needs keras>=3.14 on the torch backend and an input_signature whose batch dimension is "
                         f"None; or pass dynamic_batch=False to keep the fixed batch")


def _quiet_tracer_warnings() -> None:
    """Silence the TorchScript tracer's warnings about Keras' Python-side shape checks."""
    try:
        import torch
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
    except (ImportError, AttributeError):
        pass
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*", category=DeprecationWarning)


def _names(given, values, keras_names) -> list[str] | None:
    """The new names of graph inputs or outputs ``values`` (None: keep them)."""
    count = len(values)
    if given is not None:
        names = [given] if isinstance(given, str) else list(given)
        if len(names) != count:
            raise ValueError(f"{len(names)} names given for {count} exported tensors {[v.name for v in values]}")
        return names
    if keras_names is None:    # inputs keep the names of their Input layers, unless Keras made them up
        generated = [v.name.startswith("keras_tensor") for v in values]
        if not any(generated):
            return None
        default = ["input"] if count == 1 else [f"input_{i}" for i in range(count)]
        return [d if g else v.name for v, g, d in zip(values, generated, default)]
    if count == 1:
        return ["output"]
    names = [str(n) for n in keras_names]
    if len(names) == count and len(set(names)) == count:
        return names
    return [f"output_{i}" for i in range(count)]


def _rename(model: onnx.ModelProto, values, names) -> None:
    """Rename graph inputs or outputs everywhere they appear."""
    if names is None:
        return
    mapping = {v.name: n for v, n in zip(values, names) if v.name != n}
    if not mapping:
        return
    taken = _all_names(model.graph) - set(mapping)
    clash = sorted(set(mapping.values()) & taken)
    if clash:
        raise ValueError(f"cannot rename the exported tensors to {clash}: the graph already has tensors named so")
    _rename_in_graph(model.graph, mapping)


def _rename_in_graph(graph: onnx.GraphProto, mapping: dict) -> None:
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        vi.name = mapping.get(vi.name, vi.name)
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _rename_in_graph(a.g, mapping)
            for g in a.graphs:
                _rename_in_graph(g, mapping)


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {vi.name for vi in list(graph.input) + list(graph.output) + list(graph.value_info)}
    names.update(i.name for i in graph.initializer)
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                names |= _all_names(a.g)
            for g in a.graphs:
                names |= _all_names(g)
    return names
