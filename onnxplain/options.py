"""One object for the options of a call: how the Explainer is built, and the method's parameters.

Functions that build an Explainer on the caller's behalf (the one-shot :func:`onnxplain.explain`,
``explain_npy``, ``explain_file``, the dask front-end, the server, the command line) take an
:class:`ExplainOptions` instead of repeating the Explainer's keywords one by one.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

#: the keywords of :class:`onnxplain.Explainer` besides the model and the method
EXPLAINER_KEYWORDS = ("output", "inputs", "layer", "providers", "memory_budget", "threads", "batch_axes",
                      "batch_size", "noise_tunnel")


@dataclass(frozen=True)
class ExplainOptions:
    """The method, the Explainer's options (see :class:`onnxplain.Explainer`) and the method's parameters
    (``params``: ``n_steps``, ``baselines``, ...; checked by the method when the call runs)."""

    method: str = "saliency"
    output: str | None = None
    inputs: object = None
    layer: str | None = None
    providers: object = None
    memory_budget: object = None
    threads: int | None = None
    batch_axes: dict | None = None
    batch_size: int | None = None
    noise_tunnel: str | None = None
    params: dict = field(default_factory=dict)

    @classmethod
    def split(cls, method: str = "saliency", **kwargs) -> "ExplainOptions":
        """Options from one flat set of keywords: the Explainer's by name (``inputs_to_attribute`` is
        Captum's spelling of ``inputs``), every other keyword a method parameter."""
        if "inputs_to_attribute" in kwargs:
            if "inputs" in kwargs:
                raise TypeError("give inputs or inputs_to_attribute, not both")
            kwargs["inputs"] = kwargs.pop("inputs_to_attribute")
        ctor = {k: kwargs.pop(k) for k in EXPLAINER_KEYWORDS if k in kwargs}
        return cls(method=method, **ctor, params=kwargs)

    @classmethod
    def merged(cls, method: str, options: "ExplainOptions | None", keywords: dict) -> "ExplainOptions":
        """A function's ``options`` and its flat ``keywords`` as one: the Explainer's keywords by name,
        ``params`` a dict of method parameters, any other keyword a method parameter too.  ``options``
        given, the keywords may only add method parameters."""
        keywords = dict(keywords)
        params = keywords.pop("params", None) or {}
        if not isinstance(params, dict):
            raise TypeError(f"params must be a dict of the method's parameters, got {type(params).__name__}")
        if options is None:
            found = cls.split(method, **keywords)
            return found.with_params(**params)
        if not isinstance(options, cls):
            raise TypeError(f"options must be an ExplainOptions, got {type(options).__name__}")
        doubled = sorted(k for k in keywords if k in EXPLAINER_KEYWORDS or k == "inputs_to_attribute")
        if doubled or method != "saliency" and method != options.method:
            raise TypeError(f"give the Explainer's keywords in options or as keywords, not both: {doubled or 'method'}")
        return options.with_params(**params, **keywords)

    def explainer_keywords(self) -> dict:
        """The keywords :class:`onnxplain.Explainer` takes after the model."""
        return {"method": self.method, **{k: getattr(self, k) for k in EXPLAINER_KEYWORDS}}

    def with_params(self, **params) -> "ExplainOptions":
        """A copy with more (or other) method parameters."""
        return replace(self, params={**self.params, **params})

    def __post_init__(self):
        if not isinstance(self.params, dict):
            raise TypeError(f"params must be a dict of the method's parameters, got {type(self.params).__name__}")

