"""DeepLIFT through a Loop over the batch rows whose body convolves row i (Conv / ConvTranspose, a shared or a
per-row kernel): summation-to-delta against f(x) and f(reference) run separately in onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import onnxplain


def loop_model(op="Conv", per_row_kernel=False, c=3, h=6, k=3):
    rng = np.random.default_rng(0)
    if op == "Conv":
        wshape = (4, c, k, k)
        attrs = dict(pads=[1, 1, 1, 1])
    else:
        wshape = (c, 4, k, k)
        attrs = dict(strides=[2, 2], pads=[1, 1, 1, 1])
    body_nodes = [helper.make_node("Gather", ["x", "i"], ["row"], axis=0),
                  helper.make_node("Unsqueeze", ["row", "ax0"], ["row4"])]
    if per_row_kernel:
        body_nodes.append(helper.make_node("Gather", ["wk", "i"], ["wi"], axis=0))
        wname = "wi"
    else:
        wname = "W"
    body_nodes += [helper.make_node(op, ["row4", wname, "B"], ["conv"], **attrs),
                   helper.make_node("Relu", ["conv"], ["r"]),
                   helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                   helper.make_node("Squeeze", ["r", "ax0"], ["out"])]
    body = helper.make_graph(body_nodes, "body",
        [helper.make_tensor_value_info("i", TP.INT64, []), helper.make_tensor_value_info("cond_in", TP.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TP.BOOL, []), helper.make_tensor_value_info("out", TP.FLOAT, None)])
    nodes = [helper.make_node("Shape", ["x"], ["xs"]),
             helper.make_node("Gather", ["xs", "zero"], ["n"], axis=0),
             helper.make_node("Loop", ["n", "true"], ["stack"], body=body),
             helper.make_node("ReduceMean", ["stack", "axes23"], ["pooled"], keepdims=0),
             helper.make_node("Gemm", ["pooled", "V", "bias"], ["y"])]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array(True), "true"),
             numpy_helper.from_array(np.array([0], np.int64), "ax0"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes23"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, "B"),
             numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "V"),
             numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "bias")]
    inputs = [helper.make_tensor_value_info("x", TP.FLOAT, ["N", c, h, h])]
    if per_row_kernel:
        inputs.append(helper.make_tensor_value_info("wk", TP.FLOAT, ["N", *wshape]))
    else:
        inits.append(numpy_helper.from_array((rng.standard_normal(wshape) * 0.5).astype(np.float32), "W"))
    g = helper.make_graph(nodes, "loop_rows", inputs, [helper.make_tensor_value_info("y", TP.FLOAT, ["N", 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]); m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.mark.parametrize("batch_size", [None, 2])
@pytest.mark.parametrize("per_row", [False, True], ids=["shared_kernel", "per_row_kernel"])
@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
def test_deeplift_through_a_row_loop_sums_to_the_true_difference(op, per_row, batch_size):
    model = loop_model(op, per_row)
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((3, 3, 6, 6)).astype(np.float32)}
    if per_row:
        shape = (4, 3, 3, 3) if op == "Conv" else (3, 4, 3, 3)
        feeds["wk"] = (0.5 * rng.standard_normal((3, *shape))).astype(np.float32)
    base = {k: (0.3 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in feeds.items()}
    attr = onnxplain.Explainer(model, "deeplift", batch_size=batch_size).explain(
        feeds if per_row else feeds["x"], target=1, baselines=base if per_row else base["x"])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    diff = sess.run(None, feeds)[0][:, 1] - sess.run(None, base)[0][:, 1]
    parts = attr.values() if isinstance(attr, dict) else [attr]
    total = sum(np.asarray(a).reshape(3, -1).sum(1) for a in parts)
    np.testing.assert_allclose(total, diff, rtol=0, atol=1e-5 * np.abs(diff).max())


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
def test_deeplift_shap_through_a_row_loop_sums_to_the_mean_difference_over_the_baselines(op):
    model = loop_model(op)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 3, 6, 6)).astype(np.float32)
    background = (0.4 * rng.standard_normal((4, 3, 6, 6))).astype(np.float32)
    attr = onnxplain.Explainer(model, "deeplift_shap").explain(x, target=2, baselines=background)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    gap = sess.run(None, {"x": x})[0][:, 2] - sess.run(None, {"x": background})[0][:, 2].mean()
    np.testing.assert_allclose(attr.reshape(3, -1).sum(1), gap, rtol=0, atol=1e-5 * np.abs(gap).max())

