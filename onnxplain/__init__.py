"""onnxplain: attribution graphs for any ONNX model."""
from .errors import ModelError, OnnxplainError, UnsupportedOperatorError

__all__ = ["ModelError", "OnnxplainError", "UnsupportedOperatorError"]
