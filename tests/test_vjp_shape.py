"""Backward rules of shape/data-movement ops and reductions, against finite differences and torch."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import helper, TensorProto

from vjp_harness import Case, check_case

I64_MAX, I64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min


def ints(*v):
    return np.array(v, np.int64)


def take(axis):
    """torch equivalent of ONNX Gather along ``axis`` (any index rank, negative indices)."""
    return lambda x, i: x[(slice(None),) * (axis % x.dim()) + (i.long(),)]


# ------------------------------------------------------------------------------ reshapes
RESHAPE = [
    Case("flatten_axis1", "Flatten", [(2, 3, 4)], lambda x: torch.flatten(x, 1), attrs=dict(axis=1)),
    Case("flatten_axis0", "Flatten", [(2, 3, 4)], lambda x: x.reshape(1, -1), attrs=dict(axis=0)),
    Case("flatten_axis_neg", "Flatten", [(2, 3, 4)], lambda x: x.reshape(6, 4), attrs=dict(axis=-1)),
    Case("flatten_dynamic", "Flatten", [(2, 3, 4)], lambda x: x.reshape(2, 12), dynamic=True),
    Case("reshape_zero_minus1", "Reshape", [(2, 3, 4), ints(0, -1)], lambda x, s: x.reshape(2, 12)),
    Case("reshape_minus1_middle", "Reshape", [(2, 3, 4), ints(4, -1, 2)], lambda x, s: x.reshape(4, 3, 2)),
    Case("reshape_allowzero", "Reshape", [(2, 3, 4), ints(3, 8)], lambda x, s: x.reshape(3, 8),
         attrs=dict(allowzero=1)),
    Case("reshape_allowzero_empty", "Reshape", [(0, 3), ints(3, 0)], lambda x, s: x.reshape(3, 0),
         attrs=dict(allowzero=1)),
    Case("reshape_dynamic", "Reshape", [(2, 3, 4), ints(0, -1)], lambda x, s: x.reshape(2, 12), dynamic=True),
    Case("transpose_perm", "Transpose", [(2, 3, 4)], lambda x: x.permute(2, 0, 1), attrs=dict(perm=[2, 0, 1])),
    Case("transpose_perm_swap", "Transpose", [(2, 3, 4)], lambda x: x.permute(0, 2, 1), attrs=dict(perm=[0, 2, 1])),
    Case("transpose_default", "Transpose", [(2, 3, 4)], lambda x: x.permute(2, 1, 0)),
    Case("transpose_dynamic", "Transpose", [(2, 3, 4)], lambda x: x.permute(1, 2, 0), attrs=dict(perm=[1, 2, 0]),
         dynamic=True),
    Case("squeeze_axes", "Squeeze", [(2, 1, 3), ints(1)], lambda x, a: x.squeeze(1)),
    Case("squeeze_axes_neg", "Squeeze", [(2, 3, 1), ints(-1)], lambda x, a: x.squeeze(-1)),
    Case("squeeze_all", "Squeeze", [(2, 1, 3, 1)], lambda x: x.squeeze()),
    Case("unsqueeze_two", "Unsqueeze", [(2, 3), ints(0, 3)], lambda x, a: x.unsqueeze(0).unsqueeze(3)),
    Case("unsqueeze_neg", "Unsqueeze", [(2, 3), ints(-1)], lambda x, a: x.unsqueeze(-1)),
    Case("unsqueeze_dynamic", "Unsqueeze", [(2, 3), ints(1)], lambda x, a: x.unsqueeze(1), dynamic=True),
    Case("identity", "Identity", [(2, 3)], lambda x: x),
    Case("dropout_inference", "Dropout", [(2, 3), np.array(0.3)], lambda x, r: x, n_outputs=2),
    Case("expand_lead", "Expand", [(3, 1), ints(2, 3, 4)], lambda x, s: x.expand(2, 3, 4)),
    Case("expand_smaller_shape", "Expand", [(1, 4), ints(3, 1)], lambda x, s: x.expand(3, 4)),
    Case("expand_dynamic", "Expand", [(2, 1, 3), ints(1, 4, 1)], lambda x, s: x.expand(2, 4, 3), dynamic=True),
]

# ------------------------------------------------------------------------------ joins, splits, tiles
W = np.random.default_rng(7).standard_normal((2, 2))
split_both = [helper.make_node("Concat", ["y1", "y0"], ["z"], axis=1)]
JOIN = [
    Case("concat_axis1_all", "Concat", [(2, 1), (2, 3), (2, 2)], lambda a, b, c: torch.cat([a, b, c], 1),
         attrs=dict(axis=1)),
    Case("concat_neg_axis_mixed", "Concat", [(2, 3), W, (2, 1)], lambda a, w, c: torch.cat([a, w, c], -1),
         attrs=dict(axis=-1)),
    Case("concat_one_attributed", "Concat", [W, (3, 2)], lambda w, b: torch.cat([w, b], 0), attrs=dict(axis=0)),
    Case("concat_axis0_dynamic", "Concat", [(2, 3), (3, 3)], lambda a, b: torch.cat([a, b], 0),
         attrs=dict(axis=0), dynamic=True),
    Case("concat_axis1_dynamic", "Concat", [(2, 3), (2, 1)], lambda a, b: torch.cat([a, b], 1),
         attrs=dict(axis=1), dynamic=True),
    Case("split_input_out0", "Split", [(2, 3), ints(1, 2)], lambda x, s: torch.split(x, [1, 2], 1)[0],
         attrs=dict(axis=1), n_outputs=2),
    Case("split_equal_out1", "Split", [(6, 2)], lambda x: torch.split(x, 2, 0)[1], n_outputs=3, output=1),
    Case("split_both_outputs", "Split", [(2, 3), ints(1, 2)],
         lambda x, s: torch.cat(torch.split(x, [1, 2], 1)[::-1], 1),
         attrs=dict(axis=1), n_outputs=2, extra_nodes=split_both),
    Case("split18_num_outputs", "Split", [(2, 7)], lambda x: torch.split(x, 3, 1)[2],
         attrs=dict(axis=1, num_outputs=3), n_outputs=3, output=2, opset=18),
    Case("split18_input_neg_axis", "Split", [(2, 5), ints(3, 2)], lambda x, s: torch.split(x, [3, 2], -1)[0],
         attrs=dict(axis=-1), n_outputs=2, opset=18),
    Case("split_dynamic", "Split", [(2, 4)], lambda x: torch.split(x, 2, 1)[1],
         attrs=dict(axis=1), n_outputs=2, output=1, dynamic=True),
    Case("tile_2d", "Tile", [(2, 3), ints(2, 3)], lambda x, r: x.repeat(2, 3)),
    Case("tile_3d", "Tile", [(2, 1, 3), ints(1, 2, 2)], lambda x, r: x.repeat(1, 2, 2)),
    Case("tile_dynamic", "Tile", [(2, 3), ints(2, 2)], lambda x, r: x.repeat(2, 2), dynamic=True),
]

# ------------------------------------------------------------------------------ indexing
IDX = np.array([[0, 2], [2, 1]], np.int64)
GE = np.array([[0, 0], [3, 1], [2, 2]], np.int64)
INDEXING = [
    Case("slice_basic", "Slice", [(3, 4), ints(1), ints(3), ints(1)], lambda x, *c: x[:, 1:3]),
    Case("slice_no_axes_steps", "Slice", [(3, 4), ints(1, 0), ints(3, 2)], lambda x, *c: x[1:3, 0:2]),
    Case("slice_negative_bounds", "Slice", [(3, 4), ints(-3), ints(-1), ints(-1)], lambda x, *c: x[:, -3:-1]),
    Case("slice_end_beyond", "Slice", [(3, 4), ints(1), ints(I64_MAX), ints(0)], lambda x, *c: x[1:]),
    Case("slice_end_beyond_small", "Slice", [(3, 4), ints(2), ints(10), ints(1), ints(1)],
         lambda x, *c: x[:, 2:]),
    Case("slice_step2", "Slice", [(3, 5), ints(0), ints(5), ints(1), ints(2)], lambda x, *c: x[:, 0:5:2]),
    Case("slice_reverse", "Slice", [(3, 4), ints(-1), ints(I64_MIN), ints(1), ints(-1)],
         lambda x, *c: torch.flip(x, [1])),
    Case("slice_step_minus2", "Slice", [(3, 4), ints(3), ints(0), ints(1), ints(-2)],
         lambda x, *c: x.index_select(1, torch.tensor([3, 1]))),
    Case("slice_reverse_clamped", "Slice", [(3, 4), ints(10), ints(-10), ints(0), ints(-1)],
         lambda x, *c: torch.flip(x, [0])),
    Case("slice_two_axes_steps", "Slice", [(4, 5), ints(3, 1), ints(0, 5), ints(0, 1), ints(-1, 3)],
         lambda x, *c: torch.flip(x[1:4], [0])[:, 1::3]),
    Case("slice_empty", "Slice", [(3, 4), ints(3), ints(1), ints(1)], lambda x, *c: x[:, 3:1]),
    Case("slice_dynamic", "Slice", [(2, 4), ints(1), ints(-1), ints(1)], lambda x, *c: x[:, 1:-1], dynamic=True),
    Case("slice_dynamic_batch_axis", "Slice", [(3, 4), ints(1), ints(3), ints(0)], lambda x, *c: x[1:3],
         dynamic=True),
    Case("gather_axis0", "Gather", [(3, 4), ints(2, 0)], take(0)),
    Case("gather_repeated", "Gather", [(3, 4), ints(0, 2, 0, 0)], take(1), attrs=dict(axis=1)),
    Case("gather_negative", "Gather", [(2, 3, 4), ints(-1, 0, -1)], take(-1), attrs=dict(axis=-1)),
    Case("gather_scalar", "Gather", [(2, 3, 4), np.array(1, np.int64)], take(1), attrs=dict(axis=1)),
    Case("gather_matrix_indices", "Gather", [(2, 3, 4), IDX], take(1), attrs=dict(axis=1)),
    Case("gather_int32", "Gather", [(3, 4), np.array([1, -1, 1], np.int32)], take(1), attrs=dict(axis=1)),
    Case("gather_dynamic", "Gather", [(2, 3, 4), ints(2, -3, 2)], take(1), attrs=dict(axis=1), dynamic=True),
    Case("gather_dynamic_scalar_last", "Gather", [(2, 3, 4), np.array(-1, np.int64)], take(2),
         attrs=dict(axis=2), dynamic=True),
    Case("gather_elements", "GatherElements", [(3, 4), GE], lambda x, i: torch.gather(x, 1, i),
         attrs=dict(axis=1)),
    Case("gather_elements_negative", "GatherElements", [(3, 4), np.array([[-1, 0, -3, 2], [1, -1, -1, 0]])],
         lambda x, i: torch.gather(x, 0, i % 3),
         attrs=dict(axis=0)),
]

# ------------------------------------------------------------------------------ padding
def zpad(pads):
    """ONNX pads (begins..., ends...) over all axes -> torch F.pad order (last axis first)."""
    n = len(pads) // 2
    return tuple(int(v) for a in reversed(range(n)) for v in (pads[a], pads[a + n]))


PADDING = [
    Case("pad_constant", "Pad", [(2, 3), ints(0, 1, 2, 0)], lambda x, p: F.pad(x, zpad([0, 1, 2, 0]))),
    Case("pad_constant_value", "Pad", [(2, 3), ints(1, 0, 0, 2), np.array(0.5)],
         lambda x, p, c: F.pad(x, zpad([1, 0, 0, 2]), value=0.5)),
    Case("pad18_axes", "Pad", [(2, 3), ints(1, 2), None, ints(1)], lambda x, p, a: F.pad(x, (1, 2)), opset=18),
    Case("pad18_axes_neg", "Pad", [(2, 3), ints(1, 0, 2, 1), None, ints(-1, 0)],
         lambda x, p, a: F.pad(x, (1, 2, 0, 1)), opset=18),
    Case("pad_attributed_value", "Pad", [(2, 3), ints(1, 0, 0, 2), ()],
         lambda x, p, c: F.pad(x, zpad([1, 0, 0, 2])) + c * F.pad(torch.zeros_like(x), zpad([1, 0, 0, 2]), value=1.0)),
    Case("pad_dynamic", "Pad", [(2, 3), ints(0, 1, 0, 2)], lambda x, p: F.pad(x, (1, 2)), dynamic=True),
    Case("pad_reflect", "Pad", [(2, 3, 4), ints(0, 0, 1, 0, 0, 2)],
         lambda x, p: F.pad(x, (1, 2), mode="reflect"), attrs=dict(mode="reflect")),
    Case("pad_reflect_2axes", "Pad", [(2, 3, 4), ints(0, 2, 1, 0, 1, 3)],
         lambda x, p: F.pad(x, (1, 3, 2, 1), mode="reflect"), attrs=dict(mode="reflect")),
    Case("pad_edge", "Pad", [(2, 3, 4), ints(0, 1, 2, 0, 2, 1)],
         lambda x, p: F.pad(x, (2, 1, 1, 2), mode="replicate"), attrs=dict(mode="edge")),
    Case("pad19_wrap", "Pad", [(2, 3, 4), ints(0, 1, 2, 0, 2, 1)],
         lambda x, p: F.pad(x, (2, 1, 1, 2), mode="circular"), attrs=dict(mode="wrap"), opset=19),
    Case("pad_edge_dynamic", "Pad", [(2, 3, 4), ints(0, 0, 3, 0, 0, 1)],
         lambda x, p: F.pad(x, (3, 1), mode="replicate"), attrs=dict(mode="edge"), dynamic=True),
]


# ------------------------------------------------------------------------------ reductions
def tied(axis=None, kind="max"):
    """Normal draws where every reduced group has exactly two equal extrema (central
    differences then give the average of the two directions: the equal split)."""
    def sampler(rng, shape):
        x = rng.standard_normal(shape)
        moved = x.reshape(1, -1) if axis is None else np.moveaxis(x, axis, -1).reshape(-1, shape[axis])
        for row in moved:
            a = int(np.argmax(row) if kind == "max" else np.argmin(row))
            row[(a + 1) % row.size] = row[a]
        return moved.reshape(shape) if axis is None else np.moveaxis(moved.reshape(
            tuple(np.delete(shape, axis)) + (shape[axis],)), -1, axis)
    return sampler


amax = lambda dims, keep: (lambda x, *a: torch.amax(x, dim=dims, keepdim=keep))  # noqa: E731
amin = lambda dims, keep: (lambda x, *a: torch.amin(x, dim=dims, keepdim=keep))  # noqa: E731
REDUCE = [
    Case("sum_axis1_keep", "ReduceSum", [(2, 3, 4), ints(1)], lambda x, a: x.sum(1, keepdim=True)),
    Case("sum_axis1_nokeep", "ReduceSum", [(2, 3, 4), ints(1)], lambda x, a: x.sum(1), attrs=dict(keepdims=0)),
    Case("sum_all_nokeep", "ReduceSum", [(2, 3, 4)], lambda x: x.sum(), attrs=dict(keepdims=0)),
    Case("sum_all_keep", "ReduceSum", [(2, 3, 4)], lambda x: x.sum((0, 1, 2), keepdim=True)),
    Case("sum_neg_axes_nokeep", "ReduceSum", [(2, 3, 4), ints(-1, 0)], lambda x, a: x.sum((-1, 0)),
         attrs=dict(keepdims=0)),
    Case("sum_noop_empty", "ReduceSum", [(2, 3)], lambda x: x, attrs=dict(noop_with_empty_axes=1)),
    Case("sum_empty_axes_all", "ReduceSum", [(2, 3), np.zeros(0, np.int64)], lambda x, a: x.sum(),
         attrs=dict(keepdims=0)),
    Case("sum_dynamic", "ReduceSum", [(2, 3, 4), ints(1)], lambda x, a: x.sum(1), attrs=dict(keepdims=0),
         dynamic=True),
    Case("sum_dynamic_batch_axis", "ReduceSum", [(2, 3), ints(0)], lambda x, a: x.sum(0, keepdim=True),
         dynamic=True),
    Case("mean17_axis_attr", "ReduceMean", [(2, 3, 4)], lambda x: x.mean(1), attrs=dict(axes=[1], keepdims=0)),
    Case("mean17_all_keep", "ReduceMean", [(2, 3, 4)], lambda x: x.mean((0, 1, 2), keepdim=True)),
    Case("mean18_axes_input", "ReduceMean", [(2, 3, 4), ints(0, 2)], lambda x, a: x.mean((0, 2)),
         attrs=dict(keepdims=0), opset=18),
    Case("mean18_noop", "ReduceMean", [(2, 3)], lambda x: x, attrs=dict(noop_with_empty_axes=1), opset=18),
    Case("mean_dynamic_batch", "ReduceMean", [(3, 4)], lambda x: x.mean(0), attrs=dict(axes=[0], keepdims=0),
         dynamic=True),
    Case("mean18_dynamic_keep", "ReduceMean", [(3, 4), ints(1)], lambda x, a: x.mean(1, keepdim=True),
         opset=18, dynamic=True),
    Case("max17_tie_free", "ReduceMax", [(3, 4)], amax(1, False), attrs=dict(axes=[1], keepdims=0)),
    Case("max17_ties_keep", "ReduceMax", [(3, 4)], amax(1, True), attrs=dict(axes=[1]), sampler=tied(1)),
    Case("max17_all_ties", "ReduceMax", [(3, 4)], amax((0, 1), False), attrs=dict(keepdims=0), sampler=tied()),
    Case("max18_input_ties", "ReduceMax", [(2, 3, 4), ints(-1)], amax(-1, False), attrs=dict(keepdims=0),
         opset=18, sampler=tied(-1)),
    Case("max18_dynamic", "ReduceMax", [(3, 4), ints(0)], amax(0, True), opset=18, sampler=tied(0), dynamic=True),
    Case("min17_tie_free", "ReduceMin", [(3, 4)], amin(0, True), attrs=dict(axes=[0])),
    Case("min17_ties", "ReduceMin", [(3, 4)], amin(1, False), attrs=dict(axes=[1], keepdims=0),
         sampler=tied(1, "min")),
    Case("min18_input_ties_all", "ReduceMin", [(2, 3)], amin((0, 1), True), opset=18, sampler=tied(None, "min")),
    Case("l2_axis", "ReduceL2", [(3, 4)], lambda x: torch.linalg.vector_norm(x, dim=1),
         attrs=dict(axes=[1], keepdims=0)),
    Case("l2_zero_row", "ReduceL2", [(3, 4)], lambda x: torch.linalg.vector_norm(x, dim=1),
         attrs=dict(axes=[1], keepdims=0), sampler=lambda rng, shape: rng.standard_normal(shape) * [[1], [0], [1]]),
    Case("l2_all18", "ReduceL2", [(3, 4)], lambda x: torch.linalg.vector_norm(x, dim=(0, 1), keepdim=True), opset=18),
    Case("l2_dynamic", "ReduceL2", [(3, 4), ints(1)], lambda x, a: torch.linalg.vector_norm(x, dim=1),
         attrs=dict(keepdims=0), opset=18, dynamic=True),
    Case("l1_axis", "ReduceL1", [(3, 4)], lambda x: x.abs().sum(0), attrs=dict(axes=[0], keepdims=0),
         away_from=0.0),
    Case("sumsquare18", "ReduceSumSquare", [(3, 4), ints(0)], lambda x, a: (x * x).sum(0, keepdim=True), opset=18),
    Case("sumsquare17", "ReduceSumSquare", [(3, 4)], lambda x: (x * x).sum(1), attrs=dict(axes=[1], keepdims=0)),
    Case("logsumexp17", "ReduceLogSumExp", [(3, 4)], lambda x: torch.logsumexp(x, 1), attrs=dict(axes=[1], keepdims=0)),
    Case("logsumexp18_all", "ReduceLogSumExp", [(3, 4)], lambda x: torch.logsumexp(x, (0, 1), keepdim=True),
         opset=18),
    Case("logsum", "ReduceLogSum", [(3, 4)], lambda x: torch.log(x.sum(1)), attrs=dict(axes=[1], keepdims=0),
         positive=True),
]

# ------------------------------------------------------------------------------ non-differentiable ops
_c = lambda name, *v: helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [len(v)], list(v)))  # noqa: E731
shape_to_reshape = [_c("first", 0), helper.make_node("Gather", ["y0", "first"], ["b0"], axis=0),
                    _c("rest", -1), helper.make_node("Concat", ["b0", "rest"], ["s"], axis=0),
                    helper.make_node("Reshape", ["in0", "s"], ["z"])]
times_x = [helper.make_node("Mul", ["y0", "in0"], ["z"])]
argmax_gather = [helper.make_node("GatherElements", ["in0", "y0"], ["z"], axis=1)]
STOPS = [
    Case("shape_to_reshape", "Shape", [(2, 3, 4)], lambda x: x.reshape(2, -1), extra_nodes=shape_to_reshape),
    Case("shape_to_reshape_dynamic", "Shape", [(2, 3, 4)], lambda x: x.reshape(2, -1),
         extra_nodes=shape_to_reshape, dynamic=True),
    Case("floor_times_x", "Floor", [(3, 4)], lambda x: torch.floor(x) * x, extra_nodes=times_x),
    Case("round_times_x", "Round", [(3, 4)], lambda x: torch.round(x) * x, extra_nodes=times_x),
    Case("ceil", "Ceil", [(3, 4)], torch.ceil),
    Case("sign", "Sign", [(3, 4)], torch.sign, away_from=0.0),
    Case("argmax_gather", "ArgMax", [(3, 4)], lambda x: x.gather(1, x.argmax(1, keepdim=True)),
         attrs=dict(axis=1), extra_nodes=argmax_gather),
]


# ------------------------------------------------------------------------------ int inputs known only at run time
def hidden(op, consts, src="y0", **attrs):
    """Nodes after the case's op: ``op(src, *consts)`` where each constant goes through an
    Identity, so the rules cannot read its value and must take their dynamic path."""
    nodes, names = [], []
    for i, c in enumerate(consts):
        c = np.asarray(c, np.int64)
        nodes.append(helper.make_node("Constant", [], [f"k{i}"], value=helper.make_tensor(
            f"k{i}", TensorProto.INT64, list(c.shape), c.reshape(-1).tolist())))
        nodes.append(helper.make_node("Identity", [f"k{i}"], [f"h{i}"]))
        names.append(f"h{i}")
    return nodes + [helper.make_node(op, [src] + names, ["z"], **attrs)]


def unranked(op, consts=(), inputs=("u",), runtime=False, **attrs):
    """Extra nodes: u = Identity(y0), whose shape the case drops (``unknown_shapes=("u",)``),
    then ``op(*inputs, *consts)``: the rule sees an input of unknown rank."""
    nodes = [helper.make_node("Identity", ["y0"], ["u"])]
    consts = [np.asarray(c, np.int64) for c in consts]
    if runtime:
        return nodes + hidden(op, consts, src="u", **attrs)
    names = []
    for i, c in enumerate(consts):
        nodes.append(helper.make_node("Constant", [], [f"k{i}"], value=helper.make_tensor(
            f"k{i}", TensorProto.INT64, list(c.shape), c.reshape(-1).tolist())))
        names.append(f"k{i}")
    return nodes + [helper.make_node(op, list(inputs) + names, ["z"], **attrs)]


def UCase(name, shape, torch_fn, nodes, **kw):
    return Case(name, "Identity", [shape], torch_fn, extra_nodes=nodes, unknown_shapes=("u",), **kw)


RUNTIME_INTS = [
    Case("pad_runtime_pads", "Identity", [(2, 3)], lambda x: F.pad(x, zpad([0, 1, 2, 0])),
         extra_nodes=hidden("Pad", [[0, 1, 2, 0]])),
    Case("pad18_runtime_axes", "Identity", [(2, 3)], lambda x: F.pad(x, (1, 2)), opset=18,
         extra_nodes=hidden("Pad", [[1, 2], [], [-1]])[:-1] + [helper.make_node("Pad", ["y0", "h0", "", "h2"], ["z"])]),
    Case("slice_runtime", "Identity", [(3, 4)], lambda x: x[:, 1:3], extra_nodes=hidden("Slice", [[1], [3], [1]])),
    Case("slice_runtime_steps", "Identity", [(3, 5)], lambda x: torch.flip(x, [1])[:, ::2],
         extra_nodes=hidden("Slice", [[-1], [I64_MIN], [-1], [-2]])),
    Case("tile_runtime", "Identity", [(2, 3)], lambda x: x.repeat(2, 3), extra_nodes=hidden("Tile", [[2, 3]])),
    Case("sum_runtime_axes", "Identity", [(2, 3, 4)], lambda x: x.sum((0, 2)),
         extra_nodes=hidden("ReduceSum", [[0, -1]], keepdims=0)),
    Case("mean18_runtime_axes", "Identity", [(2, 3, 4)], lambda x: x.mean(1), opset=18,
         extra_nodes=hidden("ReduceMean", [[1]], keepdims=0), dynamic=True),
    Case("max18_runtime_axes_ties", "Identity", [(3, 4)], amax(1, False), opset=18, sampler=tied(1),
         extra_nodes=hidden("ReduceMax", [[1]], keepdims=0)),
    Case("squeeze_runtime", "Identity", [(2, 1, 3)], lambda x: x.squeeze(1), extra_nodes=hidden("Squeeze", [[1]])),
]

UNKNOWN_RANK = [
    UCase("unranked_gather_axis1", (2, 3, 4), lambda x: x[:, [2, -1, 2]], unranked("Gather", [[2, -1, 2]], axis=1)),
    UCase("unranked_gather_last_scalar", (2, 3, 4), lambda x: x[..., -1], unranked("Gather", [-1], axis=-1)),
    UCase("unranked_gather_axis_neg2", (2, 3, 4), lambda x: x[:, [[0, 2], [1, 1]]],
          unranked("Gather", [[[0, 2], [1, 1]]], axis=-2)),
    # axis=1, not -1: onnx.reference's GatherElements mishandles negative axes
    UCase("unranked_gather_elements", (3, 4), lambda x: torch.gather(x, 1, torch.tensor([[0, 3], [1, 1], [2, 0]])),
          unranked("GatherElements", [[[0, -1], [1, 1], [2, 0]]], axis=1)),
    UCase("unranked_concat_neg_axis", (2, 3), lambda x: torch.cat([x, x.flip(1)], -1),
          unranked("Slice", [[-1], [I64_MIN], [1], [-1]])[:-1]
          + [helper.make_node("Slice", ["u", "k0", "k1", "k2", "k3"], ["v"]),
             helper.make_node("Concat", ["u", "v"], ["z"], axis=-1)]),
    UCase("unranked_tile_runtime", (2, 3), lambda x: x.repeat(2, 3), unranked("Tile", [[2, 3]], runtime=True)),
    UCase("unranked_tile", (2, 3), lambda x: x.repeat(1, 2), unranked("Tile", [[1, 2]])),
    UCase("unranked_slice", (3, 4), lambda x: x[:, 1:3], unranked("Slice", [[1], [3], [1]])),
    UCase("unranked_pad", (2, 3), lambda x: F.pad(x, zpad([0, 1, 2, 0])), unranked("Pad", [[0, 1, 2, 0]])),
    UCase("unranked_pad_edge", (2, 3), lambda x: F.pad(x[None], (2, 1), mode="replicate")[0],
          unranked("Pad", [[0, 2, 0, 1]], mode="edge")),
    UCase("unranked_transpose", (2, 3, 4), lambda x: x.permute(1, 2, 0), unranked("Transpose", perm=[1, 2, 0])),
    UCase("unranked_reshape", (2, 3, 4), lambda x: x.reshape(6, 4), unranked("Reshape", [[6, 4]])),
    UCase("unranked_split", (2, 4), lambda x: torch.split(x, [1, 3], -1)[0],
          [helper.make_node("Identity", ["y0"], ["u"]),
           helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k", TensorProto.INT64, [2], [1, 3])),
           helper.make_node("Split", ["u", "k"], ["z", "z1"], axis=-1)]),
    UCase("unranked_sum_nokeep", (2, 3, 4), lambda x: x.sum((0, 2)), unranked("ReduceSum", [[0, -1]], keepdims=0)),
    UCase("unranked_mean_all", (2, 3), lambda x: x.mean(), unranked("ReduceMean", keepdims=0)),
    UCase("unranked_max18_ties", (3, 4), amax(-1, False), unranked("ReduceMax", [[-1]], keepdims=0),
          opset=18, sampler=tied(1)),
    UCase("unranked_l2", (3, 4), lambda x: torch.linalg.vector_norm(x, dim=0),
          unranked("ReduceL2", axes=[0], keepdims=0)),
]

# ------------------------------------------------------------------------------ elements moved or selected
def depth_to_space_crd(x, k):
    n, c, h, w = x.shape
    return F.pixel_shuffle(x, k)    # CRD: channels (c, k, k)


def depth_to_space_dcr(x, k):
    n, c, h, w = x.shape
    return x.reshape(n, k, k, c // (k * k), h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c // (k * k), h * k, w * k)


def space_to_depth(x, k):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // k, k, w // k, k).permute(0, 3, 5, 1, 2, 4).reshape(n, c * k * k, h // k, w // k)


KEEP = np.array([True, False, True, True, False])
MOVES = [
    Case("depth_to_space_dcr", "DepthToSpace", [(2, 8, 3, 5)], lambda x: depth_to_space_dcr(x, 2),
         attrs=dict(blocksize=2)),
    Case("depth_to_space_crd", "DepthToSpace", [(2, 18, 2, 3)], lambda x: depth_to_space_crd(x, 3),
         attrs=dict(blocksize=3, mode="CRD")),
    Case("depth_to_space_dynamic", "DepthToSpace", [(3, 4, 3, 2)], lambda x: depth_to_space_dcr(x, 2),
         attrs=dict(blocksize=2), dynamic=True),
    Case("space_to_depth", "SpaceToDepth", [(2, 3, 4, 6)], lambda x: space_to_depth(x, 2), attrs=dict(blocksize=2)),
    Case("compress_axis", "Compress", [(3, 5, 2), KEEP], lambda x, c: x[:, c], attrs=dict(axis=1)),
    Case("compress_flat_short_condition", "Compress", [(2, 3), KEEP[:4]], lambda x, c: x.reshape(-1)[:4][c]),
    Case("compress_dynamic", "Compress", [(4, 3), KEEP[:3]], lambda x, c: x[:, c], attrs=dict(axis=-1),
         dynamic=True),
    Case("one_hot_values", "OneHot", [ints(1, -1, 0, 3), np.array(4, np.int64), (2,)],
         lambda i, d, v: torch.where(F.one_hot(i % 4, 4).bool(), v[1], v[0])),
    Case("one_hot_axis0", "OneHot", [ints(2, 0), np.array(3.0, np.float32), (2,)],
         lambda i, d, v: torch.where(F.one_hot(i, 3).bool().T, v[1], v[0]), attrs=dict(axis=0)),
]

ALL = RESHAPE + JOIN + INDEXING + PADDING + REDUCE + STOPS + RUNTIME_INTS + UNKNOWN_RANK + MOVES


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
def test_case(case):
    check_case(case)


@pytest.mark.parametrize("pads, axes", [([0, -1, 1, -2], None), ([-1, 2, 1, -1], None), ([-1, 1], [1])])
def test_pad_negative_crop(pads, axes):
    """Pad with negative pads crops; onnx.reference cannot run such a forward (numpy.pad), so this
    checks onnxruntime in float32 against torch autograd (F.pad crops on negative pads too)."""
    import onnxruntime as ort
    from onnxplain.converters.normalize import normalize
    from vjp_harness import vjp_model

    opset = 18 if axes else 17
    inits = [helper.make_tensor("pads", TensorProto.INT64, [len(pads)], pads)]
    ins = ["x", "pads"]
    if axes:
        inits.append(helper.make_tensor("axes", TensorProto.INT64, [len(axes)], axes))
        ins += ["", "axes"]
    full = pads if not axes else [0, pads[0], 0, pads[1]]
    tp = zpad(full)
    x = np.random.default_rng(0).standard_normal((3, 4))
    y_shape = list(F.pad(torch.tensor(x), tp).shape)
    graph = helper.make_graph([helper.make_node("Pad", ins, ["y"])], "neg_pad",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    model = normalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    vm = vjp_model(model, ["x"], "y")
    dy = np.random.default_rng(1).standard_normal(y_shape)
    sess = ort.InferenceSession(vm.SerializeToString(), providers=["CPUExecutionProvider"])
    y32, g32 = sess.run(None, {"x": x.astype(np.float32), "dy": dy.astype(np.float32)})
    tx = torch.tensor(x, requires_grad=True)
    ty = F.pad(tx, tp)
    (tg,) = torch.autograd.grad(ty, tx, torch.tensor(dy))
    np.testing.assert_allclose(y32, ty.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g32, tg.numpy(), rtol=1e-6, atol=1e-6)


def test_pad_unknown_mode_raises_at_build_time():
    """A Pad mode without a rule is reported when the graph is built, naming the node."""
    from onnxplain.backward import backward
    from onnxplain.errors import UnsupportedOperatorError
    from onnxplain.graph import GraphBuilder

    graph = helper.make_graph(
        [helper.make_node("Pad", ["x", "pads"], ["y"], mode="mirror", name="odd_pad")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor("pads", TensorProto.INT64, [4], [0, 1, 0, 1])])
    b = GraphBuilder(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    seed = b.add_input("dy", TensorProto.FLOAT, [2, 5])
    with pytest.raises(UnsupportedOperatorError, match="Pad"):
        backward(b, "y", seed, ["x"])
