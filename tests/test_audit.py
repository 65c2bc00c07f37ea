"""The DeepLIFT audit: every node's relevance in and out, so a rule that breaks summation-to-delta is named.

References: the call's own ``delta`` (``sum(attributions) - (f(x) - f(b))`` from the model's forward pass),
which the nodes' residuals must add up to; a rule made to leak on purpose (Tanh on its plain gradient),
whose residual is computed here in NumPy; and graphs whose rules conserve, where no node may leak.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import onnxplain
from onnxplain.cli import main
from onnxplain.rules.deeplift import RESCALE

pytestmark = pytest.mark.filterwarnings("ignore")


class Mlp(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2 = nn.Linear(5, 7), nn.Linear(7, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class Attention(nn.Module):
    """One softmax attention head and a LayerNorm, mean-pooled: products of activations, a quotient, a norm."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.q, self.k, self.v, self.head = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)
        self.norm = nn.LayerNorm(6)

    def forward(self, x):
        p = torch.softmax(self.q(x) @ self.k(x).transpose(-2, -1) * 3.0, -1)
        return self.head(self.norm(p @ self.v(x) + x).mean(1))


def rows(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_conserving_rules_leak_nowhere_and_the_residuals_add_up_to_delta(dynamo):
    x, base = rows((4, 5, 6), 0), 0.5 * rows((4, 5, 6), 1)
    model = onnxplain.from_torch(Attention().eval(), torch.from_numpy(x), dynamo=dynamo, dynamic="auto")
    ex = onnxplain.Explainer(model, "deeplift")
    found = ex.audit(x, target=1, baselines=base)
    _, delta = ex.explain(x, target=1, baselines=base, return_convergence_delta=True)
    np.testing.assert_allclose(found.delta, delta, rtol=0, atol=1e-7)
    np.testing.assert_allclose(found.residual.sum(1), found.delta, rtol=0, atol=1e-6)
    assert found.leaking() == []
    assert {"Softmax", "LayerNormalization", "MatMul"} <= set(found.ops)


def test_a_rule_that_does_not_conserve_is_named_with_its_residual():
    """Tanh on its plain gradient: the audit names it alone, with the residual a NumPy DeepLIFT gives."""
    net = Mlp(seed=7).eval()
    x, base = 2 * rows((6, 5), 2), rows((6, 5), 3)
    model = onnxplain.from_torch(net, torch.from_numpy(x))
    ex = onnxplain.Explainer(model, "deeplift")
    ex.method.overrides = {op: rules for op, rules in RESCALE.items() if op != "Tanh"}     # the audit's graph only
    found = ex.audit(x, target=2, baselines=base)
    leaking = found.leaking()
    assert [d["op"] for d in leaking] == ["Tanh"]
    w1, b1 = net.fc1.weight.detach().numpy(), net.fc1.bias.detach().numpy()
    w2 = net.fc2.weight.detach().numpy()
    z, z_ref = x @ w1.T + b1, base @ w1.T + b1
    dy = w2[2]                                               # the cotangent reaching tanh's output: linear after it
    expected = ((1 - np.tanh(z) ** 2) * (z - z_ref) * dy).sum(1) - ((np.tanh(z) - np.tanh(z_ref)) * dy).sum(1)
    column = found.nodes.index(leaking[0]["node"])
    np.testing.assert_allclose(found.residual[:, column], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(found.residual.sum(1), found.delta, rtol=0, atol=1e-5)
    assert np.abs(found.delta).max() > 1e-3                  # the leak is what breaks completeness


def test_the_audit_is_for_deeplift_without_batch_size():
    model = onnxplain.from_torch(Mlp(seed=8).eval(), torch.randn(3, 5))
    with pytest.raises(ValueError, match="method='deeplift'"):
        onnxplain.Explainer(model, "integrated_gradients").audit(rows((3, 5), 0), target=0)
    with pytest.raises(ValueError, match="without batch_size"):
        onnxplain.Explainer(model, "deeplift", batch_size=2).audit(rows((3, 5), 0), target=0)


def test_the_command_line_audits_made_up_rows_and_writes_json(tmp_path, capsys):
    path = tmp_path / "attention.onnx"
    model = onnxplain.from_torch(Attention().eval(), torch.randn(2, 5, 6))
    path.write_bytes(model.SerializeToString())
    assert main(["audit", str(path), "--top", "4", "--json", str(tmp_path / "audit.json")]) == 0
    out = capsys.readouterr().out
    assert "DeepLIFT audit" in out and "0 node(s) leak more than" in out
    facts = json.loads((tmp_path / "audit.json").read_text())
    assert facts["leaking"] == [] and len(facts["delta"]) == 4
    assert {d["op"] for d in facts["nodes"]} >= {"Softmax", "LayerNormalization"}
    assert main(["audit", str(path), "--method", "saliency"]) == 2
    assert "--method deeplift" in capsys.readouterr().err
