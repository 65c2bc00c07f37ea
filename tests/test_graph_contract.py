"""Every explanation graph: standard ONNX only, the contract's inputs and outputs,
and the same numbers in onnxruntime and in onnx.reference."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx.reference import ReferenceEvaluator
from torch import nn

import onnxplain
from models import export


def small_cnn():
    torch.manual_seed(7)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2, stride=1),
                        nn.Conv2d(4, 4, 3, stride=2, groups=2), nn.Tanh(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(4, 3), nn.Softmax(-1))
    return net.eval()


GRADIENT_METHODS = [m for m in onnxplain.METHODS if not onnxplain.methods.get_method(m).forward_only]


@pytest.fixture(scope="module")
def model():
    return export(small_cnn(), (2, 7, 7))


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_graph_is_standard_onnx_and_agrees_in_both_runtimes(method, model, tmp_path):
    if onnxplain.methods.get_method(method).needs_layer:   # at the Tanh's output
        layer = next(n.output[0] for n in onnx.load_from_string(model).graph.node if n.op_type == "Tanh")
        check_contract(model, tmp_path, method, layer=layer)
    else:
        check_contract(model, tmp_path, method)


@pytest.mark.parametrize("method, kind", [("integrated_gradients", "smoothgrad"), ("deeplift", "smoothgrad"), ("saliency", "vargrad"),
                                          ("epsilon_lrp", "smoothgrad_sq"), ("deeplift_shap", "smoothgrad")])
def test_noise_tunnel_graphs_keep_the_contract(method, kind, model, tmp_path):
    check_contract(model, tmp_path, method, noise_tunnel=kind)


def check_contract(model, tmp_path, method, **options):
    path = tmp_path / f"{method}.onnx"
    graph = onnxplain.convert(model, path, method=method, **options)
    onnx.checker.check_model(graph, full_check=True)
    assert all(n.domain in ("", "ai.onnx") for n in graph.graph.node)
    names = {i.name for i in graph.graph.input}
    assert {"x", "target_weights"} <= names
    inits = {i.name for i in graph.graph.initializer}
    params = names - {"x", "target_weights"}
    assert params <= inits, f"parameters without a default: {params - inits}"
    outputs = [o.name for o in graph.graph.output]
    assert "attributions" in outputs and "y" in outputs

    x = np.random.default_rng(0).standard_normal((3, 2, 7, 7)).astype(np.float32)
    tw = np.zeros((3, 3), np.float32)
    tw[:, 1] = 1
    feeds = {"x": x, "target_weights": tw}
    if method == "deeplift_shap":
        feeds["baselines"] = np.random.default_rng(1).standard_normal((2, 2, 7, 7)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    ref = ReferenceEvaluator(str(path)).run(None, feeds)
    attributions = ref[outputs.index("attributions")]
    for name, a, b in zip(outputs, got, ref):
        # delta is a residual of sums: measure it on the scale of the attributions it sums
        scale = max(1e-6, float(np.abs(attributions).sum(axis=(1, 2, 3)).max() if name == "delta" else np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * scale, err_msg=f"{method}: output {name}")
