"""Inputs and layers that no gradient reaches are found when the graph is built.

A float input that reaches the output only through a Cast to an integer type, a comparison,
Floor, ArgMax or a Shape gets no gradient; the gradient and modified-rule methods refuse it with
:class:`onnxplain.NoGradientPathError` naming the op and node, ``inspect`` gives the same verdict
and reason, the perturbation methods still run, and when the inputs are chosen by default the
inputs that a gradient does reach are attributed (checked against PyTorch autograd).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import onnxplain
from onnxplain.converters.normalize import normalize

pytestmark = pytest.mark.filterwarnings("ignore")

GRADIENT_METHODS = ["saliency", "integrated_gradients", "deeplift", "epsilon_lrp"]


class Quantized(nn.Module):
    """x reaches the output only through x.long() (a Cast to int64)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc((4 * x).long().float())


class MaskedBy(nn.Module):
    """z reaches the output only through the mask z > 0; x through a linear layer."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x, z):
        return self.fc(x) * (z > 0).float().mean(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def quantized():
    torch.manual_seed(0)
    module = Quantized().eval()
    return module, onnxplain.from_torch(module, torch.randn(2, 5), input_names=["x"])


@pytest.fixture(scope="module", params=["torchscript", "dynamo"])
def masked(request):
    torch.manual_seed(1)
    module = MaskedBy().eval()
    onx = onnxplain.from_torch(module, (torch.randn(2, 5), torch.randn(2, 5)), input_names=["x", "z"],
                               dynamo=request.param == "dynamo")
    return module, onx


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_cast_to_integer_is_refused_with_the_op(quantized, method):
    _, onx = quantized
    with pytest.raises(onnxplain.NoGradientPathError, match=r"input 'x'.*only through Cast \(node .*perturbation") as e:
        onnxplain.Explainer(onx, method)
    verdict = onnxplain.inspect(onx)["methods"][method]
    assert not verdict["available"] and verdict["reason"] == str(e.value)


def test_perturbation_still_explains_the_cut_input(quantized):
    """Occlusion needs only the forward pass: one feature at a time, against the brute-force difference."""
    module, onx = quantized
    assert onnxplain.inspect(onx)["methods"]["occlusion"]["available"]
    x = np.array([[0.3, -0.6, 0.9, 0.1, -0.2]], np.float32)
    ours = onnxplain.Explainer(onx, "occlusion").explain(x, target=1, sliding_window_shapes=(1,))
    with torch.no_grad():
        full = module(torch.tensor(x))[0, 1]
        ref = [float(full - module(torch.tensor(np.where(np.arange(5) == i, 0, x).astype(np.float32)))[0, 1])
               for i in range(5)]
    np.testing.assert_allclose(ours[0], ref, rtol=1e-5, atol=1e-6)
    assert np.abs(ours).max() > 0


def test_default_inputs_keep_those_a_gradient_reaches(masked):
    module, onx = masked
    ex = onnxplain.Explainer(onx, "saliency")
    assert ex.inputs == ["x"]
    facts = onnxplain.inspect(onx)
    assert facts["attributed"] == ["x"] and facts["methods"]["saliency"]["available"]
    x, z = torch.randn(3, 5, requires_grad=True), torch.randn(3, 5)
    ours = ex.explain({"x": x.detach().numpy(), "z": z.numpy()}, target=2)
    (ref,) = torch.autograd.grad(module(x, z)[:, 2].sum(), x)
    np.testing.assert_allclose(ours, ref.abs().numpy(), rtol=1e-5, atol=1e-7)
    # the perturbation methods still attribute both inputs
    assert onnxplain.Explainer(onx, "feature_ablation").inputs == ["x", "z"]


def test_naming_the_masked_input_is_refused(masked):
    _, onx = masked
    with pytest.raises(onnxplain.NoGradientPathError, match=r"input 'z'.*only through Greater"):
        onnxplain.Explainer(onx, "integrated_gradients", inputs=["x", "z"])


def _hand_model(nodes, inputs, inits=()):
    graph = helper.make_graph(nodes, "cut", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4])
                                             for n in inputs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], list(inits))
    return normalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_layer_feeding_only_a_shape_is_refused():
    """A layer whose only reader is a Shape (an exporter folded what used it): refused for layer=."""
    onx = _hand_model([helper.make_node("Relu", ["x"], ["t"], name="relu"),
                       helper.make_node("Shape", ["t"], ["s"], name="shape_of_t"),
                       helper.make_node("Reshape", ["x", "s"], ["r"]),
                       helper.make_node("Sin", ["r"], ["y"])], ["x"])
    with pytest.raises(onnxplain.NoGradientPathError, match=r"layer 't'.*only through Shape \(node 'shape_of_t'\)"):
        onnxplain.Explainer(onx, "integrated_gradients", layer="t")
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(onnxplain.Explainer(onx, "gradient").explain(x, target=0)[:, 0], np.cos(x[:, 0]),
                               rtol=1e-6)


@pytest.mark.parametrize("op,attrs", [("Floor", {}), ("Round", {}), ("Sign", {})])
def test_piecewise_constant_steps_cut(op, attrs):
    """Floor, Round, Sign have float outputs but no gradient; with every input cut, the model is refused."""
    onx = _hand_model([helper.make_node(op, ["x"], ["f"], name="step", **attrs),
                       helper.make_node("Mul", ["f", "w"], ["y"])], ["x", "w"])
    onx2 = _hand_model([helper.make_node(op, ["x"], ["f"], name="step", **attrs),
                        helper.make_node("Mul", ["f", "c"], ["y"])], ["x"],
                       [numpy_helper.from_array(np.full((1, 4), 2.0, np.float32), "c")])
    assert onnxplain.Explainer(onx, "saliency").inputs == ["w"]
    with pytest.raises(onnxplain.NoGradientPathError, match=rf"input 'x'.*only through {op} \(node 'step'\)"):
        onnxplain.Explainer(onx2, "saliency")
    assert "only through" in onnxplain.inspect(onx2)["methods"]["saliency"]["reason"]
