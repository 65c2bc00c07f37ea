"""DeepLIFT's summation-to-delta on any graph: products and quotients of two activations, selections and
extrema that differ between a row and its reference, fused ops equal to their decompositions, textbook
NumPy DeepLIFTs of an attention block and of a squeeze-excitation gate, transformers from both exporters, and Captum's local form.

References: the model's own forward pass in onnxruntime (``f(x) - f(baseline)``, the exact property),
the same layer written out op by op (the fused rule must give its decomposition's multipliers),
float64 NumPy DeepLIFTs written here with the Shapley product/quotient rules, and Captum's ``DeepLift``
/ ``DeepLiftShap`` with ``multiply_by_inputs=False``.
"""
from __future__ import annotations

import contextlib
import copy
import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from captum.attr import DeepLift, DeepLiftShap
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn

import onnxplain

EXPORTERS = ["torchscript", "dynamo"]

pytestmark = pytest.mark.filterwarnings("ignore")

ROWS, SEQ, WIDTH = 3, 4, 5


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------- small graphs, one op family each
def op_graph(body: list, z: str, z_last: int, opset: int = 17, extra_inits=()) -> onnx.ModelProto:
    """x (N, SEQ, WIDTH) -> body -> z (N, SEQ, z_last) -> z @ W summed over SEQ -> y (N, 3)."""
    w = numpy_helper.from_array(rng(99).standard_normal((z_last, 3)).astype(np.float32), "W")
    nodes = body + [helper.make_node("MatMul", [z, "W"], ["zw"]),
                    helper.make_node("ReduceSum", ["zw", "axis1"], ["y"], keepdims=0)]
    inits = [w, numpy_helper.from_array(np.array([1], np.int64), "axis1"), *extra_inits]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", SEQ, WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 17 else 10
    onnx.checker.check_model(model)
    return model


def n(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, **attrs)


def const(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def ints(name, value):
    return numpy_helper.from_array(np.asarray(value, np.int64), name)


MASK = np.zeros((SEQ, WIDTH), np.float32)
MASK[:, -1] = -np.inf          # a padded key: -inf - -inf = NaN in the rules' differences
MASK[1, 2] = np.finfo(np.float32).min

CASES = {
    # two activations multiplied (gating, SiLU written out)
    "mul": ([n("Tanh", ["x"], ["a"]), n("Sigmoid", ["x"], ["s"]), n("Mul", ["a", "s"], ["z"])], WIDTH, ()),
    # a quotient of two activations (a normaliser written out)
    "div": ([n("Exp", ["x"], ["e"]), n("ReduceSum", ["e", "last"], ["s"]), n("Add", ["s", "one"], ["s1"]),
             n("Div", ["e", "s1"], ["z"])], WIDTH, (ints("last", [-1]), const("one", 1.0))),
    "div_active_denominator": ([n("Softplus", ["x"], ["d"]), n("Add", ["d", "one"], ["d1"]),
                                n("Div", ["one", "d1"], ["z"])], WIDTH, (const("one", 1.0),)),
    "einsum_two_active": ([n("Tanh", ["x"], ["t"]), n("Sigmoid", ["x"], ["s"]),
                           n("Einsum", ["t", "s"], ["z"], equation="bij,bkj->bik")], SEQ, ()),
    "pow_both_active": ([n("Sigmoid", ["x"], ["s"]), n("Add", ["s", "half"], ["base"]), n("Tanh", ["x"], ["t"]),
                         n("Pow", ["base", "t"], ["z"])], WIDTH, (const("half", 0.5),)),
    "pow_constant_exponent": ([n("Pow", ["x", "three"], ["z"])], WIDTH, (const("three", 3.0),)),
    "max_min": ([n("Tanh", ["x"], ["t"]), n("Mul", ["t", "two"], ["t2"]), n("Max", ["x", "t2"], ["m"]),
                 n("Min", ["m", "cap"], ["z"])], WIDTH, (const("two", 2.0), const("cap", 0.7))),
    "max_three_players": ([n("Sin", ["x"], ["s"]), n("Cos", ["x"], ["c"]), n("Max", ["x", "s", "c"], ["z"])],
                          WIDTH, ()),
    "reduce_max": ([n("Tanh", ["x"], ["t"]), n("ReduceMax", ["t"], ["z"], axes=[2], keepdims=1)], 1, ()),
    "reduce_min": ([n("ReduceMin", ["x"], ["z"], axes=[2], keepdims=1)], 1, ()),
    "global_max_pool": ([n("Sin", ["x"], ["s"]), n("GlobalMaxPool", ["s"], ["z"])], 1, ()),
    # nonlinear reductions and fused normalisers of one tensor
    "reduce_l1": ([n("ReduceL1", ["x"], ["z"], axes=[2], keepdims=1)], 1, ()),
    "reduce_l2": ([n("ReduceL2", ["x"], ["z"], axes=[2], keepdims=1)], 1, ()),
    "reduce_sum_square": ([n("ReduceSumSquare", ["x"], ["z"], axes=[2], keepdims=1)], 1, ()),
    "reduce_log_sum": ([n("Exp", ["x"], ["e"]), n("ReduceLogSum", ["e"], ["z"], axes=[2], keepdims=1)], 1, ()),
    "reduce_log_sum_exp": ([n("ReduceLogSumExp", ["x"], ["z"], axes=[2], keepdims=1)], 1, ()),
    "lp_norm_2": ([n("LpNormalization", ["x"], ["z"], axis=-1, p=2)], WIDTH, ()),
    "lp_norm_1": ([n("LpNormalization", ["x"], ["z"], axis=-1, p=1)], WIDTH, ()),
    "mean_variance_norm": ([n("MeanVarianceNormalization", ["x"], ["z"], axes=[2])], WIDTH, ()),
    # piecewise constant and periodic
    "round_sign": ([n("Mul", ["x", "three"], ["x3"]), n("Round", ["x3"], ["r"]), n("Sign", ["x"], ["s"]),
                    n("Add", ["r", "s"], ["z"])], WIDTH, (const("three", 3.0),)),
    "mod_both_active": ([n("Mul", ["x", "three"], ["x3"]), n("Tanh", ["x"], ["t"]), n("Add", ["t", "two"], ["d"]),
                         n("Mod", ["x3", "d"], ["z"], fmod=1)], WIDTH, (const("three", 3.0), const("two", 2.0))),
    # a condition computed from the input: rows and references take different branches
    "where_both_branches": ([n("Greater", ["x", "zero"], ["pos"]), n("Tanh", ["x"], ["t"]),
                             n("Sigmoid", ["x"], ["s"]), n("Mul", ["s", "three"], ["s3"]),
                             n("Where", ["pos", "t", "s3"], ["z"])], WIDTH,
                            (const("zero", 0.0), const("three", 3.0))),
    "where_constant_branch": ([n("Sin", ["x"], ["s"]), n("Greater", ["s", "zero"], ["pos"]),
                               n("Where", ["pos", "x", "minus"], ["z"])], WIDTH,
                              (const("zero", 0.0), const("minus", -1.0))),
    # indices computed from the input: pooling at the argmax of each row
    "gather_at_argmax": ([n("ArgMax", ["x"], ["i"], axis=2, keepdims=1), n("Tanh", ["x"], ["t"]),
                          n("GatherElements", ["t", "i"], ["z"], axis=2)], 1, ()),
    # fused ops, with masked entries
    "softmax_masked": ([n("Add", ["x", "mask"], ["xm"]), n("Softmax", ["xm"], ["z"], axis=-1)], WIDTH,
                       (const("mask", MASK),)),
    "log_softmax": ([n("LogSoftmax", ["x"], ["z"], axis=-1)], WIDTH, ()),
    "layer_norm": ([n("LayerNormalization", ["x", "g", "bias"], ["z"], axis=-1, epsilon=1e-3)], WIDTH,
                   (const("g", rng(3).standard_normal(WIDTH)), const("bias", rng(4).standard_normal(WIDTH)))),
    "instance_norm": ([n("InstanceNormalization", ["x", "gc", "bc"], ["z"], epsilon=1e-3)], WIDTH,
                      (const("gc", rng(5).standard_normal(SEQ)), const("bc", rng(6).standard_normal(SEQ)))),
    "group_norm": ([n("Unsqueeze", ["x", "ax3"], ["x4"]),
                    n("GroupNormalization", ["x4", "gc", "bc"], ["g4"], num_groups=2, epsilon=1e-3),
                    n("Squeeze", ["g4", "ax3"], ["z"])], WIDTH,
                   (ints("ax3", [3]), const("gc", rng(5).standard_normal(SEQ)), const("bc", rng(6).standard_normal(SEQ)))),
}

# factors near zero (Tanh at x ~ 0) and exactly zero (Relu where x < -1), for the product rules
FACTORS = [n("Tanh", ["x"], ["t"]), n("Mul", ["t", "scale"], ["ts"]), n("Add", ["x", "one"], ["x1"]),
           n("Relu", ["x1"], ["r"]), n("Mul", ["ts", "r"], ["v"])]
FACTOR_INITS = (const("scale", 1.5), const("one", 1.0))
# updates for the scatters: the first two entries of each row along the last axis, and constant indices
# expanded over the batch (as exporters write a batched index)
SCATTER_UPDATES = [n("Slice", ["x", "zero_i", "two_i", "last"], ["xs"]), n("Shape", ["xs"], ["xs_shape"]),
                   n("Expand", ["idx", "xs_shape"], ["indices"])]
# ScatterND index tuples (N, 5, 3): each row's own batch coordinate, then a constant (i, j) pair
BATCHED_PAIRS = [n("Shape", ["x"], ["sx"]), n("Gather", ["sx", "zero_s"], ["rows_n"], axis=0),
                 n("Range", ["zero_s", "rows_n", "one_s"], ["row_ids"]), n("Reshape", ["row_ids", "column"], ["rc"]),
                 n("Expand", ["rc", "pair_shape"], ["rc5"]), n("Mul", ["rc5", "zero_s"], ["none5"]),
                 n("Add", ["none5", "pairs"], ["p5"]), n("Concat", ["rc5", "p5"], ["tuples"], axis=-1)]


def scatter_inits(idx):
    return (ints("zero_i", [0]), ints("two_i", [2]), ints("last", [2]), ints("idx", idx))


DISTINCT = [[[4, 1], [0, 2], [3, 4], [1, 0]]]        # (1, 4, 2): distinct along the axis in every row
REPEATED = [[[4, 4], [0, 2], [3, 3], [1, 1]]]        # positions written twice

PRODUCT_CASES = {
    # products over the axes, with entries near zero and exactly zero
    "reduce_prod_one_axis": (FACTORS + [n("ReduceProd", ["v"], ["z"], axes=[2], keepdims=1)], 1, FACTOR_INITS),
    "reduce_prod_two_axes": (FACTORS + [n("Reshape", ["v", "split"], ["v4"]),
                                        n("ReduceProd", ["v4", "axes12"], ["p"], keepdims=0),
                                        n("Unsqueeze", ["p", "axis1"], ["z"])], WIDTH,
                             FACTOR_INITS + (ints("split", [0, 2, 2, WIDTH]), ints("axes12", [1, 2]))),
    "cumprod": (FACTORS + [n("CumProd", ["v", "axis2"], ["z"])], WIDTH, FACTOR_INITS + (ints("axis2", 2),)),
    "cumprod_exclusive_reverse": (FACTORS + [n("CumProd", ["v", "axis2"], ["z"], exclusive=1, reverse=1)], WIDTH,
                                  FACTOR_INITS + (ints("axis2", 2),)),
    # a selection by rank: the row's and the reference's top-2 sets differ
    "top_k": ([n("TopK", ["x", "k"], ["z", "zi"], axis=-1)], 2, (ints("k", [2]),)),
    "top_k_smallest": ([n("Sin", ["x"], ["s"]), n("TopK", ["s", "k"], ["z", "zi"], axis=-1, largest=0)], 2,
                       (ints("k", [2]),)),
    # a one-hot of the argmax gating an activation
    "hardmax_gate": ([n("Hardmax", ["x"], ["h"], axis=-1), n("Sigmoid", ["x"], ["s"]), n("Mul", ["h", "s"], ["z"])],
                     WIDTH, ()),
    # scatters that reduce: data times the update landing on it, the extremum of both
    "scatter_elements_mul": (FACTORS + SCATTER_UPDATES + [
        n("Sigmoid", ["xs"], ["u"]), n("ScatterElements", ["v", "indices", "u"], ["z"], axis=2, reduction="mul")],
        WIDTH, FACTOR_INITS + scatter_inits(DISTINCT)),
    "scatter_elements_max": ([n("Tanh", ["x"], ["t"])] + SCATTER_UPDATES + [
        n("Sin", ["xs"], ["u"]), n("ScatterElements", ["t", "indices", "u"], ["z"], axis=2, reduction="max")],
        WIDTH, scatter_inits(REPEATED)),
    "scatter_elements_min": ([n("Tanh", ["x"], ["t"])] + SCATTER_UPDATES + [
        n("Sin", ["xs"], ["u"]), n("ScatterElements", ["t", "indices", "u"], ["z"], axis=2, reduction="min")],
        WIDTH, scatter_inits(DISTINCT)),
    # ScatterND at (row, i, j) tuples, one pair written twice
    "scatter_nd_max": ([n("Tanh", ["x"], ["t"])] + BATCHED_PAIRS + [
        n("Slice", ["x", "zero_i", "one_i", "axis1"], ["xs"]), n("Sin", ["xs"], ["s"]),
        n("Reshape", ["s", "rows_by_pairs"], ["u"]), n("ScatterND", ["t", "tuples", "u"], ["z"], reduction="max")],
        WIDTH, (ints("zero_i", [0]), ints("one_i", [1]), ints("rows_by_pairs", [0, 5]), ints("zero_s", 0),
                ints("one_s", 1), ints("column", [-1, 1, 1]), ints("pair_shape", [1, 5, 1]),
                ints("pairs", [[[0, 1], [2, 3], [3, 0], [2, 3], [1, 4]]]))),
}
CASES.update(PRODUCT_CASES)

# fused pooling and normalisation (x read as (N, C=SEQ, WIDTH)), and determinants of 2x2 and 3x3 blocks
SQUARES = rng(8).standard_normal((WIDTH, 9))
FUSED_CASES = {
    "lp_pool_p2": ([n("Sin", ["x"], ["s"]), n("LpPool", ["s"], ["z"], kernel_shape=[2], p=2)], WIDTH - 1, ()),
    "lp_pool_p3_strided_padded": ([n("LpPool", ["x"], ["z"], kernel_shape=[3], strides=[2], pads=[1, 1], p=3)],
                                  3, ()),
    "lrn": ([n("Unsqueeze", ["x", "ax3"], ["x4"]), n("LRN", ["x4"], ["l4"], size=3, alpha=0.9, beta=0.75, bias=1.2),
             n("Squeeze", ["l4", "ax3"], ["z"])], WIDTH, (ints("ax3", [3]),)),
    "det_2x2": ([n("Tanh", ["x"], ["t"]), n("Slice", ["t", "zero_i", "four_i", "last"], ["t4"]),
                 n("Reshape", ["t4", "blocks2"], ["m"]), n("Det", ["m"], ["d"]), n("Unsqueeze", ["d", "last"], ["z"])],
                1, (ints("zero_i", [0]), ints("four_i", [4]), ints("last", [2]), ints("blocks2", [0, SEQ, 2, 2]))),
    "det_3x3": ([n("MatMul", ["x", "squares"], ["q"]), n("Reshape", ["q", "blocks3"], ["m"]), n("Det", ["m"], ["d"]),
                 n("Unsqueeze", ["d", "last"], ["z"])], 1,
                (const("squares", SQUARES), ints("blocks3", [0, SEQ, 3, 3]), ints("last", [2]))),
}
CASES.update(FUSED_CASES)
OPSETS = {"group_norm": 21,     # GroupNormalization's per-channel form
          "lp_pool_p3_strided_padded": 18,
          "reduce_prod_two_axes": 18, "cumprod": 26, "cumprod_exclusive_reverse": 26,
          **{name: 18 for name in PRODUCT_CASES if name.startswith("scatter")}}


def gap(model: onnx.ModelProto, x: np.ndarray, base: np.ndarray, target: int) -> np.ndarray:
    """``f(x) - f(baseline)`` at the target, from the model's own forward pass in onnxruntime."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0][:, target] - sess.run(None, {"x": base})[0][:, target]


def inputs(seed: int = 0):
    x = rng(seed).standard_normal((ROWS, SEQ, WIDTH)).astype(np.float32)
    base = (0.7 * rng(seed + 1).standard_normal((ROWS, SEQ, WIDTH))).astype(np.float32)
    base[0, 0, 0] = x[0, 0, 0]   # an unmoved entry: the rules' gradient fallback
    return x, base


def summation_scale(attr: np.ndarray) -> float:
    return max(1.0, float(np.abs(attr).reshape(len(attr), -1).sum(1).max()))


@pytest.mark.parametrize("name", CASES)
def test_summation_to_delta_holds_on_every_op_family(name):
    body, last, inits = CASES[name]
    model = op_graph(body, "z", last, opset=OPSETS.get(name, 17), extra_inits=inits)
    x, base = inputs()
    attr, delta = onnxplain.Explainer(model, "deeplift").explain(x, target=1, baselines=base,
                                                                return_convergence_delta=True)
    assert np.all(np.isfinite(attr)) and np.abs(attr).max() > 0
    expected = gap(model, x, base, 1)
    np.testing.assert_allclose(attr.reshape(ROWS, -1).sum(1), expected, rtol=0, atol=2e-5 * summation_scale(attr))
    np.testing.assert_allclose(delta, 0, atol=2e-5 * summation_scale(attr))


@pytest.mark.parametrize("batch_size", [1, 2 * ROWS])
@pytest.mark.parametrize("name", ["gather_at_argmax", "top_k", "where_both_branches", "softmax_masked"])
def test_selections_sum_to_delta_when_the_references_run_in_a_copy_of_their_own(name, batch_size):
    """With batch_size the references run through their own copy of the forward pass and only the inputs'
    copy is walked back: a row and its reference picking different entries (argmax, top-k, a branch)
    still share Δy so that the attributions sum to f(x) - f(baseline), as in the one stacked batch."""
    body, last, inits = CASES[name]
    model = op_graph(body, "z", last, opset=OPSETS.get(name, 17), extra_inits=inits)
    x, base = inputs(seed=2)
    attr, delta = onnxplain.Explainer(model, "deeplift", batch_size=batch_size).explain(
        x, target=1, baselines=base, return_convergence_delta=True)
    scale = summation_scale(attr)
    np.testing.assert_allclose(attr.reshape(ROWS, -1).sum(1), gap(model, x, base, 1), rtol=0, atol=2e-5 * scale)
    np.testing.assert_allclose(delta, 0, atol=2e-5 * scale)
    stacked = onnxplain.Explainer(model, "deeplift").explain(x, target=1, baselines=base)
    np.testing.assert_allclose(attr, stacked, rtol=1e-5, atol=1e-6 * scale)


def test_rules_fall_back_to_the_gradient_where_nothing_moved():
    """A baseline equal to the input: DeepLIFT's multipliers are then the gradient (Captum's convention)."""
    body, last, inits = CASES["where_both_branches"]
    model = op_graph(body, "z", last, extra_inits=inits)
    x, _ = inputs()
    multipliers = onnxplain.Explainer(model, "deeplift").explain(x, target=1, baselines=x, multiply_by_inputs=False)
    gradient = onnxplain.Explainer(model, "gradient").explain(x, target=1)
    np.testing.assert_allclose(multipliers, gradient, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- fused ops = their decompositions
DECOMPOSED = {
    # the softmax family as stable implementations (and Keras/TF exports) write it: shifted by the row maximum
    "softmax": ([n("Add", ["x", "mask"], ["xm"]), n("Softmax", ["xm"], ["z"], axis=-1)],
                [n("Add", ["x", "mask"], ["xm"]), n("ReduceMax", ["xm"], ["top"], axes=[-1]),
                 n("Sub", ["xm", "top"], ["xz"]), n("Exp", ["xz"], ["e"]), n("ReduceSum", ["e", "last"], ["s"]),
                 n("Div", ["e", "s"], ["z"])], (const("mask", MASK), ints("last", [-1])), 17),
    "log_softmax": ([n("LogSoftmax", ["x"], ["z"], axis=-1)],
                    [n("ReduceMax", ["x"], ["top"], axes=[-1]), n("Sub", ["x", "top"], ["xz"]),
                     n("Exp", ["xz"], ["e"]), n("ReduceSum", ["e", "last"], ["s"]), n("Log", ["s"], ["l"]),
                     n("Sub", ["xz", "l"], ["z"])], (ints("last", [-1]),), 17),
    "reduce_log_sum_exp": ([n("ReduceLogSumExp", ["x", "last"], ["z"])],
                           [n("ReduceMax", ["x", "last"], ["top"]), n("Sub", ["x", "top"], ["xz"]),
                            n("Exp", ["xz"], ["e"]), n("ReduceSum", ["e", "last"], ["s"]), n("Log", ["s"], ["l"]),
                            n("Add", ["l", "top"], ["z"])], (ints("last", [-1]),), 18),
    "layer_norm_pow_sqrt_div": (
        [n("LayerNormalization", ["x", "g", "bias"], ["z"], axis=-1, epsilon=1e-3)],
        [n("ReduceMean", ["x"], ["m"], axes=[-1]), n("Sub", ["x", "m"], ["xc"]), n("Pow", ["xc", "two"], ["sq"]),
         n("ReduceMean", ["sq"], ["v"], axes=[-1]), n("Add", ["v", "var_eps"], ["ve"]), n("Sqrt", ["ve"], ["sd"]),
         n("Div", ["xc", "sd"], ["xh"]), n("Mul", ["xh", "g"], ["xg"]), n("Add", ["xg", "bias"], ["z"])],
        (const("g", rng(3).standard_normal(WIDTH)), const("bias", rng(4).standard_normal(WIDTH)),
         const("two", 2.0), const("var_eps", 1e-3)), 17),
    "layer_norm_mul_rsqrt": (
        [n("LayerNormalization", ["x", "g", "bias"], ["z"], axis=-1, epsilon=1e-3)],
        [n("ReduceMean", ["x"], ["m"], axes=[-1]), n("Sub", ["x", "m"], ["xc"]), n("Mul", ["xc", "xc"], ["sq"]),
         n("ReduceMean", ["sq"], ["v"], axes=[-1]), n("Add", ["v", "var_eps"], ["ve"]), n("Sqrt", ["ve"], ["sd"]),
         n("Reciprocal", ["sd"], ["inv"]), n("Mul", ["xc", "inv"], ["xh"]), n("Mul", ["xh", "g"], ["xg"]),
         n("Add", ["xg", "bias"], ["z"])],
        (const("g", rng(3).standard_normal(WIDTH)), const("bias", rng(4).standard_normal(WIDTH)),
         const("var_eps", 1e-3)), 17),
    "gelu": ([n("Gelu", ["x"], ["z"])],
             [n("Div", ["x", "root2"], ["xs"]), n("Erf", ["xs"], ["erf"]), n("Add", ["erf", "one"], ["e1"]),
              n("Mul", ["x", "e1"], ["xe"]), n("Mul", ["xe", "half"], ["z"])],
             (const("root2", np.sqrt(2.0)), const("one", 1.0), const("half", 0.5)), 20),
}


@pytest.mark.parametrize("name", DECOMPOSED)
def test_fused_op_has_the_multipliers_of_its_decomposition(name):
    fused, decomposed, inits, opset = DECOMPOSED[name]
    x, base = inputs(seed=7)
    results = []
    for body in (fused, decomposed):
        model = op_graph(body, "z", 1 if name == "reduce_log_sum_exp" else WIDTH, opset=opset, extra_inits=inits)
        ex = onnxplain.Explainer(model, "deeplift")
        multipliers = ex.explain(x, target=[0, 1, 2], baselines=base, multiply_by_inputs=False)
        attr, delta = ex.explain(x, target=[0, 1, 2], baselines=base, return_convergence_delta=True)
        np.testing.assert_allclose(delta, 0, atol=2e-5 * summation_scale(attr))
        results.append(multipliers)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-5 * np.abs(results[1]).max())


def assert_runs_alike_in_reference(model: onnx.ModelProto, tmp_path) -> None:
    """The saved DeepLIFT graph of ``model`` has standard ops only and gives the same numbers in onnx.reference
    as in onnxruntime."""
    graph = onnxplain.convert(model, tmp_path / "deeplift.onnx", method="deeplift")
    assert all(node.domain in ("", "ai.onnx") for node in graph.graph.node)
    x, base = inputs(seed=3)
    tw = np.zeros((ROWS, 3), np.float32)
    tw[:, 2] = 1
    feeds = {"x": x, "target_weights": tw, "baselines": base}
    names = [o.name for o in graph.graph.output]
    got = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    ref = ReferenceEvaluator(graph).run(None, feeds)
    for name, a, b in zip(names, got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(b).max())), err_msg=name)


def test_new_rules_run_in_onnx_reference(tmp_path):
    """The new rules emit standard ops only: the explanation graph gives the same numbers in onnx.reference."""
    body = [n("Add", ["x", "mask"], ["xm"]), n("Softmax", ["xm"], ["p"], axis=-1),
            n("LayerNormalization", ["p", "g", "bias"], ["ln"], axis=-1, epsilon=1e-3),
            n("Greater", ["x", "zero"], ["pos"]), n("Tanh", ["x"], ["t"]), n("Where", ["pos", "ln", "t"], ["w"]),
            n("Mul", ["w", "t"], ["z"])]
    model = op_graph(body, "z", WIDTH, extra_inits=(const("mask", MASK), const("zero", 0.0),
                                                     *CASES["layer_norm"][2]))
    assert_runs_alike_in_reference(model, tmp_path)


@pytest.mark.parametrize("name", PRODUCT_CASES)
def test_product_and_selection_rules_are_the_gradient_where_nothing_moved(name):
    """A baseline equal to the input: the telescoping products, the selections and the extrema give the
    gradient (Hardmax's conserving rule gives 0, its gradient)."""
    body, last, inits = CASES[name]
    model = op_graph(body, "z", last, opset=OPSETS.get(name, 17), extra_inits=inits)
    x, _ = inputs()
    multipliers = onnxplain.Explainer(model, "deeplift").explain(x, target=1, baselines=x, multiply_by_inputs=False)
    gradient = onnxplain.Explainer(model, "gradient").explain(x, target=1)
    np.testing.assert_allclose(multipliers, gradient, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(gradient).max()))


REFUSED = {
    # tuples built at run time may repeat: a product of three or more factors at one position
    "scatter_nd_mul": ([n("Tanh", ["x"], ["t"])] + BATCHED_PAIRS + [
        n("Slice", ["x", "zero_i", "one_i", "axis1"], ["xs"]), n("Sin", ["xs"], ["s"]),
        n("Reshape", ["s", "rows_by_pairs"], ["u"]), n("ScatterND", ["t", "tuples", "u"], ["z"], reduction="mul")],
        CASES["scatter_nd_max"][2], "reduction='mul' needs constant indices without repeats"),
    # indices computed from the input: a row and its reference reduce different entries together
    "scatter_max_at_argmax": ([n("Tanh", ["x"], ["t"]), n("ArgMax", ["x"], ["i"], axis=2, keepdims=1),
                               n("Sin", ["x"], ["s"]), n("Slice", ["s", "zero_i", "one_i", "last"], ["u"]),
                               n("ScatterElements", ["t", "i", "u"], ["z"], axis=2, reduction="max")],
                              (ints("zero_i", [0]), ints("one_i", [1]), ints("last", [2])),
                              "indices computed from the attributed input"),
    # axes known only at run time
    "reduce_prod_runtime_axes": ([n("Tanh", ["x"], ["t"]), n("Shape", ["x"], ["sx"]),
                                  n("Slice", ["sx", "minus_one", "end"], ["last_size"]),
                                  n("Sub", ["last_size", "three_i"], ["axis_at_run_time"]),
                                  n("ReduceProd", ["t", "axis_at_run_time"], ["z"], keepdims=1)],
                                 (ints("minus_one", [-1]), ints("end", [3]), ints("three_i", [3])),
                                 "the axes are read at run time"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_deeplift_refuses_products_and_extrema_it_cannot_conserve(name):
    """An error naming the reason when the explanation graph is built, not attributions that do not sum to
    f(x) - f(baseline)."""
    body, inits, why = REFUSED[name]
    model = op_graph(body, "z", WIDTH if name == "scatter_nd_mul" else 1, opset=18, extra_inits=inits)
    x, base = inputs()
    with pytest.raises(onnxplain.UnsupportedOperatorError, match=why):
        onnxplain.Explainer(model, "deeplift").explain(x, target=1, baselines=base)


@pytest.mark.parametrize("name", PRODUCT_CASES)
def test_product_and_selection_rules_run_in_onnx_reference(name, tmp_path):
    """The rules of products, TopK, Hardmax and the reducing scatters emit standard ops only: the explanation
    graph gives the same numbers in onnx.reference as in onnxruntime."""
    body, last, inits = CASES[name]
    model = op_graph(body, "z", last, opset=OPSETS.get(name, 17), extra_inits=inits)
    assert_runs_alike_in_reference(model, tmp_path)


# ---------------------------------------------------------------------- a textbook DeepLIFT of attention
class MaskedAttention(nn.Module):
    """One attention head over padded sequences, mean-pooled into a linear classifier."""

    def __init__(self, dim: int = 6, classes: int = 3):
        super().__init__()
        torch.manual_seed(11)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)
        self.scale = dim ** -0.5

    def forward(self, x, mask):
        scores = (self.q(x) @ self.k(x).transpose(-2, -1)) * self.scale
        scores = scores.masked_fill(mask[:, None, :] == 0, float("-inf"))
        return self.head((torch.softmax(scores, -1) @ self.v(x)).mean(1))


def textbook_attention_deeplift(net: MaskedAttention, x, base, mask, target: int):
    """DeepLIFT written out in float64 NumPy: Shapley rules at the products ``q k^T`` and ``p v`` and at the
    quotient ``e / sum(e)``, Rescale at ``exp``, the softmax shifted by its row maximum (``e = exp(s - max s)``)
    with the cross-max rule there, plain gradients at the linear maps.  Returns multipliers."""
    w = {name: (getattr(net, name).weight.detach().double().numpy(), getattr(net, name).bias.detach().double().numpy())
         for name in ("q", "k", "v", "head")}
    keep = (mask[:, None, :] != 0)

    def forward(t):
        q, k, v = (t @ w[name][0].T + w[name][1] for name in ("q", "k", "v"))
        s = np.where(keep, q @ k.transpose(0, 2, 1) * net.scale, -np.inf)
        top = s.max(-1, keepdims=True)
        e = np.exp(s - top)
        return q, k, v, s, top, e, e.sum(-1, keepdims=True)

    q, k, v, s, top, e, total = forward(x.astype(np.float64))
    qr, kr, vr, sr, top_r, er, total_r = forward(base.astype(np.float64))
    p, pr = e / total, er / total_r
    d_out = np.broadcast_to(w["head"][0][target] / x.shape[1], x.shape[:2] + (w["head"][0].shape[1],))
    d_p = d_out @ ((v + vr) / 2).transpose(0, 2, 1)                    # o = p v, Shapley
    d_v = ((p + pr) / 2).transpose(0, 2, 1) @ d_out
    d_e = d_p * (1 / total + 1 / total_r) / 2                          # p = e / sum(e), Shapley
    d_total = -(d_p * (e + er)).sum(-1, keepdims=True) / (2 * total * total_r)
    d_e = d_e + d_total
    z, zr = s - top, sr - top_r
    moved = keep & (np.abs(z - zr) > 1e-10)
    with np.errstate(invalid="ignore"):
        dz = d_e * np.where(moved, (e - er) / np.where(moved, z - zr, 1), e)     # Rescale at exp
    dz = np.where(keep, dz, 0.0)
    # z = s - max(s): the cross-max rule routes -sum(dz) to the maxima of the row and of its reference
    hit, hit_r = (s == top).astype(float), (sr == top_r).astype(float)
    high = np.maximum(top, top_r)
    routed = (high - top_r) * hit / hit.sum(-1, keepdims=True) + (top - high) * hit_r / hit_r.sum(-1, keepdims=True)
    moved = keep & (np.abs(s - sr) > 1e-10)
    m_top = np.where(moved, routed / np.where(moved, s - sr, 1), hit / hit.sum(-1, keepdims=True))
    ds = (dz - dz.sum(-1, keepdims=True) * m_top) * net.scale
    d_q = ds @ ((k + kr) / 2)                                          # s = q k^T, Shapley
    d_k = ds.transpose(0, 2, 1) @ ((q + qr) / 2)
    return d_q @ w["q"][0] + d_k @ w["k"][0] + d_v @ w["v"][0]


def export_attention(net: nn.Module, exporter: str) -> bytes:
    x = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 5, dtype=torch.int64)
    mask[1, -2:] = 0
    axes = {"x": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"}}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=64)
            program = torch.onnx.export(net, (x, mask), dynamo=True, input_names=["x", "mask"], output_names=["y"],
                                        dynamic_shapes={"x": {0: batch, 1: seq}, "mask": {0: batch, 1: seq}})
            return program.model_proto.SerializeToString()
        buf = io.BytesIO()
        torch.onnx.export(net, (x, mask), buf, dynamo=False, opset_version=17, input_names=["x", "mask"],
                          output_names=["y"], dynamic_axes=axes)
        return buf.getvalue()


@pytest.fixture(scope="module")
def attention():
    net = MaskedAttention().eval()
    return net, {e: export_attention(net, e) for e in EXPORTERS}


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_attention_block_matches_a_textbook_deeplift(attention, exporter):
    net, exports = attention
    g = rng(12)
    x = g.standard_normal((3, 7, 6)).astype(np.float32)          # other batch and sequence sizes than exported
    base = (0.5 * g.standard_normal((3, 7, 6))).astype(np.float32)
    mask = np.ones((3, 7), np.int64)
    mask[1, -3:] = 0
    mask[2, -1] = 0
    ex = onnxplain.Explainer(exports[exporter], "deeplift", inputs=["x"])
    feeds = {"x": x, "mask": mask}
    multipliers = ex.explain(feeds, target=2, baselines=base, multiply_by_inputs=False)
    attr, delta = ex.explain(feeds, target=2, baselines=base, return_convergence_delta=True)
    expected = textbook_attention_deeplift(net, x, base, mask, target=2)
    np.testing.assert_allclose(multipliers, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    reference_attr = expected * (x - base)
    np.testing.assert_allclose(attr, reference_attr, rtol=1e-5, atol=1e-5 * np.abs(reference_attr).max())
    with torch.no_grad():
        m = torch.from_numpy(mask)
        gap_torch = (net(torch.from_numpy(x), m) - net(torch.from_numpy(base), m))[:, 2].numpy()
    np.testing.assert_allclose(reference_attr.sum((1, 2)), gap_torch, rtol=1e-5, atol=1e-6)   # the reference conserves
    np.testing.assert_allclose(delta, 0, atol=1e-5 * summation_scale(attr))


class SqueezeExcitation(nn.Module):
    """A squeeze-excitation gate on a feature map, then a pooled linear classifier."""

    def __init__(self, channels: int = 4, hidden: int = 3, classes: int = 3):
        super().__init__()
        torch.manual_seed(13)
        self.reduce, self.expand = nn.Linear(channels, hidden), nn.Linear(hidden, channels)
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        gate = torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3))))))
        return self.head((x * gate[:, :, None, None]).mean((2, 3)))


def textbook_se_deeplift(net: SqueezeExcitation, x, base, target: int):
    """DeepLIFT written out in float64 NumPy: Shapley rule at the gate's product, Rescale at the sigmoid and
    the ReLU (the gradient where nothing moved), plain gradients at the linear maps.  Returns multipliers."""
    (w1, b1), (w2, b2) = ((m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
                          for m in (net.reduce, net.expand))
    wh = net.head.weight.detach().double().numpy()

    def forward(t):
        v = t.mean((2, 3)) @ w1.T + b1
        u = np.maximum(v, 0) @ w2.T + b2
        return v, u, 1 / (1 + np.exp(-u))

    def rescale(f, z, z_ref, slope):
        moved = np.abs(z - z_ref) > 1e-10
        return np.where(moved, (f(z) - f(z_ref)) / np.where(moved, z - z_ref, 1), slope)

    x, base = x.astype(np.float64), base.astype(np.float64)
    (v, u, s), (vr, ur, sr) = forward(x), forward(base)
    area = x.shape[2] * x.shape[3]
    d_y = np.broadcast_to((wh[target] / area)[None, :, None, None], x.shape)
    d_x = d_y * ((s + sr) / 2)[:, :, None, None]                        # x * gate, Shapley
    d_s = (d_y * (x + base) / 2).sum((2, 3))
    d_u = d_s * rescale(lambda t: 1 / (1 + np.exp(-t)), u, ur, s * (1 - s))
    d_v = (d_u @ w2) * rescale(lambda t: np.maximum(t, 0), v, vr, (v > 0).astype(np.float64))
    return d_x + ((d_v @ w1) / area)[:, :, None, None]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_squeeze_excitation_matches_a_textbook_deeplift(exporter):
    import vision_models as vm
    net = SqueezeExcitation().eval()
    model = vm.EXPORTERS[exporter](net, (4, 5, 7))
    g = rng(14)
    x = g.standard_normal((3, 4, 5, 7)).astype(np.float32)
    base = (0.5 * g.standard_normal((3, 4, 5, 7))).astype(np.float32)
    ex = onnxplain.Explainer(model, "deeplift")
    multipliers = ex.explain(x, target=1, baselines=base, multiply_by_inputs=False)
    attr, delta = ex.explain(x, target=1, baselines=base, return_convergence_delta=True)
    expected = textbook_se_deeplift(net, x, base, target=1)
    np.testing.assert_allclose(multipliers, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(attr, expected * (x - base), rtol=1e-5, atol=1e-5 * np.abs(attr).max())
    with torch.no_grad():
        gap_torch = (net(torch.from_numpy(x)) - net(torch.from_numpy(base)))[:, 1].numpy()
    np.testing.assert_allclose((expected * (x - base)).sum((1, 2, 3)), gap_torch, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(delta, 0, atol=1e-5 * summation_scale(attr))


# ---------------------------------------------------------------------- transformers, both exporters
def baseline_ids(c, kind: str) -> np.ndarray:
    """``pad``: every token the pad token (GPT-2 then pools another position: its index is computed from
    the ids).  ``keep_padding``: real tokens replaced by token 3, padding kept (RoBERTa computes its
    position ids from the ids: an all-pad baseline moves the position embeddings too, a part of
    f(x) - f(baseline) that no attribution to the word embeddings can carry)."""
    ids = c.ids.numpy()
    return np.full_like(ids, c.pad) if kind == "pad" else np.where(ids == c.pad, ids, 3)


TEXT = [("bert", "pad"), ("distilbert", "pad"), ("gpt2", "pad"), ("gpt2", "keep_padding"),
        ("roberta", "keep_padding")]


@pytest.mark.parametrize("kind,baseline", TEXT, ids=[f"{k}-{b}" for k, b in TEXT])
def test_transformers_conserve_and_both_exporters_agree(kind, baseline):
    from test_architectures_text import TARGET, case    # the zoo of tiny transformers, exported once per session
    results = {}
    for exporter in EXPORTERS:
        c = case(kind, exporter)
        base = baseline_ids(c, baseline)
        attr, delta = c.explainer("deeplift").explain(c.feeds, target=TARGET, baselines=base,
                                                      return_convergence_delta=True)
        with torch.no_grad():
            fx = c.wrapper(c.ids, *c.extra)[:, TARGET].numpy()
            fb = c.wrapper(torch.from_numpy(base), *c.extra)[:, TARGET].numpy()
        scale = summation_scale(attr)
        np.testing.assert_allclose(attr.sum((1, 2)), fx - fb, rtol=0, atol=1e-5 * scale)
        np.testing.assert_allclose(delta, 0, atol=1e-5 * scale)
        results[exporter] = attr
    a, b = results.values()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(a).max())


# ---------------------------------------------------------------------- Captum's local form
def mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 3)).eval()


def cnn():
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(4, 4, 3),
                         nn.Sigmoid(), nn.Flatten(), nn.Linear(4, 3)).eval()


@pytest.mark.parametrize("arch,shape", [("mlp", (4, 6)), ("cnn", (3, 2, 6, 6))])
def test_local_form_matches_captum_multiply_by_inputs_false(arch, shape):
    from models import export
    net = {"mlp": mlp, "cnn": cnn}[arch]()
    model = export(net, shape[1:])
    g = torch.Generator().manual_seed(5)
    x, base, dist = torch.randn(shape, generator=g), torch.randn((1,) + shape[1:], generator=g), \
        torch.randn((4,) + shape[1:], generator=g)
    net64 = copy.deepcopy(net).double()
    ours = onnxplain.Explainer(model, "deeplift").explain(x.numpy(), target=1, baselines=base.numpy(),
                                                          multiply_by_inputs=False)
    ref = DeepLift(net64, multiply_by_inputs=False).attribute(x.double(), base.double(), target=1).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    ours = onnxplain.Explainer(model, "deeplift_shap").explain(x.numpy(), target=[0, 1, 2, 0][:shape[0]],
                                                               baselines=dist.numpy(), multiply_by_inputs=False)
    ref = DeepLiftShap(net64, multiply_by_inputs=False).attribute(x.double(), dist.double(),
                                                                  target=[0, 1, 2, 0][:shape[0]]).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_mean_variance_norm_over_an_axis_of_run_time_size():
    """The normalised count is the product of the normalised axes' sizes, read at run time when they are
    symbolic, not of every axis from the first normalised one on."""
    model = op_graph([n("MeanVarianceNormalization", ["x"], ["z"], axes=[1])], "z", WIDTH)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "T"
    x, base = inputs(5)
    attr, delta = onnxplain.Explainer(model, "deeplift").explain(x, target=0, baselines=base,
                                                                return_convergence_delta=True)
    scale = summation_scale(attr)
    np.testing.assert_allclose(attr.reshape(ROWS, -1).sum(1), gap(model, x, base, 0), rtol=0, atol=2e-5 * scale)
    np.testing.assert_allclose(delta, 0, atol=2e-5 * scale)


@pytest.mark.parametrize("method", ["deeplift", "deeplift_shap"])
def test_double_precision_models_sum_to_delta(method):
    """Float64 graphs: every constant the rules emit takes the tensors' own type."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Softmax(-1), nn.Linear(8, 3)).double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    base = 0.3 * torch.randn(2 if method == "deeplift_shap" else 1, 6, dtype=torch.float64)
    model = onnxplain.from_torch(net, x)
    attr = onnxplain.Explainer(model, method).explain(x.numpy(), target=2, baselines=base.numpy())
    assert attr.dtype == np.float64
    with torch.no_grad():
        expected = (net(x)[:, 2:3] - net(base)[:, 2][None]).mean(1).numpy()
    np.testing.assert_allclose(attr.sum(1), expected, atol=1e-10)


def test_converted_graph_keeps_multiply_by_inputs_as_its_default(tmp_path):
    model = op_graph([n("Tanh", ["x"], ["z"])], "z", WIDTH)
    graph = onnxplain.convert(model, tmp_path / "local.onnx", "deeplift", multiply_by_inputs=False)
    stored = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    assert stored["multiply_by_inputs"] == np.asarray(False)
    x, _ = inputs(2)
    tw = np.zeros((ROWS, 3), np.float32)
    tw[:, 1] = 1
    got = ort.InferenceSession(str(tmp_path / "local.onnx"), providers=["CPUExecutionProvider"]).run(
        ["attributions"], {"x": x, "target_weights": tw})[0]
    np.testing.assert_allclose(got, onnxplain.Explainer(model, "deeplift").explain(x, target=1,
                                                                                   multiply_by_inputs=False),
                               rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------- the softmax family at large logits
class ConfidentClassifier(nn.Module):
    """Logits of a few tens to a hundred, as a sharply trained classifier gives, then probabilities."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.body = nn.Sequential(nn.Linear(7, 16), nn.Tanh(), nn.Linear(16, 5))

    def forward(self, x):
        logits = 100.0 * self.body(x)
        return torch.cat([torch.softmax(logits, -1), torch.log_softmax(logits, -1),
                          torch.logsumexp(logits, -1, keepdim=True)], -1)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("method", ["deeplift", "deeplift_shap"])
def test_softmax_family_stays_finite_and_exact_at_large_logits(exporter, method):
    """Every exp the rules build is shifted by a row maximum: no inf or NaN in float32 where rows and
    baselines sit on logits ~100 apart, conservation at rounding level, and the float64 model's numbers."""
    net = ConfidentClassifier().eval()
    g = rng(21)
    x = g.standard_normal((6, 7)).astype(np.float32) * 4
    base = g.standard_normal((3 if method == "deeplift_shap" else 1, 7)).astype(np.float32) * 4
    with torch.no_grad():
        lse = torch.logsumexp(100.0 * net.body(torch.from_numpy(np.concatenate([x, base]))), -1).numpy()
    # a row's sum of exp(logits) over its baseline's: beyond float32 (exp(88.7)) unless the rules shift
    assert np.abs(lse[:len(x), None] - lse[None, len(x):]).max() > 90
    results = {}
    for dtype, np_dtype, tol in ((torch.float32, np.float32, 2e-5), (torch.float64, np.float64, 1e-10)):
        net = net.to(dtype)
        xt, bt = x.astype(np_dtype), base.astype(np_dtype)
        ex = onnxplain.Explainer(onnxplain.from_torch(net, torch.from_numpy(xt), dynamo=exporter == "dynamo"), method)
        with torch.no_grad():
            out = net(torch.from_numpy(np.concatenate([xt, bt]))).numpy()
        for target in (1, 7, 10):      # a probability, a log-probability, the log-sum-exp
            attr = ex.explain(xt, target=target, baselines=bt)
            assert np.all(np.isfinite(attr)), (dtype, target)
            expected = out[:len(x), target] - out[len(x):, target].mean()
            scale = max(1.0, float(np.abs(attr).sum(1).max()))
            np.testing.assert_allclose(attr.sum(1), expected, rtol=0, atol=tol * scale, err_msg=f"{dtype} {target}")
            results[dtype, target] = attr
    for target in (1, 7, 10):
        wide = results[torch.float64, target]
        np.testing.assert_allclose(results[torch.float32, target], wide, rtol=1e-3, atol=1e-4 * np.abs(wide).max())


def _dynamic_weight_conv(op: str) -> onnx.ModelProto:
    """A convolution whose weight is computed from the input (a hypernetwork): ``x (1, 3, 7)`` ->
    ``Conv(Sigmoid(x), Reshape(Tanh(Flatten(x) @ P)), b)`` -> Relu -> sum over length -> ``(1, 4)``."""
    g = rng(31)
    wshape = (4, 3, 3) if op == "Conv" else (3, 4, 3)
    nodes = [n("Sigmoid", ["x"], ["sx"]), n("Flatten", ["x"], ["fx"]), n("MatMul", ["fx", "P"], ["pw"]),
             n("Tanh", ["pw"], ["tw"]), n("Reshape", ["tw", "wshape"], ["w"]),
             n(op, ["sx", "w", "b"], ["c"], pads=[1, 1]), n("Relu", ["c"], ["r"]),
             n("ReduceSum", ["r", "last"], ["y"], keepdims=0)]
    inits = [numpy_helper.from_array((0.3 * g.standard_normal((21, 36))).astype(np.float32), "P"),
             numpy_helper.from_array(g.standard_normal(4).astype(np.float32), "b"),
             numpy_helper.from_array(np.array(wshape, np.int64), "wshape"),
             numpy_helper.from_array(np.array([2], np.int64), "last")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
def test_convolution_by_an_attributed_weight_sums_to_delta(op):
    """Image and weight both move from their references: the bilinear rule takes each at its midpoint,
    so the attributions add up to ``f(x) - f(x_ref)`` (the plain gradient's rule leaked 0.5-17% here)."""
    model = _dynamic_weight_conv(op)
    g = rng(32)
    x = g.standard_normal((3, 3, 7)).astype(np.float32)
    base = (0.3 * g.standard_normal((3, 3, 7))).astype(np.float32)
    attr = onnxplain.Explainer(model, "deeplift", batch_size=1).explain(x, target=1, baselines=base)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = [sess.run(None, {"x": x[i:i + 1]})[0][0, 1] - sess.run(None, {"x": base[i:i + 1]})[0][0, 1]
                for i in range(3)]
    assert np.abs(expected).min() > 0.1
    np.testing.assert_allclose(attr.reshape(3, -1).sum(1), expected, rtol=0, atol=2e-5 * summation_scale(attr))
