"""Front-ends that turn models of any framework into normalised ONNX."""
from .normalize import MIN_OPSET, digest, load_model, normalize

__all__ = ["MIN_OPSET", "digest", "load_model", "normalize"]
