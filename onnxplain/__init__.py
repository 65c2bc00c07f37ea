"""onnxplain: attribution graphs for any ONNX model.

>>> import onnxplain
>>> ex = onnxplain.Explainer("model.onnx", method="integrated_gradients")   # builds once
>>> a = ex.explain(x, target=3)                                            # numpy in, numpy out
"""
from .api import ExplainOptions, Explainer, clear_cache, convert, explain
from .converters.keras import from_keras
from .converters.normalize import normalize
from .converters.sklearn import from_sklearn
from .converters.torch import from_torch
from .errors import ModelError, NoGradientPathError, OnnxplainError, UnsupportedOperatorError
from .inspection import inspect
from .methods import ALIASES, METHODS

__version__ = "0.1.0"

__all__ = ["ALIASES", "METHODS", "ExplainOptions", "Explainer", "ModelError", "NoGradientPathError", "OnnxplainError",
           "UnsupportedOperatorError", "clear_cache", "convert", "explain", "from_keras", "from_sklearn", "from_torch",
           "inspect", "normalize"]
