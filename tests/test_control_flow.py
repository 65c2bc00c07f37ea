"""If, Loop and Scan on the gradient path.

A Scan written with the ONNX helper is held against central finite differences
in float64; a ``torch.jit.script`` model with a data-dependent ``if``, a ``for``
loop whose trip count comes from the input's shape, and a ``while`` loop that
stops on a condition, against PyTorch autograd and Captum.  The explanation
graphs run in onnxruntime and in ``onnx.reference``.
"""
from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from captum.attr import IntegratedGradients
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn

import onnxplain
from checks import assert_close

F, H = 3, 4


def scan_model(axis: int, reverse: int, dtype=TensorProto.DOUBLE) -> onnx.ModelProto:
    """``x (N, T, F)`` -> a tanh recurrence scanned over time -> ``(N, 2)``.

    The body reads an outer tensor that depends on ``x`` (a per-row scale), the
    initial state is computed from ``x``, and the output uses both the final state
    and the scanned outputs.  ``axis`` 0 scans a transposed copy of ``x``; axis 1
    scans ``x`` itself, in direction ``reverse``.
    """
    rng = np.random.default_rng(0)
    npt = helper.tensor_dtype_to_np_dtype(dtype)
    body = helper.make_graph([
        helper.make_node("MatMul", ["h", "R"], ["hr"]),
        helper.make_node("MatMul", ["xt", "W"], ["xw"]),
        helper.make_node("Add", ["hr", "xw"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["h_new"]),
        helper.make_node("Mul", ["h_new", "scale"], ["y_t"]),
    ], "body", [helper.make_tensor_value_info("h", dtype, ["N", H]), helper.make_tensor_value_info("xt", dtype, ["N", F])],
        [helper.make_tensor_value_info("h_new", dtype, ["N", H]), helper.make_tensor_value_info("y_t", dtype, ["N", H])])
    scanned = "x"
    nodes = [helper.make_node("Gather", ["x", "zero"], ["x_first"], axis=1),
             helper.make_node("MatMul", ["x_first", "W"], ["h0"]),
             helper.make_node("ReduceMean", ["x"], ["x_mean"], axes=[1, 2], keepdims=0),
             helper.make_node("Unsqueeze", ["x_mean", "one"], ["scale"]),
             helper.make_node("Sin", ["scale"], ["wave"])]
    if axis == 0:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_seq_first"], perm=[1, 0, 2]))
        scanned = "x_seq_first"
    nodes += [helper.make_node("Scan", ["h0", scanned], ["h_last", "ys"], num_scan_inputs=1, body=body,
                               scan_input_axes=[axis], scan_input_directions=[reverse], scan_output_axes=[axis]),
              helper.make_node("ReduceSum", ["ys", "time_axis"], ["y_total"], keepdims=0),
              helper.make_node("Mul", ["h_last", "wave"], ["h_waved"]),
              helper.make_node("Add", ["h_waved", "y_total"], ["z"]),
              helper.make_node("MatMul", ["z", "V"], ["y"])]
    inits = [numpy_helper.from_array((0.7 * rng.standard_normal((F, H))).astype(npt), "W"),
             numpy_helper.from_array((0.5 * rng.standard_normal((H, H))).astype(npt), "R"),
             numpy_helper.from_array(rng.standard_normal((H, 2)).astype(npt), "V"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([axis], np.int64), "time_axis")]
    graph = helper.make_graph(nodes, "scan", [helper.make_tensor_value_info("x", dtype, ["N", "T", F])],
                              [helper.make_tensor_value_info("y", dtype, ["N", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def finite_differences(model: onnx.ModelProto, x: np.ndarray, tw: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    f = lambda v: float((sess.run(None, {"x": v})[0] * tw).sum())
    out = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        out[idx] = (f(up) - f(down)) / (2 * eps)
    return out


@pytest.mark.parametrize("axis, reverse", [(0, 0), (1, 0), (1, 1)], ids=["axis0", "axis1", "axis1_reverse"])
def test_scan_gradient_matches_finite_differences(axis, reverse):
    model = scan_model(axis, reverse)
    rng = np.random.default_rng(1)
    x, tw = rng.standard_normal((3, 5, F)), rng.standard_normal((3, 2))
    ours = onnxplain.Explainer(model, "gradient").explain(x, target_weights=tw)
    assert_close(ours, finite_differences(model, x, tw), rtol=1e-7, what="Scan gradient")


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("method", ["gradient", "integrated_gradients", "deeplift", "epsilon_lrp"])
def test_scan_graphs_agree_in_onnxruntime_and_reference(method, axis, tmp_path):
    if axis == 1:
        pytest.skip("onnx.reference implements Scan over axis 0 only")
    path = tmp_path / "g.onnx"
    onnxplain.convert(scan_model(axis, 0, TensorProto.FLOAT), path, method=method)
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((3, 5, F)).astype(np.float32),
             "target_weights": rng.standard_normal((3, 2)).astype(np.float32)}
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["attributions"], feeds)[0]
    ref = ReferenceEvaluator(str(path)).run(["attributions"], feeds)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


# ---------------------------------------------------------------------- torch.jit.script control flow
class Branchy(nn.Module):
    """A data-dependent ``if`` (If), a ``for`` over a count read from the input's shape (Loop with a trip
    count known at run time) and a ``while`` that stops on a condition (Loop with a condition)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.c, self.d, self.e = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        if bool(x.sum() > 0):
            h = torch.relu(self.c(h)) + x
        else:
            h = torch.tanh(self.c(h)) - h
        for _ in range(x.shape[1] - 3):
            h = torch.tanh(self.d(h)) + h
        i = 0
        while bool(h.abs().sum() < 40.0) and i < 4:
            h = 1.5 * h + torch.tanh(self.d(h))
            i += 1
        return self.e(h)


@pytest.fixture(scope="module")
def branchy():
    net = torch.jit.script(Branchy().eval())
    return net, onnxplain.from_torch(net, torch.randn(2, 6))


def test_scripted_model_has_if_and_loops(branchy):
    ops = collections.Counter(n.op_type for n in branchy[1].graph.node)
    assert ops["If"] >= 1 and ops["Loop"] == 2, ops


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["then_branch", "else_branch"])
def test_scripted_control_flow_gradient_matches_autograd(branchy, sign):
    net, model = branchy
    x = sign * torch.rand(4, 6, generator=torch.Generator().manual_seed(3)) + 0.05 * sign
    tw = np.random.default_rng(4).standard_normal((4, 3)).astype(np.float32)
    ours = onnxplain.Explainer(model, "gradient").explain(x.numpy(), target_weights=tw)
    xg = x.clone().requires_grad_()
    (net(xg) * torch.from_numpy(tw)).sum().backward()
    assert_close(ours, xg.grad, rtol=1e-4, what="gradient through If and Loop")


def test_scripted_control_flow_integrated_gradients_match_captum(branchy):
    """Positive rows and a zero baseline: every interpolated row takes the same branch in both runs."""
    net, model = branchy
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(5)) + 0.1
    ours = onnxplain.Explainer(model, "integrated_gradients").explain(x.numpy(), target=0, n_steps=16)
    ref = IntegratedGradients(net).attribute(x, target=0, n_steps=16)
    assert_close(ours, ref, rtol=2e-4, what="IG through If and Loop")


def test_scripted_control_flow_graph_runs_in_both_runtimes(branchy, tmp_path):
    """One small row, so that the ``while`` loop runs: onnx.reference fails on a Loop with scan outputs
    that runs zero times (it concatenates an empty list)."""
    path = tmp_path / "g.onnx"
    onnxplain.convert(branchy[1], path, method="integrated_gradients", n_steps=4)
    feeds = {"x": 0.3 * np.random.default_rng(6).random((1, 6)).astype(np.float32),
             "target_weights": np.ones((1, 3), dtype=np.float32)}
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["attributions"], feeds)[0]
    ref = ReferenceEvaluator(str(path)).run(["attributions"], feeds)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_inspect_reports_control_flow_models_available(branchy):
    facts = onnxplain.inspect(branchy[1])
    unavailable = {m: v["reason"] for m, v in facts["methods"].items() if not v["available"]}
    assert set(unavailable) == {"grad_cam", "guided_grad_cam"}, unavailable   # they need a 4-D feature map


def test_scripted_control_flow_deeplift_summation_to_delta(branchy):
    """Linear maps and unary nonlinearities in every branch and loop body: DeepLIFT's rules conserve the
    difference from the reference through the If and both Loops (the reference rows run through them too)."""
    _, model = branchy
    x = np.random.default_rng(7).random((2, 6)).astype(np.float32) + 0.1
    attr, delta = onnxplain.Explainer(model, "deeplift").explain(x, target=1, return_convergence_delta=True)
    assert np.abs(attr).sum() > 0
    assert np.abs(delta).max() < 1e-5 * np.abs(attr).sum(axis=1).max(), delta


class Nested(nn.Module):
    """An ``if`` and a ``for`` inside a ``for``: If and Loop nodes inside a Loop body, reading the body's state
    and the outer input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.a, self.e = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = x
        for _ in range(x.shape[1] - 3):
            if bool(h.sum() > 0):
                h = torch.tanh(self.a(h)) * x
            else:
                h = torch.sigmoid(self.a(h)) + h
            for _ in range(x.shape[1] - 4):
                h = h + 0.3 * torch.tanh(h)
        return self.e(h)


@pytest.fixture(scope="module")
def nested():
    net = torch.jit.script(Nested().eval())
    return net, onnxplain.from_torch(net, torch.randn(2, 6))


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["then_branch", "else_branch"])
def test_nested_control_flow_gradient_matches_autograd(nested, sign):
    net, model = nested
    assert [n.op_type for n in model.graph.node].count("Loop") == 1
    x = sign * (torch.rand(4, 6, generator=torch.Generator().manual_seed(8)) + 0.1)
    ours = onnxplain.Explainer(model, "gradient").explain(x.numpy(), target=2)
    xg = x.clone().requires_grad_()
    net(xg)[:, 2].sum().backward()
    assert_close(ours, xg.grad, rtol=1e-4, what="gradient through a Loop holding an If and a Loop")


def test_nested_control_flow_graph_runs_in_both_runtimes(nested, tmp_path):
    path = tmp_path / "g.onnx"
    onnxplain.convert(nested[1], path, method="deeplift")
    feeds = {"x": np.random.default_rng(9).random((2, 6)).astype(np.float32),
             "target_weights": np.ones((2, 3), dtype=np.float32)}
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["attributions"], feeds)[0]
    ref = ReferenceEvaluator(str(path)).run(["attributions"], feeds)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
