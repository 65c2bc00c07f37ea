"""cp_lrp and attn_lrp held against the same transformer written in PyTorch with the rules applied by hand
(detach tricks), relevance = input * autograd gradient of the target; conservation where the rules conserve;
epsilon-LRP's result on an MLP; onnx.reference, convert and the CLI once."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import onnxplain
from onnxplain.cli import main
from onnxplain.methods import METHODS

from checks import assert_close
from models import export

D, HEADS, T, CLASSES = 12, 2, 7, 3
EPS = 1e-4          # the methods' default stabiliser, used by the reference too


def identity_rule(y, z, eps=EPS):
    """``y`` with the gradient ``y / (z + eps * sign(z))`` at ``z`` (epsilon / identity rule of a unary map)."""
    ratio = (y / (z + eps * torch.where(z >= 0, 1.0, -1.0))).detach()
    return z * ratio + (y - z * ratio).detach()


def uniform(t, rules):
    """Half the gradient of a bilinear operand (AttnLRP's uniform rule)."""
    return t * 0.5 + t.detach() * 0.5 if rules == "attn" else t


class Norm(nn.Module):
    """LayerNorm (exported as LayerNormalization), LayerNorm written out (``(x - mean) / sqrt(var + eps)``), or
    RMSNorm written out (``x * rsqrt(mean(x^2) + eps)``)."""

    def __init__(self, kind: str, bias: bool):
        super().__init__()
        self.kind, self.eps = kind, 1e-5
        self.weight = nn.Parameter(1 + 0.2 * torch.randn(D))
        self.bias = nn.Parameter(0.1 * torch.randn(D)) if bias and kind != "rms" else None

    def forward(self, x, rules=None):
        if self.kind == "rms":
            inv = torch.rsqrt((x * x).mean(-1, keepdim=True) + self.eps)
            return x * (inv.detach() if rules else inv) * self.weight
        if rules is None and self.kind == "layer":
            return nn.functional.layer_norm(x, (D,), self.weight, self.bias, self.eps)
        xc = x - x.mean(-1, keepdim=True)
        std = torch.sqrt((xc * xc).mean(-1, keepdim=True) + self.eps)
        std = std.detach() if rules else std
        y = xc / std * self.weight
        return y + self.bias if self.bias is not None else y


class Block(nn.Module):
    def __init__(self, bias: bool, norm: str):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(D, D, bias=bias) for _ in range(4))
        self.ln1, self.ln2 = Norm(norm, bias), Norm(norm, bias)
        self.f1, self.f2 = nn.Linear(D, 2 * D + 1, bias=bias), nn.Linear(2 * D + 1, D, bias=bias)

    def forward(self, x, rules=None, record=None):
        B, dh = x.shape[0], D // HEADS

        def heads(t):
            return t.reshape(B, T, HEADS, dh).transpose(1, 2)
        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        scores = uniform(q, rules) @ uniform(k, rules).transpose(-1, -2) / dh ** 0.5
        a = torch.softmax(scores, -1)
        if record is not None:
            scores.retain_grad()
            a.retain_grad()
            record.append((scores, a))
        if rules == "cp":
            a = a.detach()
        o = (uniform(a, rules) @ uniform(v, rules)).transpose(1, 2).reshape(B, T, D)
        x = self.ln1(x + self.o(o), rules)
        h = self.f1(x)
        g = nn.functional.gelu(h)
        if rules:
            g = identity_rule(g, h, self.eps)
        return self.ln2(x + self.f2(g), rules)


class Transformer(nn.Module):
    """Two layers, two heads, hidden 12, sequence 7, a head on the mean token; ``rules`` = None | "cp" | "attn"."""

    def __init__(self, bias: bool = True, norm: str = "layer", seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.ModuleList([Block(bias, norm) for _ in range(2)])
        self.head = nn.Linear(D, CLASSES, bias=bias)
        self.rules, self.record, self.eps = None, None, EPS

    def forward(self, x):
        for blk in self.blocks:
            blk.eps = self.eps
            x = blk(x, self.rules, self.record)
        return self.head(x.mean(1))


def textbook(model: Transformer, x: np.ndarray, target: int, rules: str, eps: float = EPS):
    """input * gradient of the target through the forward with the rules applied by hand, and the output."""
    model.rules, model.eps = rules, eps
    try:
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        y = model.double()(xt)[:, target]
        y.sum().backward()
    finally:
        model.rules = None
        model.float()
    return (xt * xt.grad).detach().numpy(), y.detach().numpy()


ROWS = np.random.default_rng(3).standard_normal((3, T, D)).astype(np.float32)
METHOD_RULES = {"cp_lrp": "cp", "attn_lrp": "attn"}


@pytest.fixture(scope="module", params=[("bias", "layer", 17), ("bias", "layer", 20), ("bias", "written", 20),
                                                ("nobias", "rms", 17)],
                ids=lambda p: f"{p[0]}-{p[1]}-opset{p[2]}")
def case(request):
    bias, norm, opset = request.param
    model = Transformer(bias=bias == "bias", norm=norm)
    return model, export(model, (T, D), opset=opset)


@pytest.mark.parametrize("method", ["cp_lrp", "attn_lrp"])
def test_equals_the_rules_applied_by_hand(case, method):
    model, onnx_bytes = case
    ours, delta = onnxplain.Explainer(onnx_bytes, method).explain(ROWS, target=1, return_convergence_delta=True)
    ref, out = textbook(model, ROWS, 1, METHOD_RULES[method])
    assert_close(ours, ref, 1e-4)
    explained = out - ref.reshape(len(ROWS), -1).sum(1)
    assert_close(delta, explained, 1e-4, scale=np.abs(out).max(), what="delta")


def test_rules_differ_from_each_other_and_from_gradient_x_input(case):
    """The reference above would not tell a rule missing at one op from the method: the three disagree."""
    _, onnx_bytes = case
    got = {m: onnxplain.Explainer(onnx_bytes, m).explain(ROWS, target=0) for m in ("cp_lrp", "attn_lrp",
                                                                                 "input_x_gradient")}
    scale = np.abs(got["input_x_gradient"]).max()
    assert np.abs(got["cp_lrp"] - got["attn_lrp"]).max() > 1e-2 * scale
    assert np.abs(got["cp_lrp"] - got["input_x_gradient"]).max() > 1e-2 * scale


def test_cp_lrp_conserves_without_biases():
    """Without biases every CP-LRP rule conserves (up to the epsilon at GELU): sum(attributions) = output."""
    model = Transformer(bias=False, norm="layer", seed=1)
    ex = onnxplain.Explainer(export(model, (T, D)), "cp_lrp")
    attr, delta = ex.explain(ROWS, target=2, return_convergence_delta=True, epsilon=1e-7)
    with torch.no_grad():
        out = model(torch.from_numpy(ROWS))[:, 2].numpy()
    np.testing.assert_allclose(attr.reshape(len(ROWS), -1).sum(1), out, rtol=1e-4, atol=1e-5 * np.abs(out).max())
    assert np.abs(delta).max() <= 1e-4 * np.abs(out).max()


def test_attn_lrp_loses_only_what_softmax_absorbs():
    """AttnLRP's products, GELU, LayerNorm and linear layers conserve; its softmax rule does not (the paper's
    Taylor bias term).  Without biases, output - sum(attributions) is the relevance the softmaxes absorbed,
    sum(R_probabilities) - sum(R_scores) with R_t = t * grad_t read in the reference by autograd at each
    softmax (and nothing else: epsilon 1e-7)."""
    model = Transformer(bias=False, norm="layer", seed=2)
    attr, delta = onnxplain.Explainer(export(model, (T, D)), "attn_lrp").explain(
        ROWS, target=0, epsilon=1e-7, return_convergence_delta=True)
    model.record = []
    try:
        ref, out = textbook(model, ROWS, 0, "attn", eps=1e-7)
        absorbed = sum(((a * a.grad).sum((1, 2, 3)) - (z * z.grad).sum((1, 2, 3))).detach().numpy()
                       for z, a in model.record)
    finally:
        model.record = None
    assert np.abs(absorbed).max() > 1e-2 * np.abs(out).max()          # the softmax rule does absorb
    np.testing.assert_allclose(delta, absorbed, rtol=1e-3, atol=1e-5 * np.abs(out).max())
    np.testing.assert_allclose(attr.reshape(len(ROWS), -1).sum(1) + absorbed, out, rtol=1e-4,
                               atol=1e-5 * np.abs(out).max())


@pytest.mark.parametrize("method", ["cp_lrp", "attn_lrp"])
def test_an_mlp_gets_epsilon_lrps_result(method):
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.Linear(9, 7), nn.ReLU(), nn.Linear(7, 3))
    onnx_bytes = export(net, (5,))
    x = np.random.default_rng(5).standard_normal((4, 5)).astype(np.float32)
    ours = onnxplain.Explainer(onnx_bytes, method).explain(x, target=1, epsilon=0.05)
    eps = onnxplain.Explainer(onnx_bytes, "epsilon_lrp").explain(x, target=1, epsilon=0.05)
    # independent: epsilon-LRP by hand through the same layers
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    net = net.double()
    h = net[0](xt)
    h = identity_rule(torch.tanh(h), h, 0.05)
    h2 = net[2](h)
    net[4](identity_rule(torch.relu(h2), h2, 0.05))[:, 1].sum().backward()
    assert_close(ours, eps, 1e-5)
    assert_close(ours, (xt * xt.grad).detach().numpy(), 1e-4)


def test_graph_runs_in_onnx_reference_and_convert_and_cli(tmp_path):
    model = Transformer(bias=True, norm="layer", seed=6)
    onnx_bytes = export(model, (T, D), opset=17)
    path = tmp_path / "t.attn.onnx"
    onnxplain.convert(onnx_bytes, path, method="attn_lrp")
    g = onnx.load(str(path))
    assert all(n.domain in ("", "ai.onnx") for n in g.graph.node)
    tw = np.zeros((len(ROWS), CLASSES), np.float32)
    tw[:, 1] = 1
    from onnx.reference import ReferenceEvaluator
    attr = ReferenceEvaluator(g).run(["attributions"], {"x": ROWS, "target_weights": tw})[0]
    ref, _ = textbook(model, ROWS, 1, "attn")
    assert_close(attr, ref, 1e-4)
    model_path, rows_path, out = tmp_path / "t.onnx", tmp_path / "x.npy", tmp_path / "a.npy"
    model_path.write_bytes(onnx_bytes)
    np.save(rows_path, ROWS)
    assert main(["explain", str(model_path), str(rows_path), "--method", "cp_lrp", "--target", "1",
                 "--epsilon", "0.001", "--out", str(out)]) == 0
    expected = onnxplain.Explainer(onnx_bytes, "cp_lrp").explain(ROWS, target=1, epsilon=1e-3)
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-6, atol=1e-7)
    assert {"cp_lrp", "attn_lrp"} <= set(METHODS)


class TokenModel(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.embed, self.body = nn.Embedding(17, D), Transformer(bias=True, norm="layer", seed=8)

    def forward(self, ids):
        return self.body(self.embed(ids))


def export_tokens(model: nn.Module) -> bytes:
    """ONNX bytes of a token-id model (TorchScript exporter, dynamic batch)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros((2, T), dtype=torch.int64),), buf, dynamo=False, opset_version=17,
                          input_names=["ids"], output_names=["y"], dynamic_axes={"ids": {0: "batch"}, "y": {0: "batch"}})
    return buf.getvalue()


def test_token_model_is_attributed_at_its_embedding():
    model = TokenModel()
    onnx_bytes = export_tokens(model)
    gather = next(n for n in onnx.load_from_string(onnx_bytes).graph.node if n.op_type == "Gather" and "ids" in n.input)
    ids = np.random.default_rng(9).integers(0, 17, (2, T))
    ours = onnxplain.Explainer(onnx_bytes, "attn_lrp", layer=gather.output[0]).explain(ids, target=2)
    with torch.no_grad():
        embedded = model.embed(torch.from_numpy(ids)).numpy()
    ref, _ = textbook(model.body, embedded, 2, "attn")
    assert_close(ours, ref, 1e-4)


@pytest.mark.parametrize("bad", [0.0, -1e-3, "big"])
def test_bad_epsilon_is_refused_before_running(bad):
    with pytest.raises(ValueError, match="epsilon must be a"):
        onnxplain.Explainer(export(nn.Sequential(nn.Linear(3, 2)), (3,)), "attn_lrp").explain(
            np.ones((1, 3), np.float32), target=0, epsilon=bad)
