"""The normaliser: any ONNX model in, a model every method can rewrite out.

Steps: load (path, bytes or ModelProto), check, inline local functions, upgrade
the default-domain opset to at least :data:`MIN_OPSET`, make the batch
dimension of inputs and outputs dynamic, infer shapes.  Nothing that erases
activations is run (Relu -> Clip fusions would hide the nonlinearities that
DeepLIFT and LRP need).
"""
from __future__ import annotations

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


def normalize(model, min_opset: int = MIN_OPSET, dynamic_batch: bool = True) -> onnx.ModelProto:
    """Return a checked, inlined, upgraded, shape-inferred copy of ``model``."""
    m = load_model(model)
    _check(m)
    _dedupe_opsets(m)
    if m.functions:
        from onnx import inliner
        m = inliner.inline_local_functions(m)
    m = _upgrade(m, min_opset)
    if dynamic_batch:
        _make_batch_dynamic(m)
    m = _infer_shapes(m)
    m.ir_version = helper.find_min_ir_version_for(list(m.opset_import), ignore_unknown=True)
    _probe_missing_shapes(m)
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
        return version_converter.convert_version(m, min_opset)
    except Exception as e:
        raise ModelError(f"could not upgrade the model from opset {version} to {min_opset}: {e}") from e


def _make_batch_dynamic(m: onnx.ModelProto) -> None:
    """Replace a fixed first dimension of every graph input and output by ``batch``."""
    init_names = {i.name for i in m.graph.initializer}
    for vi in list(m.graph.input) + list(m.graph.output):
        if vi.name in init_names or not vi.type.HasField("tensor_type"):
            continue
        shape = vi.type.tensor_type.shape
        if len(shape.dim) >= 1 and shape.dim[0].HasField("dim_value"):
            shape.dim[0].dim_param = BATCH
    del m.graph.value_info[:]


def _infer_shapes(m: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(m, check_type=True, strict_mode=False, data_prop=True)
    except Exception as e:
        raise ModelError(f"shape inference failed on the model: {e}") from e


def _probe_missing_shapes(m: onnx.ModelProto) -> None:
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
        inits = {i.name for i in m.graph.initializer}
        runs = []
        for rows in (1, 2):
            feeds = {}
            for vi in m.graph.input:
                if vi.name in inits:
                    continue
                tt = vi.type.tensor_type
                dims = [rows] + [d.dim_value if d.HasField("dim_value") else 2 for d in list(tt.shape.dim)[1:]]
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
