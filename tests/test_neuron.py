"""Neuron attribution: ``output=`` a layer's tensor and ``target=`` the unit, against Captum's Neuron* methods."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from captum.attr import NeuronDeepLift, NeuronGradient, NeuronGuidedBackprop, NeuronIntegratedGradients

import onnxplain
from models import export
from test_layer_path import ROW, SmallCNN


@pytest.fixture(scope="module")
def cnn():
    net = SmallCNN().eval()
    onx = export(net, ROW)
    outputs = {n.name: n.output[0] for n in onnx.load_from_string(onx).graph.node}
    return net, onx, outputs


@pytest.mark.parametrize("method, captum", [("gradient", NeuronGradient), ("guided_backprop", NeuronGuidedBackprop),
                                            ("integrated_gradients", NeuronIntegratedGradients),
                                            ("deeplift", NeuronDeepLift)])
@pytest.mark.parametrize("layer, node, neuron", [("conv2", "/conv2/Conv", (1, 2, 1)), ("act1", "/act1/Relu", (4, 6, 0))])
def test_a_unit_of_a_layer_explained_as_captum_explains_it(cnn, method, captum, layer, node, neuron):
    net, onx, outputs = cnn
    x = np.random.default_rng(0).standard_normal((3,) + ROW).astype(np.float32)
    got = onnxplain.Explainer(onx, method, output=outputs[node]).explain(x, target=neuron)
    want = captum(net, getattr(net, layer)).attribute(torch.from_numpy(x), neuron)
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-4, atol=1e-6)


def test_a_unit_per_row_and_the_error_for_a_tensor_the_model_lacks(cnn):
    net, onx, outputs = cnn
    x = np.random.default_rng(1).standard_normal((2,) + ROW).astype(np.float32)
    ex = onnxplain.Explainer(onx, "gradient", output=outputs["/conv2/Conv"])
    got = ex.explain(x, target=[(0, 1, 1), (3, 0, 1)])
    for row, unit in enumerate([(0, 1, 1), (3, 0, 1)]):
        want = NeuronGradient(net, net.conv2).attribute(torch.from_numpy(x[row:row + 1]), unit)
        np.testing.assert_allclose(got[row:row + 1], want.detach().numpy(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="nor a tensor of it"):
        onnxplain.Explainer(onx, "gradient", output="no_such_tensor")
