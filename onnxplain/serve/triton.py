"""A Triton Inference Server model repository entry for an explanation graph.

``export_triton(model, "repo", "cnn_ig", method="integrated_gradients")`` writes

    repo/cnn_ig/config.pbtxt      platform onnxruntime_onnx, inputs and outputs, batching, instances
    repo/cnn_ig/1/model.onnx      the explanation graph (onnxplain.convert)

atomically: both are written into a temporary folder inside ``repo`` that is
renamed to ``repo/<name>`` only when everything succeeded.

Batching and the method parameters.  The explanation graph's parameter inputs
(``alphas``, ``baselines``, ``epsilon``, ``noise``...) are not batched: they
have their own shapes and defaults stored as initializers.  Triton's ONNX
Runtime backend refuses ``optional`` inputs on a model with ``max_batch_size >
0`` ("optional input ... is not supported for models that support batching")
and would prepend the batch axis to every input it lists.  So:

- ``max_batch_size > 0`` (the default, 8; dynamic batching on): the config lists
  the model's inputs and ``target_weights`` (batched, dims without the batch
  axis) and leaves the parameter inputs out, so every request runs with the
  parameters stored in the graph (set them at export: ``n_steps=32``...).  The
  backend counts only the inputs without an initializer against the config,
  so Triton loads the model as is; every row's result is independent of the
  other rows of a batch.
- ``max_batch_size = 0``: no batching by Triton (a request is one call of the
  graph); every input is listed with its full dims, and the parameters are
  marked ``optional`` so a request may override them.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import onnx

from .protocol import DATATYPES

PLATFORM = "onnxruntime_onnx"
DEFAULT_MAX_BATCH_SIZE = 8


def export_triton(model, repository, name: str, method: str = "saliency", *,
                  max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, gpu: bool = False, output: str | None = None,
                  inputs=None, layer=None, noise_tunnel: str | None = None, defaults: dict | None = None,
                  **more_defaults) -> str:
    """Write ``repository/name/config.pbtxt`` and ``repository/name/1/model.onnx``; return the model's folder.

    ``defaults`` (a dict) and keyword arguments become the graph's default
    method parameters, as in :func:`onnxplain.convert`.  ``gpu``: one instance on each GPU
    (``KIND_GPU``), else one CPU instance.  Refuses to replace an existing
    ``repository/name``; creates ``repository`` (and its parents) when missing, and removes what it
    created when the export fails.
    """
    from ..api import convert

    _check_name(name)
    if not isinstance(max_batch_size, int) or isinstance(max_batch_size, bool) or max_batch_size < 0:
        raise ValueError(f"max_batch_size must be an int >= 0 (0: Triton does not batch), got {max_batch_size!r}")
    repository = os.fspath(repository)
    if os.path.exists(repository) and not os.path.isdir(repository):
        raise ValueError(f"the model repository {repository!r} is a file, not a folder")
    target = os.path.join(repository, name)
    if os.path.exists(target):
        raise ValueError(f"{target!r} exists already; remove it or choose another name")
    made = _make_folders(repository)
    staging = tempfile.mkdtemp(prefix=f".{name}-", dir=repository)
    try:
        os.mkdir(os.path.join(staging, "1"))
        graph = convert(model, os.path.join(staging, "1", "model.onnx"), method=method, output=output,
                        inputs=inputs, layer=layer, noise_tunnel=noise_tunnel,
                        defaults={**(defaults or {}), **more_defaults})
        text = model_config(graph, name, max_batch_size=max_batch_size, gpu=gpu)
        with open(os.path.join(staging, "config.pbtxt"), "w") as f:
            f.write(text)
        os.chmod(staging, 0o777 & ~_umask())     # mkdtemp's folder is private; a repository is shared
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made:            # innermost first: only the folders this call created, if still empty
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise
    return target


def _make_folders(path: str) -> list[str]:
    """Create ``path`` and its missing parents; return the folders created, innermost first."""
    missing = []
    while path and not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path.rstrip(os.sep))
        if parent == path:
            break
        path = parent
    if missing:
        os.makedirs(missing[0], exist_ok=True)
    return missing


def model_config(graph: onnx.ModelProto, name: str, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 gpu: bool = False) -> str:
    """The ``config.pbtxt`` text (Triton's ModelConfig protobuf) of an explanation graph."""
    parameters = {i.name for i in graph.graph.initializer}
    batched = max_batch_size > 0
    lines = [f'name: "{name}"', f'platform: "{PLATFORM}"', f"max_batch_size: {max_batch_size}", "input ["]
    entries = []
    for vi in graph.graph.input:
        if vi.name in parameters and batched:
            continue     # fixed to the graph's default: optional inputs cannot be batched
        entries.append(_tensor_entry(vi, batched, optional=vi.name in parameters))
    lines.append(",\n".join(entries))
    lines += ["]", "output ["]
    lines.append(",\n".join(_tensor_entry(vo, batched) for vo in graph.graph.output))
    lines.append("]")
    if batched:
        lines.append("dynamic_batching { }")
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    lines.append(f"instance_group [ {{ count: 1 kind: {kind} }} ]")
    return "\n".join(lines) + "\n"


def _tensor_entry(vi, batched: bool, optional: bool = False) -> str:
    tt = vi.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
    if batched:
        if not dims or dims[0] not in (-1, 0):
            raise ValueError(f"tensor {vi.name!r} has no dynamic batch axis (shape {dims}); a batching Triton "
                             f"model needs one: export with max_batch_size=0")
        dims = dims[1:]
    fields = [f'name: "{vi.name}"', f"data_type: {_triton_type(tt.elem_type, vi.name)}"]
    if dims:
        fields.append(f"dims: [ {', '.join(str(d) for d in dims)} ]")
    else:       # a scalar (per row): Triton needs a dim; the model sees the tensor without it
        fields += ["dims: [ 1 ]", "reshape: { shape: [ ] }"]
    if optional:
        fields.append("optional: true")
    return "  {\n    " + "\n    ".join(fields) + "\n  }"


def _triton_type(elem_type: int, name: str) -> str:
    if elem_type not in DATATYPES:
        raise ValueError(f"tensor {name!r} has element type {onnx.TensorProto.DataType.Name(elem_type)}, which "
                         f"Triton cannot serve")
    datatype = DATATYPES[elem_type]
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or name in (".", "..") or any(c in name for c in "/\\") \
            or name.startswith("."):
        raise ValueError(f"a Triton model name is a folder name (no '/', not starting with '.'), got {name!r}")
