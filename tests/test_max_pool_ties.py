"""MaxPool's backward (MaxUnpool where windows are apart, a scatter-add where they overlap) on windows
with several maxima, against PyTorch autograd.

Inputs are drawn from a few integers so that most windows hold ties: the
gradient must go to the first maximum of each window in row-major order, as
PyTorch routes it.  Finite differences are meaningless at ties, so the
reference is autograd alone (float64), with the graph run in onnx.reference
(float64) and onnxruntime (float32).
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

from test_vjp_pool_norm import _maxpool
from vjp_harness import build_case_model, run_reference, vjp_model

CASES = [
    _maxpool("k2s2_even", (2, 3, 6, 8), [2, 2], strides=[2, 2]),
    _maxpool("k2s2_odd_rows_cut", (2, 3, 7, 9), [2, 2], strides=[2, 2]),
    _maxpool("k3s3_odd", (1, 2, 10, 11), [3, 3], strides=[3, 3]),
    _maxpool("rect_k2x3", (2, 2, 5, 9), [2, 3], strides=[2, 3]),
    _maxpool("k3s2_overlapping", (1, 2, 7, 7), [3, 3], strides=[2, 2]),
    _maxpool("k2s1_unit_stride", (1, 2, 5, 6), [2, 2]),
    _maxpool("pool1d", (2, 3, 9), [2], strides=[2]),
    _maxpool("pool3d", (1, 2, 4, 5, 6), [2, 2, 3], strides=[2, 2, 3]),
    _maxpool("k2s2_dyn_batch", (3, 2, 6, 7), [2, 2], strides=[2, 2], dynamic=True),
    _maxpool("k2s3_apart_padded", (1, 2, 8, 7), [2, 2], strides=[3, 3], pads=[1, 0, 0, 1]),
    _maxpool("k2s2_ceil_partial_window", (1, 2, 5, 7), [2, 2], strides=[2, 2], ceil_mode=1),
    _maxpool("k2s3_dilated_apart", (1, 2, 9, 8), [2, 2], strides=[3, 3], dilations=[2, 2]),
]
OVERLAPPING = {"k3s2_overlapping", "k2s1_unit_stride"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_max_pool_routes_ties_to_the_first_maximum_like_pytorch(case):
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 2, size=case.inputs[0]).astype(np.float64)
    tx = torch.tensor(x, requires_grad=True)
    ty = case.torch_fn(tx)
    dy = rng.standard_normal(tuple(ty.shape))
    (want,) = torch.autograd.grad(ty, [tx], torch.tensor(dy))

    model, wrt, out = build_case_model(case)
    vm = vjp_model(model, wrt, out)
    ops = {n.op_type for n in vm.graph.node}
    assert ("ScatterElements" in ops, "MaxUnpool" in ops) == ((True, False) if case.name in OVERLAPPING
                                                              else (False, True))
    got = run_reference(vm, {wrt[0]: x, "dy": dy})[1]
    np.testing.assert_array_equal(got, want.numpy())

    m32, wrt32, out32 = build_case_model(case, TensorProto.FLOAT)
    sess = ort.InferenceSession(vjp_model(m32, wrt32, out32).SerializeToString(), providers=["CPUExecutionProvider"])
    got32 = sess.run(None, {wrt32[0]: x.astype(np.float32), "dy": dy.astype(np.float32)})[1]
    np.testing.assert_allclose(got32, want.numpy(), rtol=1e-6, atol=1e-6)


def test_a_cnn_gradient_equals_pytorch_with_relu_zeros_tied_in_the_pools():
    """Conv -> ReLU (zeros tie) -> 2x2 MaxPool -> Linear, exported by PyTorch: the plain gradient."""
    import onnxplain

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 3 * 4, 3)).eval()
    x = torch.randn(5, 2, 7, 9) - 1.0                  # many ReLU zeros: ties in many windows
    assert torch.relu(net[0](x)).eq(0).float().mean() > 0.3
    onx = onnxplain.from_torch(net, x[:2])
    got = onnxplain.Explainer(onx, "gradient").explain(x.numpy(), target=1)
    xr = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(net(xr)[:, 1].sum(), [xr])
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


class _ReluPool(torch.nn.Module):
    """Conv -> ReLU -> MaxPool -> Linear; ``also_read``: the ReLU's output is read by a second branch too."""

    def __init__(self, pool: torch.nn.MaxPool2d, size: tuple, also_read: bool = False):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3, padding=1)
        with torch.no_grad():                        # small integers: exact convolutions, ties in the windows
            self.conv.weight.copy_(torch.randint(-1, 2, self.conv.weight.shape).float())
            self.conv.bias.copy_(torch.randint(-1, 2, self.conv.bias.shape).float())
        self.pool, self.also_read = pool, also_read
        pooled = pool(torch.zeros(1, 3, *size)).numel()
        self.head = torch.nn.Linear(pooled, 4)

    def forward(self, x):
        r = torch.relu(self.conv(x))
        out = self.head(self.pool(r).flatten(1))
        return out + r.mean(dim=(1, 2, 3))[:, None] if self.also_read else out


RELU_POOLS = {
    "k2s2_odd_rows_cut": (torch.nn.MaxPool2d(2), (7, 9), False),
    "k3s3": (torch.nn.MaxPool2d(3), (10, 11), False),
    "k2s3_apart_padded": (torch.nn.MaxPool2d(2, stride=3, padding=1), (8, 7), False),
    "k2s2_ceil_partial": (torch.nn.MaxPool2d(2, ceil_mode=True), (5, 7), False),
    "relu_read_twice": (torch.nn.MaxPool2d(2), (6, 8), True),
}


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", list(RELU_POOLS))
def test_relu_mask_applied_at_the_pooled_size_equals_pytorch(name, dynamo):
    """The MaxPool after a ReLU applies the ReLU's mask to dY (pooled size) when it alone reads the ReLU's
    output; the gradient must still equal PyTorch's, ties at zero and at positive values included."""
    import onnxplain

    pool, size, also_read = RELU_POOLS[name]
    torch.manual_seed(1)
    net = _ReluPool(pool, size, also_read).eval()
    x = torch.randint(-2, 3, (5, 2, *size)).float()
    assert torch.relu(net.conv(x)).eq(0).float().mean() > 0.2
    onx = onnxplain.from_torch(net, x[:2], dynamo=dynamo)
    ex = onnxplain.Explainer(onx, "gradient")
    got = ex.explain(x.numpy(), target=2)
    xr = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(net(xr)[:, 2].sum(), [xr])
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)

    graph = ex.graph.graph
    pooled = {o for n in graph.node if n.op_type == "MaxPool" for o in n.output[:1]}
    masks_at_pool = [n for n in graph.node if n.op_type == "Greater" and n.input[0] in pooled]
    assert bool(masks_at_pool) == (not also_read)
