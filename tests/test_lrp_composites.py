"""The lrp method (Zennit's rules and composites) against a textbook LRP written here in PyTorch: every rule
applied by hand, layer by layer, with Zennit 1.0's formulas (the gradient trick of each modified layer, run by
PyTorch autograd), on a VGG-shaped and a ResNet-shaped net; plus conservation, BatchNormalization folding,
bad inputs, onnx.reference, convert() and the CLI."""
import io
import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import onnxplain
from models import export
from vision_models import export_dynamo

warnings.filterwarnings("ignore", category=UserWarning)

P = {"epsilon": 1e-6, "stabilizer": 1e-6, "gamma": 0.25, "alpha": 2.0, "beta": 1.0, "low": -1.5, "high": 2.0}
COMPOSITES = ("epsilon", "epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1")


# ---------------------------------------------------------------------- the textbook reference
def stab(z, e):
    return z + e * torch.where(z >= 0, 1.0, -1.0)


def pos(t):
    return None if t is None else t.clamp(min=0)


def neg(t):
    return None if t is None else t.clamp(max=0)


def grad_of(fn, inp, s):
    """``J^T s`` of ``fn`` at ``inp`` (PyTorch autograd)."""
    inp = inp.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(fn(inp), inp, s)
    return g


def with_params(m, w, b):
    if isinstance(m, nn.ConvTranspose2d):
        return lambda x: F.conv_transpose2d(x, w, b, m.stride, m.padding, m.output_padding, m.groups, m.dilation)
    if isinstance(m, nn.Conv2d):
        return lambda x: F.conv2d(x, w, b, m.stride, m.padding, m.dilation, m.groups)
    return lambda x: F.linear(x, w, b)


def layer_relevance(m, x, R, rule, p=P):
    """Zennit 1.0's rule ``rule`` at layer ``m`` (input ``x``, output relevance ``R``), written out."""
    W = m.weight.detach()
    B = None if m.bias is None else m.bias.detach()
    f = with_params(m, W, B)
    st = p["stabilizer"]
    if rule in ("epsilon", "pass"):
        e = p["epsilon"] if rule == "epsilon" else 0.0
        z = f(x)
        s = torch.where(z == 0, 0.0, R / (stab(z, e) if e else torch.where(z == 0, 1.0, z)))
        return x * grad_of(f, x, s)
    if rule in ("z_plus", "alpha_beta"):
        alpha, beta = (1.0, 0.0) if rule == "z_plus" else (p["alpha"], p["beta"])

        def part(w_pos_in, w_neg_in, bias):     # x+ through w_pos_in (with bias), x- through w_neg_in
            f1, f2 = with_params(m, w_pos_in, bias), with_params(m, w_neg_in, None)
            s = R / stab(f1(pos(x)) + f2(neg(x)), st)
            return pos(x) * grad_of(f1, pos(x), s) + neg(x) * grad_of(f2, neg(x), s)
        out = alpha * part(pos(W), neg(W), pos(B))
        return out - beta * part(neg(W), pos(W), neg(B)) if beta else out
    if rule == "gamma":
        g = p["gamma"]
        wp, wn = W + g * pos(W), W + g * neg(W)
        bp, bn = (None, None) if B is None else (B + g * pos(B), B + g * neg(B))
        z = f(x)

        def part(w1, b1, w2, mask):
            f1, f2 = with_params(m, w1, b1), with_params(m, w2, None)
            s = R * mask / stab(f1(pos(x)) + f2(neg(x)), st)
            return pos(x) * grad_of(f1, pos(x), s) + neg(x) * grad_of(f2, neg(x), s)
        return part(wp, bp, wn, (z > 0).float()) + part(wn, bn, wp, (z < 0).float())
    ones = torch.ones_like(x)
    if rule == "flat":
        f1 = with_params(m, torch.ones_like(W), None)
        return grad_of(f1, ones, R / stab(f1(ones), st))
    if rule == "w_square":
        f1 = with_params(m, W ** 2, None if B is None else B ** 2)
        return grad_of(f1, ones, R / stab(f1(ones), st))
    assert rule == "z_box"
    low, high = torch.full_like(x, p["low"]), torch.full_like(x, p["high"])
    f1, f2 = with_params(m, pos(W), pos(B)), with_params(m, neg(W), neg(B))
    s = R / stab(f(x) - f1(low) - f2(high), st)
    return x * grad_of(f, x, s) - low * grad_of(f1, low, s) - high * grad_of(f2, high, s)


def zennit_rule(composite, m, first):
    """The rule Zennit 1.0's composite gives module ``m`` (``first``: the first layer)."""
    conv = isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
    if composite == "epsilon":
        return "epsilon"
    if composite == "epsilon_plus_flat" and first:
        return "flat"
    if composite in ("epsilon_plus", "epsilon_plus_flat"):
        return "z_plus" if conv else "epsilon"
    if composite == "epsilon_gamma_box":
        return ("z_box" if first else "gamma") if conv else "epsilon"
    return "alpha_beta" if conv else "epsilon"


def folded(conv, bn):
    """Zennit's SequentialMergeBatchNorm, by hand: the Conv that computes conv then bn."""
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
    with torch.no_grad():
        out.weight.copy_(conv.weight * s[:, None, None, None])
        out.bias.copy_(((conv.bias if conv.bias is not None else 0) - bn.running_mean) * s + bn.bias)
    return out


def norm_split(parts, y, R):
    """Zennit's Norm rule at a sum (stabiliser 0): relevance in proportion to the summands."""
    share = torch.where(y == 0, 0.0, R / torch.where(y == 0, 1.0, y))
    return [p * share for p in parts]


def randomize_bn(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))


# ---------------------------------------------------------------------- the nets
class VGGish(nn.Module):
    """conv-bn-relu-pool stacks, flatten, linear-relu-linear; odd input size 11x11."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.c1, self.b1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c2, self.b2 = nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc1, self.fc2 = nn.Linear(8 * 2 * 2, 10), nn.Linear(10, 4)
        randomize_bn(self, 4)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)
        x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))

    def lrp(self, x, target, rule_of, p=P):
        """Textbook LRP: forward keeping each layer's input, relevance back layer by layer."""
        c1, c2 = folded(self.c1, self.b1), folded(self.c2, self.b2)
        a1 = F.relu(c1(x))
        p1 = F.max_pool2d(a1, 2)
        a2 = F.relu(c2(p1))
        p2 = F.max_pool2d(a2, 2)
        h0 = torch.flatten(p2, 1)
        h1 = F.relu(self.fc1(h0))
        y = self.fc2(h1)
        R = y * F.one_hot(torch.as_tensor(target), y.shape[1]).to(y)
        R = layer_relevance(self.fc2, h1, R, rule_of(self.fc2, False), p)      # relu: relevance passes
        R = layer_relevance(self.fc1, h0, R, rule_of(self.fc1, False), p).reshape(p2.shape)
        R = grad_of(lambda t: F.max_pool2d(t, 2), a2, R)                     # max pool: routed to the max
        R = layer_relevance(c2, p1, R, rule_of(c2, False), p)
        R = grad_of(lambda t: F.max_pool2d(t, 2), a1, R)
        return layer_relevance(c1, x, R, rule_of(c1, True), p), y


class ResNetish(nn.Module):
    """A stem, an identity block and a strided block with a 1x1 projection, global average pool, linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.stem, self.bs = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c11, self.b11 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c12, self.b12 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c21, self.b21 = nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6)
        self.c22, self.b22 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.proj, self.bp = nn.Conv2d(4, 6, 1, stride=2), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)
        randomize_bn(self, 6)

    def forward(self, x):
        h = F.relu(self.bs(self.stem(x)))
        h = F.relu(self.b12(self.c12(F.relu(self.b11(self.c11(h))))) + h)
        h = F.relu(self.b22(self.c22(F.relu(self.b21(self.c21(h))))) + self.bp(self.proj(h)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))

    def lrp(self, x, target, rule_of, p=P):
        stem, c11, c12 = folded(self.stem, self.bs), folded(self.c11, self.b11), folded(self.c12, self.b12)
        c21, c22, proj = folded(self.c21, self.b21), folded(self.c22, self.b22), folded(self.proj, self.bp)
        h0 = F.relu(stem(x))
        u1 = F.relu(c11(h0))
        v1 = c12(u1)
        h1 = F.relu(v1 + h0)
        u2 = F.relu(c21(h1))
        v2, w2 = c22(u2), proj(h1)
        h2 = F.relu(v2 + w2)
        g = torch.flatten(F.adaptive_avg_pool2d(h2, 1), 1)
        y = self.fc(g)
        R = y * F.one_hot(torch.as_tensor(target), y.shape[1]).to(y)
        R = layer_relevance(self.fc, g, R, rule_of(self.fc, False), p).reshape(-1, 6, 1, 1)
        gy = g.reshape(R.shape)
        share = torch.where(gy == 0, 0.0, R / torch.where(gy == 0, 1.0, gy))
        R = h2 * grad_of(lambda t: F.adaptive_avg_pool2d(t, 1), h2, share)              # Norm at the pool
        Rv2, Rw2 = norm_split([v2, w2], v2 + w2, R)
        R_h1 = layer_relevance(proj, h1, Rw2, rule_of(proj, False), p)
        R_u2 = layer_relevance(c22, u2, Rv2, rule_of(c22, False), p)
        R_h1 = R_h1 + layer_relevance(c21, h1, R_u2, rule_of(c21, False), p)
        Rv1, Rh0 = norm_split([v1, h0], v1 + h0, R_h1)
        R_u1 = layer_relevance(c12, u1, Rv1, rule_of(c12, False), p)
        Rh0 = Rh0 + layer_relevance(c11, h0, R_u1, rule_of(c11, False), p)
        return layer_relevance(stem, x, Rh0, rule_of(stem, True), p), y


def close(ours, ref, rtol=2e-4):
    ref = ref.detach().numpy()
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * float(np.abs(ref).max()))


def export_keeping_bn(net, row):
    """TorchScript export without constant folding: the BatchNormalization nodes stay in the graph."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.randn((2,) + row),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], do_constant_folding=False,
                          training=torch.onnx.TrainingMode.PRESERVE,
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return buf.getvalue()


@pytest.fixture(scope="module")
def vgg():
    net = VGGish().eval()
    return net, {"torchscript": export(net, (3, 11, 11)), "dynamo": export_dynamo(net, (3, 11, 11)),
                 "with_bn": export_keeping_bn(net, (3, 11, 11))}


@pytest.fixture(scope="module")
def resnet():
    net = ResNetish().eval()
    return net, export(net, (3, 9, 9))


def rows(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- against the reference
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo", "with_bn"])
def test_vgg_composites_match_textbook_lrp(vgg, exporter):
    net, models = vgg
    x, target = rows((3, 3, 11, 11)), [1, 3, 0]
    ex = onnxplain.Explainer(models[exporter], "lrp")
    for composite in COMPOSITES:
        ours, delta = ex.explain(x.numpy(), target=target, composite=composite, low=P["low"], high=P["high"],
                                 return_convergence_delta=True)
        ref, y = net.lrp(x, target, lambda m, first: zennit_rule(composite, m, first))
        close(ours, ref)
        explained = y[torch.arange(3), torch.tensor(target)].detach().numpy()
        np.testing.assert_allclose(delta, explained - ref.sum(dim=(1, 2, 3)).detach().numpy(), atol=1e-4)


def test_resnet_composites_match_textbook_lrp(resnet):
    net, model = resnet
    x, target = rows((2, 3, 9, 9), seed=1), [2, 0]
    ex = onnxplain.Explainer(model, "lrp")
    for composite in COMPOSITES:
        ours = ex.explain(x.numpy(), target=target, composite=composite, low=P["low"], high=P["high"])
        ref, _ = net.lrp(x, target, lambda m, first: zennit_rule(composite, m, first))
        close(ours, ref)


def test_user_mapping_rules_and_parameters_match_textbook_lrp(vgg):
    net, models = vgg
    x, target = rows((2, 3, 11, 11), seed=2), [2, 2]
    ex = onnxplain.Explainer(models["torchscript"], "lrp")
    layers = json.loads(next(p.value for p in ex.graph.metadata_props if p.key == "lrp_layers"))
    assert len(layers) == 4
    p = {**P, "gamma": 0.7, "alpha": 1.5, "beta": 0.5, "stabilizer": 1e-5, "low": -2.0, "high": 1.0}
    for mapping, rule_of in [
        ({"first": "w_square", "Conv": "gamma", "Gemm": "alpha_beta"},
         lambda m, first: "w_square" if first else ("gamma" if isinstance(m, nn.Conv2d) else "alpha_beta")),
        (f"Conv=z_plus,{layers[3]}=pass,first=z_box",
         lambda m, first: "z_box" if first else ("z_plus" if isinstance(m, nn.Conv2d) else
                                                 ("pass" if m is net.fc2 else "epsilon"))),
    ]:
        ours = ex.explain(x.numpy(), target=target, composite=mapping, **p)
        close(ours, net.lrp(x, target, rule_of, p)[0])


class UpConv(nn.Module):
    """ConvTranspose-bn-relu, conv-relu, flatten, linear: a decoder-shaped head on an odd 5x5 input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(9)
        self.up, self.bn = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1), nn.BatchNorm2d(3)
        self.conv, self.fc = nn.Conv2d(3, 4, 3, stride=2), nn.Linear(4 * 4 * 4, 3)
        randomize_bn(self, 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.conv(F.relu(self.bn(self.up(x))))), 1))

    def lrp(self, x, target, rule_of, p=P):
        s = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)   # ConvTranspose: channels on axis 1
        up = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1)
        with torch.no_grad():
            up.weight.copy_(self.up.weight * s[None, :, None, None])
            up.bias.copy_((self.up.bias - self.bn.running_mean) * s + self.bn.bias)
        h1 = F.relu(up(x))
        h2 = torch.flatten(F.relu(self.conv(h1)), 1)
        y = self.fc(h2)
        R = y * F.one_hot(torch.as_tensor(target), y.shape[1]).to(y)
        R = layer_relevance(self.fc, h2, R, rule_of(self.fc, False), p).reshape(-1, 4, 4, 4)
        R = layer_relevance(self.conv, h1, R, rule_of(self.conv, False), p)
        return layer_relevance(up, x, R, rule_of(up, True), p), y


def test_conv_transpose_layers_and_their_batch_norm_match_textbook_lrp():
    net = UpConv().eval()
    model = export_keeping_bn(net, (2, 5, 5))
    assert [n.op_type for n in onnx.load_from_string(model).graph.node].count("BatchNormalization") == 1
    x, target = rows((2, 2, 5, 5), seed=8), [0, 2]
    ex = onnxplain.Explainer(model, "lrp")
    for composite in COMPOSITES:
        ours = ex.explain(x.numpy(), target=target, composite=composite, low=P["low"], high=P["high"])
        close(ours, net.lrp(x, target, lambda m, first: zennit_rule(composite, m, first))[0])


# ---------------------------------------------------------------------- exact properties
def test_z_plus_and_alpha_beta_conserve_relevance_without_biases():
    torch.manual_seed(7)
    net = nn.Sequential(nn.Conv2d(2, 5, 3, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(5 * 3 * 3, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False)).eval()
    with torch.no_grad():   # the rules conserve where each layer has positive (and, alpha_beta, negative) parts
        net[6].weight.abs_()
    model = export(net, (2, 9, 9))
    x = rows((4, 2, 9, 9), seed=3)
    out = net(x).detach().numpy()
    ex = onnxplain.Explainer(model, "lrp")
    # bias-free Linear layers export as MatMul
    for mapping in ({"Conv": "z_plus", "MatMul": "z_plus"}, {"Conv": "alpha_beta", "MatMul": "z_plus"},
                    {"first": "flat", "MatMul": "z_plus"}, {"first": "w_square", "Conv": "gamma"}):
        attr, delta = ex.explain(x.numpy(), target=1, composite=mapping, return_convergence_delta=True)
        np.testing.assert_allclose(attr.sum(axis=(1, 2, 3)), out[:, 1], rtol=1e-4, atol=1e-5)
        assert np.abs(delta).max() < 1e-4 * np.abs(out[:, 1]).max()


def test_batch_norm_folding_keeps_the_forward(vgg):
    from onnxplain.graph import GraphBuilder
    from onnxplain.rules.canonize import fold_batch_norms
    _, models = vgg
    model = onnx.load_from_string(models["with_bn"])
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 2
    b = GraphBuilder(model)
    assert fold_batch_norms(b) == 2
    del b.graph.node[:]
    b.graph.node.extend(b.nodes)
    del b.graph.initializer[:]
    b.graph.initializer.extend(b.initializers)
    assert not any(n.op_type == "BatchNormalization" for n in b.graph.node)
    x = rows((3, 3, 11, 11), seed=4).numpy()
    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(run(b.model), run(model), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("params, message", [
    ({"composite": "epsilon_minus"}, "unknown composite"),
    ({"composite": {"Conv": "z_minus"}}, "unknown rule 'z_minus'"),
    ({"composite": {"LSTM": "epsilon"}}, "neither an op type"),
    ({"composite": {"Gemm": "flat"}}, "applies only to a first layer"),
    ({"composite": "Conv=gamma,Gemm"}, "key=rule"),
    ({"gamma": -0.5}, "gamma must be a non-negative"),
    ({"alpha": 3.0, "beta": 1.0}, "alpha - beta = 1"),
    ({"low": 1.0, "high": 0.0}, "low must not exceed high"),
])
def test_bad_inputs_are_clear_errors(vgg, params, message):
    _, models = vgg
    ex = onnxplain.Explainer(models["torchscript"], "lrp")
    with pytest.raises(ValueError, match=message):
        ex.explain(rows((1, 3, 11, 11)).numpy(), target=0, **params)


# ---------------------------------------------------------------------- the graph elsewhere
def test_graph_runs_in_reference_evaluator_and_convert_and_cli(vgg, tmp_path):
    from onnx.reference import ReferenceEvaluator

    from onnxplain.cli import main
    net, models = vgg
    path = tmp_path / "vgg.onnx"
    path.write_bytes(models["with_bn"])
    x = rows((2, 3, 11, 11), seed=5)
    ref, _ = net.lrp(x, [3, 3], lambda m, first: zennit_rule("epsilon_gamma_box", m, first))
    graph = onnxplain.convert(str(path), str(tmp_path / "lrp.onnx"), "lrp", composite="epsilon_gamma_box",
                              low=P["low"], high=P["high"])
    tw = np.zeros((2, 4), np.float32)
    tw[:, 3] = 1
    feeds = {"x": x.numpy(), "target_weights": tw}
    sess = ort.InferenceSession(str(tmp_path / "lrp.onnx"), providers=["CPUExecutionProvider"])
    close(sess.run(["attributions"], feeds)[0], ref)
    close(ReferenceEvaluator(graph).run(["attributions"], feeds)[0], ref, rtol=1e-3)
    np.save(tmp_path / "x.npy", x.numpy())
    out = tmp_path / "attr.npy"
    assert main(["explain", str(path), str(tmp_path / "x.npy"), "--method", "lrp", "--composite",
                 "epsilon_gamma_box", "--low", str(P["low"]), "--high", str(P["high"]), "--target", "3",
                 "--out", str(out)]) == 0
    close(np.load(out), ref)
    assert "lrp" in onnxplain.inspect(str(path))["methods"]
