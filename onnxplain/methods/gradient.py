"""Plain gradients: saliency (|dy/dx|) and input x gradient."""
from __future__ import annotations

from ..backward import backward
from .base import Method, Spec, declare_target_weights, emit_outputs, open_forward


class _OneRun(Method):
    """One block of rows: the inputs themselves, seeded with ``target_weights``."""

    def build(self, b, spec: Spec) -> None:
        inside, outputs = open_forward(b, spec)
        for name, internal in inside.items():
            b.op("Identity", name, outputs=[internal])
        tw = declare_target_weights(b, spec)
        emit_outputs(b, spec, outputs, None, None)
        grads = backward(b, outputs[spec.output], tw, [inside[x] for x in spec.wrt])
        for x in spec.wrt:
            attr = self.attribute(b, x, grads[inside[x]])
            b.op("Identity", attr, outputs=[spec.attribution_name(x)])
            b.add_output(spec.attribution_name(x), b.elem_type(x), b.shape(x))

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
