"""NaN where a gradient exists: attention that masks whole query rows.

The block adds a -inf bias where the mask is False, so a fully masked query row is a Softmax over
-inf only (NaN), which ``Where(row has a key, softmax, 0)`` replaces by zeros: the forward pass is
finite, but NaN * 0 in the backward pass (PyTorch's autograd included) spreads NaN over every key
through the QK^T MatMul.  onnxplain must give the true gradient.  References: float64 central
finite differences of the module, and PyTorch autograd of a NaN-free formulation of the same
function (the fully masked rows' scores set to 0 before the Softmax); IG's completeness delta;
the explanation graph in onnxruntime and onnx.reference alike.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx.reference import ReferenceEvaluator
from torch import nn

import onnxplain

pytestmark = pytest.mark.filterwarnings("ignore")

TARGET = 1


class MaskedAttention(nn.Module):
    """One attention block with a boolean (N, T, T) mask input and an additive -inf mask."""

    def __init__(self, d: int = 6, classes: int = 3):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, classes)

    def scores(self, x):
        return self.q(x) @ self.k(x).transpose(-1, -2) / math.sqrt(x.shape[-1])

    def head(self, p, x):
        return self.out((p @ self.v(x) + x).mean(dim=1))

    def forward(self, x, mask):
        p = torch.softmax(self.scores(x) + torch.where(mask, 0.0, float("-inf")), dim=-1)
        return self.head(torch.where(mask.any(dim=-1, keepdim=True), p, 0.0), x)

    def nan_free(self, x, mask):
        """The same function, written so that no NaN ever appears (fully masked rows score 0)."""
        has_key = mask.any(dim=-1, keepdim=True)
        scores = torch.where(has_key, self.scores(x) + torch.where(mask, 0.0, float("-inf")), 0.0)
        return self.head(torch.where(has_key, torch.softmax(scores, dim=-1), 0.0), x)


def _inputs(rows=2, tokens=5, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, tokens, d, generator=g)
    mask = torch.rand(rows, tokens, tokens, generator=g) > 0.4
    mask[:, :, 0] = True
    mask[:, 1, :] = False          # query 1 attends to nothing
    return x, mask


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(3)
    return MaskedAttention().eval()


@pytest.fixture(scope="module", params=["torchscript", "dynamo"])
def exported(request, block):
    x, mask = _inputs()
    return onnxplain.from_torch(block, (x, mask), input_names=["x", "mask"], dynamo=request.param == "dynamo")


def test_pytorch_autograd_gives_nan_here(block):
    """The premise: the plain backward pass is NaN although the forward pass is finite."""
    x, mask = _inputs()
    x.requires_grad_()
    y = block(x, mask)[:, TARGET].sum()
    assert torch.isfinite(y)
    (g,) = torch.autograd.grad(y, x)
    assert torch.isnan(g).any()


def test_gradient_is_finite_and_true(block, exported):
    x, mask = _inputs(seed=1)
    ours = onnxplain.Explainer(exported, "gradient").explain({"x": x.numpy(), "mask": mask.numpy()}, target=TARGET)
    assert np.all(np.isfinite(ours))
    # PyTorch autograd of the NaN-free formulation, float64
    b64 = MaskedAttention().double()
    b64.load_state_dict(block.state_dict())
    x64 = x.double().requires_grad_()
    (ref,) = torch.autograd.grad(b64.nan_free(x64, mask)[:, TARGET].sum(), x64)
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    # float64 central finite differences of the module itself, along random directions
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for _ in range(3):
            d = torch.tensor(rng.standard_normal(x.shape))
            h = 1e-6
            fd = (b64(x64 + h * d, mask)[:, TARGET].sum() - b64(x64 - h * d, mask)[:, TARGET].sum()) / (2 * h)
            assert abs(float(fd) - float(np.sum(ours * d.numpy()))) <= 1e-4 * max(1.0, abs(float(fd)))


def test_integrated_gradients_delta_is_small(block, exported):
    x, mask = _inputs(seed=2)
    ours, delta = onnxplain.Explainer(exported, "integrated_gradients").explain(
        {"x": x.numpy(), "mask": mask.numpy()}, target=TARGET, return_convergence_delta=True)
    assert np.all(np.isfinite(ours))
    with torch.no_grad():
        gap = (block(x, mask) - block(torch.zeros_like(x), mask))[:, TARGET].numpy()
    assert np.abs(gap).max() > 1e-2
    assert np.abs(delta).max() <= 1e-3 * np.abs(gap).max()


def test_graph_runs_in_both_runtimes(exported, tmp_path):
    path = tmp_path / "saliency.onnx"
    onnxplain.convert(exported, path, method="saliency")
    graph = onnx.load(str(path))
    assert {n.domain for n in graph.graph.node} <= {""}
    x, mask = _inputs(seed=4)
    tw = np.zeros((2, 3), np.float32)
    tw[:, TARGET] = 1
    feeds = {"x": x.numpy(), "mask": mask.numpy(), "target_weights": tw}
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["attributions"], feeds)[0]
    ref = ReferenceEvaluator(str(path)).run(["attributions"], feeds)[0]
    assert np.all(np.isfinite(ref))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
