"""PyTorch front-end: an ``nn.Module`` -> a normalised ONNX model, with either exporter.

``dynamo=False`` uses the TorchScript exporter (opset 17 unless ``opset`` says
otherwise) with ``dynamic_axes`` on the batch axis of every input (dimension 0
unless ``batch_axes`` says otherwise) and dimension 0 of every output;
``dynamo=True`` uses the ``torch.export``-based exporter (its default opset;
it needs ``onnxscript``) with one shared ``torch.export.Dim("batch")`` on the
batch axis of every input.  ``dynamic=`` makes more axes dynamic (image
height and width, sequence lengths) in the form each exporter takes.  The model is exported in eval mode and its
modules' training flags are restored afterwards.

torch is imported when :func:`from_torch` is called, never when this module is.
"""
from __future__ import annotations

import importlib.util
import inspect
import os
import tempfile
import warnings

import onnx

from .normalize import BATCH, normalize

TORCHSCRIPT_OPSET = 17


def from_torch(model, example_inputs, input_names=None, output_names=None, dynamo: bool = False,
               opset: int | None = None, dynamic_batch: bool = True, batch_axes: dict | None = None,
               dynamic=None, **export_kwargs) -> onnx.ModelProto:
    """Export ``model`` with ``torch.onnx.export`` and return the normalised ONNX model.

    ``example_inputs``: a tensor, a tuple or list of tensors (positional
    arguments of ``forward``), or a dict of named tensors (keyword arguments);
    numpy arrays are accepted.  Every tensor is batch first unless ``batch_axes`` says otherwise.
    ``input_names`` default to the dict's keys or to ``forward``'s parameter
    names; ``output_names`` to the keys of a dict output (e.g. ``logits``),
    else ``output`` / ``output_0``, ``output_1``...
    ``dynamo``: False for the TorchScript exporter, True for the
    ``torch.export``-based one.  ``opset``: the default-domain opset (default
    17 for TorchScript, the exporter's own default for dynamo).
    ``dynamic_batch``: make the batch axis of every input and dimension 0 of every output dynamic.
    ``batch_axes``: the batch axis of inputs whose batch is not on axis 0, by
    name (``{"state": 1}``), ``None`` for unbatched ones (rank-0 inputs are
    unbatched anyway); that axis is the dynamic one.
    ``dynamic``: further axes to keep dynamic, so that a larger image or a
    longer sentence runs on the exported model: ``"auto"`` for every axis of
    every batched input (the exporters keep static the axes the model pins, e.g. a
    channel count that a convolution fixes; with ``dynamo=True`` an axis of
    size 1 in the example is pinned too, so give examples with sizes > 1), or
    a dict mapping input names to the axes to keep dynamic (``{"x": [2, 3]}``).
    The batch axes follow ``dynamic_batch`` in both cases.
    Other keyword arguments go to ``torch.onnx.export`` unchanged (a
    ``dynamic_axes`` or ``dynamic_shapes`` given there replaces ours and
    ``dynamic``).
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"from_torch expects a torch.nn.Module, got {type(model).__name__}")
    args, kwargs = _example_args(example_inputs)
    tensors = list(args) + list(kwargs.values())
    input_names = _input_names(model, args, kwargs, input_names)
    axes = _dynamic_axes(dynamic, input_names, tensors, dynamic_batch, _axes(input_names, tensors, batch_axes))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(*args, **kwargs)
        output_names = _output_names(outputs, output_names)
        if dynamo:
            proto = _export_dynamo(model, args, kwargs, input_names, output_names, opset, axes, export_kwargs)
        else:
            proto = _export_torchscript(model, args, kwargs, input_names, output_names, outputs, opset,
                                        dynamic_batch, axes, export_kwargs)
    finally:
        for m, training in modes.items():
            m.train(training)
    return normalize(proto, dynamic_batch=dynamic_batch, batch_axes=batch_axes)


def _axes(input_names, tensors, batch_axes) -> dict:
    """The batch axis of every example input (None: unbatched)."""
    given = dict(batch_axes or {})
    unknown = sorted(set(given) - set(input_names))
    if unknown:
        raise ValueError(f"batch_axes names {unknown}, which are not inputs; the inputs are {input_names}")
    return {name: given.get(name, 0) if _rank(t) >= 1 else None for name, t in zip(input_names, tensors)}


def _export_torchscript(model, args, kwargs, input_names, output_names, outputs, opset, dynamic_batch, axes,
                        export_kwargs) -> onnx.ModelProto:
    """TorchScript exporter, ``dynamic_axes`` on the chosen axes of every input (``axes``: from
    :func:`_dynamic_axes`) and on dimension 0 of every output of rank >= 1."""
    import torch

    options = dict(export_kwargs)
    if "dynamic_axes" not in options and any(axes.values()):
        dynamic = {name: {a: BATCH if is_batch else f"{name}_{a}" for a, is_batch in chosen.items()}
                   for name, chosen in axes.items() if chosen}
        if dynamic_batch:
            dynamic.update({name: {0: BATCH} for name, t in zip(output_names, _flat_outputs(outputs))
                            if _rank(t) >= 1})
        options["dynamic_axes"] = dynamic
    with tempfile.TemporaryDirectory(prefix="onnxplain-torch-") as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*",
                                category=DeprecationWarning)
        path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(model, args, path, kwargs=kwargs or None, dynamo=False,
                          opset_version=opset or TORCHSCRIPT_OPSET, input_names=input_names,
                          output_names=output_names, **options)
        return onnx.load(path)      # also reads the external data written next to a model over 2 GB


def _export_dynamo(model, args, kwargs, input_names, output_names, opset, axes, export_kwargs) -> onnx.ModelProto:
    """``torch.export``-based exporter: one ``Dim("batch")`` shared by the batch axis of every batched
    input, and ``Dim.AUTO`` (dynamic unless the model pins it) on the other chosen axes (``axes``: from
    :func:`_dynamic_axes`)."""
    import torch

    if importlib.util.find_spec("onnxscript") is None:
        raise ImportError("from_torch(..., dynamo=True) needs onnxscript: pip install onnxscript")
    options = {"verbose": False, **export_kwargs}
    if "dynamic_shapes" not in options and "dynamic_axes" not in options and any(axes.values()):
        batch = torch.export.Dim(BATCH)

        def spec(name):
            return {a: batch if is_batch else torch.export.Dim.AUTO for a, is_batch in axes[name].items()} or None
        options["dynamic_shapes"] = ({k: spec(input_names[len(args) + i]) for i, k in enumerate(kwargs)} if kwargs
                                     else tuple(spec(name) for name in input_names))
    with warnings.catch_warnings():     # the shared Dim makes the exporter say each further input shares it
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints with another axis.*")
        program = torch.onnx.export(model, args, kwargs=kwargs or None, dynamo=True, opset_version=opset,
                                    input_names=input_names, output_names=output_names, **options)
    return program.model_proto


def _dynamic_axes(dynamic, input_names, tensors, dynamic_batch: bool, batch: dict) -> dict[str, dict[int, bool]]:
    """Input name -> {axis exported as dynamic: whether it is the batch axis}: the batch axis (``batch``:
    from :func:`_axes`) when ``dynamic_batch``, plus ``dynamic``'s axes ("auto": every other axis of a
    batched input; an unbatched one keeps its shape)."""
    ranks = {name: _rank(t) for name, t in zip(input_names, tensors)}
    if dynamic is None:
        extra = {}
    elif isinstance(dynamic, str):
        if dynamic != "auto":
            raise ValueError(f"dynamic must be None, 'auto' or a dict of input name -> axes, got {dynamic!r}")
        extra = {name: [a for a in range(r) if a != batch[name]] for name, r in ranks.items()
                 if batch[name] is not None}
    elif isinstance(dynamic, dict):
        unknown = sorted(set(dynamic) - set(ranks))
        if unknown:
            raise ValueError(f"dynamic names {unknown}, which are not inputs; the inputs are {list(ranks)}")
        extra = {}
        for name, chosen in dynamic.items():
            chosen = [chosen] if isinstance(chosen, int) else list(chosen)
            bad = [a for a in chosen if not isinstance(a, int) or not -ranks[name] <= a < ranks[name]]
            if bad:
                raise ValueError(f"dynamic axes {bad} of input {name!r} are not axes of a rank-{ranks[name]} tensor")
            extra[name] = [a % ranks[name] for a in chosen]
    else:
        raise TypeError(f"dynamic must be None, 'auto' or a dict of input name -> axes, got {type(dynamic).__name__}")
    out = {}
    for name in ranks:
        k = batch[name] if dynamic_batch else None
        out[name] = {a: a == k for a in sorted(({k} if k is not None else set()) | set(extra.get(name, [])))}
    return out


def _example_args(example_inputs) -> tuple[tuple, dict]:
    """Positional and keyword example arguments (numpy arrays become tensors)."""
    import torch

    def tensor(v):
        if isinstance(v, torch.Tensor):
            return v
        if hasattr(v, "__array__"):
            return torch.as_tensor(v)
        raise TypeError(f"example inputs must be tensors or arrays, got {type(v).__name__}")

    if isinstance(example_inputs, dict):
        if not example_inputs:
            raise ValueError("example_inputs is an empty dict")
        return (), {str(k): tensor(v) for k, v in example_inputs.items()}
    if isinstance(example_inputs, (tuple, list)):
        if not example_inputs:
            raise ValueError("example_inputs is empty")
        return tuple(tensor(v) for v in example_inputs), {}
    return (tensor(example_inputs),), {}


def _input_names(model, args, kwargs, given) -> list[str]:
    count = len(args) + len(kwargs)
    if given is not None:
        names = [given] if isinstance(given, str) else list(given)
        if len(names) != count:
            raise ValueError(f"{len(names)} input_names given for {count} example inputs")
        return names
    if kwargs:
        return list(kwargs)
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    if len(params) >= count:
        return [p.name for p in params[:count]]
    return ["input"] if count == 1 else [f"input_{i}" for i in range(count)]


def _output_names(outputs, given) -> list[str]:
    count = len(_flat_outputs(outputs))
    if given is not None:
        names = [given] if isinstance(given, str) else list(given)
        if len(names) != count:
            raise ValueError(f"{len(names)} output_names given for {count} outputs of the model")
        return names
    if isinstance(outputs, dict) and all(_is_tensor(v) for v in outputs.values() if v is not None):
        keys = [str(k) for k, v in outputs.items() if v is not None]
        if len(keys) == count:
            return keys
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _flat_outputs(outputs) -> list:
    """The tensors of a (nested) output, in the order the exporters flatten them."""
    if outputs is None:
        return []
    if isinstance(outputs, dict):
        return [t for v in outputs.values() for t in _flat_outputs(v)]
    if isinstance(outputs, (tuple, list)):
        return [t for v in outputs for t in _flat_outputs(v)]
    return [outputs]


def _is_tensor(v) -> bool:
    import torch
    return isinstance(v, torch.Tensor)


def _rank(t) -> int:
    return len(getattr(t, "shape", ()))
