"""Backward rules of arithmetic and activation ops, against finite differences and torch autograd."""
import itertools

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from vjp_harness import Case, build_case_model, check_case, run_reference, vjp_model

W = np.random.default_rng(7)   # constants (weights) of the cases


def avoiding(*points, scale=1.0, gap=0.05):
    """Sampler: N(0, scale^2) kept at least ``gap`` away from every kink in ``points``."""
    def sample(rng, shape):
        x = scale * rng.standard_normal(shape)
        for p in points:
            near = np.abs(x - p) < gap
            x[near] = p + 2 * gap * np.where(x[near] >= p, 1.0, -1.0)
        return x
    return sample


def nonzero(rng, shape):
    """Values of either sign with |x| in (0.5, 2): safe divisors."""
    return rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


def small_ints(rng, shape):
    """Integers in {-1, 0, 1}: many exact ties (central differences average the two sides there)."""
    return rng.integers(-1, 2, shape).astype(np.float64)


def with_zeros(rng, shape):
    """N(0, 1) with about a third of the entries exactly 0."""
    return rng.standard_normal(shape) * (rng.random(shape) > 0.3)


def scalars_then(*values, avoid=None):
    """Sampler: the rank-0 inputs get ``values`` in turn; others N(0, 1) kept away from ``avoid`` (or ``values``)."""
    turn = itertools.cycle(range(len(values)))

    def sample(rng, shape):
        if shape == ():
            return np.array(values[next(turn)])
        return avoiding(*(values if avoid is None else avoid))(rng, shape)
    return sample


def positive_const(*shape):
    return W.uniform(0.5, 2.0, shape)


def uniform(lo, hi):
    """Sampler: U(lo, hi), inside the domain of an inverse function."""
    return lambda rng, shape: rng.uniform(lo, hi, shape)


# ------------------------------------------------------------------ arithmetic
BINARY_SHAPES = [                     # broadcasting both ways, rank-differing, 1 meeting > 1
    ("same", [(3, 4), (3, 4)]),
    ("rhs_bcast", [(3, 4), (4,)]),
    ("lhs_bcast", [(4,), (3, 4)]),
    ("both_ones", [(3, 1), (1, 4)]),
    ("rank3_vs_2", [(2, 3, 4), (3, 1)]),
    ("rank1_vs_3", [(1,), (2, 1, 4)]),
    ("scalar", [(3, 4), ()]),
]

ARITH = []
for tag, shapes in BINARY_SHAPES:
    ARITH += [
        Case(f"add_{tag}", "Add", shapes, lambda a, c: a + c),
        Case(f"sub_{tag}", "Sub", shapes, lambda a, c: a - c),
        Case(f"mul_{tag}", "Mul", shapes, lambda a, c: a * c),
        Case(f"div_{tag}", "Div", shapes, lambda a, c: a / c, sampler=nonzero),
        Case(f"max_{tag}", "Max", shapes, torch.maximum),
        Case(f"min_{tag}", "Min", shapes, torch.minimum),
        Case(f"pow_{tag}", "Pow", shapes, torch.pow, positive=True),
    ]

ARITH += [
    # one operand a constant (a weight: no cotangent for it), on either side
    Case("add_const", "Add", [(3, 4), W.standard_normal(4)], lambda a, c: a + c),
    Case("sub_const_lhs", "Sub", [W.standard_normal((3, 1)), (3, 4)], lambda c, a: c - a),
    Case("mul_const_lhs", "Mul", [W.standard_normal((2, 1, 4)), (3, 1)], lambda c, a: c * a),
    Case("div_const_num", "Div", [W.standard_normal((3, 4)), (4,)], lambda c, a: c / a, sampler=nonzero),
    Case("div_const_den", "Div", [(3, 4), positive_const(3, 1)], lambda a, c: a / c),
    # Pow: exponent constant (float, vector, integer, with zeros) or base constant
    Case("pow_const_sq", "Pow", [(3, 4), np.array(2.0)], torch.pow),
    Case("pow_const_cube", "Pow", [(3, 4), np.array(3.0)], torch.pow),
    Case("pow_const_one", "Pow", [(3, 4), np.array([1.0])], torch.pow),
    Case("pow_const_vec", "Pow", [(3, 4), np.array([0.5, 1.5, -1.0, 2.5])], torch.pow, positive=True),
    Case("pow_const_int", "Pow", [(3, 4), np.array(3, np.int64)], torch.pow),
    Case("pow_const_with_zero", "Pow", [(3, 4), np.array([0.0, 1.0, 2.0, 3.0])], torch.pow, sampler=with_zeros),
    Case("pow_const_base", "Pow", [positive_const(3, 4), (4,)], torch.pow),
    # variadic Sum / Mean / Max / Min
    Case("sum1", "Sum", [(3, 4)], lambda a: a * 1),
    Case("sum3", "Sum", [(3, 4), (4,), (2, 1, 1)], lambda a, c, d: a + c + d),
    Case("sum3_const", "Sum", [(3, 1), W.standard_normal(4), (4,)], lambda a, c, d: a + c + d),
    Case("mean3", "Mean", [(2, 3, 4), (4,), (3, 1)], lambda a, c, d: (a + c + d) / 3),
    Case("max1", "Max", [(3, 4)], lambda a: a * 1),
    Case("max3", "Max", [(3, 4), (4,), (2, 1, 1)], lambda a, c, d: torch.maximum(torch.maximum(a, c), d)),
    Case("min3", "Min", [(3, 1), (1, 4), (3, 4)], lambda a, c, d: torch.minimum(torch.minimum(a, c), d)),
    Case("max_const_relu", "Max", [(3, 4), np.zeros(4)], torch.maximum, away_from=0.0),
    Case("min_const", "Min", [W.standard_normal((3, 1)), (4,)], torch.minimum),
    # 2-input ties: the gradient is split equally (as torch), which central differences also give
    Case("max_ties", "Max", [(3, 4), (4,)], torch.maximum, sampler=small_ints),
    Case("min_ties", "Min", [(3, 4), (3, 4)], torch.minimum, sampler=small_ints),
    # Where: condition constant, both branches broadcast
    Case("where_bcast", "Where", [W.random((3, 1)) > 0.5, (3, 4), (4,)], torch.where),
    Case("where_rank", "Where", [W.random((2, 3, 4)) > 0.5, (3, 1), ()], torch.where),
    Case("where_cond_small", "Where", [W.random(4) > 0.5, (2, 3, 1), (3, 4)], torch.where),
    Case("where_const_branch", "Where", [W.random((3, 4)) > 0.5, W.standard_normal(4), (3, 1)], torch.where),
    # unary maths
    Case("neg", "Neg", [(3, 4)], torch.neg),
    Case("abs", "Abs", [(3, 4)], torch.abs, away_from=0.0),
    Case("exp", "Exp", [(3, 4)], torch.exp),
    Case("log", "Log", [(3, 4)], torch.log, positive=True),
    Case("sqrt", "Sqrt", [(3, 4)], torch.sqrt, positive=True),
    Case("reciprocal", "Reciprocal", [(3, 4)], torch.reciprocal, sampler=nonzero),
    Case("erf", "Erf", [(3, 4)], torch.erf),
    Case("sin", "Sin", [(3, 4)], torch.sin),
    Case("cos", "Cos", [(3, 4)], torch.cos),
    # trigonometric and hyperbolic functions and their inverses, inside their domains (Tan away from +-pi/2)
    Case("tan", "Tan", [(3, 4)], torch.tan, sampler=uniform(-1.3, 1.3)),
    Case("tan_opset22", "Tan", [(3, 4)], torch.tan, sampler=uniform(-1.3, 1.3), opset=22),
    Case("sinh", "Sinh", [(3, 4)], torch.sinh),
    Case("cosh", "Cosh", [(3, 4)], torch.cosh),
    Case("asin", "Asin", [(3, 4)], torch.asin, sampler=uniform(-0.95, 0.95)),
    Case("acos", "Acos", [(3, 4)], torch.acos, sampler=uniform(-0.95, 0.95)),
    Case("acos_opset22", "Acos", [(3, 4)], torch.acos, sampler=uniform(-0.95, 0.95), opset=22),
    Case("atan", "Atan", [(3, 4)], torch.atan, sampler=avoiding(scale=3.0)),
    Case("asinh", "Asinh", [(3, 4)], torch.asinh, sampler=avoiding(scale=3.0)),
    Case("acosh", "Acosh", [(3, 4)], torch.acosh, sampler=uniform(1.05, 4.0)),
    Case("atanh", "Atanh", [(3, 4)], torch.atanh, sampler=uniform(-0.95, 0.95)),
    Case("dyn_atanh", "Atanh", [(3, 4)], torch.atanh, sampler=uniform(-0.95, 0.95), dynamic=True),
    # Cast to double: a no-op in the float64 run, float -> double -> float in onnxruntime
    Case("cast_double", "Cast", [(3, 4)], lambda a: a.to(torch.float64), attrs=dict(to=TensorProto.DOUBLE),
         extra_nodes=[helper.make_node("CastLike", ["y0", "in0"], ["y1"])]),
    Case("castlike", "CastLike", [(3, 4), np.zeros(1)], lambda a, r: a * 1),
]


# ------------------------------------------------------------------ activations
ACT = [
    Case("relu", "Relu", [(3, 4)], torch.relu, away_from=0.0),
    Case("leaky_relu", "LeakyRelu", [(3, 4)], F.leaky_relu, away_from=0.0),
    Case("leaky_relu_alpha", "LeakyRelu", [(3, 4)], lambda x: F.leaky_relu(x, 0.3), attrs=dict(alpha=0.3),
         away_from=0.0),
    Case("thresholded_relu", "ThresholdedRelu", [(3, 4)], lambda x: torch.threshold(x, 0.5, 0.0),
         attrs=dict(alpha=0.5), away_from=0.5),
    # PRelu: slope a weight or attributed, per channel, broadcast over leading/trailing dims, or one value
    *[Case(f"prelu_{tag}", "PRelu", [(2, 3, 4), slope], lambda x, s: torch.where(x > 0, x, s * x), away_from=0.0)
      for tag, slope in [("w_last", W.uniform(0.1, 0.3, 4)), ("w_chan", W.uniform(0.1, 0.3, (3, 1))),
                         ("w_one", np.array([0.25])), ("attr_last", (4,)), ("attr_chan", (3, 1)),
                         ("attr_one", (1,)), ("attr_full", (2, 3, 4))]],
    Case("elu", "Elu", [(3, 4)], F.elu, away_from=0.0),
    Case("elu_alpha", "Elu", [(3, 4)], lambda x: F.elu(x, 0.5), attrs=dict(alpha=0.5), away_from=0.0),
    Case("selu", "Selu", [(3, 4)], F.selu, away_from=0.0),
    Case("selu_alpha_gamma", "Selu", [(3, 4)],
         lambda x: torch.where(x > 0, 2.0 * x, 2.0 * 0.5 * (torch.exp(x) - 1)), attrs=dict(alpha=0.5, gamma=2.0),
         away_from=0.0),
    Case("sigmoid", "Sigmoid", [(3, 4)], torch.sigmoid),
    Case("tanh", "Tanh", [(3, 4)], torch.tanh),
    Case("softplus", "Softplus", [(3, 4)], F.softplus),
    Case("softsign", "Softsign", [(3, 4)], F.softsign),
    Case("mish", "Mish", [(3, 4)], F.mish, opset=18),
    # HardSigmoid: wide inputs so that both flat regions (gradient 0) and the ramp are hit
    Case("hard_sigmoid", "HardSigmoid", [(4, 5)], lambda x: torch.clamp(0.2 * x + 0.5, 0, 1),
         sampler=avoiding(-2.5, 2.5, scale=3.0)),
    Case("hard_sigmoid_torch", "HardSigmoid", [(4, 5)], F.hardsigmoid, attrs=dict(alpha=1 / 6, beta=0.5),
         sampler=avoiding(-3.0, 3.0, scale=4.0)),
    Case("hard_sigmoid_alpha_beta", "HardSigmoid", [(4, 5)], lambda x: torch.clamp(0.5 * x + 0.25, 0, 1),
         attrs=dict(alpha=0.5, beta=0.25), sampler=avoiding(-0.5, 1.5, scale=2.0)),
    Case("hard_swish", "HardSwish", [(4, 5)], F.hardswish, sampler=avoiding(-3.0, 3.0, scale=4.0)),
    # Clip: min/max constants, either omitted, both omitted, or attributed
    Case("clip_both", "Clip", [(4, 5), np.array(-0.5), np.array(0.5)], torch.clamp, sampler=avoiding(-0.5, 0.5)),
    Case("clip_min", "Clip", [(4, 5), np.array(-0.5)], lambda x, lo: torch.clamp(x, min=lo),
         sampler=avoiding(-0.5)),
    Case("clip_max", "Clip", [(4, 5), None, np.array(0.5)], lambda x, hi: torch.clamp(x, max=hi),
         sampler=avoiding(0.5)),
    Case("clip_none", "Clip", [(4, 5)], lambda x: x * 1),
    Case("clip_attr_bounds", "Clip", [(4, 5), (), ()], torch.clamp, sampler=scalars_then(-0.4, 0.4)),
    Case("clip_attr_max", "Clip", [(4, 5), np.array(-1.0), ()], torch.clamp, sampler=scalars_then(0.3, avoid=(-1.0, 0.3))),
    Case("clip_attr_crossed", "Clip", [(4, 5), (), ()], torch.clamp, sampler=scalars_then(0.4, -0.4)),
    # Shrink: hard (bias 0), soft (bias = lambd), and the general form; inputs kept away from +-lambd
    Case("shrink_default", "Shrink", [(4, 5)], F.hardshrink, sampler=avoiding(-0.5, 0.5)),
    Case("shrink_hard", "Shrink", [(4, 5)], lambda x: F.hardshrink(x, 0.7), attrs=dict(lambd=0.7),
         sampler=avoiding(-0.7, 0.7)),
    Case("shrink_soft", "Shrink", [(4, 5)], lambda x: F.softshrink(x, 0.4), attrs=dict(lambd=0.4, bias=0.4),
         sampler=avoiding(-0.4, 0.4)),
    Case("shrink_bias_lambd", "Shrink", [(4, 5)],
         lambda x: torch.where(x > 0.6, x - 1.5, torch.where(x < -0.6, x + 1.5, 0.0 * x)),
         attrs=dict(lambd=0.6, bias=1.5), sampler=avoiding(-0.6, 0.6, scale=1.5)),
    # Swish exists from opset 24: x * sigmoid(alpha * x), SiLU at alpha = 1
    Case("swish", "Swish", [(3, 4)], F.silu, opset=24, sampler=avoiding(scale=3.0)),
    Case("swish_alpha", "Swish", [(3, 4)], lambda x: x * torch.sigmoid(1.7 * x), attrs=dict(alpha=1.7), opset=24,
         sampler=avoiding(scale=3.0)),
    Case("swish_negative_alpha", "Swish", [(3, 4)], lambda x: x * torch.sigmoid(-0.6 * x), attrs=dict(alpha=-0.6),
         opset=24),
    # Hardmax: a one-hot of the argmax, piecewise constant: no gradient (finite differences give 0 away from
    # ties; torch's one_hot(argmax) has no autograd graph, so no torch_fn)
    Case("hardmax", "Hardmax", [(3, 4)]),
    Case("hardmax_axis0", "Hardmax", [(3, 4, 2)], attrs=dict(axis=0)),
    Case("hardmax_then_mul", "Hardmax", [(3, 4), (3, 4)],
         lambda x, w: F.one_hot(x.argmax(-1), 4).to(x.dtype) * w, attrs=dict(axis=-1), node_inputs=1,
         extra_nodes=[helper.make_node("Mul", ["y0", "in1"], ["y1"])]),
    # Gelu exists from opset 20
    Case("gelu", "Gelu", [(3, 4)], F.gelu, opset=20),
    Case("gelu_tanh", "Gelu", [(3, 4)], lambda x: F.gelu(x, approximate="tanh"), attrs=dict(approximate="tanh"),
         opset=20),
    Case("gelu_wide", "Gelu", [(3, 4)], F.gelu, opset=20, sampler=avoiding(scale=3.0)),
]
for op, fn in [("Softmax", torch.softmax), ("LogSoftmax", torch.log_softmax)]:
    ACT += [Case(f"{op.lower()}_default", op, [(2, 3, 4)], lambda x, fn=fn: fn(x, -1))]
    ACT += [Case(f"{op.lower()}_axis{a}", op, [(2, 3, 4)], lambda x, fn=fn, a=a: fn(x, a), attrs=dict(axis=a))
            for a in (0, 1, -2, -3)]
    ACT += [Case(f"{op.lower()}_opset18", op, [(3, 5)], lambda x, fn=fn: fn(x, 0), attrs=dict(axis=0), opset=18)]


# Batch dimension symbolic in the model ("batch"): the dynamic unbroadcast path and no baked batch sizes.
# Every attributed input of rank >= 1 here has the batch as its first dimension.
DYNAMIC = [
    Case("dyn_add", "Add", [(3, 4), (3, 1)], lambda a, c: a + c),
    Case("dyn_mul_rank3", "Mul", [(3, 1, 4), (3, 2, 1)], lambda a, c: a * c),
    Case("dyn_div_const", "Div", [(3, 4), positive_const(4)], lambda a, c: a / c),
    Case("dyn_pow_const", "Pow", [(3, 4), np.array([0.5, 1.0, 2.0, 3.0])], torch.pow, positive=True),
    Case("dyn_max3", "Max", [(3, 4), (3, 1), W.standard_normal(4)], lambda a, c, d: torch.maximum(torch.maximum(a, c), d)),
    Case("dyn_sum_const", "Sum", [(3, 1, 4), W.standard_normal((2, 1))], lambda a, c: a + c),
    Case("dyn_where", "Where", [W.random(4) > 0.5, (3, 4), (3, 1)], torch.where),
    Case("dyn_prelu", "PRelu", [(3, 2, 4), W.uniform(0.1, 0.3, (2, 1))], lambda x, s: torch.where(x > 0, x, s * x),
         away_from=0.0),
    Case("dyn_clip_attr", "Clip", [(3, 4), (), ()], torch.clamp, sampler=scalars_then(-0.4, 0.4)),
    Case("dyn_softmax_axis0", "Softmax", [(3, 4)], lambda x: torch.softmax(x, 0), attrs=dict(axis=0)),
    Case("dyn_log_softmax", "LogSoftmax", [(3, 4)], lambda x: torch.log_softmax(x, -1)),
    Case("dyn_gelu_tanh", "Gelu", [(3, 4)], lambda x: F.gelu(x, approximate="tanh"), attrs=dict(approximate="tanh"),
         opset=20),
]
for c in DYNAMIC:
    c.dynamic = True


# DequantizeLinear: the scale is attributed, the codes and zero points are integers
CODES = W.integers(-128, 128, (3, 5, 4)).astype(np.int8)
ZERO_POINTS = W.integers(-3, 4, 5).astype(np.int8)


def dequantized(axis=None, block=None, zero_point=None):
    """(codes - zero_point) * scale, the scale broadcast per tensor, per axis or repeated per block."""
    def fn(codes, scale, *zp):
        shifted = codes.double() - (zp[0].double().reshape([-1 if a == axis else 1 for a in range(3)]) if zp else 0)
        if axis is None:
            return shifted * scale
        if block is None:
            return shifted * scale.reshape([-1 if a == axis else 1 for a in range(3)])
        return shifted * torch.repeat_interleave(scale, block, dim=axis).narrow(axis, 0, codes.shape[axis])
    return fn


QUANT = [
    Case("dequantize_per_tensor", "DequantizeLinear", [CODES, ()], dequantized(), opset=21),
    Case("dequantize_per_axis", "DequantizeLinear", [CODES, (5,), ZERO_POINTS], dequantized(axis=1, zero_point=True),
         opset=21),
    Case("dequantize_last_axis", "DequantizeLinear", [CODES, (4,)], dequantized(axis=2), attrs=dict(axis=-1),
         opset=21),
    Case("dequantize_blocked_short_last_block", "DequantizeLinear", [CODES, (3, 2, 4)], dequantized(axis=1, block=3),
         attrs=dict(axis=1, block_size=3), opset=21),
]


@pytest.mark.parametrize("case", ARITH + ACT + DYNAMIC, ids=lambda c: c.name)
def test_case(case):
    check_case(case)


@pytest.mark.parametrize("case", QUANT, ids=lambda c: c.name)
def test_dequantize_linear_scale_gradient(case):
    """DequantizeLinear takes float32/float16 scales only (the harness's float64 models are refused), so its
    rule is checked in float32, in onnxruntime and onnx.reference, against torch autograd; it is linear in
    the scale, so float32 holds it to rounding."""
    model, wrt, out = build_case_model(case, TensorProto.FLOAT)
    vm = vjp_model(model, wrt, out)
    rng = np.random.default_rng(0)
    xs = {x: rng.standard_normal(case.inputs[int(x[2:])]).astype(np.float32) for x in wrt}
    fwd = run_reference(model, xs)[0]
    dy = rng.standard_normal(np.shape(fwd)).astype(np.float32)
    targs = [torch.tensor(xs[f"in{i}"], dtype=torch.float64, requires_grad=True) if isinstance(spec, tuple)
             else torch.tensor(np.asarray(spec)) for i, spec in enumerate(case.inputs)]
    y = case.torch_fn(*targs)
    np.testing.assert_allclose(fwd, y.detach().numpy(), rtol=1e-5, atol=1e-4)
    expected = torch.autograd.grad(y, [t for t in targs if t.requires_grad], torch.tensor(dy, dtype=torch.float64))
    sess = ort.InferenceSession(vm.SerializeToString(), providers=["CPUExecutionProvider"])
    for got in (sess.run(None, {**xs, "dy": dy})[1:], run_reference(vm, {**xs, "dy": dy})[1:]):
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e.numpy(), rtol=1e-5, atol=1e-3)


# ------------------------------------------------------------------ at kinks and through rounding casts
# Central differences are not a derivative at a kink, nor through a float32/float16 rounding (h = 1e-6
# is below the rounding step), so these cases are held against torch autograd (float64, onnx.reference)
# and run once more in onnxruntime (float32).
def check_against_torch(case: Case, xs: dict):
    model, wrt, out = build_case_model(case)
    vm = vjp_model(model, wrt, out)
    fwd = run_reference(model, xs)[0]
    dy = np.random.default_rng(3).standard_normal(np.shape(fwd))
    res = run_reference(vm, {**xs, "dy": dy})
    grads = dict(zip(wrt, res[1:]))

    targs = []
    for i, spec in enumerate(case.inputs):
        if spec is None:
            continue
        targs.append(torch.tensor(xs[f"in{i}"], requires_grad=True) if isinstance(spec, tuple)
                     else torch.tensor(np.asarray(spec)))
    y = case.torch_fn(*targs)
    np.testing.assert_allclose(y.detach().numpy(), fwd, rtol=1e-6, atol=1e-8)
    tw = [t for t in targs if t.requires_grad]
    for x, g in zip(wrt, torch.autograd.grad(y, tw, torch.tensor(dy))):
        np.testing.assert_allclose(grads[x], g.numpy(), rtol=1e-6, atol=1e-8, err_msg=f"{case.name}: {x}")

    m32, wrt32, out32 = build_case_model(case, TensorProto.FLOAT)
    sess = ort.InferenceSession(vjp_model(m32, wrt32, out32).SerializeToString(), providers=["CPUExecutionProvider"])
    r32 = sess.run(None, {**{x: xs[x].astype(np.float32) for x in wrt32}, "dy": dy.astype(np.float32)})
    for x, g32 in zip(wrt32, r32[1:]):
        np.testing.assert_allclose(g32, grads[x], rtol=2e-3, atol=2e-3, err_msg=f"{case.name}: onnxruntime {x}")


KINK = np.array([[-1.0, 0.0, 1.0, -0.5], [0.5, 0.0, -3.0, 3.0], [2.0, -2.0, 0.25, 0.0]])
back = [helper.make_node("CastLike", ["y0", "in0"], ["y1"])]

TORCH_ONLY = [
    (Case("relu_at_0", "Relu", [(3, 4)], torch.relu), {"in0": KINK}),
    (Case("leaky_relu_at_0", "LeakyRelu", [(3, 4)], F.leaky_relu), {"in0": KINK}),
    (Case("elu_at_0", "Elu", [(3, 4)], F.elu), {"in0": KINK}),
    (Case("selu_at_0", "Selu", [(3, 4)], F.selu), {"in0": KINK}),
    (Case("abs_at_0", "Abs", [(3, 4)], torch.abs), {"in0": KINK}),
    (Case("prelu_at_0", "PRelu", [(3, 4), (4,)], lambda x, s: torch.where(x > 0, x, s * x)),
     {"in0": KINK, "in1": np.array([0.1, 0.2, 0.3, 0.4])}),
    (Case("clip_at_bounds", "Clip", [(3, 4), np.array(-0.5), np.array(0.5)], torch.clamp), {"in0": KINK}),
    (Case("clip_attr_at_bounds", "Clip", [(3, 4), (), ()], torch.clamp),
     {"in0": KINK, "in1": np.array(-0.5), "in2": np.array(0.5)}),
    (Case("hard_sigmoid_at_bounds", "HardSigmoid", [(3, 4)], F.hardsigmoid, attrs=dict(alpha=1 / 6, beta=0.5)),
     {"in0": KINK}),
    (Case("hard_swish_at_bounds", "HardSwish", [(3, 4)], F.hardswish), {"in0": KINK}),
    # Shrink at +-lambd: 0, as torch's softshrink and hardshrink
    (Case("shrink_soft_at_lambd", "Shrink", [(3, 4)], lambda x: F.softshrink(x, 0.5), attrs=dict(lambd=0.5, bias=0.5)),
     {"in0": KINK}),
    (Case("shrink_hard_at_lambd", "Shrink", [(3, 4)], lambda x: F.hardshrink(x, 1.0), attrs=dict(lambd=1.0)),
     {"in0": KINK}),
    # the inverse functions at the ends of their domains: an infinite slope, as torch
    (Case("asin_at_ends", "Asin", [(3, 4)], torch.asin), {"in0": np.clip(KINK, -1, 1)}),
    (Case("acos_at_ends", "Acos", [(3, 4)], torch.acos), {"in0": np.clip(KINK, -1, 1)}),
    (Case("atanh_at_ends", "Atanh", [(3, 4)], torch.atanh), {"in0": np.clip(KINK, -0.5, 1)}),
    (Case("acosh_at_one", "Acosh", [(3, 4)], torch.acosh), {"in0": 1 + np.abs(KINK)}),
    (Case("max_ties", "Max", [(3, 4), (3, 4)], torch.maximum), {"in0": KINK, "in1": np.round(KINK)}),
    (Case("min_ties", "Min", [(3, 4), (4,)], torch.minimum), {"in0": KINK, "in1": np.array([-1.0, 0.0, 0.25, 0.0])}),
    # base 0 with exponents 0, 1, 2, 1.5, 3, 2.5: torch's masks (da = 0 where c == 0, dc = 0 where a == 0)
    (Case("pow_zero_base", "Pow", [(3, 4), (3, 4)], torch.pow),
     {"in0": np.array([[0.0, 0.0, 0.0, 0.0], [1.5, 0.0, 2.0, 0.0], [0.7, 0.0, 1.2, 0.0]]),
      "in1": np.array([[0.0, 1.0, 2.0, 1.5], [0.0, 3.0, 0.5, 2.5], [1.0, 0.0, 2.0, 1.0]])}),
    (Case("pow_zero_base_const_exp", "Pow", [(3, 4), np.array([0.0, 1.0, 2.0, 0.5])], torch.pow),
     {"in0": np.abs(KINK) * (KINK > 0)}),
    # Cast float64 -> float32 / float16 and back: the cotangent is cast back through the same types
    (Case("cast_float", "Cast", [(3, 4)], lambda a: a.to(torch.float32).to(torch.float64),
          attrs=dict(to=TensorProto.FLOAT), extra_nodes=back), {"in0": KINK / 3}),
    (Case("cast_float16", "Cast", [(3, 4)], lambda a: a.to(torch.float16).to(torch.float64),
          attrs=dict(to=TensorProto.FLOAT16), extra_nodes=back), {"in0": KINK / 3}),
]


@pytest.mark.parametrize("case,xs", TORCH_ONLY, ids=[c.name for c, _ in TORCH_ONLY])
def test_against_torch_only(case, xs):
    check_against_torch(case, xs)


# Celu is defined for float32 only: no float64 model, so no finite differences; float32 in onnx.reference
# and onnxruntime against torch autograd in float64.
@pytest.mark.parametrize("alpha", [1.0, 0.7])
def test_celu_float32(alpha):
    case = Case("celu", "Celu", [(3, 4)], attrs=dict(alpha=alpha))
    x = avoiding(0.0)(np.random.default_rng(0), (3, 4))
    x[0, 0] = 0.0   # torch's value at the kink: the x <= 0 branch, slope 1
    dy = np.random.default_rng(1).standard_normal((3, 4))
    tx = torch.tensor(x, requires_grad=True)
    (expected,) = torch.autograd.grad(F.celu(tx, alpha), tx, torch.tensor(dy))
    m32, wrt, out = build_case_model(case, TensorProto.FLOAT)
    vm = vjp_model(m32, wrt, out)
    feeds = {"in0": x.astype(np.float32), "dy": dy.astype(np.float32)}
    sess = ort.InferenceSession(vm.SerializeToString(), providers=["CPUExecutionProvider"])
    for got in (run_reference(vm, feeds)[1], sess.run(None, feeds)[1]):
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ DeepLIFT and epsilon-LRP through the new ops
# Every op in NONLINEAR_UNARY gets DeepLIFT's Rescale rule: the attributions of a row must sum to
# f(x) - f(baseline) (summation-to-delta), checked against the model's own forward pass in onnxruntime.
def _deeplift_graph(body: list, inits=(), opset: int = 17):
    """x (N, 4, 5) -> body -> z (N, 4, 5) -> z @ W summed over axis 1 -> y (N, 3)."""
    from onnx import numpy_helper
    w = numpy_helper.from_array(np.random.default_rng(99).standard_normal((5, 3)).astype(np.float32), "W")
    nodes = body + [helper.make_node("MatMul", ["z", "W"], ["zw"]),
                    helper.make_node("ReduceSum", ["zw", "axis1"], ["y"], keepdims=0)]
    consts = [w, numpy_helper.from_array(np.array([1], np.int64), "axis1"),
              *(numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in dict(inits).items())]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    return model


def _node(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, **attrs)


DEEPLIFT_BODIES = {
    # the inverse functions fed inside their domains: tanh(x) * 0.9 in (-1, 1), softplus(x) + 1.1 > 1
    "asin_acos_atanh": ([_node("Tanh", ["x"], ["t"]), _node("Mul", ["t", "c09"], ["u"]), _node("Asin", ["u"], ["a"]),
                         _node("Acos", ["u"], ["b"]), _node("Atanh", ["u"], ["h"]),
                         _node("Sum", ["a", "b", "h"], ["z"])],
                        {"c09": 0.9}, 17),
    "acosh": ([_node("Softplus", ["x"], ["s"]), _node("Add", ["s", "c11"], ["u"]), _node("Acosh", ["u"], ["z"])],
              {"c11": 1.1}, 17),
    "tan": ([_node("Tanh", ["x"], ["t"]), _node("Mul", ["t", "c12"], ["u"]), _node("Tan", ["u"], ["z"])],
            {"c12": 1.2}, 17),
    "sinh_cosh_atan_asinh": ([_node("Sinh", ["x"], ["s"]), _node("Atan", ["s"], ["a"]), _node("Cosh", ["x"], ["c"]),
                              _node("Asinh", ["c"], ["h"]), _node("Mul", ["a", "h"], ["z"])], {}, 17),
    "shrink": ([_node("Shrink", ["x"], ["z"], lambd=0.5, bias=0.3)], {}, 17),
    "swish": ([_node("Swish", ["x"], ["s"], alpha=1.5), _node("Shrink", ["s"], ["z"], lambd=0.2, bias=0.2)], {}, 24),
}


def _rows_and_baselines(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    base = (0.7 * rng.standard_normal((3, 4, 5))).astype(np.float32)
    base[0, 0, 0] = x[0, 0, 0]   # an unmoved entry: the Rescale rule's gradient fallback
    return x, base


def _gap(model, x, base, target):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0][:, target] - sess.run(None, {"x": base})[0][:, target]


@pytest.mark.parametrize("name", DEEPLIFT_BODIES)
def test_deeplift_summation_to_delta_through_new_ops(name):
    import onnxplain
    body, inits, opset = DEEPLIFT_BODIES[name]
    model = _deeplift_graph(body, inits, opset)
    x, base = _rows_and_baselines()
    attr, delta = onnxplain.Explainer(model, "deeplift").explain(x, target=1, baselines=base,
                                                                return_convergence_delta=True)
    assert np.all(np.isfinite(attr)) and np.abs(attr).max() > 0
    scale = max(1.0, float(np.abs(attr).reshape(len(attr), -1).sum(1).max()))
    np.testing.assert_allclose(attr.reshape(len(attr), -1).sum(1), _gap(model, x, base, 1), rtol=0, atol=2e-5 * scale)
    np.testing.assert_allclose(delta, 0, atol=2e-5 * scale)


@pytest.mark.parametrize("name", ["tan", "shrink", "swish"])
def test_deeplift_is_the_gradient_where_nothing_moved(name):
    """A baseline equal to the input: the Rescale rule of the new ops falls back to their gradient."""
    import onnxplain
    body, inits, opset = DEEPLIFT_BODIES[name]
    model = _deeplift_graph(body, inits, opset)
    x, _ = _rows_and_baselines(seed=1)
    multipliers = onnxplain.Explainer(model, "deeplift").explain(x, target=1, baselines=x, multiply_by_inputs=False)
    gradient = onnxplain.Explainer(model, "gradient").explain(x, target=1)
    np.testing.assert_allclose(multipliers, gradient, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["tan", "shrink", "swish"])
def test_epsilon_lrp_conserves_through_new_ops(name):
    """epsilon-LRP's unary rule ``dz = dy * y / (z + eps * s(z))`` applies to the new ops: through a chain of
    unary ops and bias-free linear maps the relevance ``x * dz`` of a row sums to its output (up to eps)."""
    import onnxplain
    body, inits, opset = DEEPLIFT_BODIES[name]
    model = _deeplift_graph(body, inits, opset)
    x, _ = _rows_and_baselines(seed=2)
    attr = onnxplain.Explainer(model, "epsilon_lrp").explain(x, target=1, epsilon=1e-6)
    assert attr.shape == x.shape and np.all(np.isfinite(attr)) and np.abs(attr).max() > 0
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    scale = max(1.0, float(np.abs(attr).reshape(len(attr), -1).sum(1).max()))
    np.testing.assert_allclose(attr.reshape(len(attr), -1).sum(1), y[:, 1], rtol=0, atol=1e-4 * scale)


# Hardmax is piecewise constant (a one-hot of the argmax): the gradient methods get 0 through it, but a row
# and its reference may have different argmax, so DeepLIFT's rule must carry y - y_ref through it.
def _hardmax_graph(residual: bool):
    body = [_node("Hardmax", ["x"], ["h"], axis=-1)]
    body += [_node("Add", ["x", "h"], ["z"])] if residual else [_node("Identity", ["h"], ["z"])]
    return _deeplift_graph(body)


@pytest.mark.parametrize("residual", [True, False])
def test_deeplift_through_hardmax_sums_to_delta(residual):
    """Rows whose argmax differs from their reference's: the attributions still sum to f(x) - f(reference),
    from the model's own forward pass, with and without a residual path beside the Hardmax."""
    import onnxplain
    x, base = _rows_and_baselines()
    model = _hardmax_graph(residual)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    hardmax = lambda t: np.eye(t.shape[-1])[t.argmax(-1)]  # noqa: E731
    assert np.any(hardmax(x) != hardmax(base)), "the test needs argmaxes that move"
    attr = onnxplain.Explainer(model, "deeplift").explain(x, target=1, baselines=base)
    gap = sess.run(None, {"x": x})[0][:, 1] - sess.run(None, {"x": base})[0][:, 1]
    assert np.abs(gap).max() > 1e-3
    np.testing.assert_allclose(attr.reshape(len(x), -1).sum(1), gap, rtol=0, atol=1e-5)


def test_hardmax_only_path_is_refused_as_no_gradient():
    import onnxplain
    x, _ = _rows_and_baselines()
    with pytest.raises(onnxplain.NoGradientPathError, match="Hardmax"):
        onnxplain.Explainer(_hardmax_graph(residual=False), "gradient").explain(x, target=1)


def test_gradient_through_hardmax_is_zero():
    """x + Hardmax(x): the gradient is that of the residual path alone (the Hardmax path passes none)."""
    import onnxplain
    x, _ = _rows_and_baselines()
    got = onnxplain.Explainer(_hardmax_graph(residual=True), "gradient").explain(x, target=1)
    w = np.random.default_rng(99).standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_allclose(got, np.broadcast_to(w[:, 1], x.shape), rtol=1e-6, atol=1e-6)
