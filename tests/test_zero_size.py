"""Zero-size tensors in the backward pass: a Split with an empty piece, an empty slice, reductions
over an empty axis, a Gather of no indices, all with the batch axis dynamic so that the reshapes
the rules emit go to shapes read at run time (``allowzero=1`` keeps a 0 a 0).  Each case against
float64 finite differences and PyTorch autograd (onnx.reference) and in onnxruntime (float32)."""
import numpy as np
import pytest
import torch
from onnx import helper

from vjp_harness import Case, check_case

I = lambda *v: np.array(v, np.int64)  # noqa: E731
AXIS1 = helper.make_node("Constant", [], ["ax1"], value_ints=[1])


CASES = [
    # Split into (3, 0, 2) columns: the empty piece goes through ops of its own and back into a Concat
    Case("split_empty_piece", "Split", [(3, 5), I(3, 0, 2)], n_outputs=3, attrs=dict(axis=1), dynamic=True,
         torch_fn=lambda x, s: torch.cat([2 * x[:, :3], torch.tanh(x[:, 3:3]) * 3, torch.sin(x[:, 3:])], 1),
         extra_nodes=[helper.make_node("Add", ["y0", "y0"], ["a"]),
                      helper.make_node("Tanh", ["y1"], ["t"]),
                      helper.make_node("Mul", ["t", "t"], ["tt"]),
                      helper.make_node("Sin", ["y2"], ["s"]),
                      helper.make_node("Concat", ["a", "tt", "s"], ["out"], axis=1)]),
    # rows 0:0 of each sample: an empty (N, 0, 3) slice summed and averaged over its empty axis
    Case("empty_slice_reduce", "Slice", [(2, 4, 3), I(2), I(2), I(1)], dynamic=True,
         torch_fn=lambda x, s, e, a: x + x[:, 2:2].sum(1, keepdim=True) + torch.exp(x[:, 2:2]).sum(),
         extra_nodes=[AXIS1, helper.make_node("ReduceSum", ["y0", "ax1"], ["r"], keepdims=1),
                      helper.make_node("Exp", ["y0"], ["e"]),
                      helper.make_node("ReduceSum", ["e"], ["re"], keepdims=0),
                      helper.make_node("Add", ["in0", "r"], ["xr"]),
                      helper.make_node("Add", ["xr", "re"], ["out"])]),
    # a zero-size input reshaped, flattened and joined to another input
    Case("zero_size_reshape_concat", "Reshape", [(2, 0, 3), I(2, 3, 0), (2, 4)], attrs=dict(allowzero=1),
         dynamic=True, node_inputs=2,
         torch_fn=lambda x, s, z: torch.sin(torch.cat([torch.flatten(x.reshape(2, 3, 0), 1) * 2, z], 1)),
         extra_nodes=[helper.make_node("Flatten", ["y0"], ["f"], axis=1),
                      helper.make_node("Add", ["f", "f"], ["d"]),
                      helper.make_node("Concat", ["d", "in2"], ["c"], axis=1),
                      helper.make_node("Sin", ["c"], ["out"])]),
    # Gather of no indices along a dynamic axis
    Case("gather_no_indices", "Gather", [(3, 4), np.zeros((0,), np.int64)], attrs=dict(axis=1), dynamic=True,
         torch_fn=lambda x, i: torch.cat([x, x[:, i].sum(1, keepdim=True)], 1),
         extra_nodes=[AXIS1, helper.make_node("ReduceSum", ["y0", "ax1"], ["r"], keepdims=1),
                      helper.make_node("Concat", ["in0", "r"], ["out"], axis=1)]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_zero_size(case):
    check_case(case)
