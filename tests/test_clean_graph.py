"""clean_graph: shape arithmetic folded, repeats merged, dead nodes dropped; fed parameters still honoured.

Held against the uncleaned graph's own numbers (onnx.reference and onnxruntime)
and against numpy written here; node counts are read off the graphs.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import onnxplain
from onnxplain.graph import clean_graph


def _model():
    """y = 2 * Reshape(x, (-1, Shape(w)[0] * 3)) * scale (the product written twice), a dead branch, and
    ``scale`` a parameter with a default."""
    nodes = [
        helper.make_node("Shape", ["w"], ["sw"]),
        helper.make_node("Gather", ["sw", "zero"], ["w0"], axis=0),
        helper.make_node("Mul", ["w0", "three"], ["cols"]),
        helper.make_node("Unsqueeze", ["cols", "axes0"], ["cols_1d"]),
        helper.make_node("Concat", ["minus1", "cols_1d"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Mul", ["r", "scale"], ["a"]),
        helper.make_node("Mul", ["r", "scale"], ["a2"]),                      # the same subexpression again
        helper.make_node("Add", ["a", "a2"], ["y"]),
        helper.make_node("Exp", ["x"], ["unused"]),                            # dead
    ]
    inits = [numpy_helper.from_array(np.ones((2, 5), np.float32), "w"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array(3, np.int64), "three"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
             numpy_helper.from_array(np.array([0], np.int64), "axes0"),
             numpy_helper.from_array(np.full((1,), 2.0, np.float32), "scale")]   # a default the client may feed
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6]),
                                           helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["k"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_clean_graph_folds_merges_and_prunes_and_keeps_fed_parameters():
    model = _model()
    cleaned = clean_graph(model)
    ops = [n.op_type for n in cleaned.graph.node]
    assert "Shape" not in ops and "Exp" not in ops and ops.count("Mul") == 1 and len(ops) < len(model.graph.node)
    assert [i.name for i in cleaned.graph.input] == ["x", "scale"] and [o.name for o in cleaned.graph.output] == ["y"]
    assert {n.domain for n in cleaned.graph.node} <= {""}
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    per_column = np.linspace(-1, 1, 6).astype(np.float32)        # a fed value of another shape than the default
    for feeds, scale in (({"x": x}, 2.0), ({"x": x, "scale": per_column}, per_column)):
        want = x * scale * 2
        for m in (model, cleaned):
            got_ort = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
            np.testing.assert_allclose(got_ort[0], want, rtol=1e-6)
            np.testing.assert_allclose(ReferenceEvaluator(m).run(None, feeds)[0], want, rtol=1e-6)


def test_explanation_graphs_are_cleaned_and_a_fed_noise_of_another_shape_is_used():
    """SmoothGrad's ``noise`` has a default initializer: its shape must not be folded into the graph."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "lin",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    ex = onnxplain.Explainer(model, "smoothgrad")
    assert not any(n.op_type == "Identity" for n in ex.graph.graph.node)   # the builder's Identities are gone
    x = rng.standard_normal((4, 5)).astype(np.float32)
    noise = rng.standard_normal((7, 4, 5)).astype(np.float32)
    got = ex.explain(x, target=2, nt_samples=7, stdevs=0.3, noise=noise)
    np.testing.assert_allclose(got, np.broadcast_to(w[:, 2], (4, 5)), rtol=1e-6)   # a linear map: the weights
    sq = onnxplain.Explainer(model, "smoothgrad_sq").explain(x, target=2, nt_samples=7, stdevs=0.3, noise=noise)
    np.testing.assert_allclose(sq, np.broadcast_to(w[:, 2] ** 2, (4, 5)), rtol=1e-5)


def _loop_model():
    """A Loop of ``n`` trips: h <- h * scale + Reshape(x, (-1, Shape(w)[1])) inside the body, where ``scale``
    (an outer parameter with a default) and ``w`` are read from the enclosing graph; dead and repeated
    nodes in the body and outside."""
    body = helper.make_graph(
        [helper.make_node("Shape", ["w"], ["sw"]),
         helper.make_node("Gather", ["sw", "one"], ["cols"], axis=0),
         helper.make_node("Unsqueeze", ["cols", "axes0"], ["cols_1d"]),
         helper.make_node("Concat", ["minus1", "cols_1d"], ["shape"], axis=0),
         helper.make_node("Reshape", ["x", "shape"], ["r"]),
         helper.make_node("Mul", ["h_in", "scale"], ["hs"]),
         helper.make_node("Mul", ["h_in", "scale"], ["hs2"]),                # the same subexpression again
         helper.make_node("Sub", ["hs", "hs2"], ["zero_like"]),
         helper.make_node("Add", ["hs", "r"], ["h_mid"]),
         helper.make_node("Add", ["h_mid", "zero_like"], ["h_out"]),
         helper.make_node("Exp", ["h_in"], ["unused"]),                       # dead
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Loop", ["n", "go", "h0"], ["h"], body=body)]
    inits = [numpy_helper.from_array(np.ones((2, 3), np.float32), "w"),
             numpy_helper.from_array(np.array(1, np.int64), "one"),
             numpy_helper.from_array(np.array([0], np.int64), "axes0"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
             numpy_helper.from_array(np.array(3, np.int64), "n"),
             numpy_helper.from_array(np.array(True), "go"),
             numpy_helper.from_array(np.full((1,), 0.5, np.float32), "scale")]   # a default the client may feed
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
                                           helper.make_tensor_value_info("h0", TensorProto.FLOAT, ["N", 3]),
                                           helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["k"])],
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_clean_graph_cleans_loop_bodies_and_keeps_outer_parameters_fed():
    model = _loop_model()
    cleaned = clean_graph(model)
    body = next(a.g for a in cleaned.graph.node[0].attribute if a.name == "body")
    ops = [n.op_type for n in body.node]
    assert "Shape" not in ops and "Exp" not in ops, ops          # folded and pruned inside the body too
    assert [i.name for i in cleaned.graph.input] == ["x", "h0", "scale"]
    assert "scale" in {i.name for i in cleaned.graph.initializer}
    rng = np.random.default_rng(1)
    x, h0 = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((2, 3)).astype(np.float32)
    per_column = np.array([0.5, -1.0, 2.0], np.float32)         # a fed value of another shape than the default
    for feeds, scale in (({"x": x, "h0": h0}, 0.5), ({"x": x, "h0": h0, "scale": per_column}, per_column)):
        want = h0
        for _ in range(3):                                      # the loop written out in numpy
            want = want * scale + x
        for m in (model, cleaned):
            got_ort = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
            np.testing.assert_allclose(got_ort[0], want, rtol=1e-5)
            np.testing.assert_allclose(ReferenceEvaluator(m).run(None, feeds)[0], want, rtol=1e-5)
