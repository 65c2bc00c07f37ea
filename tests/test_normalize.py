"""The normaliser: load, check, inline, upgrade, dynamic batch, shapes."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.converters.normalize import MIN_OPSET, normalize


def relu_clip_model(opset: int) -> onnx.ModelProto:
    """x -> Relu -> Unsqueeze(axes attr at opset < 13) -> ReduceSum -> y (fixed batch 2)."""
    if opset < 13:
        nodes = [helper.make_node("Relu", ["x"], ["r"]),
                 helper.make_node("Unsqueeze", ["r"], ["u"], axes=[1]),
                 helper.make_node("ReduceSum", ["u"], ["y"], axes=[2], keepdims=0)]
        inits = []
    else:
        nodes = [helper.make_node("Relu", ["x"], ["r"]),
                 helper.make_node("Unsqueeze", ["r", "one"], ["u"]),
                 helper.make_node("ReduceSum", ["u", "two"], ["y"], keepdims=0)]
        inits = [numpy_helper.from_array(np.array([1], np.int64), "one"),
                 numpy_helper.from_array(np.array([2], np.int64), "two")]
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_old_opsets_are_upgraded_and_keep_their_meaning():
    m = normalize(relu_clip_model(11))
    assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [MIN_OPSET]
    assert [n.op_type for n in m.graph.node if n.op_type != "Constant"] == ["Relu", "Unsqueeze", "ReduceSum"]
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, np.maximum(x, 0).sum(1, keepdims=True), rtol=1e-6)


def test_batch_dimension_becomes_dynamic_and_shapes_are_inferred():
    m = normalize(relu_clip_model(17))
    dim = m.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.HasField("dim_value")
    assert {vi.name for vi in m.graph.value_info} >= {"r", "u"}
    assert m.ir_version == helper.find_min_ir_version_for(list(m.opset_import), ignore_unknown=True)


def test_local_functions_are_inlined():
    fn = helper.make_function("local", "Swish", ["a"], ["b"],
                              [helper.make_node("Sigmoid", ["a"], ["s"]), helper.make_node("Mul", ["a", "s"], ["b"])],
                              [helper.make_opsetid("", 17)])
    g = helper.make_graph([helper.make_node("Swish", ["x"], ["y"], domain="local")], "f",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                          functions=[fn])
    out = normalize(m)
    assert sorted(n.op_type for n in out.graph.node) == ["Mul", "Sigmoid"]
    x = np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3)
    g = onnxplain.Explainer(m, "gradient").explain(x, target_weights=np.ones((2, 3), np.float32))
    s = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(g, s + x * s * (1 - s), rtol=1e-5)


def test_invalid_models_are_refused_with_the_checker_message():
    g = helper.make_graph([helper.make_node("Relu", ["nowhere"], ["y"])], "bad",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])])
    with pytest.raises(onnxplain.ModelError, match="fails onnx.checker"):
        normalize(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
