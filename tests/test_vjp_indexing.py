"""Backward rules of Einsum, GatherND, ScatterND, ScatterElements, CumSum, Trilu and Mod,
against finite differences (float64, onnx.reference), torch autograd and onnxruntime."""
import dataclasses

import numpy as np
import pytest
import torch
from onnx import helper

from onnxplain.errors import UnsupportedOperatorError
from vjp_harness import Case, build_case_model, check_case, vjp_model

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

# the same rules in the newest opset the project targets (the dynamo exporter writes opset 18+)
NEWEST = [dataclasses.replace(c, name=c.name + "_opset22", opset=22)
          for c in (EINSUM[2], GATHER_ND[3], SCATTER[1], SCATTER[-1], CUMSUM[3], TRILU[2], MOD[0])]

ALL = EINSUM + GATHER_ND + SCATTER + CUMSUM + TRILU + MOD + NEWEST


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
def test_case(case):
    check_case(case)


# ------------------------------------------------------------------------------------- what is refused
@pytest.mark.parametrize("equation,shapes", [("ii->i", [(3, 3)]), ("ii->", [(3, 3)]), ("iij,j->i", [(3, 3, 2), (2,)])])
def test_einsum_diagonal_is_refused(equation, shapes):
    model, wrt, out = build_case_model(Case("diag", "Einsum", shapes, attrs=dict(equation=equation)))
    with pytest.raises(UnsupportedOperatorError, match="repeated subscripts"):
        vjp_model(model, wrt, out)


@pytest.mark.parametrize("op,inputs,attrs", [
    ("ScatterND", [(3, 4), IDX_ROWS, (2, 4)], dict(reduction="mul")),
    ("ScatterElements", [(3, 3), IDX_EL, (2, 3)], dict(reduction="max")),
])
def test_multiplicative_and_extremal_scatters_are_refused(op, inputs, attrs):
    model, wrt, out = build_case_model(Case("scatter", op, inputs, attrs=attrs, opset=18))
    with pytest.raises(UnsupportedOperatorError, match="reduction="):
        vjp_model(model, wrt, out)


def test_einsum_diagonal_of_a_constant_operand():
    """Only the attributed operand's own subscripts must be distinct: a constant may be read on its diagonal."""
    check_case(einsum("ii,i->i", arr(3, 3), (3,)))
