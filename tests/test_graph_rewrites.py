"""The rewrites that let shape inference follow a graph before its backward pass is built: small integer
constants copied into the bodies that read them (an If decided by static shapes replaced by its branch is
held by the node tests of AffineGrid's 3-D function body).

References: the gradients of these models written out by hand (each is linear in x), and the model given by
the caller, which must come back unchanged.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.converters import expand

W = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)


def model_of(nodes, inits, opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(W, "W"), *inits])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def scan_reading_outer_axes():
    """A Scan over axis 1 of x whose body makes x_t (N, 4) a row and a column with axes read from the outer
    graph and multiplies them (MatMul of two active tensors: its rule needs their ranks):
    y = sum over t of |x_t|^2 x_t @ W."""
    body = helper.make_graph(
        [helper.make_node("Unsqueeze", ["x_t", "row"], ["u"]), helper.make_node("Unsqueeze", ["x_t", "column"], ["c"]),
         helper.make_node("MatMul", ["u", "c"], ["square"]), helper.make_node("Mul", ["square", "u"], ["q"]),
         helper.make_node("MatMul", ["q", "W"], ["v"]), helper.make_node("ReduceSum", ["v", "row"], ["out_t"],
                                                                          keepdims=0)],
        "body",
        [helper.make_tensor_value_info("x_t", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("out_t", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Scan", ["x"], ["outs"], body=body, num_scan_inputs=1, scan_input_axes=[1],
                              scan_output_axes=[1]),
             helper.make_node("ReduceSum", ["outs", "one"], ["y"], keepdims=0)]
    return model_of(nodes, [numpy_helper.from_array(np.array([1], np.int64), "one"),
                            numpy_helper.from_array(np.array([-2], np.int64), "row"),
                            numpy_helper.from_array(np.array([-1], np.int64), "column")])


def scan_gradient(x):
    """d/dx of |x|^2 (x . w) = 2 x (x . w) + |x|^2 w, per scanned step, w = W[:, 1]."""
    w = W[:, 1]
    return 2 * x * (x @ w)[..., None] + (x * x).sum(-1, keepdims=True) * w


MODELS = {"scan_reading_outer_axes": (scan_reading_outer_axes, scan_gradient)}


@pytest.mark.parametrize("name", MODELS)
def test_the_gradient_is_built_and_exact(name):
    build, expected = MODELS[name]
    model = build()
    given = model.SerializeToString()
    x = np.random.default_rng(1).standard_normal((3, 5, 4)).astype(np.float32)
    got = onnxplain.Explainer(model, "gradient").explain(x, target=1)
    np.testing.assert_allclose(got, expected(x), rtol=1e-5, atol=1e-5)
    assert model.SerializeToString() == given, "the caller's model was edited"


def test_without_the_copies_a_scan_body_loses_its_ranks(monkeypatch):
    """The copies are what makes LinearAttention's function body (a Scan whose body unsqueezes with an outer
    constant) explainable: without them the node test is refused for an unknown rank."""
    from node_oracle import judge
    name = "test_linear_attention_linear_expanded"
    assert judge(name).kind == "right"
    monkeypatch.setattr(expand, "MAX_COPIED", -1)
    refused = judge(name)
    assert refused.kind == "refused" and "rank" in refused.detail
