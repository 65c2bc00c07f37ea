"""One run over the inputs themselves: saliency, gradient, input x gradient,
and the modified-gradient methods that need no reference (epsilon-LRP, guided
backpropagation, deconvolution)."""
from __future__ import annotations

import numpy as np

from ..backward import backward
from ..rules.lrp import EPSILON
from ..rules.guided import DECONVOLUTION, GUIDED
from .base import (Method, Spec, declare_param, declare_target_weights, emit_attribution, emit_outputs, ex_float,
                   open_forward, per_row_sum)
from .params import Param


class _OneRun(Method):
    """One block of rows, seeded with ``target_weights``; ``overrides`` modify the chain rule."""

    def build(self, b, spec: Spec) -> None:
        inside, outputs = open_forward(b, spec)
        for name, internal in inside.items():
            b.op("Identity", name, outputs=[internal])
        tw = declare_target_weights(b, spec)
        params = self.rule_params(b, spec)
        picked = emit_outputs(b, spec, outputs, None, None)
        fed = {p.key: inside[p.carrier] if p.is_input else p.tensor for p in spec.points}
        grads = backward(b, outputs[spec.output], tw, list(fed.values()), overrides=self.overrides, params=params)
        totals = []
        for point in spec.points:
            t = fed[point.key]
            totals.append(emit_attribution(b, spec, point, self.attribute(b, t, grads[t])))
        if self.has_delta:
            explained = per_row_sum(b, b.mul(tw, picked[spec.output]), b.rank(spec.output))
            b.op("Sub", explained, b.sum(totals), outputs=["delta"])
            b.add_output("delta", b.elem_type(spec.output), [b.shape(spec.output)[0]])

    def reference_rows(self, b, total, block):
        return b.ints([0])   # every row holds inputs

    def rule_params(self, b, spec: Spec) -> dict:
        """Graph inputs the modified rules read (none for plain gradients)."""
        return {}

    def attribute(self, b, x: str, grad: str) -> str:
        raise NotImplementedError


class Saliency(_OneRun):
    """Absolute value of the gradient (Captum's ``Saliency``, DeepExplain's ``saliency``)."""

    name = "saliency"
    captum = "`Saliency` (`abs=True`)"
    deepexplain = "`saliency`"

    def attribute(self, b, x, grad):
        return b.op("Abs", grad)


class Gradient(_OneRun):
    """The signed gradient of the target with respect to the input."""

    name = "gradient"
    captum = "`Saliency(...).attribute(abs=False)`"
    deepexplain = "–"

    def attribute(self, b, x, grad):
        return grad


class InputXGradient(_OneRun):
    """Input times gradient (Captum's ``InputXGradient``, DeepExplain's ``grad*input``)."""

    name = "input_x_gradient"
    captum = "`InputXGradient`"
    deepexplain = "`grad*input`"
    aliases = ("grad*input", "gradient_x_input", "inputxgradient")

    def attribute(self, b, x, grad):
        return b.mul(x, grad)


class EpsilonLRP(InputXGradient):
    """epsilon-LRP: input times the gradient modified at the nonlinearities (DeepExplain's ``elrp``).

    Its ``delta`` is Captum's ``LRP`` convergence delta, the relevance the
    epsilons absorbed: ``output - sum(attributions)`` per row, where ``output``
    is the explained scalar ``sum(target_weights * y)`` (note the sign: the
    opposite of integrated gradients' and DeepLIFT's ``sum(attributions) - ...``).
    """

    name = "epsilon_lrp"
    captum = "`LRP` with ε-rules (close, not identical)"
    deepexplain = "`elrp`"
    table_note = "its `delta` has Captum's LRP sign: `output - sum(attributions)`"
    aliases = ("elrp",)
    overrides = EPSILON
    has_delta = True
    parameters = (Param("epsilon", 1e-4, "float", "the epsilon-rule's stabiliser, added to every denominator with "
                        "its sign"),)

    def rule_params(self, b, spec):
        ftype = b.elem_type(spec.output)
        return {"epsilon": declare_param(b, "epsilon", ftype, 0, np.asarray(self.defaults["epsilon"]))}

    def check_params(self, params):
        p = super().check_params(params)
        if not np.isscalar(p["epsilon"]) or not p["epsilon"] > 0:
            raise ValueError(f"epsilon must be a positive float, got {p['epsilon']!r}")
        return p

    def parts(self, params, spec, inputs, bytes_per_row, budget):
        return [{"epsilon": np.asarray(params["epsilon"], dtype=ex_float(spec))}]


class GuidedBackprop(Gradient):
    """Gradient with ``relu(dy)`` at every ReLU's masked backward (Captum's ``GuidedBackprop``)."""

    name = "guided_backprop"
    captum = "`GuidedBackprop`"
    deepexplain = "–"
    aliases = ("guided_backpropagation",)
    overrides = GUIDED


class Deconvolution(Gradient):
    """Gradient with ``relu(dy)`` in place of every ReLU's backward (Captum's ``Deconvolution``)."""

    name = "deconvolution"
    captum = "`Deconvolution`"
    deepexplain = "–"
    aliases = ("deconvnet",)
    overrides = DECONVOLUTION
