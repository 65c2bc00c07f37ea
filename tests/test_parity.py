"""Captum parity: "local" integrated gradients, epsilon-LRP's convergence delta, target forms
(numpy and torch scalars and arrays, partial targets, several outputs) and baseline broadcasting,
each against Captum on the same torch model, exported by both PyTorch exporters."""
import copy
import warnings

import numpy as np
import pytest
import torch
from captum.attr import LRP, DeepLift, FeatureAblation, InputXGradient, IntegratedGradients, Occlusion
from captum.attr._utils.lrp_rules import EpsilonRule
from torch import nn

import onnxplain
from checks import assert_close

warnings.filterwarnings("ignore", category=UserWarning)
pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")

RTOL = 2e-4
EXPORTERS = ["torchscript", "dynamo"]


class Heads(nn.Module):
    """A Linear/ReLU/Tanh stack with several outputs: logits (N, 3), one score per row (N, 1), a (N,) score,
    the logits with a trailing size-1 axis (N, 3, 1), and a batch mean without a batch axis."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(21)
        self.body = nn.Sequential(nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 8), nn.Tanh(), nn.Linear(8, 3))
        self.squash = nn.Sigmoid()   # a module, so that Captum's DeepLift applies its rule there too

    def forward(self, x):
        y = self.body(x)
        score = self.squash(y[:, :1] - y[:, 1:2])
        return y, score, y.sum(1), y.unsqueeze(-1), y.mean()


class Pick(nn.Module):
    """One output of Heads, for Captum."""

    def __init__(self, net, index):
        super().__init__()
        self.net, self.index = net, index

    def forward(self, x):
        return self.net(x)[self.index]


def relu_stack():
    torch.manual_seed(22)
    return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


X = torch.randn(5, 7, generator=torch.Generator().manual_seed(3))
XN = X.numpy().copy()   # Captum marks the tensors it is given as requiring gradients
OUTPUTS = ["logits", "score", "total", "logits_1", "mean"]


@pytest.fixture(scope="module")
def heads():
    net = Heads().eval()
    models = {e: onnxplain.from_torch(net, X, output_names=OUTPUTS, dynamo=e == "dynamo") for e in EXPORTERS}
    return net, models


@pytest.fixture(scope="module")
def relu():
    net = relu_stack()
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(4))
    return net, {e: onnxplain.from_torch(net, x, dynamo=e == "dynamo") for e in EXPORTERS}, x


# ---------------------------------------------------------------------- local integrated gradients
@pytest.mark.parametrize("export", EXPORTERS)
def test_integrated_gradients_without_multiplying_by_inputs_matches_captums_local_variant(heads, export):
    net, models = heads
    base = 0.3 * torch.randn(1, 7, generator=torch.Generator().manual_seed(5))
    ex = onnxplain.Explainer(models[export], "integrated_gradients", output="logits")
    ours, delta = ex.explain(XN, target=2, baselines=base.numpy(), multiply_by_inputs=False, n_steps=24,
                             return_convergence_delta=True)
    ref, ref_delta = IntegratedGradients(Pick(net, 0), multiply_by_inputs=False).attribute(
        X, baselines=base, target=2, n_steps=24, return_convergence_delta=True)
    assert_close(ours, ref, RTOL)
    assert_close(delta, ref_delta, RTOL, scale=float(np.abs(ours).sum(1).max()), what="convergence delta")
    # the same graph, multiplied again: Captum's default
    glob = ex.explain(XN, target=2, baselines=base.numpy(), n_steps=24)
    assert_close(glob, IntegratedGradients(Pick(net, 0)).attribute(X, baselines=base, target=2, n_steps=24), RTOL)
    np.testing.assert_allclose(glob, ours * (XN - base.numpy()), rtol=1e-5, atol=1e-7)


def test_multiply_by_inputs_as_a_graph_default_and_a_bad_value(heads, tmp_path):
    _, models = heads
    graph = onnxplain.convert(models["torchscript"], tmp_path / "local.onnx", "integrated_gradients",
                              output="logits", multiply_by_inputs=False)
    default = next(i for i in graph.graph.initializer if i.name == "multiply_by_inputs")
    assert not onnx_value(default)
    with pytest.raises(ValueError, match="multiply_by_inputs must be True or False"):
        onnxplain.Explainer(models["torchscript"], "integrated_gradients").explain(XN, target=0,
                                                                                   multiply_by_inputs="no")


def onnx_value(tensor):
    from onnx import numpy_helper
    return numpy_helper.to_array(tensor)


# ---------------------------------------------------------------------- epsilon-LRP delta
@pytest.mark.parametrize("export", EXPORTERS)
def test_epsilon_lrp_reports_captums_convergence_delta(relu, export):
    net, models, x = relu
    eps = 1e-2
    lrp_net = copy.deepcopy(net)
    linears = [m for m in lrp_net if isinstance(m, nn.Linear)]
    for m in linears[:-1]:
        m.rule = EpsilonRule(epsilon=eps)
    linears[-1].rule = EpsilonRule(epsilon=1e-12)   # onnxplain applies epsilon at the nonlinearities only
    ours, delta = onnxplain.Explainer(models[export], "epsilon_lrp").explain(
        x.numpy(), target=[2, 0, 1, 2], epsilon=eps, return_convergence_delta=True)
    ref, ref_delta = LRP(lrp_net).attribute(x, target=[2, 0, 1, 2], return_convergence_delta=True)
    assert_close(ours, ref, RTOL)
    assert np.abs(ref_delta.detach().numpy()).max() > 1e-4, "a large epsilon absorbs relevance: delta is not zero"
    assert_close(delta, ref_delta, RTOL, scale=float(np.abs(ours).sum(1).max()), what="convergence delta")


# ---------------------------------------------------------------------- target forms
ROW_TARGETS = [2, 0, 1, 1, 0]
TARGET_FORMS = {   # ours -> Captum's
    "numpy 0-d": (np.array(2), 2),
    "numpy int64": (np.int64(2), 2),
    "torch 0-d": (torch.tensor(2), 2),
    "one-element array": (np.array([2]), 2),
    "numpy per row": (np.array(ROW_TARGETS), ROW_TARGETS),
    "torch per row": (torch.tensor(ROW_TARGETS), ROW_TARGETS),
    "int32 per row": (np.array(ROW_TARGETS, np.int32), ROW_TARGETS),
    "(N, 1) array of index tuples": (np.array(ROW_TARGETS)[:, None], [(t,) for t in ROW_TARGETS]),
}


@pytest.mark.parametrize("form", TARGET_FORMS)
@pytest.mark.parametrize("method", ["input_x_gradient", "integrated_gradients", "feature_ablation"])
def test_numpy_and_torch_targets_are_captums_forms(heads, method, form):
    net, models = heads
    ours_target, captum_target = TARGET_FORMS[form]
    ours = onnxplain.Explainer(models["torchscript"], method, output="logits").explain(XN, target=ours_target)
    assert_close(ours, captum(method, Pick(net, 0)).attribute(X, target=captum_target), RTOL)


@pytest.mark.parametrize("export", EXPORTERS)
@pytest.mark.parametrize("method", ["integrated_gradients", "deeplift", "occlusion"])
def test_partial_targets_on_an_output_with_a_trailing_size_one_axis(heads, method, export):
    """Output (N, 3, 1): target=c selects output[:, c] (one value per row left), as in Captum."""
    net, models = heads
    ex = onnxplain.Explainer(models[export], method, output="logits_1")
    kwargs = {"sliding_window_shapes": (2,)} if method == "occlusion" else {}
    for ours_target, ref_target in [(1, 1), ((2,), (2,)), (ROW_TARGETS, [(t,) for t in ROW_TARGETS]),
                                    (np.array([[t, 0] for t in ROW_TARGETS]), [(t, 0) for t in ROW_TARGETS])]:
        ours = ex.explain(XN, target=ours_target, **kwargs)
        ref = captum(method, Pick(net, 3)).attribute(X, target=ref_target, **kwargs)
        assert_close(ours, ref, RTOL)


@pytest.mark.parametrize("export", EXPORTERS)
@pytest.mark.parametrize("method", ["integrated_gradients", "deeplift", "feature_ablation", "smoothgrad"])
@pytest.mark.parametrize("output", ["score", "total"])
def test_target_none_on_each_single_valued_output_of_a_model_with_several(heads, method, output, export):
    """Outputs (N, 1) and (N,) explained with target=None next to a batch mean, which the graph leaves out."""
    net, models = heads
    ex = onnxplain.Explainer(models[export], method, output=output)
    if method == "smoothgrad":
        noise = np.random.default_rng(0).standard_normal((3,) + tuple(X.shape)).astype(np.float32)
        ours = ex.explain(XN, nt_samples=3, stdevs=0.5, noise=noise)
        noisy = torch.from_numpy(XN[None] + 0.5 * noise).reshape(-1, 7).requires_grad_()
        grad, = torch.autograd.grad(Pick(net, OUTPUTS.index(output))(noisy).sum(), noisy)
        ref = grad.reshape(3, *X.shape).mean(0)
    else:
        ours = ex.explain(XN)
        ref = captum(method, Pick(net, OUTPUTS.index(output))).attribute(X)
    assert_close(ours, ref, RTOL)
    outputs = [o.name for o in ex.graph.graph.output]
    assert "mean" not in outputs and output in outputs


def test_an_output_without_a_batch_axis_is_refused_by_name(heads):
    _, models = heads
    with pytest.raises(ValueError, match="output 'mean' is a scalar: the forward reduces over the batch"):
        onnxplain.Explainer(models["torchscript"], "saliency", output="mean")


@pytest.mark.parametrize("bad, message", [(np.array(1.5), "integer indices"), (np.zeros((5, 1, 1), np.int64),
                                                                                 "shape"),
                                          (np.array([0, 1]), "needs 5 entries"), (np.array(3), "out of range")])
def test_bad_target_arrays_are_refused(heads, bad, message):
    _, models = heads
    ex = onnxplain.Explainer(models["torchscript"], "gradient", output="logits")
    with pytest.raises(ValueError, match=message):
        ex.explain(XN, target=bad)
    with pytest.raises(ValueError, match="fewer only where the dimensions left have size 1"):
        onnxplain.Explainer(models["torchscript"], "gradient", output="logits").explain(XN, target=())


def captum(method, forward):
    return {"input_x_gradient": InputXGradient, "integrated_gradients": IntegratedGradients, "deeplift": DeepLift,
            "feature_ablation": FeatureAblation, "occlusion": Occlusion}[method](forward)


# ---------------------------------------------------------------------- baseline broadcasting
G = torch.Generator().manual_seed(9)
BASELINE_FORMS = {
    "(N, 1)": 0.5 * torch.randn(5, 1, generator=G),
    "(1, F)": 0.5 * torch.randn(1, 7, generator=G),
    "(1, 1)": torch.full((1, 1), 0.25),
    "row (F,)": 0.5 * torch.randn(7, generator=G),
    "scalar": 0.75,
}


@pytest.mark.parametrize("form", BASELINE_FORMS)
@pytest.mark.parametrize("method", ["integrated_gradients", "deeplift", "feature_ablation", "occlusion"])
def test_baselines_broadcast_as_captums(heads, method, form):
    """Captum takes scalars, the input's shape, and arrays of the input's rank with one row that broadcast
    against it; onnxplain also takes (N, 1) (numpy's broadcasting) and one row without its batch axis.  Captum
    gets each form broadcast to the input (its DeepLift concatenates inputs and baselines), and the one-row
    forms as they are too."""
    net, models = heads
    base = BASELINE_FORMS[form]
    ours_base = base if isinstance(base, float) else base.numpy()
    kwargs = {"sliding_window_shapes": (3,)} if method == "occlusion" else {}
    ours = onnxplain.Explainer(models["torchscript"], method, output="logits").explain(
        XN, target=1, baselines=ours_base, **kwargs)
    ref_base = base if isinstance(base, float) else base.expand(X.shape).contiguous()
    ref = captum(method, Pick(net, 0)).attribute(X, target=1, baselines=ref_base, **kwargs)
    assert_close(ours, ref, RTOL)
    if form in ("(1, F)", "(1, 1)") and method == "integrated_gradients":   # Captum broadcasts these itself
        assert_close(ours, captum(method, Pick(net, 0)).attribute(X, target=1, baselines=base), RTOL)


def test_baselines_per_input_in_a_tuple_broadcast_each():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(23)
            self.a, self.b, self.head = nn.Linear(4, 6), nn.Linear(3, 6), nn.Linear(6, 2)
            self.relu, self.tanh = nn.ReLU(), nn.Tanh()   # modules: Captum's DeepLift rules apply there

        def forward(self, u, v):
            return self.head(self.relu(self.a(u)) + self.tanh(self.b(v)))

    net = Two().eval()
    u, v = torch.randn(4, 4, generator=G), torch.randn(4, 3, generator=G)
    model = onnxplain.from_torch(net, (u, v), input_names=["u", "v"])
    bu, bv = 0.5 * torch.randn(4, 1, generator=G), 0.5 * torch.randn(1, 3, generator=G)
    for method in ["integrated_gradients", "deeplift", "feature_ablation"]:
        ours = onnxplain.Explainer(model, method).explain({"u": u.detach().numpy(), "v": v.detach().numpy()},
                                                          target=1, baselines=(bu.numpy(), bv.numpy()))
        ref = captum(method, net).attribute((u, v), target=1, baselines=(bu.expand(4, 4), bv.expand(4, 3)))
        assert_close(ours["u"], ref[0], RTOL)
        assert_close(ours["v"], ref[1], RTOL)


def test_baselines_that_do_not_broadcast_are_refused(heads):
    _, models = heads
    ex = onnxplain.Explainer(models["torchscript"], "integrated_gradients", output="logits")
    for bad in (np.zeros((2, 7), np.float32), np.zeros((5, 3), np.float32), np.zeros((1, 1, 7), np.float32)):
        with pytest.raises(ValueError, match="baselines for input 'x' must be a scalar"):
            ex.explain(XN, target=0, baselines=bad)


def test_local_integrated_gradients_at_a_layer_of_a_token_model():
    """layer= with multiply_by_inputs=False: Captum's LayerIntegratedGradients(..., multiply_by_inputs=False)."""
    from captum.attr import LayerIntegratedGradients
    from test_layers_and_tokens import IDS, MASK, TokenNet, export, output_of
    net = TokenNet().eval()
    model = export(net, (IDS, MASK), ["ids", "mask"], dynamic=True)
    ex = onnxplain.Explainer(model, "integrated_gradients", layer=output_of(model, "Conv"))
    ours, delta = ex.explain({"ids": IDS.numpy(), "mask": MASK.numpy()}, target=[0, 2, 1], n_steps=16,
                             multiply_by_inputs=False, return_convergence_delta=True)
    ref, ref_delta = LayerIntegratedGradients(net, net.conv, multiply_by_inputs=False).attribute(
        IDS, baselines=torch.zeros_like(IDS), additional_forward_args=(MASK,), target=[0, 2, 1], n_steps=16,
        return_convergence_delta=True)
    assert_close(ours, ref, RTOL)
    assert_close(delta, ref_delta, RTOL, scale=float(np.abs(ours).sum((1, 2)).max()), what="convergence delta")
