"""The lrp method's per-layer branches (``If`` nodes picking the epsilon, half or general computation, and the
first-layer input rules) against the general formula of :mod:`onnxplain.rules.lrp` written out here in PyTorch:
every rule at every layer, the composites, and rule tables fed directly whose rows mix rules (which exercise
the branch conditions on fractional coefficients); layers read inputs of both signs (a Tanh) and non-negative
ones (ReLUs).  Also the graph's ``If`` nodes and onnx.reference."""
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import onnxplain
from models import export
from vision_models import export_dynamo

warnings.filterwarnings("ignore", category=UserWarning)

P = {"epsilon": 1e-5, "stabilizer": 1e-6, "gamma": 0.3, "alpha": 2.0, "beta": 1.0, "low": -1.5, "high": 2.0}
TINY = float(np.finfo(np.float32).tiny)
RULES = ("epsilon", "z_plus", "alpha_beta", "gamma", "pass", "flat", "w_square", "z_box")
LAYER_RULES = RULES[:5]
COMPOSITES = ("epsilon", "epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1")


# ---------------------------------------------------------------------- the general formula, by hand
def rule_coefficients(rule, p):
    """(a1, a2, u, alpha, beta, stab) of one rule, as the module's formula block defines them."""
    eps, st = p["epsilon"], p["stabilizer"]
    return {"epsilon": (1, 0, 1, 0, 0, eps), "z_plus": (0, 1, 0, 1, 0, st),
            "alpha_beta": (0, 1, 0, p["alpha"], p["beta"], st), "gamma": (1, p["gamma"], 1, 0, 0, st),
            "pass": (1, 0, 1, 0, 0, TINY)}.get(rule, (0, 0, 0, 0, 0, st))


def coefficients(row, p):
    """A table row ``{rule: weight}``: the weighted sum of its rules' coefficients, plus each rule's weight."""
    c = dict.fromkeys(("a1", "a2", "u", "alpha", "beta", "stab"), 0.0)
    for rule, weight in row.items():
        for key, v in zip(c, rule_coefficients(rule, p)):
            c[key] += weight * v
    c.update({rule: row.get(rule, 0.0) for rule in ("flat", "w_square", "z_box")})
    return c


def stab(z, e):
    return z + e * torch.where(z >= 0, 1.0, -1.0)


def apply(m, w, b):
    if isinstance(m, nn.Conv2d):
        return lambda t: F.conv2d(t, w, b, m.stride, m.padding)
    return lambda t: F.linear(t, w, b)


def transposed(m, w, at, s):
    """``w^T s``: PyTorch autograd of the bias-free layer with weight ``w``."""
    at = at.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(apply(m, w, None)(at), at, s)
    return g


def layer_relevance(m, x, R, c, first, p):
    """R_x of the layer ``m`` (input ``x``, output relevance ``R``) with coefficients ``c``."""
    W, B = m.weight.detach(), None if m.bias is None else m.bias.detach()
    y = apply(m, W, B)(x)
    st = c["stab"]
    if first and c["z_box"] > 0.5:
        low, high = torch.full_like(x, p["low"]), torch.full_like(x, p["high"])
        bp, bn = (None, None) if B is None else (B.clamp(min=0), B.clamp(max=0))
        s = R / stab(y - apply(m, W.clamp(min=0), bp)(low) - apply(m, W.clamp(max=0), bn)(high), st)
        return x * transposed(m, W, x, s) - low * transposed(m, W.clamp(min=0), x, s) \
            - high * transposed(m, W.clamp(max=0), x, s)
    ones = torch.ones_like(x)
    if first and c["flat"] > 0.5:
        return transposed(m, torch.ones_like(W), x, R / stab(apply(m, torch.ones_like(W), None)(ones), st))
    if first and c["w_square"] > 0.5:
        return transposed(m, W ** 2, x, R / stab(apply(m, W ** 2, None if B is None else B ** 2)(ones), st))
    wp, wn = c["a1"] * W + c["a2"] * W.clamp(min=0), c["a1"] * W + c["a2"] * W.clamp(max=0)
    bp = bn = None
    if B is not None:
        bp, bn = c["a1"] * B + c["a2"] * B.clamp(min=0), c["a1"] * B + c["a2"] * B.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    den_p = apply(m, wp, bp)(xp) + apply(m, wn, None)(xn)
    den_n = apply(m, wn, bn)(xp) + apply(m, wp, None)(xn)
    s_p = R * (c["u"] * (y > 0).float() + c["alpha"]) / stab(den_p, st)
    s_n = R * (c["u"] * (y < 0).float() - c["beta"]) / stab(den_n, st)
    c_x = torch.where(x > 0, transposed(m, wp, x, s_p) + transposed(m, wn, x, s_n),
                      transposed(m, wn, x, s_p) + transposed(m, wp, x, s_n))
    return x * c_x


class Net(nn.Module):
    """conv-tanh (the next conv reads both signs), strided conv-relu, flatten, linear-relu, bias-free linear
    (a MatMul); odd 7x7 input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(11)
        self.c1, self.c2 = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(5, 4, 3, stride=2)
        self.fc1, self.fc2 = nn.Linear(4 * 3 * 3, 6), nn.Linear(6, 3, bias=False)

    def forward(self, x):
        h = F.relu(self.c2(torch.tanh(self.c1(x))))
        return self.fc2(F.relu(self.fc1(torch.flatten(h, 1))))

    def lrp(self, x, target, rows, p=P):
        """Relevance back layer by layer (passed unchanged at tanh and relu); ``rows``: one per layer."""
        c = [coefficients(r, p) for r in rows]
        h1 = torch.tanh(self.c1(x))
        h2 = F.relu(self.c2(h1))
        f = torch.flatten(h2, 1)
        h3 = F.relu(self.fc1(f))
        y = self.fc2(h3)
        R = y * F.one_hot(torch.as_tensor(target), y.shape[1]).to(y)
        R = layer_relevance(self.fc2, h3, R, c[3], False, p)
        R = layer_relevance(self.fc1, f, R, c[2], False, p).reshape(h2.shape)
        R = layer_relevance(self.c2, h1, R, c[1], False, p)
        return layer_relevance(self.c1, x, R, c[0], True, p)


def composite_rows(composite):
    conv = {"epsilon": "epsilon", "epsilon_plus": "z_plus", "epsilon_plus_flat": "z_plus",
            "epsilon_gamma_box": "gamma", "epsilon_alpha2_beta1": "alpha_beta"}[composite]
    first = {"epsilon_plus_flat": "flat", "epsilon_gamma_box": "z_box"}.get(composite, conv)
    return [{first: 1.0}, {conv: 1.0}, {"epsilon": 1.0}, {"epsilon": 1.0}]


def close(ours, ref, rtol=2e-4):
    ref = ref.detach().numpy()
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * float(np.abs(ref).max()))


@pytest.fixture(scope="module")
def net():
    return Net().eval()


@pytest.fixture(scope="module")
def model(net):
    return export(net, (3, 7, 7))


def x_rows(n=3, seed=0):
    return torch.randn((n, 3, 7, 7), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- every rule, every composite
def test_every_layer_rule_at_every_layer_matches_the_general_formula(net, model):
    x, target = x_rows(), [0, 2, 1]
    ex = onnxplain.Explainer(model, "lrp")
    for rule in LAYER_RULES:
        for first in (rule, "flat", "w_square", "z_box"):
            ours = ex.explain(x.numpy(), target=target, composite={"Conv": rule, "Gemm": rule, "MatMul": rule,
                                                                   "first": first}, **P)
            close(ours, net.lrp(x, target, [{first: 1.0}] + [{rule: 1.0}] * 3))


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_composites_match_the_general_formula(net, model, exporter):
    graph = model if exporter == "torchscript" else export_dynamo(net, (3, 7, 7))
    x, target = x_rows(seed=1), [1, 1, 2]
    ex = onnxplain.Explainer(graph, "lrp")
    for composite in COMPOSITES:
        close(ex.explain(x.numpy(), target=target, composite=composite, **P), net.lrp(x, target,
                                                                                     composite_rows(composite)))


# ---------------------------------------------------------------------- rule tables fed directly
MIXED = [
    # epsilon/pass blend at the first layer (the epsilon branch), alpha_beta/z_plus (general), gamma/epsilon
    # (general), z_plus alone (the half branch)
    [{"epsilon": 0.4, "pass": 0.6}, {"alpha_beta": 0.5, "z_plus": 0.5}, {"gamma": 0.7, "epsilon": 0.3},
     {"z_plus": 1.0}],
    # flat below one half at a first layer: its own rule (a1 = u = 0.6, the epsilon branch); z_plus blended
    # with alpha_beta at beta = 0 (the half branch, with alpha = 2 != a2 = 1: alpha fed as 3)
    [{"flat": 0.4, "epsilon": 0.6}, {"z_plus": 0.5, "alpha_beta": 0.5}, {"pass": 1.0},
     {"epsilon": 0.5, "gamma": 0.5}],
    # two input rules weighted over one half: z_box wins over flat
    [{"z_box": 0.6, "flat": 0.6}, {"gamma": 1.0}, {"alpha_beta": 1.0}, {"z_plus": 1.0}],
]


def table(rows):
    return np.array([[r.get(rule, 0.0) for rule in RULES] for r in rows], np.float32)


@pytest.fixture(scope="module")
def graph(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("lrp") / "m.onnx"
    path.write_bytes(model)
    return onnxplain.convert(str(path), str(path.with_name("lrp.onnx")), "lrp")


def fed(graph, x, target, rows, p):
    tw = np.zeros((len(x), 3), np.float32)
    tw[np.arange(len(x)), target] = 1
    feeds = {"x": x.numpy(), "target_weights": tw, "lrp_rules": table(rows)}
    names = {i.name for i in graph.graph.input}
    feeds.update({k: np.asarray(v, np.float32).reshape((1, 1, 1) if k in ("low", "high") else ())
                  for k, v in p.items() if k in names})
    return feeds


def test_fed_tables_mixing_rules_match_the_general_formula(net, graph):
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    x, target = x_rows(seed=2), [2, 0, 1]
    for k, rows in enumerate(MIXED):
        p = {**P, "alpha": 3.0, "beta": 0.0} if k == 1 else P
        close(sess.run(["attributions"], fed(graph, x, target, rows, p))[0], net.lrp(x, target, rows, p))


def test_layers_choose_with_if_nodes_and_run_in_reference_evaluator(net, graph):
    from onnx.reference import ReferenceEvaluator
    assert sum(n.op_type == "If" for n in graph.graph.node) >= 4    # at least one per layer
    x, target = x_rows(2, seed=3), [1, 2]
    ev = ReferenceEvaluator(graph)
    for rows in (composite_rows("epsilon_gamma_box"), MIXED[0]):
        close(ev.run(["attributions"], fed(graph, x, target, rows, P))[0], net.lrp(x, target, rows), rtol=1e-3)


def test_epsilon_branch_skips_the_forward_applications(graph):
    """At a layer whose rule is epsilon or pass, the taken branch holds one transposed application and no
    forward one of the layer (the convolutions of the general branch are in the other branch)."""
    convs = [n for n in graph.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2     # the forward pass; every rule's applications live in branches
    top = [n for n in graph.graph.node if n.op_type == "If"]
    # the then-branches without a nested If: the epsilon branch of each non-first layer, z_box's at the first
    cheap = [a.g for n in top for a in n.attribute if a.name == "then_branch"
             if not any(sub.op_type in ("If", "Expand") for sub in a.g.node)]
    assert len(cheap) == 3
    for g in cheap:
        ops = [n.op_type for n in g.node]
        assert sum(op in ("Conv", "ConvTranspose", "Gemm", "MatMul") for op in ops) <= 1, ops
