"""A noise tunnel over every gradient and modified-rule method, against Captum's NoiseTunnel.

onnxplain gets the very noise Captum draws (checks.captum_noise); Captum runs
``NoiseTunnel(method(model)).attribute(x, nt_type=..., nt_samples=S, stdevs=s)``
with the same method parameters.  Models: Linear/ReLU and Conv/ReLU stacks
(ReLU modules, so that Captum's hooks find every nonlinearity), exported by the
TorchScript exporter and by torch.export.
"""
import copy
import io
import warnings

import numpy as np
import pytest
import torch
from captum.attr import (LRP, Deconvolution, DeepLift, DeepLiftShap, GuidedBackprop, InputXGradient,
                         IntegratedGradients, NoiseTunnel, Saliency)
from captum.attr._utils.lrp_rules import EpsilonRule, IdentityRule
from torch import nn

import onnxplain
from checks import assert_close, captum_noise

warnings.filterwarnings("ignore", category=UserWarning)
pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")

SAMPLES = 4
STDEV = 0.25          # a power of two: Captum's draws are reproduced exactly
SEED = 7
EPSILON = 1e-3
RTOL = 2e-4
NT_TYPES = ["smoothgrad", "smoothgrad_sq", "vargrad"]
METHODS = ["saliency", "gradient", "input_x_gradient", "integrated_gradients", "deeplift", "deeplift_shap",
           "guided_backprop", "deconvolution", "epsilon_lrp"]
WITH_DELTA = {"integrated_gradients", "deeplift", "deeplift_shap", "epsilon_lrp"}


def mlp():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def cnn():
    torch.manual_seed(4)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(),
                         nn.AvgPool2d(2, ceil_mode=True), nn.Flatten(), nn.Linear(4 * 2 * 2, 3)).eval()


class Case:
    def __init__(self, net, row, dynamo):
        self.net = net
        g = torch.Generator().manual_seed(11)
        self.x = torch.randn((3,) + row, generator=g)
        self.baselines = 0.3 * torch.randn((3,) + row, generator=g)
        self.distribution = torch.randn((2,) + row, generator=g)
        self.onnx = onnxplain.from_torch(net, self.x, dynamo=dynamo)
        self.noise = captum_noise(self.x, SEED, SAMPLES, STDEV)


@pytest.fixture(scope="module")
def cases():
    return {"mlp": Case(mlp(), (6,), False), "cnn": Case(cnn(), (2, 7, 7), False),
            "mlp_dynamo": Case(mlp(), (6,), True)}


def captum_method(method, net):
    """Captum's attribution method and the keyword arguments that match onnxplain's defaults here."""
    if method == "epsilon_lrp":   # onnxplain applies epsilon at the nonlinearities: Captum's rule on the
        net = copy.deepcopy(net)  # layers that feed one, a vanishing epsilon on the output layer
        linears = [m for m in net if isinstance(m, (nn.Linear, nn.Conv2d))]
        for m in linears[:-1]:
            m.rule = EpsilonRule(epsilon=EPSILON)
        linears[-1].rule = EpsilonRule(epsilon=1e-12)
        for m in net:
            if isinstance(m, nn.Flatten):
                m.rule = IdentityRule()
        return LRP(net), {}
    return {"saliency": (Saliency(net), {}), "gradient": (Saliency(net), {"abs": False}),
            "input_x_gradient": (InputXGradient(net), {}), "integrated_gradients": (IntegratedGradients(net), {}),
            "deeplift": (DeepLift(net), {}), "deeplift_shap": (DeepLiftShap(net), {}),
            "guided_backprop": (GuidedBackprop(net), {}), "deconvolution": (Deconvolution(net), {})}[method]


def method_params(case, method):
    """The same method parameters for both libraries (onnxplain's, Captum's)."""
    if method == "integrated_gradients":
        return {"baselines": case.baselines.numpy(), "n_steps": 12}, {"baselines": case.baselines, "n_steps": 12}
    if method == "deeplift":
        return {"baselines": case.baselines.numpy()}, {"baselines": case.baselines}
    if method == "deeplift_shap":
        return {"baselines": case.distribution.numpy()}, {"baselines": case.distribution}
    if method == "epsilon_lrp":
        return {"epsilon": EPSILON}, {}
    return {}, {}


def compare(case, method, kind, target):
    ours_params, ref_params = method_params(case, method)
    explainer = onnxplain.Explainer(case.onnx, method, noise_tunnel=kind)
    delta = method in WITH_DELTA
    ours = explainer.explain(case.x.numpy(), target=target, nt_samples=SAMPLES, stdevs=STDEV, noise=case.noise,
                             return_convergence_delta=delta, **ours_params)
    ref = captum_noise_tunnel(case, method, kind, target, delta, ref_params)
    if delta:
        (ours, ours_delta), (ref, ref_delta) = ours, ref
        # Captum returns the delta of every noisy sample, the samples of a row contiguous
        ref_delta = ref_delta.detach().reshape(len(case.x), SAMPLES)
        scale = float(np.abs(ours).reshape(len(ours), -1).sum(axis=1).max())
        assert_close(ours_delta, ref_delta, RTOL, scale=scale, what="convergence delta")
    # VarGrad is E[a^2] - E[a]^2: its float32 error is relative to E[a^2] (and it is all zeros where the
    # attributions do not depend on the input, as deconvolution's on a ReLU net)
    scale = None
    if kind == "vargrad":
        sq = captum_noise_tunnel(case, method, "smoothgrad_sq", target, delta, ref_params)
        scale = float(np.abs((sq[0] if delta else sq).detach().numpy()).max())
    assert_close(ours, ref, RTOL, scale=scale)


def captum_noise_tunnel(case, method, kind, target, delta, params):
    """Captum's NoiseTunnel over ``method`` with onnxplain's noise draws.

    Captum's NoiseTunnel cannot carry DeepLiftShap's distribution of baselines
    (it checks them against the noisy batch); there the reference is Captum's
    DeepLiftShap on the noisy rows, reduced by the statistic written here.
    """
    captum, extra = captum_method(method, case.net)
    if delta:
        extra["return_convergence_delta"] = True
    if method != "deeplift_shap":
        torch.manual_seed(SEED)
        return NoiseTunnel(captum).attribute(case.x, nt_type=kind, nt_samples=SAMPLES, stdevs=STDEV, target=target,
                                             **extra, **params)
    noisy = torch.from_numpy(case.x.numpy()[None] + STDEV * case.noise).transpose(0, 1)   # (N, S, *row)
    targets = target if isinstance(target, int) else [t for t in target for _ in range(SAMPLES)]
    attr, d = captum.attribute(noisy.reshape((-1,) + case.x.shape[1:]), target=targets, **extra, **params)
    a = attr.detach().reshape((len(case.x), SAMPLES) + case.x.shape[1:])
    stat = {"smoothgrad": a.mean(1), "smoothgrad_sq": (a * a).mean(1),
            "vargrad": (a * a).mean(1) - a.mean(1) ** 2}[kind]
    # Captum's delta is per (noisy row, baseline) pair; onnxplain's deeplift_shap averages it over the baselines
    return stat, d.reshape(len(case.x) * SAMPLES, -1).mean(1)


@pytest.mark.parametrize("kind", NT_TYPES)
@pytest.mark.parametrize("method", METHODS)
def test_noise_tunnel_over_every_method_matches_captum(cases, method, kind):
    compare(cases["mlp"], method, kind, target=1)


def test_noise_tunnel_over_deeplift_shap_draws_its_baselines_with_the_given_seed(cases):
    """n_baselines=K of a background set under a noise tunnel: ``seed`` draws both the noise and the K rows
    (K of B without replacement, as numpy's Generator(seed).choice); against Captum's DeepLiftShap over the
    drawn rows at the noisy inputs."""
    case = cases["mlp"]
    background = torch.randn((6, 6), generator=torch.Generator().manual_seed(21))
    drawn = background[np.sort(np.random.default_rng(SEED).choice(6, size=3, replace=False))]
    ours, ours_delta = onnxplain.Explainer(case.onnx, "deeplift_shap", noise_tunnel="smoothgrad").explain(
        case.x.numpy(), target=1, nt_samples=SAMPLES, stdevs=STDEV, noise=case.noise, seed=SEED,
        baselines=background.numpy(), n_baselines=3, return_convergence_delta=True)
    ref, ref_delta = captum_noise_tunnel(case, "deeplift_shap", "smoothgrad", 1, True, {"baselines": drawn})
    assert_close(ours, ref, RTOL)
    scale = float(np.abs(ours).sum(axis=1).max())
    assert_close(ours_delta, ref_delta.detach().reshape(len(case.x), SAMPLES), RTOL, scale=scale,
                 what="convergence delta")


@pytest.mark.parametrize("method", [m for m in METHODS if m != "epsilon_lrp"])   # Captum's LRP hooks fail here
def test_noise_tunnel_on_a_cnn_with_per_row_targets(cases, method):
    compare(cases["cnn"], method, "smoothgrad_sq", target=[2, 0, 1])


@pytest.mark.parametrize("method", ["integrated_gradients", "deeplift", "epsilon_lrp"])
def test_noise_tunnel_on_the_torch_export_graph(cases, method):
    compare(cases["mlp_dynamo"], method, "vargrad", target=0)


def test_noise_tunnel_over_saliency_averages_absolute_gradients(cases):
    """Saliency takes |g| per sample before the mean (Captum's Saliency abs=True inside the tunnel)."""
    case = cases["mlp"]
    x = torch.from_numpy(case.x.numpy()[None] + STDEV * case.noise).reshape(-1, 6).requires_grad_()
    grad, = torch.autograd.grad(case.net(x)[:, 2].sum(), x)
    expected = grad.abs().reshape(SAMPLES, 3, 6).mean(0)
    ours = onnxplain.Explainer(case.onnx, "saliency", noise_tunnel="smoothgrad").explain(
        case.x.numpy(), target=2, nt_samples=SAMPLES, stdevs=STDEV, noise=case.noise)
    assert_close(ours, expected, 1e-5)


def test_two_inputs_take_their_own_noise_and_stdevs():
    """Captum draws the noise of each input in turn; IG from per-input baselines, tuple stdevs."""
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(5)
            self.a, self.b, self.head = nn.Linear(4, 6), nn.Linear(3, 6), nn.Linear(6, 2)

        def forward(self, u, v):
            return self.head(torch.relu(self.a(u)) * torch.tanh(self.b(v)))

    net = Two().eval()
    g = torch.Generator().manual_seed(2)
    u, v = torch.randn(5, 4, generator=g), torch.randn(5, 3, generator=g)
    bu, bv = 0.1 * torch.randn(1, 4, generator=g), torch.tensor(0.5)
    stdevs = (0.5, 0.125)
    torch.manual_seed(SEED)
    draws = [torch.normal(0, torch.tensor(s).repeat((5 * SAMPLES,) + t.shape[1:])) / s
             for s, t in zip(stdevs, (u, v))]
    noise = {k: d.reshape((5, SAMPLES) + t.shape[1:]).transpose(0, 1).numpy().copy()
             for k, d, t in zip("uv", draws, (u, v))}
    model = onnxplain.from_torch(net, (u, v), input_names=["u", "v"])
    ours = onnxplain.Explainer(model, "integrated_gradients", noise_tunnel="vargrad").explain(
        {"u": u.numpy(), "v": v.numpy()}, target=1, nt_samples=SAMPLES, stdevs=stdevs, noise=noise,
        baselines=(bu.numpy(), float(bv)), n_steps=10)
    torch.manual_seed(SEED)
    ref = NoiseTunnel(IntegratedGradients(net)).attribute((u, v), nt_type="vargrad", nt_samples=SAMPLES,
                                                          stdevs=stdevs, target=1, baselines=(bu, float(bv)),
                                                          n_steps=10)
    assert_close(ours["u"], ref[0], RTOL)
    assert_close(ours["v"], ref[1], RTOL)


def test_noise_and_steps_are_feeds_not_rebuilds(cases):
    case = cases["mlp"]
    ex = onnxplain.Explainer(case.onnx, "integrated_gradients", noise_tunnel="smoothgrad")
    graph = ex.graph
    a = ex.explain(case.x.numpy(), target=0, nt_samples=3, seed=1, n_steps=8)
    b = ex.explain(case.x.numpy(), target=0, nt_samples=6, seed=2, n_steps=20)
    assert ex.graph is graph and a.shape == b.shape == case.x.shape and not np.allclose(a, b)
    np.testing.assert_array_equal(a, ex.explain(case.x.numpy(), target=0, nt_samples=3, seed=1, n_steps=8))


def test_noise_tunnel_refuses_what_it_cannot_do(cases):
    case = cases["mlp"]
    with pytest.raises(ValueError, match="noise_tunnel must be one of"):
        onnxplain.Explainer(case.onnx, "integrated_gradients", noise_tunnel="smooth")
    with pytest.raises(ValueError, match="not over another noise tunnel"):
        onnxplain.Explainer(case.onnx, "smoothgrad", noise_tunnel="vargrad")
    ex = onnxplain.Explainer(case.onnx, "integrated_gradients", noise_tunnel="smoothgrad")
    with pytest.raises(ValueError, match="internal_batch_size"):
        ex.explain(case.x.numpy(), target=0, internal_batch_size=8)
    with pytest.raises(ValueError, match=r"noise for input 'input' must have shape"):
        ex.explain(case.x.numpy(), target=0, nt_samples=2, noise=np.zeros((3, 3, 6), np.float32))
    with pytest.raises(TypeError, match="unexpected parameter"):
        ex.explain(case.x.numpy(), target=0, epsilon=0.1)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="nt_samples_batch_size must be a positive int"):
            ex.explain(case.x.numpy(), target=0, nt_samples_batch_size=bad)


# ---------------------------------------------------------------------- nt_samples_batch_size
def captum_batched_noise(x: torch.Tensor, seed: int, samples: int, per_batch: int, stdev: float) -> np.ndarray:
    """The draws of Captum's NoiseTunnel with ``nt_samples_batch_size=per_batch`` after ``torch.manual_seed(seed)``,
    as (S, N, *row): one ``torch.normal`` per batch of samples (the rest last), each ``(N*B, *row)`` with the B
    samples of a row contiguous."""
    torch.manual_seed(seed)
    out = []
    for start in range(0, samples, per_batch):
        count = min(per_batch, samples - start)
        draw = torch.normal(0, torch.tensor(stdev).repeat((x.shape[0] * count,) + tuple(x.shape[1:])))
        out.append((draw / stdev).reshape((x.shape[0], count) + tuple(x.shape[1:])).transpose(0, 1))
    return torch.cat(out).numpy().copy()


def captum_batched_delta(delta: torch.Tensor, rows: int, samples: int, per_batch: int) -> np.ndarray:
    """Captum's deltas (the batches' ``N*B`` deltas one after another) as (N, S), sample s in column s."""
    d, out, start = delta.detach().numpy(), [], 0
    for s0 in range(0, samples, per_batch):
        count = min(per_batch, samples - s0)
        out.append(d[start:start + rows * count].reshape(rows, count))
        start += rows * count
    return np.concatenate(out, axis=1)


BATCHED_SAMPLES, PER_BATCH = 5, 2      # two batches of 2 and the rest (1), as Captum cuts them


@pytest.mark.parametrize("kind", NT_TYPES)
def test_nt_samples_batch_size_matches_captum_and_the_unbatched_run(cases, kind):
    """Captum's NoiseTunnel(IntegratedGradients) with nt_samples_batch_size=2 of 5 samples, fed its per-batch draws;
    onnxplain with the same draws, batched and not: the statistic over all samples and Captum's per-sample deltas."""
    case = cases["mlp"]
    noise = captum_batched_noise(case.x, SEED, BATCHED_SAMPLES, PER_BATCH, STDEV)
    ex = onnxplain.Explainer(case.onnx, "integrated_gradients", noise_tunnel=kind)
    graph = ex.graph
    kwargs = dict(target=[0, 2, 1], nt_samples=BATCHED_SAMPLES, stdevs=STDEV, noise=noise, n_steps=12,
                  baselines=case.baselines.numpy(), return_convergence_delta=True)
    batched, batched_delta = ex.explain(case.x.numpy(), nt_samples_batch_size=PER_BATCH, **kwargs)
    whole, whole_delta = ex.explain(case.x.numpy(), **kwargs)
    assert ex.graph is graph
    reference = {}
    for k in ("smoothgrad_sq", kind):
        torch.manual_seed(SEED)
        reference[k] = NoiseTunnel(IntegratedGradients(case.net)).attribute(
            case.x, nt_type=k, nt_samples=BATCHED_SAMPLES, nt_samples_batch_size=PER_BATCH, stdevs=STDEV,
            target=[0, 2, 1], baselines=case.baselines, n_steps=12, return_convergence_delta=True)
    ref, ref_delta = reference[kind]
    scale = float(reference["smoothgrad_sq"][0].abs().max()) if kind == "vargrad" else None
    ref_delta = captum_batched_delta(ref_delta, len(case.x), BATCHED_SAMPLES, PER_BATCH)
    delta_scale = float(np.abs(batched).sum(axis=1).max())
    for ours, delta in ((batched, batched_delta), (whole, whole_delta)):
        assert_close(ours, ref, RTOL, scale=scale)
        assert ours.dtype == np.float32 and delta.shape == (len(case.x), BATCHED_SAMPLES)
        assert_close(delta, ref_delta, RTOL, scale=delta_scale, what="convergence delta")


def test_nt_samples_batch_size_on_a_cnn_against_autograd(cases):
    """Vargrad of |gradient| on a CNN, samples in batches of 1, 3 and more than nt_samples (its sums of squares
    added across batches), against PyTorch autograd on the same noisy rows; the estimate counts one clean block
    per batch; seeded draws are the same samples however they are batched."""
    case = cases["cnn"]
    ex = onnxplain.Explainer(case.onnx, "saliency", noise_tunnel="vargrad")
    noise = np.random.default_rng(5).standard_normal((4,) + tuple(case.x.shape)).astype(np.float32)
    kwargs = dict(target=[1, 0, 2], nt_samples=4, stdevs=STDEV, noise=noise)
    x = torch.from_numpy((case.x.numpy()[None] + np.float32(STDEV) * noise).reshape((-1,) + case.x.shape[1:]))
    x.requires_grad_()
    picked = case.net(x).reshape(4, 3, 3)[:, torch.arange(3), torch.tensor([1, 0, 2])].sum()
    grad, = torch.autograd.grad(picked, x)
    a = grad.abs().reshape((4, 3) + case.x.shape[1:]).double()
    expected = ((a * a).mean(0) - a.mean(0) ** 2).numpy()
    scale = float((a * a).mean(0).max())
    for per_batch in (None, 1, 3, 9):
        assert_close(ex.explain(case.x.numpy(), nt_samples_batch_size=per_batch, **kwargs), expected, RTOL,
                     scale=scale)
    one = ex.estimate(case.x.numpy(), nt_samples_batch_size=1, **kwargs)
    assert (one.rows, one.runs) == (4 * 2 * 3, 4)      # per sample: its noisy block and the clean block
    seeded = dict(target=1, nt_samples=4, stdevs=STDEV, seed=3)
    assert_close(ex.explain(case.x.numpy(), nt_samples_batch_size=3, **seeded),
                 ex.explain(case.x.numpy(), **seeded), RTOL, scale=scale, what="seeded draws, batched")


# ---------------------------------------------------------------------- token models: noise at the embedding
class AfterEmbedding(nn.Module):
    """TokenNet from its embedding output on: Captum's NoiseTunnel then adds its noise to the embedding."""

    def __init__(self, net):
        super().__init__()
        self.conv, self.head = net.conv, net.head

    def forward(self, e, mask):
        h = torch.relu(self.conv(e.transpose(1, 2)))
        m = mask.to(h.dtype).unsqueeze(1)
        return self.head((h * m).sum(-1) / m.sum(-1))


@pytest.fixture(scope="module")
def tokens():
    from test_layers_and_tokens import IDS, MASK, TokenNet
    net = TokenNet().eval()
    buf = io.BytesIO()
    torch.onnx.export(net, (IDS, MASK), buf, dynamo=False, opset_version=17, input_names=["ids", "mask"],
                      output_names=["y"], dynamic_axes={"ids": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"},
                                                        "y": {0: "batch"}})
    dynamo = onnxplain.from_torch(net, {"ids": IDS, "mask": MASK}, dynamo=True)
    e = net.emb(IDS).detach()
    return net, {"torchscript": buf.getvalue(), "dynamo": dynamo}, IDS, MASK, e


def token_reference(rest, kind, captum, e, mask, **kwargs):
    torch.manual_seed(SEED)
    return NoiseTunnel(captum).attribute(e, nt_type=kind, nt_samples=SAMPLES, stdevs=STDEV,
                                         additional_forward_args=(mask,), **kwargs)


@pytest.mark.parametrize("export", ["torchscript", "dynamo"])
@pytest.mark.parametrize("kind", NT_TYPES)
def test_smoothgrad_on_a_token_model_adds_its_noise_at_the_embedding(tokens, kind, export):
    net, models, ids, mask, e = tokens
    feeds = {"ids": ids.numpy(), "mask": mask.numpy()}
    noise = {"ids": captum_noise(e, SEED, SAMPLES, STDEV)}
    ours = onnxplain.Explainer(models[export], kind).explain(feeds, target=1, nt_samples=SAMPLES, stdevs=STDEV,
                                                             noise=noise)
    rest = AfterEmbedding(net)
    ref = token_reference(rest, kind, Saliency(rest), e, mask, target=1, abs=False)
    sq = token_reference(rest, "smoothgrad_sq", Saliency(rest), e, mask, target=1, abs=False)
    assert_close(ours, ref, RTOL, scale=float(sq.abs().max()) if kind == "vargrad" else None)


def test_integrated_gradients_noise_tunnel_on_tokens_keeps_the_baseline_embedding_clean(tokens):
    """Noise on the inputs' embedding rows only: the padding baseline's embedding is Captum's un-noised one."""
    net, models, ids, mask, e = tokens
    pad = torch.full((1, ids.shape[1]), 3)
    ours, delta = onnxplain.Explainer(models["torchscript"], "integrated_gradients", noise_tunnel="smoothgrad_sq") \
        .explain({"ids": ids.numpy(), "mask": mask.numpy()}, target=[0, 2, 1], baselines={"ids": pad.numpy()},
                 nt_samples=SAMPLES, stdevs=STDEV, noise=captum_noise(e, SEED, SAMPLES, STDEV), n_steps=16,
                 return_convergence_delta=True)
    rest = AfterEmbedding(net)
    ref, ref_delta = token_reference(rest, "smoothgrad_sq", IntegratedGradients(rest), e, mask, target=[0, 2, 1],
                                     baselines=net.emb(pad).detach(), n_steps=16, return_convergence_delta=True)
    assert_close(ours, ref, RTOL)
    assert_close(delta, ref_delta.reshape(3, SAMPLES), RTOL, scale=float(np.abs(ours).sum((1, 2)).max()),
                 what="convergence delta")


@pytest.mark.parametrize("method", ["integrated_gradients", "input_x_gradient"])
def test_noise_tunnel_with_a_layer_of_a_token_model(tokens, method):
    """layer=: the noise still goes to the embedding, the attributions are the layer's (Captum's Layer*)."""
    from captum.attr import LayerGradientXActivation, LayerIntegratedGradients
    from test_layers_and_tokens import output_of
    net, models, ids, mask, e = tokens
    layer = output_of(models["torchscript"], "Conv")
    ex = onnxplain.Explainer(models["torchscript"], method, noise_tunnel="vargrad", layer=layer)
    params = {"baselines": {"ids": np.zeros((1, ids.shape[1]), np.int64)}, "n_steps": 10} \
        if method == "integrated_gradients" else {}
    ours = ex.explain({"ids": ids.numpy(), "mask": mask.numpy()}, target=2, nt_samples=SAMPLES, stdevs=STDEV,
                      noise=captum_noise(e, SEED, SAMPLES, STDEV), **params)
    rest = AfterEmbedding(net)
    if method == "integrated_gradients":
        captum, kwargs = LayerIntegratedGradients(rest, rest.conv), {"baselines": net.emb(torch.zeros_like(ids[:1]))
                                                                     .detach(), "n_steps": 10}
    else:
        captum, kwargs = LayerGradientXActivation(rest, rest.conv), {}
    ref = token_reference(rest, "vargrad", captum, e, mask, target=2, **kwargs)
    sq = token_reference(rest, "smoothgrad_sq", captum, e, mask, target=2, **kwargs)
    assert_close(ours, ref, RTOL, scale=float(sq.abs().max()))


def test_deeplift_noise_tunnel_refuses_token_inputs(tokens):
    _, models, *_ = tokens
    with pytest.raises(ValueError, match="cannot add its noise at the embedding"):
        onnxplain.Explainer(models["torchscript"], "deeplift", noise_tunnel="smoothgrad")
