"""onnxplain: attribution graphs for any ONNX model.

>>> import onnxplain
>>> ex = onnxplain.Explainer("model.onnx", method="integrated_gradients")   # builds once
>>> a = ex.explain(x, target=3)                                            # numpy in, numpy out
"""
from .api import Explainer, clear_cache, convert, explain
from .converters import from_keras, from_sklearn, from_torch, normalize
from .errors import ModelError, NoGradientPathError, OnnxplainError, UnsupportedOperatorError
from .inspection import inspect
from .methods import ALIASES, METHODS

__version__ = "0.1.0"

__all__ = ["ALIASES", "METHODS", "Explainer", "ModelError", "NoGradientPathError", "OnnxplainError",
           "UnsupportedOperatorError", "clear_cache", "convert", "explain", "from_keras", "from_sklearn", "from_torch",
           "inspect", "normalize"]
