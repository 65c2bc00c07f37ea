"""Models in which one row's output depends on the other rows of the batch.

A normalisation over the batch axis (BatchNormalization in training mode, MeanVarianceNormalization with its
default axes, LayerNormalization over axis 0) or a reduction over the rows (``x - x.mean(0)``) makes every
method wrong on a stacked batch: integration steps, references and perturbations would share the statistics.
Such a model is refused when the Explainer is built, naming the node; with ``batch_size=1`` every row runs on
its own, and the methods explain that, held against PyTorch run one row at a time and against
summation-to-delta.
"""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import onnxplain
from onnxplain.errors import ModelError

pytestmark = pytest.mark.filterwarnings("ignore")


class Centred(nn.Module):
    """Features centred over the batch, then a classifier."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.lin, self.head = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        return self.head(h - h.mean(0, keepdim=True))


class TrainModeCnn(nn.Module):
    """A CNN exported with its BatchNormalization in training mode (batch statistics)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.conv, self.bn = nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)
        with torch.no_grad():
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def export_train_mode(net: nn.Module, x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), buf, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, training=torch.onnx.TrainingMode.TRAINING,
                          do_constant_folding=False)
    return buf.getvalue()


def onnx_model(node: onnx.NodeProto, shape, inits=(), opset: int = 17) -> onnx.ModelProto:
    """x -> node -> y, then y summed over its last axis into 3 classes by a fixed matrix."""
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((shape[-1], 3)).astype(np.float32), "W")
    nodes = [node, helper.make_node("MatMul", ["y", "W"], ["yw"]),
             helper.make_node("ReduceSum", ["yw", "mid"], ["out"], keepdims=0)]
    mid = numpy_helper.from_array(np.arange(1, len(shape) - 1, dtype=np.int64), "mid")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [shape[0], 3])],
                              [w, mid, *inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def mvn_default_axes():
    """MeanVarianceNormalization's default axes [0, 2, 3] on a rank-3 input: onnxruntime takes [0, 2]."""
    return onnx_model(helper.make_node("MeanVarianceNormalization", ["x"], ["y"]), ["N", 4, 5])


def layer_norm_over_axis_0():
    scale = numpy_helper.from_array(np.random.default_rng(2).uniform(0.5, 1.5, (4, 5)).astype(np.float32), "g")
    return onnx_model(helper.make_node("LayerNormalization", ["x", "g"], ["y"], axis=0), ["N", 4, 5], [scale])


def refused_models():
    x = torch.randn(4, 6)
    models = {f"centred_{e}": (onnxplain.from_torch(Centred().eval(), x, dynamo=e == "dynamo"), "ReduceMean")
              for e in ("torchscript", "dynamo")}
    models["batch_norm_training"] = (export_train_mode(TrainModeCnn().train(), torch.randn(3, 2, 7, 7)),
                                     "BatchNormalization normalises over axis 0")
    models["mvn_default_axes"] = (mvn_default_axes(), "MeanVarianceNormalization normalises over axis 0")
    models["layer_norm_axis_0"] = (layer_norm_over_axis_0(), "LayerNormalization normalises over axis 0")
    return models


REFUSED = refused_models()


@pytest.mark.parametrize("name", REFUSED)
@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "deeplift", "feature_ablation"])
def test_a_model_that_mixes_rows_is_refused_when_built(name, method, tmp_path):
    model, why = REFUSED[name]
    with pytest.raises(ModelError, match=rf"mixes the rows of a batch \(node '[^']+': {why}.*batch_size=1"):
        onnxplain.Explainer(model, method)
    with pytest.raises(ModelError, match="mixes the rows"):
        onnxplain.convert(model, tmp_path / "g.onnx", method=method)
    assert not (tmp_path / "g.onnx").exists()


def test_a_mixing_node_that_feeds_only_an_output_left_out_is_no_reason_to_refuse():
    """A second output that is a batch mean is left out of the explanation graph; the per-row output is explained."""
    class TwoHeads(nn.Module):
        def forward(self, x):
            return torch.tanh(x) * 2, torch.tanh(x).mean(0)
    x = torch.randn(5, 4)
    model = onnxplain.from_torch(TwoHeads(), x, output_names=["per_row", "batch_mean"])
    attr = onnxplain.Explainer(model, "saliency", output="per_row").explain(x.numpy(), target=1)
    expected = np.zeros_like(attr)
    expected[:, 1] = 2 * (1 - np.tanh(x.numpy()[:, 1]) ** 2)
    np.testing.assert_allclose(attr, expected, rtol=1e-5, atol=1e-7)


def per_row_gradient(net: nn.Module, x: np.ndarray, target: int) -> np.ndarray:
    rows = []
    for row in x:
        t = torch.tensor(row[None], requires_grad=True)
        net(t)[0, target].backward()
        rows.append(t.grad[0].numpy())
    return np.stack(rows)


def test_batch_size_1_explains_a_training_mode_batch_norm_row_by_row():
    net = TrainModeCnn().train()
    model = export_train_mode(net, torch.randn(3, 2, 7, 7))
    x = np.random.default_rng(5).standard_normal((4, 2, 7, 7)).astype(np.float32)
    base = (0.3 * np.random.default_rng(6).standard_normal((4, 2, 7, 7))).astype(np.float32)
    gradient = onnxplain.Explainer(model, "gradient", batch_size=1).explain(x, target=2)
    np.testing.assert_allclose(gradient, per_row_gradient(net, x, 2), rtol=1e-4, atol=1e-6)
    attr, delta = onnxplain.Explainer(model, "deeplift", batch_size=1).explain(x, target=2, baselines=base,
                                                                               return_convergence_delta=True)
    with torch.no_grad():
        gap = np.array([(net(torch.tensor(r[None])) - net(torch.tensor(b[None])))[0, 2].item() for r, b in zip(x, base)])
    scale = np.abs(attr).reshape(len(x), -1).sum(1).max()
    np.testing.assert_allclose(attr.reshape(len(x), -1).sum(1), gap, rtol=0, atol=2e-5 * scale)
    np.testing.assert_allclose(delta, 0, atol=2e-5 * scale)


def finite_difference_gradient(model: onnx.ModelProto, x: np.ndarray, target: int, h: float = 1e-3) -> np.ndarray:
    """Central differences of the model's own forward in onnxruntime, in float64 arithmetic on float32 runs."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    grad = np.zeros(x.shape, np.float64)
    for i in range(len(x)):
        for idx in np.ndindex(x.shape[1:]):
            up, down = x[i:i + 1].copy(), x[i:i + 1].copy()
            up[(0, *idx)] += h
            down[(0, *idx)] -= h
            f = [float(sess.run(None, {"x": v})[0][0, target]) for v in (up, down)]
            grad[(i, *idx)] = (f[0] - f[1]) / (2 * h)
    return grad


def test_batch_size_1_takes_mean_variance_normalization_axes_as_onnxruntime_does():
    model = mvn_default_axes()
    x = np.random.default_rng(7).standard_normal((3, 4, 5)).astype(np.float32)
    gradient = onnxplain.Explainer(model, "gradient", batch_size=1).explain(x, target=1)
    np.testing.assert_allclose(gradient, finite_difference_gradient(model, x, 1), rtol=2e-2, atol=2e-3)
    base = (0.5 * np.random.default_rng(8).standard_normal((3, 4, 5))).astype(np.float32)
    attr, delta = onnxplain.Explainer(model, "deeplift", batch_size=1).explain(x, target=1, baselines=base,
                                                                               return_convergence_delta=True)
    assert np.all(np.isfinite(attr))
    np.testing.assert_allclose(delta, 0, atol=2e-5 * np.abs(attr).reshape(3, -1).sum(1).max())


def test_inspect_names_the_mixing_node():
    model, _ = REFUSED["batch_norm_training"]
    facts = onnxplain.inspect(model)
    assert not any(m["available"] for m in facts["methods"].values())
    assert all("mixes the rows" in m["reason"] and "batch_size=1" in m["reason"] for m in facts["methods"].values())
