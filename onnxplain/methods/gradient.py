"""One run over the inputs themselves: saliency, gradient, input x gradient,
and the modified-gradient methods that need no reference (epsilon-LRP, guided
backpropagation, deconvolution)."""
from __future__ import annotations

import numpy as np

from ..backward import backward
from ..rules.epsilon import EPSILON
from ..rules.guided import DECONVOLUTION, GUIDED
from .base import Method, Spec, declare_param, declare_target_weights, emit_outputs, open_forward


class _OneRun(Method):
    """One block of rows, seeded with ``target_weights``; ``overrides`` modify the chain rule."""

    overrides: dict | None = None

    def build(self, b, spec: Spec) -> None:
        inside, outputs = open_forward(b, spec)
        for name, internal in inside.items():
            b.op("Identity", name, outputs=[internal])
        tw = declare_target_weights(b, spec)
        params = self.rule_params(b, spec)
        emit_outputs(b, spec, outputs, None, None)
        grads = backward(b, outputs[spec.output], tw, [inside[x] for x in spec.wrt],
                         overrides=self.overrides, params=params)
        for x in spec.wrt:
            attr = self.attribute(b, x, grads[inside[x]])
            b.op("Identity", attr, outputs=[spec.attribution_name(x)])
            b.add_output(spec.attribution_name(x), b.elem_type(x), b.shape(x))

    def rule_params(self, b, spec: Spec) -> dict:
        """Graph inputs the modified rules read (none for plain gradients)."""
        return {}

    def attribute(self, b, x: str, grad: str) -> str:
        raise NotImplementedError


class Saliency(_OneRun):
    """Absolute value of the gradient (Captum's ``Saliency``, DeepExplain's ``saliency``)."""

    name = "saliency"

    def attribute(self, b, x, grad):
        return b.op("Abs", grad)


class Gradient(_OneRun):
    """The signed gradient of the target with respect to the input."""

    name = "gradient"

    def attribute(self, b, x, grad):
        return grad


class InputXGradient(_OneRun):
    """Input times gradient (Captum's ``InputXGradient``, DeepExplain's ``grad*input``)."""

    name = "input_x_gradient"
    aliases = ("grad*input", "gradient_x_input", "inputxgradient")

    def attribute(self, b, x, grad):
        return b.mul(x, grad)


class EpsilonLRP(InputXGradient):
    """epsilon-LRP: input times the gradient modified at the nonlinearities (DeepExplain's ``elrp``)."""

    name = "epsilon_lrp"
    aliases = ("elrp", "lrp")
    overrides = EPSILON
    defaults = {"epsilon": 1e-4}

    def rule_params(self, b, spec):
        ftype = b.elem_type(spec.wrt[0])
        return {"epsilon": declare_param(b, "epsilon", ftype, 0, np.asarray(self.defaults["epsilon"]))}

    def check_params(self, params):
        p = super().check_params(params)
        if not np.isscalar(p["epsilon"]) or not p["epsilon"] > 0:
            raise ValueError(f"epsilon must be a positive float, got {p['epsilon']!r}")
        return p

    def parts(self, params, spec, inputs, bytes_per_row, budget):
        dtype = np.asarray(inputs[spec.wrt[0]]).dtype
        return [{"epsilon": np.asarray(params["epsilon"], dtype=dtype)}]


class GuidedBackprop(Gradient):
    """Gradient with ``relu(dy)`` at every ReLU's masked backward (Captum's ``GuidedBackprop``)."""

    name = "guided_backprop"
    aliases = ("guided_backpropagation",)
    overrides = GUIDED


class Deconvolution(Gradient):
    """Gradient with ``relu(dy)`` in place of every ReLU's backward (Captum's ``Deconvolution``)."""

    name = "deconvolution"
    aliases = ("deconvnet",)
    overrides = DECONVOLUTION
