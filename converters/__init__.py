"""Front-ends that turn models of any framework into normalised ONNX.

``from_torch``, ``from_keras`` and ``from_sklearn`` import their framework
when they are called: importing onnxplain never imports torch, keras or
scikit-learn.
"""
from .keras import from_keras
from .normalize import MIN_OPSET, digest, load_model, normalize
from .sklearn import from_sklearn
from .torch import from_torch

__all__ = ["MIN_OPSET", "digest", "from_keras", "from_sklearn", "from_torch", "load_model", "normalize"]
