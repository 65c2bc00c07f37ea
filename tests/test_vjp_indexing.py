"""Backward rules of Einsum, GatherND, ScatterND, ScatterElements (every reduction), TensorScatter, TopK,
ReduceProd, CumProd, Col2Im, CumSum, Trilu and Mod, against finite differences (float64, onnx.reference),
torch autograd and onnxruntime."""
import dataclasses

import numpy as np
import pytest
import torch
from onnx import helper

from vjp_harness import Case, build_case_model, check_case, run_reference, vjp_model

RNG = np.random.default_rng(11)

# the harness probes each model's output shape with all-zero inputs: fmod(0, 0) warns there
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in fmod:RuntimeWarning")


def ints(*rows):
    """An int64 index array with these rows."""
    return np.array(rows, np.int64)


def arr(*shape):
    return RNG.standard_normal(shape)


def einsum(eq, *shapes, **kw):
    """A case of Einsum with every operand attributed (or constant, when given as an array)."""
    return Case(f"einsum_{eq.replace(',', '_').replace('->', '_to_').replace('...', 'E')}", "Einsum", list(shapes),
                lambda *t: torch.einsum(eq, *t), attrs=dict(equation=eq), **kw)


# ------------------------------------------------------------------------------------- Einsum
EINSUM = [
    einsum("ij,jk->ik", (3, 4), (4, 5)),
    einsum("ij,jk", (3, 4), (4, 2)),                          # implicit output: "ik"
    einsum("bhqd,bhkd->bhqk", (2, 2, 3, 4), (2, 2, 5, 4)),    # attention scores
    einsum("bhqk,bhkd->bhqd", (2, 2, 3, 5), (2, 2, 5, 4)),    # attention-weighted values
    einsum("bij,jk->bik", (2, 3, 4), arr(4, 5)),              # a constant weight
    einsum("ij->ji", (3, 4)),
    einsum("ij->i", (3, 4)),                                  # j is summed by the only operand
    einsum("ij,j->", (3, 4), (4,)),                           # scalar output
    einsum("i,j->ij", (3,), (4,)),                            # outer product
    einsum("i,i", (5,), (5,)),                                # implicit scalar
    einsum("ij,jk,kl->il", (2, 3), (3, 4), (4, 2)),
    einsum("ik,jk->ijk", (2, 3), (4, 3)),
    einsum("bn,anm,bm->ba", (2, 3), (4, 3, 5), (2, 5)),       # bilinear
    einsum("...ij,...jk->...ik", (2, 3, 4), (2, 4, 5)),
    einsum("...ij,...jk->...ik", (2, 1, 3, 4), (1, 5, 4, 2)),   # ellipsis broadcast both ways
    einsum("...ij,...jk->...ik", (1, 3, 4), (2, 4, 5)),      # a size-1 ellipsis axis broadcast
    einsum("...i,i", (2, 3, 4), (4,)),                        # implicit output with ellipsis: "..."
    einsum("Ab,bC->AC", (3, 4), (4, 2)),                      # upper-case subscripts
    einsum(" ij , jk -> ik ", (3, 4), (4, 5)),                # spaces
    einsum("bij,bjk->bik", (3, 2, 4), (3, 4, 2), dynamic=True),
    einsum("bhqd,bhkd->bhqk", (2, 2, 3, 4), (2, 2, 5, 4), dynamic=True),
    # repeated subscripts: diagonals (and their sum, the trace)
    einsum("ii->i", (3, 3)),
    einsum("ii->", (3, 3)),
    einsum("iij,j->i", (3, 3, 2), (2,)),
    einsum("bii->bi", (2, 4, 4), dynamic=True),
    einsum("...ii->...i", (2, 3, 3)),
    einsum("iji->j", (3, 2, 3)),
    einsum("ij,jj->i", (2, 3), (3, 3)),
]


def test_einsum_same_tensor_twice():
    """x is both operands: the walker adds the two cotangents (d/dx sum_j x_ij x_ij = 2 x)."""
    square = helper.make_node("Einsum", ["y0", "y0"], ["z"], equation="ij,ij->i")
    check_case(Case("einsum_square", "Identity", [(3, 4)], lambda x: torch.einsum("ij,ij->i", x, x),
                    extra_nodes=[square]))


# ------------------------------------------------------------------------------------- GatherND
def take_nd(batch_dims=0):
    """torch equivalent of ONNX GatherND."""
    def fn(x, i):
        i = i.long()
        lead = []
        for j in range(batch_dims):
            shape = [1] * (i.dim() - 1)
            shape[j] = x.shape[j]
            lead.append(torch.arange(x.shape[j]).reshape(shape).expand(i.shape[:-1]))
        sizes = torch.tensor(x.shape[batch_dims:batch_dims + i.shape[-1]])
        return x[tuple(lead) + tuple((i % sizes).unbind(-1))]
    return fn


GATHER_ND = [
    Case("gathernd_elements", "GatherND", [(3, 4), ints([0, 1], [2, 3], [0, 1])], take_nd()),   # repeats add up
    Case("gathernd_rows", "GatherND", [(3, 4, 2), ints([[2], [0]], [[1], [2]])], take_nd()),
    Case("gathernd_negative", "GatherND", [(3, 4), ints([-1, 0], [1, -2])], take_nd()),
    Case("gathernd_batch1_last_token", "GatherND", [(2, 5, 3), ints([4], [2])], take_nd(1),
         attrs=dict(batch_dims=1)),                                                              # GPT-2's pooling
    Case("gathernd_batch1_pairs", "GatherND", [(2, 3, 4), ints([[0, 1], [2, 3]], [[1, 1], [1, 1]])], take_nd(1),
         attrs=dict(batch_dims=1)),
    Case("gathernd_batch2", "GatherND", [(2, 3, 4, 2), np.array([[[1], [3], [1]], [[0], [2], [0]]], np.int64)],
         take_nd(2), attrs=dict(batch_dims=2)),
    Case("gathernd_rows_dynamic", "GatherND", [(3, 4, 2), ints([[2], [0]], [[1], [2]])], take_nd(), dynamic=True),
    Case("gathernd_batch1_dynamic", "GatherND", [(2, 5, 3), ints([4], [-1])], take_nd(1),
         attrs=dict(batch_dims=1), dynamic=True),
]


# ------------------------------------------------------------------------------------- scatters
def put_nd(accumulate):
    def fn(data, idx, upd):
        sizes = torch.tensor(data.shape[:idx.shape[-1]])
        return data.index_put(tuple((idx.long() % sizes).unbind(-1)), upd, accumulate=accumulate)
    return fn


def scatter(axis, add):
    def fn(data, idx, upd):
        idx = idx.long() % data.shape[axis]
        return data.scatter_add(axis, idx, upd) if add else data.scatter(axis, idx, upd)
    return fn


IDX_ND = ints([0, 1], [2, 3], [1, 0])
IDX_ROWS = ints([2], [0])
IDX_EL = ints([1, 0, 2], [0, 2, 1])
SCATTER = [
    Case("scatternd_elements", "ScatterND", [(3, 4), IDX_ND, (3,)], put_nd(False)),
    Case("scatternd_rows", "ScatterND", [(3, 4), IDX_ROWS, (2, 4)], put_nd(False)),
    Case("scatternd_negative", "ScatterND", [(3, 4), ints([-1], [0]), (2, 4)], put_nd(False)),
    Case("scatternd_add_repeats", "ScatterND", [(3, 4), ints([1], [1], [0]), (3, 4)], put_nd(True),
         attrs=dict(reduction="add")),
    Case("scatternd_only_updates", "ScatterND", [arr(3, 4), IDX_ROWS, (2, 4)], put_nd(False)),
    Case("scatternd_only_data", "ScatterND", [(3, 4), IDX_ROWS, arr(2, 4)], put_nd(False)),
    Case("scatternd_dynamic", "ScatterND", [(3, 4), IDX_ROWS, (2, 4)], put_nd(False), dynamic=True),
    Case("scatter_elements_axis0", "ScatterElements", [(3, 3), IDX_EL, (2, 3)], scatter(0, False)),
    Case("scatter_elements_axis1", "ScatterElements", [(2, 4), IDX_EL, (2, 3)], scatter(1, False),
         attrs=dict(axis=1)),
    Case("scatter_elements_negative", "ScatterElements", [(2, 4), ints([-1, 0], [1, -2]), (2, 2)],
         scatter(1, False), attrs=dict(axis=-1)),
    Case("scatter_elements_partial", "ScatterElements", [(3, 4), IDX_EL, (2, 3)], scatter(1, False),
         attrs=dict(axis=1)),                                   # the indices cover 2 of 3 rows
    Case("scatter_elements_partial_dynamic", "ScatterElements", [(3, 4), IDX_EL, (2, 3)], scatter(1, False),
         attrs=dict(axis=-1), dynamic=True),
    Case("scatter_elements_add", "ScatterElements", [(3, 3), ints([1, 1, 0], [1, 0, 0]), (2, 3)], scatter(0, True),
         attrs=dict(reduction="add")),
    Case("scatter_elements_dynamic", "ScatterElements", [(3, 3), IDX_EL, (2, 3)], scatter(0, False), dynamic=True),
]


# ------------------------------------------------------------------------------------- CumSum, Trilu, Mod
def cumsum(axis, exclusive=0, reverse=0):
    def fn(x, a):
        x_ = x.flip(axis) if reverse else x
        y = x_.cumsum(axis)
        if exclusive:
            y = y - x_
        return y.flip(axis) if reverse else y
    return fn


CUMSUM = [Case(f"cumsum_axis{axis}_excl{e}_rev{r}", "CumSum", [(3, 4), np.array(axis)], cumsum(axis, e, r),
               attrs=dict(exclusive=e, reverse=r))
          for axis in (1, -2) for e in (0, 1) for r in (0, 1)]
CUMSUM.append(Case("cumsum_dynamic", "CumSum", [(3, 4), np.array(1)], cumsum(1), dynamic=True))
CUMSUM.append(Case("cumsum_int32_axis", "CumSum", [(3, 4), np.array(0, np.int32)], cumsum(0, 1, 1),
                   attrs=dict(exclusive=1, reverse=1)))

TRILU = [
    Case("triu", "Trilu", [(4, 5)], torch.triu),
    Case("tril", "Trilu", [(4, 5)], torch.tril, attrs=dict(upper=0)),
    Case("triu_k1_batched", "Trilu", [(2, 4, 4), np.array(1)], lambda x, k: torch.triu(x, 1)),
    Case("tril_kneg_batched", "Trilu", [(2, 3, 4), np.array(-1)], lambda x, k: torch.tril(x, -1), attrs=dict(upper=0)),
    Case("tril_dynamic", "Trilu", [(2, 4, 4)], torch.tril, attrs=dict(upper=0), dynamic=True),
]

MOD = [
    Case("fmod", "Mod", [(3, 4), (3, 4)], torch.fmod, attrs=dict(fmod=1), positive=True),
    Case("fmod_signed_dividend", "Mod", [(3, 4), 0.7 + np.abs(arr(3, 4))], torch.fmod, attrs=dict(fmod=1)),
    Case("fmod_broadcast_divisor", "Mod", [(3, 4), (4,)], torch.fmod, attrs=dict(fmod=1), positive=True),
]

# ------------------------------------------------------------------------------------- scatters with reductions
def _flat_targets(data, idx):
    """ScatterND's index tuples as flat row numbers of data viewed as (prod(shape[:k]), rest)."""
    k = idx.shape[-1]
    sizes = torch.tensor(data.shape[:k])
    tuples = (idx.long() % sizes).reshape(-1, k)
    strides = torch.tensor([int(np.prod(data.shape[i + 1:k])) for i in range(k)])
    return (tuples * strides).sum(-1)


def put_nd_reduce(reduce):
    """torch equivalent of ScatterND with reduction mul / max / min (torch's scatter_reduce, self included)."""
    def fn(data, idx, upd):
        k = idx.shape[-1]
        rows = _flat_targets(data, idx)
        flat = data.reshape(int(np.prod(data.shape[:k])), -1)
        src = upd.reshape(rows.shape[0], -1)
        out = flat.scatter_reduce(0, rows[:, None].expand(-1, flat.shape[1]), src, reduce, include_self=True)
        return out.reshape(data.shape)
    return fn


def put_nd_in_order(data, idx, upd):
    """ScatterND without reduction, the updates written one after the other (the last write wins)."""
    k = idx.shape[-1]
    sizes = torch.tensor(data.shape[:k])
    tuples = (idx.long() % sizes).reshape(-1, k)
    src = upd.reshape((tuples.shape[0],) + tuple(data.shape[k:]))
    out = data
    for t, u in zip(tuples, src):
        out = out.index_put(tuple(t.reshape(-1, 1)), u[None])
    return out


def scatter_reduce(axis, reduce):
    def fn(data, idx, upd):
        return data.scatter_reduce(axis, idx.long() % data.shape[axis], upd, reduce, include_self=True)
    return fn


def scatter_in_order(axis):
    """ScatterElements without reduction, element by element in row-major order of the indices."""
    def fn(data, idx, upd):
        out = data
        for pos in np.ndindex(*idx.shape):
            target = list(pos)
            target[axis] = int(idx[pos]) % data.shape[axis]
            out = out.index_put(tuple(torch.tensor([t]) for t in target), upd[pos].reshape(1))
        return out
    return fn


def with_zeros(*flat_positions):
    """A sampler drawing N(0, 1) with zeros at these flat positions of every attributed input."""
    def sample(rng, shape):
        x = rng.standard_normal(shape)
        x.reshape(-1)[[p for p in flat_positions if p < x.size]] = 0.0
        return x
    return sample


IDX_ND_REPEATS = ints([0, 1], [2, 3], [0, 1], [1, 0], [0, 1])
IDX_EL_REPEATS = ints([1, 1, 0], [1, 0, 0])
SCATTER_REDUCTIONS = [
    # without reduction, an index written twice: the last update wins (the earlier ones get no cotangent)
    Case("scatternd_repeats_last_wins", "ScatterND", [(3, 4), IDX_ND_REPEATS, (5,)], put_nd_in_order),
    Case("scatternd_rows_repeats_last_wins", "ScatterND", [(3, 4), ints([1], [0], [1]), (3, 4)], put_nd_in_order),
    Case("scatter_elements_repeats_last_wins", "ScatterElements", [(3, 3), IDX_EL_REPEATS, (2, 3)],
         scatter_in_order(0)),
    Case("scatter_elements_repeats_last_wins_dynamic", "ScatterElements", [(3, 3), IDX_EL_REPEATS, (2, 3)],
         scatter_in_order(0), dynamic=True),
    # mul: products of data and updates; repeats multiply, zeros among the updates
    Case("scatternd_mul", "ScatterND", [(3, 4), IDX_ND, (3,)], put_nd_reduce("prod"), attrs=dict(reduction="mul")),
    Case("scatternd_mul_repeats", "ScatterND", [(3, 4), IDX_ND_REPEATS, (5,)], put_nd_reduce("prod"),
         attrs=dict(reduction="mul")),
    Case("scatternd_mul_repeats_zeros", "ScatterND", [(3, 4), IDX_ND_REPEATS, (5,)], put_nd_reduce("prod"),
         attrs=dict(reduction="mul"), sampler=with_zeros(0, 2)),       # one zero at (0, 1), another alone
    Case("scatternd_mul_two_zeros_at_one_place", "ScatterND", [(3, 4), IDX_ND_REPEATS, (5,)],
         put_nd_reduce("prod"), attrs=dict(reduction="mul"), sampler=with_zeros(0, 4)),
    Case("scatternd_mul_rows", "ScatterND", [(3, 4), ints([1], [1], [2]), (3, 4)], put_nd_reduce("prod"),
         attrs=dict(reduction="mul")),
    Case("scatter_elements_mul", "ScatterElements", [(3, 3), IDX_EL, (2, 3)], scatter_reduce(0, "prod"),
         attrs=dict(reduction="mul")),
    Case("scatter_elements_mul_repeats_zeros", "ScatterElements", [(3, 3), IDX_EL_REPEATS, (2, 3)],
         scatter_reduce(0, "prod"), attrs=dict(reduction="mul"), sampler=with_zeros(1, 4)),
    Case("scatter_elements_mul_axis1_dynamic", "ScatterElements", [(2, 4), IDX_EL, (2, 3)],
         scatter_reduce(1, "prod"), attrs=dict(reduction="mul", axis=1), dynamic=True),
    # max / min: the cotangent goes to the extremum among data and updates
    Case("scatternd_max", "ScatterND", [(3, 4), IDX_ND, (3,)], put_nd_reduce("amax"), attrs=dict(reduction="max"),
         opset=18),
    Case("scatternd_min_repeats", "ScatterND", [(3, 4), IDX_ND_REPEATS, (5,)], put_nd_reduce("amin"),
         attrs=dict(reduction="min"), opset=18),
    Case("scatternd_max_rows_repeats", "ScatterND", [(3, 4), ints([1], [1], [2]), (3, 4)], put_nd_reduce("amax"),
         attrs=dict(reduction="max"), opset=18),
    Case("scatter_elements_max_repeats", "ScatterElements", [(3, 3), IDX_EL_REPEATS, (2, 3)],
         scatter_reduce(0, "amax"), attrs=dict(reduction="max"), opset=18),
    Case("scatter_elements_min_axis1", "ScatterElements", [(2, 4), ints([-1, 0], [1, -2]), (2, 2)],
         scatter_reduce(1, "amin"), attrs=dict(reduction="min", axis=-1), opset=18),
    Case("scatter_elements_min_dynamic", "ScatterElements", [(3, 3), IDX_EL_REPEATS, (2, 3)],
         scatter_reduce(0, "amin"), attrs=dict(reduction="min"), opset=18, dynamic=True),
    Case("scatter_elements_max_only_updates", "ScatterElements", [arr(3, 3), IDX_EL_REPEATS, (2, 3)],
         scatter_reduce(0, "amax"), attrs=dict(reduction="max"), opset=18),
]


def test_scatter_max_splits_ties_like_torch():
    """An update equal to the data it is reduced with: the cotangent is split equally (torch's scatter_reduce)."""
    data = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    updates = np.array([[1.0, 7.0, 3.0]])
    case = Case("ties", "ScatterElements", [(2, 3), np.zeros((1, 3), np.int64), (1, 3)],
                attrs=dict(reduction="max"), opset=18)
    model, wrt, out = build_case_model(case)
    dy = RNG.standard_normal((2, 3))
    got = run_reference(vjp_model(model, wrt, out), {"in0": data, "in2": updates, "dy": dy})[1:]
    td, tu = torch.tensor(data, requires_grad=True), torch.tensor(updates, requires_grad=True)
    y = td.scatter_reduce(0, torch.zeros((1, 3), dtype=torch.long), tu, "amax", include_self=True)
    ref = torch.autograd.grad(y, [td, tu], torch.tensor(dy))
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r.numpy(), rtol=1e-12)


# ------------------------------------------------------------------------------------- TensorScatter
def tensor_scatter(axis, circular=False, with_indices=True):
    """The spec's pseudocode, one write after the other."""
    def fn(past, update, *w):
        rank = past.dim()
        ax = axis % rank
        p, u = past.movedim(ax, 1), update.movedim(ax, 1)
        length = p.shape[1]
        for bi in range(p.shape[0]):
            for s in range(u.shape[1]):
                c = (int(w[0][bi]) if with_indices else 0) + s
                c = c % length if circular else c
                p = p.index_put((torch.tensor([bi]), torch.tensor([c])), u[bi, s][None])
        return p.movedim(1, ax)
    return fn


TENSOR_SCATTER = [
    Case("tensor_scatter_prefill", "TensorScatter", [(2, 5, 3), (2, 2, 3)], tensor_scatter(-2, with_indices=False),
         opset=24),
    Case("tensor_scatter_decode", "TensorScatter", [(2, 5, 3), (2, 1, 3), np.array([3, 1])], tensor_scatter(-2),
         opset=24),
    Case("tensor_scatter_4d_axis2", "TensorScatter", [(2, 2, 6, 3), (2, 2, 2, 3), np.array([1, 4])],
         tensor_scatter(2), attrs=dict(axis=2), opset=24),
    Case("tensor_scatter_circular", "TensorScatter", [(2, 4, 3), (2, 3, 3), np.array([2, 3])],
         tensor_scatter(-2, circular=True), attrs=dict(mode="circular"), opset=24),
    Case("tensor_scatter_circular_full", "TensorScatter", [(2, 3, 2), (2, 3, 2), np.array([1, 2])],
         tensor_scatter(1, circular=True), attrs=dict(mode="circular", axis=1), opset=24),
    Case("tensor_scatter_dynamic", "TensorScatter", [(2, 5, 3), (2, 2, 3), np.array([0, 3])], tensor_scatter(-2),
         opset=24, dynamic=True),
]


# ------------------------------------------------------------------------------------- TopK
def topk(k, axis=-1, largest=True):
    return lambda x, kk: torch.topk(x, k, dim=axis, largest=largest, sorted=True)[0]


TOPK = [
    Case("topk_last_axis", "TopK", [(3, 5), np.array([2])], topk(2), n_outputs=2),
    Case("topk_smallest", "TopK", [(3, 5), np.array([3])], topk(3, largest=False), attrs=dict(largest=0),
         n_outputs=2),
    Case("topk_axis0", "TopK", [(4, 3), np.array([2])], topk(2, axis=0), attrs=dict(axis=0), n_outputs=2),
    Case("topk_negative_axis_3d", "TopK", [(2, 4, 3), np.array([2])], topk(2, axis=-2), attrs=dict(axis=-2),
         n_outputs=2),
    Case("topk_all", "TopK", [(2, 4), np.array([4])], topk(4), n_outputs=2),
    Case("topk_dynamic", "TopK", [(3, 5), np.array([2])], topk(2), n_outputs=2, dynamic=True),
    # the values of an unsorted TopK, summed (their order is the runtime's)
    Case("topk_unsorted_sum", "TopK", [(3, 5), np.array([3])],
         lambda x, k: torch.topk(x, 3, dim=-1).values.sum(), attrs=dict(sorted=0), n_outputs=2,
         extra_nodes=[helper.make_node("ReduceSum", ["y0"], ["z"], keepdims=0)]),
]


# ------------------------------------------------------------------------------------- ReduceProd
def prod(axes, keepdims=True):
    def fn(x, *_):
        out = x
        for a in sorted((a % x.dim() for a in axes), reverse=True):
            out = out.prod(a, keepdim=keepdims)
        return out
    return fn


def prod_all(keepdims=True):
    return lambda x, *_: x.prod().reshape([1] * x.dim() if keepdims else [])


# zeros: one in the group of row 0, two in the group of row 1 (ReduceProd over axis 1 of a (3, 4) tensor)
ZEROS_34 = with_zeros(1, 4, 6)


def reduce_prod_runtime_axes(axes, keepdims):
    """ReduceProd whose axes come from a node (not a constant), so the rule reads them at run time."""
    return [helper.make_node("Identity", ["in1"], ["axes"]),
            helper.make_node("ReduceProd", ["y0", "axes"], ["z"], keepdims=keepdims)]


REDUCE_PROD = [
    Case("reduce_prod_axis1_attr", "ReduceProd", [(3, 4)], prod([1]), attrs=dict(axes=[1])),
    Case("reduce_prod_zeros_attr", "ReduceProd", [(3, 4)], prod([1]), attrs=dict(axes=[1]), sampler=ZEROS_34),
    Case("reduce_prod_zeros_drop_dims", "ReduceProd", [(3, 4)], prod([1], False), attrs=dict(axes=[1], keepdims=0),
         sampler=ZEROS_34),
    Case("reduce_prod_all", "ReduceProd", [(2, 3)], prod_all()),
    Case("reduce_prod_all_zeros_drop_dims", "ReduceProd", [(2, 3)], prod_all(False), attrs=dict(keepdims=0),
         sampler=with_zeros(2)),
    Case("reduce_prod_two_axes_zeros", "ReduceProd", [(2, 3, 4)], prod([0, 2]), attrs=dict(axes=[2, 0]),
         sampler=with_zeros(0, 5, 13, 14)),
    Case("reduce_prod_axes_input", "ReduceProd", [(3, 4), np.array([-1])], prod([-1]), opset=18,
         sampler=ZEROS_34),
    Case("reduce_prod_axes_input_drop_dims", "ReduceProd", [(2, 3, 4), np.array([0, 1])], prod([0, 1], False),
         attrs=dict(keepdims=0), opset=18, sampler=with_zeros(0, 4, 16)),
    Case("reduce_prod_noop_empty_axes", "ReduceProd", [(2, 3)], lambda x: x, attrs=dict(noop_with_empty_axes=1),
         opset=18),
    Case("reduce_prod_dynamic_reduced_axis", "ReduceProd", [(3, 4)], prod([0]), attrs=dict(axes=[0]),
         dynamic=True, sampler=with_zeros(0, 5, 9)),             # the batch axis: its size is read at run time
    Case("reduce_prod_dynamic_reduced_axis_opset18", "ReduceProd", [(5, 2), np.array([0])], prod([0]),
         dynamic=True, opset=18, sampler=with_zeros(3)),
    Case("reduce_prod_dynamic_kept_axis", "ReduceProd", [(3, 4)], prod([1]), attrs=dict(axes=[1]), dynamic=True,
         sampler=ZEROS_34),
    # axes known only at run time: counted zeros
    Case("reduce_prod_runtime_axes_zeros", "Identity", [(3, 4), np.array([1])], prod([1]), opset=18,
         node_inputs=1, extra_nodes=reduce_prod_runtime_axes([1], 1), sampler=ZEROS_34),
    Case("reduce_prod_runtime_axes_drop_dims", "Identity", [(2, 3, 4), np.array([0, 2])], prod([0, 2], False),
         opset=18, node_inputs=1, extra_nodes=reduce_prod_runtime_axes([0, 2], 0), sampler=with_zeros(0, 1)),
]


def test_reduce_prod_gradient_at_zeros_is_the_product_of_the_others():
    """Exactly: with one zero in a group, only the zero gets a cotangent, the product of the others."""
    case = REDUCE_PROD[1]
    model, wrt, out = build_case_model(case)
    x = np.array([[2.0, 0.0, 3.0, 5.0], [0.0, 7.0, 0.0, 1.0], [1.5, 2.0, 4.0, 0.5]])
    dy = np.ones((3, 1))
    g = run_reference(vjp_model(model, wrt, out), {"in0": x, "dy": dy})[1]
    np.testing.assert_array_equal(g, [[0, 30, 0, 0], [0, 0, 0, 0], [4, 3, 1.5, 12]])


# ------------------------------------------------------------------------------------- CumProd
def cumprod(axis, exclusive=0, reverse=0):
    def fn(x, *_):
        x_ = x.flip(axis) if reverse else x
        if exclusive:
            ones = torch.ones_like(x_.narrow(axis, 0, 1))
            x_ = torch.cat([ones, x_.narrow(axis, 0, x_.shape[axis] - 1)], axis)
        y = x_.cumprod(axis)
        return y.flip(axis) if reverse else y
    return fn


def cumprod_runtime_axis(**attrs):
    return [helper.make_node("Identity", ["in1"], ["axis"]), helper.make_node("CumProd", ["y0", "axis"], ["z"], **attrs)]


CUMPROD = [Case(f"cumprod_axis{axis}_excl{e}_rev{r}", "CumProd", [(3, 5), np.array(axis)], cumprod(axis, e, r),
                attrs=dict(exclusive=e, reverse=r), opset=26, sampler=with_zeros(2, 8, 9))
           for axis in (1, -2) for e in (0, 1) for r in (0, 1)]
CUMPROD += [
    Case("cumprod_long_axis", "CumProd", [(2, 11), np.array(1)], cumprod(1), opset=26, sampler=with_zeros(3)),
    Case("cumprod_int32_axis", "CumProd", [(3, 4), np.array(0, np.int32)], cumprod(0, 1, 1),
         attrs=dict(exclusive=1, reverse=1), opset=26),
    Case("cumprod_dynamic_axis", "CumProd", [(5, 3), np.array(0)], cumprod(0), opset=26, dynamic=True,
         sampler=with_zeros(4)),        # the batch axis: its size is read at run time (a Loop)
    Case("cumprod_dynamic_reverse_exclusive", "CumProd", [(5, 3), np.array(0)], cumprod(0, 1, 1),
         attrs=dict(exclusive=1, reverse=1), opset=26, dynamic=True),
    Case("cumprod_runtime_axis", "Identity", [(3, 5), np.array(-1)], cumprod(-1), opset=26, node_inputs=1,
         extra_nodes=cumprod_runtime_axis(), sampler=with_zeros(2, 8, 9)),
    Case("cumprod_runtime_axis_reverse_exclusive", "Identity", [(3, 5), np.array(0)], cumprod(0, 1, 1), opset=26,
         node_inputs=1, extra_nodes=cumprod_runtime_axis(exclusive=1, reverse=1), sampler=with_zeros(2)),
]


# ------------------------------------------------------------------------------------- Col2Im
def fold(image, block, strides=(1, 1), dilations=(1, 1), pad=(0, 0)):
    return lambda x, *_: torch.nn.functional.fold(x, tuple(image), tuple(block), dilation=tuple(dilations),
                                                   padding=tuple(pad), stride=tuple(strides))


def col2im(name, channels, image, block, strides=None, dilations=None, pads=None, torch_pad=None, **kw):
    n = len(image)
    s, d, p = strides or [1] * n, dilations or [1] * n, pads or [0] * (2 * n)
    padded = [i + p[k] + p[k + n] for k, i in enumerate(image)]
    blocks = int(np.prod([(q - ((b - 1) * dd + 1)) // ss + 1 for q, b, dd, ss in zip(padded, block, d, s)]))
    attrs = {k: v for k, v in dict(strides=strides, dilations=dilations, pads=pads).items() if v is not None}
    fn = fold(image, block, s, d, torch_pad or p[:n]) if n == 2 and (torch_pad or p[:n] == p[n:]) else None
    return Case(name, "Col2Im", [(2, channels * int(np.prod(block)), blocks), np.array(image), np.array(block)],
                fn, attrs=attrs, opset=18, **kw)


def col2im_runtime_shapes(**attrs):
    return [helper.make_node("Identity", ["in1"], ["image"]), helper.make_node("Identity", ["in2"], ["block"]),
            helper.make_node("Col2Im", ["y0", "image", "block"], ["z"], **attrs)]


COL2IM = [
    col2im("col2im_basic", 1, [5, 5], [1, 5]),
    col2im("col2im_overlapping", 2, [4, 5], [2, 3]),
    col2im("col2im_strides", 2, [5, 5], [3, 3], strides=[2, 2]),
    col2im("col2im_pads", 1, [5, 5], [2, 2], pads=[1, 1, 1, 1]),
    col2im("col2im_asymmetric_pads", 2, [4, 5], [2, 3], pads=[1, 0, 0, 2], strides=[1, 2]),
    col2im("col2im_dilations", 1, [6, 6], [2, 2], dilations=[2, 3]),
    col2im("col2im_3d", 2, [3, 4, 3], [2, 2, 1], strides=[1, 2, 1]),
    col2im("col2im_dynamic", 2, [4, 5], [2, 3], strides=[2, 1], dynamic=True),
    Case("col2im_runtime_shapes", "Identity", [(2, 12, 9), np.array([4, 5]), np.array([2, 3])],
         fold([4, 5], [2, 3], (2, 1), (1, 1), (1, 0)), node_inputs=1, opset=18,
         extra_nodes=col2im_runtime_shapes(strides=[2, 1], pads=[1, 0, 1, 0])),
]


# the same rules in the newest opset the project targets (the dynamo exporter writes opset 18+)
NEWEST = [dataclasses.replace(c, name=c.name + "_opset22", opset=22)
          for c in (EINSUM[2], GATHER_ND[3], SCATTER[1], SCATTER[-1], SCATTER_REDUCTIONS[5],
                    SCATTER_REDUCTIONS[13], TOPK[0], REDUCE_PROD[6], REDUCE_PROD[10], COL2IM[4], CUMSUM[3],
                    TRILU[2], MOD[0])]

ALL = (EINSUM + GATHER_ND + SCATTER + SCATTER_REDUCTIONS + TENSOR_SCATTER + TOPK + REDUCE_PROD + CUMPROD + COL2IM
       + CUMSUM + TRILU + MOD + NEWEST)


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
def test_case(case):
    check_case(case)


# ------------------------------------------------------------------------------------- what is refused
def test_einsum_diagonal_of_a_constant_operand():
    """Only the attributed operand's own subscripts must be distinct: a constant may be read on its diagonal."""
    check_case(einsum("ii,i->i", arr(3, 3), (3,)))
