"""scikit-learn front-end: a fitted estimator -> a normalised ONNX model, via skl2onnx.

Classifiers are converted without ZipMap, so their probabilities are a float
tensor ``probabilities`` (batch, classes) next to the integer ``label``: the
probabilities are what onnxplain explains by default (the first floating-point
output).  The input is one float32 matrix ``X`` of shape (batch, n_features).
MLPs (MatMul, Add, Relu/Tanh/Sigmoid, Softmax) get every method; tree
ensembles (``ai.onnx.ml``) get the perturbation methods.

sklearn and skl2onnx are imported when :func:`from_sklearn` is called, never
when this module is.
"""
from __future__ import annotations

import copy

import onnx

from .normalize import BATCH, MIN_OPSET, normalize

#: opsets asked of skl2onnx: the default domain at onnxplain's floor, ai.onnx.ml 3
#: (TreeEnsemble* with double thresholds; onnxruntime and onnx.reference run it)
TARGET_OPSET = {"": MIN_OPSET, "ai.onnx.ml": 3}


def from_sklearn(model, n_features=None, *, initial_types=None, input_name: str = "X", options=None,
                 target_opset=None, **convert_kwargs) -> onnx.ModelProto:
    """Convert a fitted scikit-learn estimator (or pipeline) with skl2onnx and normalise it.

    ``n_features``: the number of columns of the input (default: the model's
    ``n_features_in_``); the input is then float32 ``input_name`` of shape
    (batch, n_features).  ``n_features`` may also be skl2onnx's
    ``initial_types`` list (or give ``initial_types=``) for other inputs.
    ``options``: skl2onnx's converter options; ``{"zipmap": False}`` is added
    for classifiers unless the options set ``zipmap`` themselves.
    ``target_opset``: default ``{"": 17, "ai.onnx.ml": 3}``.  Other keyword
    arguments go to ``skl2onnx.convert_sklearn``.
    """
    from sklearn.base import is_classifier
    from skl2onnx import convert_sklearn

    if isinstance(n_features, (list, tuple)):
        if initial_types is not None:
            raise ValueError("give the input types once: as n_features or as initial_types")
        initial_types, n_features = list(n_features), None
    if initial_types is None:
        initial_types = [(input_name, _float_matrix(_n_features(model, n_features)))]
    elif n_features is not None:
        raise ValueError("give either n_features or initial_types, not both")
    if is_classifier(model):
        options = _without_zipmap(model, options)
    proto = convert_sklearn(model, initial_types=initial_types, options=options,
                            target_opset=TARGET_OPSET if target_opset is None else target_opset, **convert_kwargs)
    _name_batch(proto)
    return normalize(proto)


def _name_batch(model: onnx.ModelProto) -> None:
    """Name the unnamed dynamic first dimension skl2onnx gives inputs and outputs ``batch``."""
    for vi in list(model.graph.input) + list(model.graph.output):
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        dim = vi.type.tensor_type.shape.dim
        if dim and not dim[0].HasField("dim_value") and not dim[0].dim_param:
            dim[0].dim_param = BATCH


def _n_features(model, n_features) -> int:
    if n_features is None:
        n_features = getattr(model, "n_features_in_", None)
        if n_features is None:
            raise ValueError("the model does not say how many features it takes (no n_features_in_: is it fitted?); "
                             "pass n_features or initial_types")
    if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features <= 0:
        raise ValueError(f"n_features must be a positive int, got {n_features!r}")
    return int(n_features)


def _float_matrix(n_features: int):
    """skl2onnx's type of a float32 (batch, n_features) input, batch dynamic."""
    from skl2onnx.common.data_types import FloatTensorType
    return FloatTensorType([None, n_features])


def _without_zipmap(model, options) -> dict:
    """skl2onnx options with ``zipmap=False`` for ``model`` unless the caller chose a zipmap setting."""
    if not options:
        return {"zipmap": False}
    options = copy.copy(options)
    if all(isinstance(k, str) for k in options):          # by name: "zipmap", "step__zipmap"...
        if not any(k == "zipmap" or k.endswith("__zipmap") for k in options):
            options["zipmap"] = False
        return options
    own = dict(options.get(id(model)) or options.get(type(model)) or {})
    if "zipmap" not in own:
        own["zipmap"] = False
        options[id(model)] = own
    return options
