"""The methods, one module each, found by name or alias."""
from __future__ import annotations

from .ablation import FeatureAblation, FeaturePermutation
from .base import Method, Spec
from .deeplift import DeepLift, DeepLiftShap
from .grad_cam import GradCam, GuidedGradCam
from .gradient import Deconvolution, EpsilonLRP, Gradient, GuidedBackprop, InputXGradient, Saliency
from .gradient_shap import GradientShap
from .integrated_gradients import IntegratedGradients
from .layer_path import InternalInfluence, LayerConductance
from .lrp import LRP
from .neuron import NeuronConductance
from .noise_tunnel import NT_PARAMETERS, NT_TYPES, NoiseTunnel, SmoothGrad, SmoothGradSquared, VarGrad
from .occlusion import Occlusion
from .params import Offered, Param, markdown_table, offered
from .shapley import ShapleySampling, ShapleyValues
from .surrogate import KernelShap, Lime
from .transformer_lrp import AttnLRP, ConservativeLRP

_CLASSES = [Saliency, Gradient, InputXGradient, IntegratedGradients, SmoothGrad, SmoothGradSquared, VarGrad,
            DeepLift, DeepLiftShap, GradientShap, EpsilonLRP, LRP, ConservativeLRP, AttnLRP, GuidedBackprop,
            Deconvolution, GradCam, GuidedGradCam, InternalInfluence, LayerConductance, NeuronConductance,
            Occlusion, FeatureAblation, FeaturePermutation, ShapleySampling, ShapleyValues, KernelShap, Lime]

METHODS: tuple[str, ...] = tuple(c.name for c in _CLASSES)
ALIASES: dict[str, str] = {alias: c.name for c in _CLASSES for alias in c.aliases}


def canonical_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"method must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    if key in METHODS:
        return key
    if key in ALIASES:
        return ALIASES[key]
    valid = ", ".join(METHODS)
    aliases = ", ".join(f"{a} -> {c}" for a, c in sorted(ALIASES.items()))
    raise ValueError(f"unknown method {name!r}; valid methods: {valid} (aliases: {aliases})")


def get_method(name: str, noise_tunnel: str | None = None, **graph_defaults) -> Method:
    """An instance of the method called ``name``, with its graph's default parameters overridden.

    ``noise_tunnel`` (``"smoothgrad"``, ``"smoothgrad_sq"`` or ``"vargrad"``) wraps
    it in a :class:`NoiseTunnel`, as Captum's ``NoiseTunnel(method)``.
    """
    cls = next(c for c in _CLASSES if c.name == canonical_name(name))
    method = cls()
    if noise_tunnel is not None:
        if not isinstance(noise_tunnel, str) or noise_tunnel not in NT_TYPES:
            raise ValueError(f"noise_tunnel must be one of {', '.join(NT_TYPES)} (or None), got {noise_tunnel!r}")
        method = NoiseTunnel(method, noise_tunnel)
    method.defaults = method.check_params(graph_defaults)
    return method


def _instances() -> list[Method]:
    return [c() for c in _CLASSES]


def offered_parameters() -> list[Offered]:
    """Every method parameter, once per name, with the methods that take it and their declarations, in the
    order of :data:`METHODS` (the command line's method flags)."""
    return offered((m.name, m.parameters) for m in _instances())


def method_table() -> str:
    """The README's method table (Markdown): every method with its aliases, its parameters and their
    defaults, and its counterparts in Captum and DeepExplain, from the methods' declarations."""
    return markdown_table(_instances())


__all__ = ["ALIASES", "METHODS", "NT_PARAMETERS", "NT_TYPES", "Method", "Offered", "Param", "Spec", "canonical_name",
           "get_method", "method_table", "offered_parameters"]
