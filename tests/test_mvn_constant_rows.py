"""MeanVarianceNormalization on constant rows: the op's function body is ``(x - mean) / (std + 1e-9)``
(epsilon outside the square root), so a constant row gives 0 and a finite gradient
``(dy - mean dy) / 1e-9``.  onnxruntime's own kernel divides by ``std`` alone and writes NaN there; the
explanation graph's backward must not depend on that, nor lose the 1e-9 to the graph optimizer.

References: float64 central differences of the function body written in numpy, and DeepLIFT's
summation-to-delta with f(x), f(ref) from the function body run by ``onnx.reference``."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import onnxplain

C, H, W, K = 3, 4, 5, 4
EPS = 1e-9          # the Constant ``Epsilon`` of the op's function body


def mvn_model(axes) -> onnx.ModelProto:
    """x (N, 3, 4, 5) -> MeanVarianceNormalization(axes) -> Flatten -> Gemm(60 -> 4) -> y (N, 4)."""
    rng = np.random.default_rng(7)
    weight = rng.normal(size=(C * H * W, K)).astype(np.float32)
    bias = rng.normal(size=K).astype(np.float32)
    nodes = [helper.make_node("MeanVarianceNormalization", ["x"], ["m"], axes=list(axes)),
             helper.make_node("Flatten", ["m"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "W", "B"], ["y"])]
    graph = helper.make_graph(nodes, "mvn_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", K])],
                              [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def function_body(x: np.ndarray, axes) -> np.ndarray:
    """The op's function body in float64, node by node: Variance = E[X^2] - E[X]^2, Y = (X - E[X]) / (sqrt + eps)."""
    x = x.astype(np.float64)
    mean = x.mean(axis=tuple(axes), keepdims=True)
    variance = (x ** 2).mean(axis=tuple(axes), keepdims=True) - mean ** 2
    return (x - mean) / (np.sqrt(variance) + EPS)


def head(model: onnx.ModelProto, y: np.ndarray) -> np.ndarray:
    weights = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    return y.reshape(len(y), -1) @ weights["W"] + weights["B"]


def finite_difference_gradient(model, x: np.ndarray, axes, target: int, constant) -> np.ndarray:
    """d y[:, target] / dx by float64 central differences of the function body; steps of 1e-14 on the
    constant slice ``constant`` (the body is linear there only for |h| << 1e-9), 1e-6 elsewhere.  The slice
    (one whole normalisation group) is first shifted to 0: the body does not change under adding a constant
    to a group, and at 0 float64 resolves steps of 1e-14 (at 0.5 its rounding of x + h is ~1% of h)."""
    x = x.astype(np.float64)
    x[constant] = 0.0
    grad = np.zeros_like(x)
    small = np.zeros(x.shape, bool)
    small[constant] = True
    for idx in np.ndindex(x.shape):
        h = 1e-14 if small[idx] else 1e-6
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        grad[idx] = (head(model, function_body(up, axes))[:, target]
                     - head(model, function_body(down, axes))[:, target]).sum() / (2 * h)
    return grad


def constant_input(rows: int, constant, value: float) -> np.ndarray:
    x = np.random.default_rng(3).normal(size=(rows, C, H, W)).astype(np.float32)
    x[constant] = value
    return x


# Rows normalised one at a time (axes [2, 3]: per row and channel) and the default axes [0, 2, 3] (the batch
# mixes: explained with batch_size=1, a row alone, where channel 1 is constant over the normalised axes).
CASES = {"per_row": ((2, 3), (1, 2), None), "default_axes": ((0, 2, 3), (slice(None), 1), 1)}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    axes, constant, batch_size = CASES[request.param]
    return mvn_model(axes), axes, constant, batch_size


def test_forward_onnxruntime_kernel_is_nan_where_the_function_body_is_zero(case):
    """The diagnosis: at a zero-valued constant slice the function body (onnx.reference) gives 0, onnxruntime's
    kernel NaN (it divides by std without the epsilon)."""
    import onnxruntime as ort
    model, axes, constant, batch_size = case
    x = constant_input(1 if batch_size else 2, constant, 0.0)
    mvn = helper.make_model(helper.make_graph(model.graph.node[:1], "mvn", list(model.graph.input),
                                              [helper.make_tensor_value_info("m", TensorProto.FLOAT, None)]),
                            opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    reference = ReferenceEvaluator(mvn).run(None, {"x": x})[0]
    kernel = ort.InferenceSession(mvn.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.all(reference[constant] == 0)
    np.testing.assert_allclose(reference, function_body(x, axes), atol=1e-5)
    assert np.isnan(kernel[constant]).all()


@pytest.mark.parametrize("value", [0.0, 0.5])
def test_gradient_at_constant_slice_matches_finite_differences(case, value):
    model, axes, constant, batch_size = case
    x = constant_input(2, constant, value)
    if batch_size is None:
        expected = finite_difference_gradient(model, x, axes, 2, constant)
    else:                           # each row explained alone
        expected = np.concatenate([finite_difference_gradient(model, x[i:i + 1], axes, 2, (slice(None), 1))
                                   for i in range(len(x))])
    got = onnxplain.Explainer(model, "gradient", batch_size=batch_size).explain(x, target=2)
    assert np.isfinite(got).all()
    scale = np.abs(expected).max()          # ~1e9 on the constant slice: (dy - mean dy) / 1e-9
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(got[constant], expected[constant], rtol=1e-4, atol=1e-6 * scale)


def reference_outputs(model, batch_size, target: int):
    """f(v)[:, target] by the function body run in onnx.reference (row by row when explained so)."""
    reference = ReferenceEvaluator(model)

    def f(v):
        rows = [v] if batch_size is None else [v[i:i + 1] for i in range(len(v))]
        return np.concatenate([reference.run(None, {"x": r})[0] for r in rows])[:, target].astype(np.float64)
    return f


@pytest.mark.parametrize("method", ["integrated_gradients", "deeplift"])
def test_constant_slice_in_input_and_baseline_complete(case, method):
    """The slice constant (0) in the input and in a random baseline: finite attributions, exactly 0 on the
    slice (its difference is 0), summing to f(x) - f(ref) (IG within its quadrature error)."""
    model, axes, constant, batch_size = case
    x = constant_input(2, constant, 0.0)
    ref = (0.5 * np.random.default_rng(11).normal(size=x.shape)).astype(np.float32)
    ref[constant] = 0.0
    got = onnxplain.Explainer(model, method, batch_size=batch_size).explain(x, target=1, baselines=ref)
    assert np.isfinite(got).all()
    assert np.all(got[constant] == 0)
    f = reference_outputs(model, batch_size, 1)
    delta = f(x) - f(ref)
    tol = 1e-5 if method == "deeplift" else 1e-2
    np.testing.assert_allclose(got.astype(np.float64).reshape(len(x), -1).sum(axis=1), delta, rtol=tol,
                               atol=tol * np.abs(delta).max())


def test_deeplift_zero_baseline_finite_and_complete_to_rounding(case):
    """Zero baseline: every group of the reference is constant, so Div's Shapley rule carries 1 / 1e-9 and
    the attributions reach ~1e9; they stay finite and sum to f(x) - f(0) within float32 rounding of that scale."""
    model, axes, constant, batch_size = case
    x = constant_input(2, constant, 0.0)
    got = onnxplain.Explainer(model, "deeplift", batch_size=batch_size).explain(x, target=1).astype(np.float64)
    assert np.isfinite(got).all()
    f = reference_outputs(model, batch_size, 1)
    delta = f(x) - f(np.zeros_like(x))
    rounding = 1e-6 * np.abs(got).reshape(len(x), -1).sum(axis=1)
    assert np.all(np.abs(got.reshape(len(x), -1).sum(axis=1) - delta) <= rounding)


def test_standalone_gradient_graph_in_reference_evaluator(tmp_path):
    """The gradient graph run by onnx.reference gives the finite-difference gradient at the constant slice."""
    axes, constant, _ = CASES["per_row"]
    model = mvn_model(axes)
    graph = onnxplain.convert(model, str(tmp_path / "g.onnx"), method="gradient")
    x = constant_input(2, constant, 0.0)
    weights = np.zeros((len(x), K), np.float32)
    weights[:, 2] = 1.0
    got = dict(zip([o.name for o in graph.graph.output],
                   ReferenceEvaluator(graph).run(None, {"x": x, "target_weights": weights})))["attributions"]
    expected = finite_difference_gradient(model, x, axes, 2, constant)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
