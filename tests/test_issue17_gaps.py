"""DeepLIFT through a scripted Loop whose body needs ranks (attention + LayerNormalization), and through a Conv whose
kernel is itself an attributed, per-row input (the bilinear product rule).  Held against PyTorch autograd and
against summation-to-delta with f(x) and f(reference) run separately in PyTorch / onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import onnxplain
from checks import assert_close


class AttentionLoop(nn.Module):
    """A ``for`` over a count read from the input's shape, whose body is self-attention + LayerNorm: the body's
    LayerNormalization needs the rank of the loop-carried state."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.ln, self.e = nn.Linear(6, 6), nn.Linear(6, 6), nn.LayerNorm(6), nn.Linear(6, 3)

    def forward(self, x):
        h = x
        for _ in range(x.shape[1] - 3):
            a = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / 2.0, -1)
            h = self.ln(a @ h + h)
        return self.e(h.mean(1))


@pytest.fixture(scope="module")
def attention_loop():
    net = torch.jit.script(AttentionLoop().eval())
    model = onnxplain.from_torch(net, torch.randn(2, 5, 6))
    assert [n.op_type for n in model.graph.node].count("Loop") == 1
    return net, model


def test_loop_body_with_layer_norm_gradient_matches_autograd(attention_loop):
    net, model = attention_loop
    x = np.random.default_rng(1).standard_normal((3, 5, 6)).astype(np.float32)
    ours = onnxplain.Explainer(model, "gradient").explain(x, target=1)
    xg = torch.from_numpy(x).requires_grad_()
    net(xg)[:, 1].sum().backward()
    assert_close(ours, xg.grad, rtol=1e-4, what="gradient through a Loop holding LayerNormalization")


def test_loop_body_with_layer_norm_deeplift_sums_to_the_true_difference(attention_loop):
    """Per-row loop bodies: the stacked batch [rows; references] takes the same iterations as each part alone, so
    the attributions add up to f(x) - f(b) with both run on their own in PyTorch."""
    net, model = attention_loop
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 6)).astype(np.float32)
    base = (0.5 * rng.standard_normal((3, 5, 6))).astype(np.float32)
    attr = onnxplain.Explainer(model, "deeplift").explain(x, target=1, baselines=base)
    with torch.no_grad():
        diff = (net(torch.from_numpy(x)) - net(torch.from_numpy(base)))[:, 1].numpy()
    np.testing.assert_allclose(attr.reshape(3, -1).sum(1), diff, rtol=0, atol=1e-5 * np.abs(diff).max())


def diagonal_conv_model(c: int = 3, k: int = 3, size: int = 7) -> onnx.ModelProto:
    """``x (N, C, H, H)`` and a kernel per row ``w (N, C, k, k)``: Conv(x, w) gives every row under every kernel,
    ``(N, N, h, h)``; an identity mask keeps row i under its own kernel i, then ReLU, flatten, a linear layer.
    Both operands of the Conv depend on attributed inputs."""
    rng = np.random.default_rng(0)
    h = (size + 2 - k) // 2 + 1
    zero = numpy_helper.from_array(np.array([0.0], np.float32))
    nodes = [helper.make_node("Conv", ["x", "w"], ["all"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Shape", ["x"], ["xs"]),
             helper.make_node("Slice", ["xs", "i0", "i1"], ["n"]),
             helper.make_node("Concat", ["n", "n"], ["nn"], axis=0),
             helper.make_node("ConstantOfShape", ["nn"], ["zeros"], value=zero),
             helper.make_node("EyeLike", ["zeros"], ["eye"]),
             helper.make_node("Unsqueeze", ["eye", "axes23"], ["mask"]),
             helper.make_node("Mul", ["all", "mask"], ["diag"]),
             helper.make_node("ReduceSum", ["diag", "i1"], ["own"], keepdims=0),
             helper.make_node("Relu", ["own"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "V", "bias"], ["y"])]
    inits = [numpy_helper.from_array(np.array([0], np.int64), "i0"),
             numpy_helper.from_array(np.array([1], np.int64), "i1"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes23"),
             numpy_helper.from_array(rng.standard_normal((h * h, 3)).astype(np.float32), "V"),
             numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "bias")]
    graph = helper.make_graph(nodes, "diagonal_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, size, size]),
                                                      helper.make_tensor_value_info("w", TensorProto.FLOAT, ["N", c, k, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_conv_with_an_attributed_kernel_sums_to_the_true_difference():
    """Conv of an attributed input by an attributed kernel is bilinear: the midpoint (two-player Shapley) rule
    conserves it exactly; f(x, w) and f(b_x, b_w) are run separately in onnxruntime."""
    model = diagonal_conv_model()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((3, 3, 7, 7)).astype(np.float32),
             "w": rng.standard_normal((3, 3, 3, 3)).astype(np.float32)}
    base = {name: (0.3 * rng.standard_normal(v.shape)).astype(np.float32) for name, v in feeds.items()}
    attr = onnxplain.Explainer(model, "deeplift").explain(feeds, target=1, baselines=base)
    diff = sess.run(None, feeds)[0][:, 1] - sess.run(None, base)[0][:, 1]
    total = attr["x"].reshape(3, -1).sum(1) + attr["w"].reshape(3, -1).sum(1)
    assert np.abs(attr["w"]).sum() > 0
    np.testing.assert_allclose(total, diff, rtol=0, atol=1e-5 * np.abs(diff).max())


def _resize_to_sizes_model() -> onnx.ModelProto:
    """A fully static export (no batch symbol) whose Resize reads its target ``sizes`` from a model input."""
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "w")
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "spatial")
    nodes = [helper.make_node("Resize", ["x", "", "", "sizes"], ["r"], mode="linear"),
             helper.make_node("Conv", ["r", "w"], ["c"]),
             helper.make_node("ReduceMean", ["c", "spatial"], ["y"], keepdims=0)]
    graph = helper.make_graph(nodes, "resize_to_sizes",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3, 7, 7]),
                               helper.make_tensor_value_info("sizes", TensorProto.INT64, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])], initializer=[w, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), w


def test_an_integer_sizes_input_of_a_static_model_is_not_batched_and_the_gradient_is_autographs():
    model, w = _resize_to_sizes_model()
    assert onnxplain.inspect(model)["batch_axes"] == {"x": 0, "sizes": None}
    ex = onnxplain.Explainer(model, "gradient", inputs="x")
    x = np.random.default_rng(6).standard_normal((3, 3, 7, 7)).astype(np.float32)
    got = ex.explain({"x": x, "sizes": np.array([3, 3, 10, 9], np.int64)}, target=[0, 1, 0])
    xt = torch.from_numpy(x).requires_grad_()
    up = torch.nn.functional.interpolate(xt, size=(10, 9), mode="bilinear", align_corners=False)
    y = torch.nn.functional.conv2d(up, torch.from_numpy(numpy_helper.to_array(w))).mean((2, 3))
    y[torch.arange(3), torch.tensor([0, 1, 0])].sum().backward()
    assert_close(got, xt.grad, 1e-4)


def test_the_graph_cleanup_keeps_additions_near_zero_and_factors_near_one(tmp_path):
    """y = 1.000001 / (|x| + 1e-9): a cleanup that takes c ~ 0 or 1 for a no-op would make f(0) infinite."""
    nodes = [helper.make_node("Abs", ["x"], ["a"]),
             helper.make_node("Add", ["a", "tiny"], ["d"]),
             helper.make_node("Reciprocal", ["d"], ["r"]),
             helper.make_node("Mul", ["r", "almost_one"], ["y"])]
    graph = helper.make_graph(nodes, "near_no_ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(np.array(1e-9, np.float32), "tiny"),
                               numpy_helper.from_array(np.array(1.000001, np.float32), "almost_one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = np.array([[0.0, 0.5, -2.0], [1e-3, 0.0, 3.0]], np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    onnxplain.convert(model, tmp_path / "explained.onnx", method="gradient")
    explained = onnx.load(tmp_path / "explained.onnx")
    feeds = {"x": x, "target_weights": np.ones((2, 3), np.float32)}
    got = ort.InferenceSession(explained.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.isfinite(got).all() and abs(got[0, 0] - 1.000001e9) < 1e3
