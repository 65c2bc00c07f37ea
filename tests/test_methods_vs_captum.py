"""Every gradient method against Captum, on PyTorch models exported to ONNX.

The models (tests/models.py) are exported with the TorchScript exporter
(opset 17, dynamic batch) and explained by onnxplain in onnxruntime; Captum
explains the same float32 module in PyTorch.  References:

* saliency, input_x_gradient, gradient: ``Saliency`` (``abs`` True / False), ``InputXGradient``;
* integrated_gradients: ``IntegratedGradients`` with Captum's defaults (50 Gauss-Legendre
  steps, zero baselines) and with ``riemann_trapezoid``, 20 steps and random baselines,
  attributions and convergence delta;
* smoothgrad, smoothgrad_sq, vargrad: ``NoiseTunnel(Saliency(model))`` with ``abs=False``;
  onnxplain gets the very noise Captum draws (see :func:`captum_noise`).

Targets: an int, a list with one class per row, and ``target_weights`` (Captum then
explains a custom forward ``sum(weights * model(x))``, laid out the way each Captum
method expands its batch).
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency

import models as zoo
import onnxplain
from checks import assert_close, captum_noise

N_ROWS = 3
TARGET = 1
STDEV = 0.5          # a power of two: stdev * (noise / stdev) is exactly Captum's noise in float32
NT_SAMPLES = 4
NOISE_SEED = 1234
RTOL = 1e-4

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")

MODELS = {f"mlp_{act}": functools.partial(zoo.mlp, act) for act in zoo.ACTIVATIONS}
MODELS.update({
    "mlp_softmax": functools.partial(zoo.mlp, "relu", "softmax"),
    "mlp_log_softmax": functools.partial(zoo.mlp, "tanh", "log_softmax"),
    "cnn_pools_bn": zoo.pool_cnn,
    "cnn_conv_bn": zoo.conv_bn_cnn,
    "resnet_odd": zoo.resnet,
    "cnn_grouped": zoo.grouped_cnn,
    "encoder_post_norm": functools.partial(zoo.encoder, False, "relu"),
    "encoder_pre_norm_gelu": functools.partial(zoo.encoder, True, "gelu"),
})

# One tolerance for every model, attention included: measured on this zoo, onnxruntime and
# PyTorch agree to <= 3e-7 of the largest attribution for every method, so 1e-4 leaves room
# for other BLAS builds and still catches a wrong rule, noise layout or baseline (each of
# those, tried by hand, put most elements off by far more than 1e-4).
# Per-model overrides would go here, with the reason: {"model": rtol}.
LOOSE: dict[str, float] = {}

GRADIENT_METHODS = ["saliency", "gradient", "input_x_gradient"]
NT_METHODS = ["smoothgrad", "smoothgrad_sq", "vargrad"]
ALL_METHODS = GRADIENT_METHODS + ["integrated_gradients"] + NT_METHODS


# ---------------------------------------------------------------------- fixtures
class Case:
    """One model: the torch module, its ONNX bytes, inputs and baselines (all seeded)."""

    def __init__(self, name: str):
        self.name = name
        self.module, row = MODELS[name]()
        self.onnx = zoo.export(self.module, row)
        g = torch.Generator().manual_seed(sum(map(ord, name)))
        self.x = torch.randn((N_ROWS,) + tuple(row), generator=g)
        self.baselines = 0.5 * torch.randn((N_ROWS,) + tuple(row), generator=g)
        with torch.no_grad():
            out = self.module(self.x)
        self.n_out = out.shape[1]
        self.weights = torch.randn(out.shape, generator=g)
        self.row_targets = [i % self.n_out for i in range(N_ROWS - 1, -1, -1)]   # e.g. [2, 1, 0]
        self.rtol = LOOSE.get(name, RTOL)
        self._explainers = {}

    def explainer(self, method: str, /) -> onnxplain.Explainer:
        if method not in self._explainers:
            self._explainers[method] = onnxplain.Explainer(self.onnx, method=method)
        return self._explainers[method]

    def explain(self, method: str, /, **kwargs):
        """``kwargs`` go to :meth:`Explainer.explain` (``method=`` there is IG's integration scheme)."""
        return self.explainer(method).explain(self.x.numpy(), **kwargs)


class Zoo(dict):
    def __missing__(self, name):
        self[name] = case = Case(name)
        return case


@pytest.fixture(scope="module")
def cases():
    return Zoo()


# ---------------------------------------------------------------------- helpers
def captum_nt(forward, x, nt_type: str, target=None):
    torch.manual_seed(NOISE_SEED)
    return NoiseTunnel(Saliency(forward)).attribute(x, nt_type=nt_type, nt_samples=NT_SAMPLES, stdevs=STDEV,
                                                     target=target, abs=False)


def captum_reference(method: str, forward, x, target=None, ig: dict | None = None):
    """Captum's attributions (and delta for IG) for ``method``."""
    if method == "saliency":
        return Saliency(forward).attribute(x, target=target)
    if method == "gradient":
        return Saliency(forward).attribute(x, target=target, abs=False)
    if method == "input_x_gradient":
        return InputXGradient(forward).attribute(x, target=target)
    if method == "integrated_gradients":
        return IntegratedGradients(forward).attribute(x, target=target, return_convergence_delta=True, **(ig or {}))
    return captum_nt(forward, x, method, target)


def nt_params(case: Case) -> dict:
    return dict(nt_samples=NT_SAMPLES, stdevs=STDEV, noise=captum_noise(case.x, NOISE_SEED, NT_SAMPLES, STDEV))


def nt_scale(method: str, ref_sg_sq) -> float | None:
    """VarGrad is E[g^2] - E[g]^2: its float32 error is relative to E[g^2], not to the (smaller) difference."""
    return float(np.abs(ref_sg_sq.detach().numpy()).max()) if method == "vargrad" else None


def delta_scale(attr) -> float:
    """Deltas are differences of per-row sums: compare them on the scale of the summed |attributions|.

    With 20 trapezoid steps Captum's |delta| is 35x to 500x this tolerance on every model here, so
    the comparison checks the delta itself; with 50 Gauss-Legendre steps the smooth MLPs' deltas
    fall below it (the check then only says that the delta is as small as Captum's).
    """
    return float(np.abs(np.asarray(attr)).reshape(len(attr), -1).sum(axis=1).max())


class Weighted(torch.nn.Module):
    """``sum(weights * model(x))`` per row, for the expanded batches Captum builds.

    ``layout`` says how a Captum method stacks copies of the N rows: IG concatenates
    whole blocks of N rows (``repeat``), NoiseTunnel keeps each row's samples together
    (``interleave``).
    """

    def __init__(self, model, weights: torch.Tensor, layout: str = "repeat"):
        super().__init__()
        self.model, self.weights, self.layout = model, weights, layout

    def forward(self, x):
        k = x.shape[0] // self.weights.shape[0]
        w = self.weights.repeat(k, 1) if self.layout == "repeat" else self.weights.repeat_interleave(k, dim=0)
        return (self.model(x) * w).sum(dim=1)


# ---------------------------------------------------------------------- the matrix
@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("model", MODELS)
def test_gradient_methods(cases, model, method):
    case = cases[model]
    ours = case.explain(method, target=TARGET)
    ref = captum_reference(method, case.module, case.x, TARGET)
    assert_close(ours, ref, case.rtol)


@pytest.mark.parametrize("model", MODELS)
def test_integrated_gradients_defaults(cases, model):
    """Captum's defaults: 50 Gauss-Legendre steps from a zero baseline."""
    case = cases[model]
    ours, delta = case.explain("integrated_gradients", target=TARGET, return_convergence_delta=True)
    ref, ref_delta = IntegratedGradients(case.module).attribute(case.x, target=TARGET,
                                                                return_convergence_delta=True)
    assert_close(ours, ref, case.rtol)
    assert_close(delta, ref_delta, case.rtol, scale=delta_scale(ours), what="convergence delta")


@pytest.mark.parametrize("model", MODELS)
def test_integrated_gradients_trapezoid_baselines(cases, model):
    """riemann_trapezoid with 20 steps (alpha = 0 and 1 included) from random per-row baselines."""
    case = cases[model]
    ours, delta = case.explain("integrated_gradients", target=TARGET, method="riemann_trapezoid", n_steps=20,
                               baselines=case.baselines.numpy(), return_convergence_delta=True)
    ref, ref_delta = IntegratedGradients(case.module).attribute(
        case.x, baselines=case.baselines, target=TARGET, method="riemann_trapezoid", n_steps=20,
        return_convergence_delta=True)
    assert_close(ours, ref, case.rtol)
    assert_close(delta, ref_delta, case.rtol, scale=delta_scale(ours), what="convergence delta")


@pytest.mark.parametrize("method", NT_METHODS)
@pytest.mark.parametrize("model", MODELS)
def test_noise_tunnel(cases, model, method):
    case = cases[model]
    ours = case.explain(method, target=TARGET, **nt_params(case))
    ref = captum_nt(case.module, case.x, method, TARGET)
    scale = nt_scale(method, captum_nt(case.module, case.x, "smoothgrad_sq", TARGET))
    assert_close(ours, ref, case.rtol, scale=scale)


# ---------------------------------------------------------------------- target forms
TARGET_MODELS = ["mlp_softmax", "mlp_log_softmax", "mlp_gelu", "cnn_pools_bn", "resnet_odd", "cnn_grouped",
                 "encoder_pre_norm_gelu"]


def _ours_and_ref(case: Case, method: str, forward, target=None, **ours_kwargs):
    """Our attributions and Captum's (IG: trapezoid from random baselines, with delta)."""
    params = {}
    ig = {}
    if method == "integrated_gradients":
        params = dict(method="riemann_trapezoid", n_steps=20, baselines=case.baselines.numpy(),
                      return_convergence_delta=True)
        ig = dict(method="riemann_trapezoid", n_steps=20, baselines=case.baselines)
    elif method in NT_METHODS:
        params = nt_params(case)
    ours = case.explain(method, target=target, **params, **ours_kwargs)
    ref = captum_reference(method, forward, case.x, target, ig)
    return ours, ref


def _check(case, method, ours, ref, sg_sq=None):
    if method == "integrated_gradients":
        (ours, delta), (ref, ref_delta) = ours, ref
        assert_close(ours, ref, case.rtol)
        assert_close(delta, ref_delta, case.rtol, scale=delta_scale(ours), what="convergence delta")
    else:
        assert_close(ours, ref, case.rtol, scale=sg_sq)


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("model", TARGET_MODELS)
def test_target_per_row(cases, model, method):
    """A list with one target per row (Captum expands it with the batch)."""
    case = cases[model]
    ours, ref = _ours_and_ref(case, method, case.module, case.row_targets)
    sg_sq = nt_scale(method, captum_nt(case.module, case.x, "smoothgrad_sq", case.row_targets))
    _check(case, method, ours, ref, sg_sq)


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("model", TARGET_MODELS)
def test_target_weights(cases, model, method):
    """target_weights: the explained scalar of row n is sum(w[n] * y[n]), Captum's custom forward."""
    case = cases[model]
    layout = "interleave" if method in NT_METHODS else "repeat"
    forward = Weighted(case.module, case.weights, layout)
    ours, ref = _ours_and_ref(case, method, forward, target_weights=case.weights.numpy())
    sg_sq = nt_scale(method, captum_nt(forward, case.x, "smoothgrad_sq"))
    _check(case, method, ours, ref, sg_sq)


@pytest.mark.parametrize("model", ["mlp_tanh", "resnet_odd"])
def test_target_weights_one_row(cases, model):
    """target_weights shaped like one row of the output apply to every row."""
    case = cases[model]
    w = case.weights[0]
    ours = case.explain("input_x_gradient", target_weights=w.numpy())
    ref = InputXGradient(Weighted(case.module, w[None])).attribute(case.x)
    assert_close(ours, ref, case.rtol)


def test_target_int_equals_one_hot_weights(cases):
    """target=int is the one-hot target_weights, for every row."""
    case = cases["cnn_pools_bn"]
    one_hot = np.zeros((N_ROWS, case.n_out), np.float32)
    one_hot[:, 2] = 1
    a = case.explain("integrated_gradients", target=2)
    b = case.explain("integrated_gradients", target_weights=one_hot)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("model", ["resnet_odd", "encoder_post_norm"])
def test_integrated_gradients_internal_batch_size(cases, model):
    """Steps split into several runs (30 expanded rows, 10 steps each) give Captum's result and delta."""
    case = cases[model]
    ours, delta = case.explain("integrated_gradients", target=case.row_targets, internal_batch_size=30,
                               method="riemann_trapezoid", n_steps=20, baselines=case.baselines.numpy(),
                               return_convergence_delta=True)
    ref, ref_delta = IntegratedGradients(case.module).attribute(case.x, target=case.row_targets,
                                                                internal_batch_size=30,
                                                                method="riemann_trapezoid", n_steps=20,
                                                                baselines=case.baselines,
                                                                return_convergence_delta=True)
    assert_close(ours, ref, case.rtol)
    assert_close(delta, ref_delta, case.rtol, scale=delta_scale(ours), what="convergence delta")


# ---------------------------------------------------------------------- the noise itself
def test_captum_noise_is_reproduced():
    """captum_noise gives NoiseTunnel's draws: SmoothGrad by hand with them equals Captum's, exactly."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x = torch.randn(3, 4)
    z = torch.from_numpy(captum_noise(x, NOISE_SEED, NT_SAMPLES, STDEV))       # (S, N, 4)
    noisy = (x[None] + STDEV * z).reshape(-1, 4).requires_grad_()
    grad, = torch.autograd.grad(model(noisy)[:, 2].sum(), noisy)
    by_hand = grad.reshape(NT_SAMPLES, 3, 4).mean(dim=0)
    ref = captum_nt(model, x, "smoothgrad", 2)
    torch.testing.assert_close(by_hand, ref, rtol=0, atol=0)
