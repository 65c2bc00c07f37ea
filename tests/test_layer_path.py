"""internal_influence and layer_conductance against Captum's InternalInfluence and LayerConductance."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from captum.attr import InternalInfluence, LayerConductance
from torch import nn

import onnxplain
from models import export


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(11)
        self.conv1 = nn.Conv2d(2, 5, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(5, 4, 3, stride=2)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(4 * 3 * 2, 3)

    def forward(self, x):
        return self.head(torch.flatten(self.act2(self.conv2(self.act1(self.conv1(x)))), 1))


ROW = (2, 7, 6)


@pytest.fixture(scope="module")
def cnn():
    net = SmallCNN().eval()
    onx = export(net, ROW)
    outputs = {n.name: n.output[0] for n in onnx.load_from_string(onx).graph.node}
    return net, onx, outputs


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
@pytest.mark.parametrize("layer", ["act1", "conv2"])
def test_both_match_captum_at_a_layer(cnn, layer, method):
    net, onx, outputs = cnn
    tensor = outputs[{"act1": "/act1/Relu", "conv2": "/conv2/Conv"}[layer]]
    x = np.random.default_rng(0).standard_normal((3,) + ROW).astype(np.float32)
    base = np.random.default_rng(1).standard_normal((1,) + ROW).astype(np.float32) * 0.1
    target = [0, 2, 1]
    module = getattr(net, layer)
    xt, bt = torch.from_numpy(x), torch.from_numpy(base)
    want_ii = InternalInfluence(net, module).attribute(xt, bt, target=target, n_steps=9, method=method)
    got_ii = onnxplain.Explainer(onx, "internal_influence", layer=tensor).explain(
        x, target=target, baselines=base, n_steps=9, method=method)
    np.testing.assert_allclose(got_ii, want_ii.detach().numpy(), rtol=1e-4, atol=1e-6)
    want_lc, want_delta = LayerConductance(net, module).attribute(xt, bt, target=target, n_steps=9, method=method,
                                                                  return_convergence_delta=True)
    ex = onnxplain.Explainer(onx, "layer_conductance", layer=tensor)
    got_lc, delta = ex.explain(x, target=target, baselines=base, n_steps=9, method=method,
                               return_convergence_delta=True)
    np.testing.assert_allclose(got_lc, want_lc.detach().numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(delta, want_delta.detach().numpy(), rtol=1e-3, atol=1e-5)


def test_conductance_split_into_parts_adds_up_and_converges(cnn):
    """A budget that cuts the steps into parts (sharing a node each) gives the same conductance; with many
    steps it adds up to f(x) - f(baselines) at the layer every path crosses."""
    net, onx, outputs = cnn
    tensor = outputs["/act1/Relu"]
    x = np.random.default_rng(2).standard_normal((2,) + ROW).astype(np.float32)
    whole = onnxplain.Explainer(onx, "layer_conductance", layer=tensor).explain(x, target=1, n_steps=40)
    small = onnxplain.Explainer(onx, "layer_conductance", layer=tensor, memory_budget=40_000)
    assert small.estimate(x, target=1, n_steps=40).runs > 2
    np.testing.assert_allclose(small.explain(x, target=1, n_steps=40), whole, rtol=1e-4, atol=1e-6)
    _, delta = small.explain(x, target=1, n_steps=400, return_convergence_delta=True)
    with torch.no_grad():
        gap = (net(torch.from_numpy(x))[:, 1] - net(torch.zeros((1,) + ROW))[:, 1]).numpy()
    assert np.all(np.abs(delta) < 2e-3 * np.abs(gap).max())


def test_a_layer_is_required(cnn):
    _, onx, _ = cnn
    with pytest.raises(ValueError, match="give layer="):
        onnxplain.Explainer(onx, "layer_conductance")
