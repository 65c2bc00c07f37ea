"""MaxPool's backward without Indices, for windows that tile the input, against PyTorch autograd.

Inputs are drawn from a few integers so that most windows hold several maxima:
the gradient must go to the first maximum of each window in row-major order, as
PyTorch routes it.  Finite differences are meaningless at ties, so the reference
is autograd alone (float64), with the graph run in onnx.reference (float64) and
onnxruntime (float32); distinct values also pass the finite-difference harness.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto

from test_vjp_pool_norm import _maxpool
from vjp_harness import build_case_model, check_case, run_reference, vjp_model

TILING = [   # strides equal to the kernel, no pads: the windows tile the input (rows past the last are cut)
    _maxpool("k2s2_even", (2, 3, 6, 8), [2, 2], strides=[2, 2]),
    _maxpool("k2s2_odd_rows_cut", (2, 3, 7, 9), [2, 2], strides=[2, 2]),
    _maxpool("k3s3_odd", (1, 2, 10, 11), [3, 3], strides=[3, 3]),
    _maxpool("rect_k2x3", (2, 2, 5, 9), [2, 3], strides=[2, 3]),
    _maxpool("ceil_exact", (1, 2, 6, 6), [2, 2], strides=[2, 2], ceil_mode=1),
    _maxpool("valid", (1, 2, 7, 6), [3, 2], strides=[3, 2], auto_pad="VALID"),
    _maxpool("pool1d", (2, 3, 9), [2], strides=[2]),
    _maxpool("pool3d", (1, 2, 4, 5, 6), [2, 2, 3], strides=[2, 2, 3]),
    _maxpool("k2s2_dyn_batch", (3, 2, 6, 7), [2, 2], strides=[2, 2], dynamic=True),
]


def _ties(rng, shape):
    return rng.integers(-2, 2, size=shape).astype(np.float64)


@pytest.mark.parametrize("case", TILING, ids=lambda c: c.name)
def test_tiling_max_pool_routes_ties_to_the_first_maximum_like_pytorch(case):
    model, wrt, out = build_case_model(case)
    vm = vjp_model(model, wrt, out)
    ops = [n.op_type for n in vm.graph.node]
    pools = [n for n in vm.graph.node if n.op_type == "MaxPool"]
    assert "ScatterElements" not in ops and len(pools) == 1 and len(pools[0].output) == 1
    rng = np.random.default_rng(3)
    x = _ties(rng, case.inputs[0])
    tx = torch.tensor(x, requires_grad=True)
    ty = case.torch_fn(tx)
    dy = rng.standard_normal(tuple(ty.shape))
    (want,) = torch.autograd.grad(ty, [tx], torch.tensor(dy))
    tied = sum(int((x.reshape(-1) == v).sum() > 1) for v in np.unique(x))
    assert tied, "the draw must hold ties"

    got = run_reference(vm, {wrt[0]: x, "dy": dy})[1]
    np.testing.assert_array_equal(got, want.numpy())

    m32, wrt32, out32 = build_case_model(case, TensorProto.FLOAT)
    sess = ort.InferenceSession(vjp_model(m32, wrt32, out32).SerializeToString(), providers=["CPUExecutionProvider"])
    got32 = sess.run(None, {wrt32[0]: x.astype(np.float32), "dy": dy.astype(np.float32)})[1]
    np.testing.assert_allclose(got32, want.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", TILING[:4], ids=lambda c: c.name)
def test_tiling_max_pool_matches_finite_differences_and_autograd_without_ties(case):
    check_case(case)


def test_overlapping_windows_keep_the_indices():
    case = _maxpool("k3s2", (1, 2, 7, 7), [3, 3], strides=[2, 2])
    model, wrt, out = build_case_model(case)
    assert "ScatterElements" in [n.op_type for n in vjp_model(model, wrt, out).graph.node]


def test_the_cnn_gradient_equals_pytorch_with_ties():
    """Conv -> ReLU (zeros tie) -> 2x2 MaxPool -> Linear, exported by PyTorch: saliency's raw gradient."""
    import onnxplain

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 3 * 4, 3)).eval()
    x = torch.randn(5, 2, 7, 9) - 1.0                  # many ReLU zeros: ties in most windows
    onx = onnxplain.from_torch(net, x[:2])
    got = onnxplain.Explainer(onx, "gradient").explain(x.numpy(), target=1)
    xr = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(net(xr)[:, 1].sum(), [xr])
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
    assert F.relu(net[0](x)).eq(0).float().mean() > 0.3
