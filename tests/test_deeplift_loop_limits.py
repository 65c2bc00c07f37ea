"""DeepLIFT through a Loop over the batch rows whose body reads a scalar computed from the whole batch
(``s = ReduceSum(x)``, a scale): refused without batch_size (the rows and their references share one batch,
so they cannot each get their own ``s``), exact with ``batch_size=1`` against f(x) - f(reference) run apart
in onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import onnxplain
from onnxplain.errors import UnsupportedOperatorError

C, H, OUT = 5, 7, 3


@pytest.fixture(scope="module")
def scaled_loop_model():
    """x (N, 5) -> s = ReduceSum(x); Loop i < N: Relu((x[i] @ W) * s) -> (N, 7) -> Gemm -> (N, 3)."""
    rng = np.random.default_rng(0)
    body = helper.make_graph([
        helper.make_node("Gather", ["x", "i"], ["row"], axis=0),
        helper.make_node("MatMul", ["row", "W"], ["pre"]),
        helper.make_node("Mul", ["pre", "s"], ["scaled"]),
        helper.make_node("Relu", ["scaled"], ["h"]),
        helper.make_node("Unsqueeze", ["h", "ax0"], ["out"]),
        helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", TP.INT64, []), helper.make_tensor_value_info("cond_in", TP.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TP.BOOL, []), helper.make_tensor_value_info("out", TP.FLOAT, None)])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Shape", ["x"], ["xs"]),
             helper.make_node("Gather", ["xs", "zero"], ["n"], axis=0),
             helper.make_node("Loop", ["n", "true"], ["stack"], body=body, name="scaled_rows"),
             helper.make_node("Reshape", ["stack", "shp"], ["flat"]),
             helper.make_node("Gemm", ["flat", "V", "bias"], ["y"])]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array(True), "true"),
             numpy_helper.from_array(np.array([0], np.int64), "ax0"),
             numpy_helper.from_array(np.array([-1, H], np.int64), "shp"),
             numpy_helper.from_array((0.6 * rng.standard_normal((C, H))).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((H, OUT)).astype(np.float32), "V"),
             numpy_helper.from_array(rng.standard_normal(OUT).astype(np.float32), "bias")]
    g = helper.make_graph(nodes, "scaled_loop", [helper.make_tensor_value_info("x", TP.FLOAT, ["N", C])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, ["N", OUT])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def test_a_loop_reading_a_batch_wide_scalar_is_refused_without_batch_size(scaled_loop_model):
    with pytest.raises(UnsupportedOperatorError) as err:
        onnxplain.Explainer(scaled_loop_model, "deeplift")
    assert "scaled_rows" in str(err.value) and "batch_size=1" in str(err.value)


def test_with_batch_size_1_each_row_sums_to_its_own_difference(scaled_loop_model):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, C)).astype(np.float32)
    attr, delta = onnxplain.Explainer(scaled_loop_model, "deeplift", batch_size=1).explain(
        x, target=1, return_convergence_delta=True)
    sess = ort.InferenceSession(scaled_loop_model.SerializeToString(), providers=["CPUExecutionProvider"])
    # batch_size=1: the model sees one row at a time, so s is that row's own sum; the reference is a zero row
    f_x = np.array([sess.run(None, {"x": x[i:i + 1]})[0][0, 1] for i in range(3)])
    f_ref = sess.run(None, {"x": np.zeros((1, C), np.float32)})[0][0, 1]
    np.testing.assert_allclose(attr.sum(1), f_x - f_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(delta, 0, atol=1e-4 * np.abs(f_x - f_ref).max())
