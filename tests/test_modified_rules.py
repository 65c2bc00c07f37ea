"""DeepLIFT, DeepLiftShap, epsilon-LRP, guided backprop and deconvolution against
Captum, exact summation-to-delta, a textbook LRP written here, and Ancona et al.'s
propositions."""
import copy
import warnings

import numpy as np
import pytest
import torch
from captum.attr import LRP, Deconvolution, DeepLift, DeepLiftShap, GuidedBackprop, InputXGradient
from captum.attr._utils.lrp_rules import EpsilonRule
from torch import nn

import onnxplain
from models import export

warnings.filterwarnings("ignore", category=UserWarning)

ACTS = {"relu": nn.ReLU, "elu": lambda: nn.ELU(0.8), "leaky_relu": lambda: nn.LeakyReLU(0.05),
        "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "softplus": nn.Softplus}


def mlp(act):
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 10), act(), nn.Linear(10, 8), act(), nn.Linear(8, 3)).eval()


def cnn(act):
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), act(), nn.Conv2d(4, 4, 3, stride=2), act(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 3)).eval()


def close(ours, ref, rtol=1e-4):
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else ref
    scale = max(1e-6, float(np.abs(ref).max()))
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * scale)


def inputs(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_deeplift_and_deepliftshap_match_captum(act, arch):
    net, shape = (mlp(ACTS[act]), (4, 6)) if arch == "mlp" else (cnn(ACTS[act]), (3, 2, 9, 9))
    model = export(net, shape[1:])
    x, base = inputs(shape), 0.3 * inputs((1,) + shape[1:], seed=1)
    ours, delta = onnxplain.Explainer(model, "deeplift").explain(x.numpy(), target=1, baselines=base.numpy(),
                                                                return_convergence_delta=True)
    # The reference runs in float64: (f(z) - f(z_ref)) / (z - z_ref) cancels in float32 where a saturating
    # activation sees nearby z and z_ref, which costs Captum's float32 run as much as ours (~3e-4 relative).
    net64 = copy.deepcopy(net).double()
    close(ours, DeepLift(net64).attribute(x.double(), base.double(), target=1), rtol=5e-4)
    assert np.abs(delta).max() < 1e-4 * max(1.0, float(np.abs(ours).sum(axis=tuple(range(1, ours.ndim))).max()))
    dist = inputs((5,) + shape[1:], seed=2)
    ours = onnxplain.Explainer(model, "deeplift_shap").explain(x.numpy(), target=[0, 1, 2, 0][:shape[0]],
                                                               baselines=dist.numpy())
    close(ours, DeepLiftShap(net).attribute(x, dist, target=[0, 1, 2, 0][:shape[0]]))


@pytest.mark.parametrize("act", ["relu"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_guided_backprop_and_deconvolution_match_captum(act, arch):
    net, shape = (mlp(ACTS[act]), (4, 6)) if arch == "mlp" else (cnn(ACTS[act]), (3, 2, 9, 9))
    model = export(net, shape[1:])
    x = inputs(shape)
    close(onnxplain.Explainer(model, "guided_backprop").explain(x.numpy(), target=2),
          GuidedBackprop(net).attribute(x, target=2))
    close(onnxplain.Explainer(model, "deconvolution").explain(x.numpy(), target=2),
          Deconvolution(net).attribute(x, target=2))


# ---------------------------------------------------------------------- summation-to-delta
class FunctionalResNet(nn.Module):
    """Residual blocks written with functional relus (Captum #1082), strided, odd input size."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.a = nn.Conv2d(6, 6, 3, stride=2, padding=1)
        self.b = nn.Conv2d(6, 6, 3, padding=1)
        self.proj = nn.Conv2d(6, 6, 1, stride=2)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        r = torch.relu(self.b(torch.relu(self.a(h))) + self.proj(h))
        r = nn.functional.max_pool2d(r, 2, ceil_mode=True)
        return self.head(torch.sigmoid(r).mean((2, 3)))


def conv_relu_maxpool():
    torch.manual_seed(4)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3), nn.ReLU(),
                         nn.MaxPool2d(2, stride=1, padding=1), nn.Flatten(), nn.LazyLinear(5))


NETS = {
    "conv_relu_maxpool": (conv_relu_maxpool, (4, 3, 12, 12)),
    "functional_resnet": (FunctionalResNet, (3, 3, 13, 11)),
    "tanh_avgpool": (lambda: cnn(nn.Tanh), (3, 2, 9, 9)),
    "elu_mlp": (lambda: mlp(lambda: nn.ELU(0.8)), (5, 6)),
}


@pytest.mark.parametrize("name", NETS)
def test_summation_to_delta_holds_exactly(name):
    build, shape = NETS[name]
    net = build()
    net(inputs(shape))   # materialise lazy layers
    model = export(net, shape[1:])
    x, base = inputs(shape), inputs((1,) + shape[1:], seed=5)
    with torch.no_grad():
        gap = (net(x) - net(base))[:, 2].numpy()
    for method, kwargs in [("deeplift", dict(baselines=base.numpy())),
                           ("deeplift_shap", dict(baselines=inputs((3,) + shape[1:], seed=6).numpy()))]:
        a, delta = onnxplain.Explainer(model, method).explain(x.numpy(), target=2, return_convergence_delta=True,
                                                              **kwargs)
        total = a.reshape(len(a), -1).sum(1)
        if method == "deeplift":
            np.testing.assert_allclose(total, gap, rtol=1e-4, atol=1e-4 * np.abs(gap).max())
        np.testing.assert_allclose(delta, 0, atol=1e-4 * max(1.0, np.abs(total).max()))


def test_captum_breaks_summation_to_delta_on_maxpool_where_onnxplain_does_not():
    net = conv_relu_maxpool()
    shape = (4, 3, 12, 12)
    net(inputs(shape))
    x, base = inputs(shape), inputs((1,) + shape[1:], seed=5)
    _, captum_delta = DeepLift(net).attribute(x, base, target=2, return_convergence_delta=True)
    _, ours = onnxplain.Explainer(export(net, shape[1:]), "deeplift").explain(
        x.numpy(), target=2, baselines=base.numpy(), return_convergence_delta=True)
    assert np.abs(ours).max() < 1e-4 * np.abs(captum_delta.detach().numpy()).max() + 1e-4


# ---------------------------------------------------------------------- epsilon-LRP
def textbook_lrp(layers, x, target, eps):
    """Layer-wise relevance propagation written out: LRP-epsilon at every dense layer that feeds a
    nonlinearity, LRP-0 at the output layer, relevance passed unchanged through activations."""
    acts = [x.astype(np.float64)]
    zs = []
    for i, (w, b, f) in enumerate(layers):
        z = acts[-1] @ w.T + b
        zs.append(z)
        acts.append(f(z) if f is not None else z)
    relevance = np.zeros_like(acts[-1])
    relevance[:, target] = acts[-1][:, target]
    for i in reversed(range(len(layers))):
        w, b, f = layers[i]
        a, z = acts[i], zs[i]
        denom = z if f is None else z + eps * np.where(z >= 0, 1.0, -1.0)
        r_in = np.zeros_like(a)
        for n in range(a.shape[0]):
            for j in range(z.shape[1]):
                r_in[n] += a[n] * w[j] / denom[n, j] * relevance[n, j]
        relevance = r_in
    return relevance


@pytest.mark.parametrize("act", ["tanh", "sigmoid"])
def test_epsilon_lrp_equals_textbook_lrp(act):
    net = mlp(ACTS[act])
    fn = {"tanh": np.tanh, "sigmoid": lambda z: 1 / (1 + np.exp(-z))}[act]
    linears = [m for m in net if isinstance(m, nn.Linear)]
    layers = [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy(), fn) for m in linears[:-1]]
    layers.append((linears[-1].weight.detach().double().numpy(), linears[-1].bias.detach().double().numpy(), None))
    x = inputs((4, 6)).numpy()
    ex = onnxplain.Explainer(export(net, (6,)), "elrp")
    for eps in [1e-4, 0.1]:
        close(ex.explain(x, target=1, epsilon=eps), textbook_lrp(layers, x, 1, eps), rtol=1e-4)


def test_epsilon_lrp_tends_to_gradient_times_input_on_relu_nets():
    net = mlp(nn.ReLU)
    x = inputs((4, 6))
    ours = onnxplain.Explainer(export(net, (6,)), "epsilon_lrp").explain(x.numpy(), target=0, epsilon=1e-9)
    close(ours, InputXGradient(net).attribute(x, target=0))


def test_epsilon_lrp_equals_captum_lrp_with_its_epsilon_rule_on_linear_relu_stacks():
    net = mlp(nn.ReLU)
    eps = 1e-3
    linears = [m for m in net if isinstance(m, nn.Linear)]
    for m in linears[:-1]:
        m.rule = EpsilonRule(epsilon=eps)
    linears[-1].rule = EpsilonRule(epsilon=1e-12)   # onnxplain applies epsilon at the nonlinearities only
    x = inputs((4, 6))
    ours = onnxplain.Explainer(export(net, (6,)), "epsilon_lrp").explain(x.numpy(), target=2, epsilon=eps)
    close(ours, LRP(net).attribute(x, target=2))


def test_epsilon_is_a_feed_not_a_rebuild():
    ex = onnxplain.Explainer(export(mlp(nn.Tanh), (6,)), "epsilon_lrp")
    x = inputs((2, 6)).numpy()
    a, b = ex.explain(x, target=0, epsilon=1e-4), ex.explain(x, target=0, epsilon=0.5)
    assert not np.allclose(a, b)
    with pytest.raises(ValueError, match="epsilon must be a positive float"):
        ex.explain(x, target=0, epsilon=-1.0)


def test_deeplift_shap_refuses_missing_or_misshapen_baselines():
    ex = onnxplain.Explainer(export(mlp(nn.ReLU), (6,)), "deeplift_shap")
    x = inputs((2, 6)).numpy()
    with pytest.raises(ValueError, match="needs baselines"):
        ex.explain(x, target=0)
    with pytest.raises(ValueError, match=r"must have shape \(B, \*\(6,\)\)"):
        ex.explain(x, target=0, baselines=np.zeros((3, 5), np.float32))
