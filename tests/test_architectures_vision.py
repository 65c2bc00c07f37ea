"""Vision architectures from both PyTorch exporters, explained by onnxplain, against Captum.

Every model of tests/vision_models.py (ResNet, MobileNetV3, EfficientNet, ConvNeXt, ViT, a
Swin-style net, and a U-Net-style net with GroupNorm/InstanceNorm and Resize) is exported once
with the TorchScript exporter (``dynamo=False``, opset 17) and once with the default dynamo
exporter (opset 18+), both with a dynamic batch dimension.  For each export:

* the ONNX model computes the module's outputs at two batch sizes (the batch axis is dynamic);
* saliency and gradient equal Captum's ``Saliency`` (= PyTorch autograd);
* integrated_gradients equals Captum's ``IntegratedGradients`` (defaults: 50 Gauss-Legendre steps,
  zero baselines; and 20 trapezoid steps from random baselines, one target per row), delta included;
* deeplift: summation-to-delta holds on every model (squeeze-excitation gates, SiLU = x * sigmoid(x),
  attention, LayerNorm, GELU written out or fused), and the two exporters' attributions agree; on
  ResNet it equals Captum's ``LayerDeepLift`` at the stem's MaxPool output (at the input Captum's
  MaxPool rule breaks summation-to-delta where onnxplain's cross-max rule keeps it: Captum's delta
  there is ~4% of the attributions' scale, onnxplain's 1e-8; see tests/test_modified_rules.py).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from captum.attr import IntegratedGradients, LayerDeepLift, Saliency

import onnxplain
from checks import assert_close
import vision_models as vm

pytestmark = pytest.mark.filterwarnings("ignore")

N_ROWS = 3
TARGET = 1
RTOL = 1e-4
EXPORTERS = list(vm.EXPORTERS)
MODELS = list(vm.MODELS)
CASES = [(m, e) for m in MODELS for e in EXPORTERS]

# One tolerance for every model, attention included: measured on these 14 exports, the worst error of
# any method against Captum is 7.5e-7 of the largest attribution (float32 attention in ViT and Swin:
# <= 5.3e-7), and the worst convergence-delta difference 1.6e-7 of the summed |attributions|.
# Per-case overrides would go here with the reason: {(model, exporter): rtol}.
LOOSE: dict[tuple, float] = {}

# Exports the dynamo exporter cannot make with a dynamic batch (it made all of them in torch 2.13).
STATIC_BATCH: dict[str, str] = {}


# DeepLIFT's reference rows are found by splitting axis 0 of each tensor in half (inputs on top,
# references below), so tensors that fold more than the batch into axis 0 batch-major (Swin's
# batch * windows) pair each row with its reference too.

class Exported:
    """One (model, exporter): the module, its ONNX bytes, seeded inputs and baselines, cached explainers."""

    def __init__(self, name: str, exporter: str):
        self.name, self.exporter = name, exporter
        self.module, self.row = vm.MODELS[name]()
        dynamic = name not in STATIC_BATCH or exporter != "dynamo"
        self.onnx = (vm.export_dynamo(self.module, self.row, dynamic=dynamic) if exporter == "dynamo"
                     else vm.export_torchscript(self.module, self.row))
        g = torch.Generator().manual_seed(sum(map(ord, name)))
        self.x = torch.randn((N_ROWS,) + self.row, generator=g)
        self.baselines = 0.5 * torch.randn((N_ROWS,) + self.row, generator=g)
        self.row_targets = [2, 0, 4]
        self.rtol = LOOSE.get((name, exporter), RTOL)
        self._explainers = {}

    def explain(self, method: str, /, **kwargs):
        if method not in self._explainers:
            self._explainers[method] = onnxplain.Explainer(self.onnx, method=method)
        return self._explainers[method].explain(self.x.numpy(), **kwargs)


class Zoo(dict):
    def __missing__(self, key):
        self[key] = case = Exported(*key)
        return case


@pytest.fixture(scope="module")
def zoo():
    return Zoo()


def delta_scale(attr) -> float:
    """Deltas are differences of per-row sums: compare them on the scale of the summed |attributions|."""
    return float(np.abs(np.asarray(attr)).reshape(len(attr), -1).sum(axis=1).max())


def ids(case):
    return f"{case[0]}-{case[1]}"


# ---------------------------------------------------------------------- the exports themselves
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_export_is_dynamic_and_matches_torch(zoo, case):
    """The exported graph has a symbolic batch axis and computes the module's outputs at 1 and 4 rows."""
    c = zoo[case]
    model = onnx.load_from_string(c.onnx)
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    if case[0] in STATIC_BATCH and case[1] == "dynamo":
        pytest.skip(STATIC_BATCH[case[0]])
    assert dim.dim_param and not dim.HasField("dim_value"), f"batch axis is not dynamic: {dim}"
    sess = ort.InferenceSession(c.onnx, providers=["CPUExecutionProvider"])
    for rows in (1, 4):
        x = torch.randn((rows,) + c.row, generator=torch.Generator().manual_seed(rows))
        with torch.no_grad():
            ref = c.module(x).numpy()
        (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


# ---------------------------------------------------------------------- gradients
@pytest.mark.parametrize("method", ["saliency", "gradient"])
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_gradient_methods(zoo, case, method):
    """saliency = |d y_target / d x|, gradient = d y_target / d x, as Captum's Saliency computes them."""
    c = zoo[case]
    ours = c.explain(method, target=TARGET)
    ref = Saliency(c.module).attribute(c.x, target=TARGET, abs=method == "saliency")
    assert_close(ours, ref, c.rtol)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_integrated_gradients_defaults(zoo, case):
    """Captum's defaults: 50 Gauss-Legendre steps from a zero baseline, with the convergence delta."""
    c = zoo[case]
    ours, delta = c.explain("integrated_gradients", target=TARGET, return_convergence_delta=True)
    ref, ref_delta = IntegratedGradients(c.module).attribute(c.x, target=TARGET, return_convergence_delta=True)
    assert_close(ours, ref, c.rtol)
    assert_close(delta, ref_delta, c.rtol, scale=delta_scale(ours), what="convergence delta")


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_integrated_gradients_baselines_row_targets(zoo, case):
    """20 trapezoid steps from random per-row baselines, one target per row."""
    c = zoo[case]
    ours, delta = c.explain("integrated_gradients", target=c.row_targets, method="riemann_trapezoid", n_steps=20,
                            baselines=c.baselines.numpy(), return_convergence_delta=True)
    ref, ref_delta = IntegratedGradients(c.module).attribute(
        c.x, baselines=c.baselines, target=c.row_targets, method="riemann_trapezoid", n_steps=20,
        return_convergence_delta=True)
    assert_close(ours, ref, c.rtol)
    assert_close(delta, ref_delta, c.rtol, scale=delta_scale(ours), what="convergence delta")


# ---------------------------------------------------------------------- DeepLIFT
@pytest.mark.parametrize("model,exporter", CASES, ids=[f"{m}-{e}" for m, e in CASES])
def test_deeplift(zoo, model, exporter):
    c = zoo[(model, exporter)]
    ours, delta = c.explain("deeplift", target=TARGET, baselines=c.baselines.numpy(), return_convergence_delta=True)
    assert ours.shape == tuple(c.x.shape)
    assert np.all(np.isfinite(ours)) and np.all(np.isfinite(delta))
    assert np.abs(ours).max() > 0
    # summation-to-delta: each row's attributions add up to f(x) - f(baseline)
    assert np.abs(delta).max() <= 1e-5 * delta_scale(ours), (delta, delta_scale(ours))


@pytest.mark.parametrize("model", MODELS)
def test_deeplift_is_the_same_from_both_exporters(zoo, model):
    """Each exporter writes layers its own way (fused or not); DeepLIFT's rules give their decompositions'
    multipliers, so the attributions agree."""
    a, b = (zoo[(model, e)].explain("deeplift", target=TARGET, baselines=zoo[(model, e)].baselines.numpy())
            for e in EXPORTERS)
    assert_close(a, b, RTOL)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_deeplift_resnet_against_captum_after_maxpool(zoo, exporter):
    """DeepLIFT attributed at the stem's MaxPool output equals Captum's LayerDeepLift there, delta included."""
    c = zoo[("resnet", exporter)]
    layer = next(n.output[0] for n in onnx.load_from_string(c.onnx).graph.node if n.op_type == "MaxPool")
    explainer = onnxplain.Explainer(c.onnx, "deeplift", layer=layer)
    ours, delta = explainer.explain(c.x.numpy(), target=TARGET, baselines=c.baselines.numpy(),
                                    return_convergence_delta=True)
    ref, ref_delta = LayerDeepLift(c.module, c.module.stem[3]).attribute(
        c.x, baselines=c.baselines, target=TARGET, return_convergence_delta=True)
    assert_close(ours, ref, c.rtol)
    scale = delta_scale(ours)
    assert np.abs(delta).max() <= 1e-5 * scale and np.abs(ref_delta.numpy()).max() <= 1e-5 * scale


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_deeplift_summation_to_delta_resnet_row_targets(zoo, exporter):
    """Per-row targets: each row's attributions sum to f_t(x) - f_t(baseline) (computed by torch)."""
    c = zoo[("resnet", exporter)]
    ours = c.explain("deeplift", target=c.row_targets, baselines=c.baselines.numpy())
    with torch.no_grad():
        fx, fb = c.module(c.x).numpy(), c.module(c.baselines).numpy()
    rows = np.arange(N_ROWS)
    expected = fx[rows, c.row_targets] - fb[rows, c.row_targets]
    np.testing.assert_allclose(ours.reshape(N_ROWS, -1).sum(axis=1), expected, rtol=1e-4,
                               atol=1e-5 * delta_scale(ours))
