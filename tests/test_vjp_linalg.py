"""Backward rules of Gemm, MatMul, Conv and ConvTranspose against finite differences and torch."""
import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from onnxplain.converters.normalize import normalize
from onnxplain.errors import UnsupportedOperatorError
from vjp_harness import Case, build_case_model, check_case, vjp_model

RNG = np.random.default_rng(7)


def arr(*shape):
    return RNG.standard_normal(shape)


# --------------------------------------------------------------------------------------- Gemm
def _gemm_case(ta, tb, alpha, beta, c_kind, which, M=3, K=4, N=5):
    sa = (K, M) if ta else (M, K)
    sb = (N, K) if tb else (K, N)
    c_shape = {"none": None, "scalar": (), "row": (N,), "col": (M, 1), "full": (M, N)}[c_kind]
    A = sa if "A" in which else arr(*sa)
    B = sb if "B" in which else arr(*sb)
    if c_shape is None:
        C = None
    elif "C" in which:
        C = c_shape
    else:
        C = arr(*c_shape)
    inputs = [A, B] + ([] if C is None else [C])

    def fn(a, b, *c):
        y = alpha * ((a.T if ta else a) @ (b.T if tb else b))
        return y + beta * c[0] if c else y
    attrs = dict(transA=ta, transB=tb, alpha=alpha, beta=beta)
    return Case(f"gemm_tA{ta}_tB{tb}_a{alpha}_b{beta}_C{c_kind}_{which}", "Gemm", inputs, fn, attrs=attrs)


GEMM = [
    _gemm_case(ta, tb, alpha, beta, c_kind, which)
    for (ta, tb), which, (alpha, beta, c_kind) in zip(
        itertools.cycle(itertools.product([0, 1], [0, 1])),
        ["A", "B", "AB"] * 4,
        itertools.cycle([(1.0, 1.0, "none"), (0.7, -1.3, "scalar"), (1.0, 2.0, "row"),
                         (-0.5, 1.0, "col"), (2.0, 0.5, "full")]))
] + [
    # every transpose combination with A and B attributed together
    _gemm_case(ta, tb, 0.7, 1.5, "row", "AB") for ta, tb in itertools.product([0, 1], [0, 1])
] + [
    # C attributed, in every broadcastable form
    _gemm_case(1, 0, 1.0, -0.5, c_kind, which)
    for c_kind, which in [("scalar", "C"), ("row", "AC"), ("col", "BC"), ("full", "ABC")]
] + [
    # symbolic batch (rows of A and Y)
    Case("gemm_dyn_batch", "Gemm", [(3, 4), arr(5, 4), arr(5)], lambda a, w, c: 0.5 * a @ w.T + 2 * c,
         attrs=dict(transB=1, alpha=0.5, beta=2.0), dynamic=True),
]


# ------------------------------------------------------------------------------------- MatMul
def _mm(sa, sb, which="AB", dynamic=False):
    A = sa if "A" in which else arr(*sa)
    B = sb if "B" in which else arr(*sb)
    name = f"matmul_{'x'.join(map(str, sa))}_{'x'.join(map(str, sb))}_{which}" + ("_dyn" if dynamic else "")
    return Case(name, "MatMul", [A, B], torch.matmul, dynamic=dynamic)


MATMUL = [
    _mm((3, 4), (4, 5), "A"), _mm((3, 4), (4, 5), "B"), _mm((3, 4), (4, 5), "AB"),
    _mm((4,), (4, 5)), _mm((3, 4), (4,)), _mm((4,), (4,)), _mm((4,), (4,), "A"),
    _mm((4,), (2, 4, 5)), _mm((2, 3, 4), (4,)), _mm((4,), (2, 4, 5), "B"),
    _mm((2, 3, 4), (4, 5)), _mm((2, 3, 4), (4, 5), "A"), _mm((3, 4), (2, 4, 5)),
    _mm((2, 1, 3, 4), (5, 4, 6)), _mm((2, 1, 3, 4), (5, 4, 6), "A"), _mm((2, 1, 3, 4), (5, 4, 6), "B"),
    _mm((1, 3, 4), (2, 4, 5)), _mm((2, 2, 3, 4), (2, 2, 4, 5)),
    _mm((2, 3, 4), (4, 5), "A", dynamic=True), _mm((2, 3, 4), (2, 4, 5), "AB", dynamic=True),
    _mm((2, 1, 3, 4), (5, 4, 6), "AB", dynamic=True),
]


def _mm_unranked_a(sa, sb=(4, 5), which="AB"):
    """``u @ B`` where ``u = Identity(A)`` has its shape dropped (as a Squeeze without axes over a dimension
    read from data leaves it): the rule sees an A of unknown rank against a matrix."""
    A = sa if "A" in which else arr(*sa)
    B = sb if "B" in which else arr(*sb)
    nodes = [helper.make_node("Identity", ["y0"], ["u"]), helper.make_node("MatMul", ["u", "in1"], ["z"])]
    name = f"matmul_unranked_{'x'.join(map(str, sa))}_{'x'.join(map(str, sb))}_{which}"
    return Case(name, "Identity", [A, B], torch.matmul, extra_nodes=nodes, unknown_shapes=("u",), node_inputs=1)


MATMUL_UNRANKED = [_mm_unranked_a((3, 4)), _mm_unranked_a((2, 3, 4)), _mm_unranked_a((2, 1, 3, 4), which="A"),
                   _mm_unranked_a((4,)), _mm_unranked_a((2, 3, 4), which="B")]


def test_an_operand_of_unknown_rank_against_a_vector_or_batch_is_refused():
    """Only a product by a matrix broadcasts nothing whatever A's rank: against a vector or a batch of
    matrices the rule needs A's rank, and says so."""
    for sb in ((4,), (2, 4, 5)):
        case = _mm_unranked_a((2, 3, 4), sb, which="A")
        model, wrt, out = build_case_model(case)
        with pytest.raises(UnsupportedOperatorError, match="rank of tensor 'u' is unknown"):
            vjp_model(model, wrt, out)


# --------------------------------------------------------------------------------------- Conv
def _torch_conv(n, pads, strides, dilations, group, bias=False):
    """torch convolution with ONNX-style (begin..., end...) pads, done by an explicit F.pad."""
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    tpad = []
    for i in reversed(range(n)):
        tpad += [pads[i], pads[n + i]]

    def fn(x, w, *b):
        return conv(F.pad(x, tpad), w, b[0] if b else None, stride=strides, dilation=dilations, groups=group)
    return fn


def _same_pads(x, k, s, d, upper):
    """TensorFlow's SAME padding, written out independently of the rule."""
    out = -(-x // s)
    total = max(0, (out - 1) * s + (k - 1) * d + 1 - x)
    lo = total // 2 if upper else total - total // 2
    return lo, total - lo


def _conv(name, xs, ws, *, strides=None, pads=None, dilations=None, group=1, auto_pad=None,
          which="X", bias=None, dynamic=False):
    n = len(xs) - 2
    strides = strides or [1] * n
    dilations = dilations or [1] * n
    attrs = dict(strides=strides, dilations=dilations)
    if group != 1:
        attrs["group"] = group
    if auto_pad:
        attrs["auto_pad"] = auto_pad
        if auto_pad == "VALID":
            tp = [0] * (2 * n)
        else:
            pp = [_same_pads(xs[2 + i], ws[2 + i], strides[i], dilations[i], auto_pad == "SAME_UPPER")
                  for i in range(n)]
            tp = [p[0] for p in pp] + [p[1] for p in pp]
    else:
        tp = pads or [0] * (2 * n)
        if pads:
            attrs["pads"] = pads
    inputs = [xs if "X" in which else arr(*xs), ws if "W" in which else arr(*ws)]
    if bias:
        inputs.append((ws[0],) if "B" in which else arr(ws[0]))
    return Case(name, "Conv", inputs, _torch_conv(n, tp, strides, dilations, group), attrs=attrs,
                dynamic=dynamic)


CONV = [
    _conv("conv2d_basic", (2, 3, 5, 5), (4, 3, 3, 3), pads=[1, 1, 1, 1], bias=True),
    _conv("conv2d_stride2_odd_asym", (2, 3, 6, 7), (4, 3, 3, 3), strides=[2, 2], pads=[1, 0, 0, 2]),
    _conv("conv2d_stride3_skip_rows", (1, 2, 8, 7), (3, 2, 2, 3), strides=[3, 2], pads=[0, 1, 2, 0]),
    _conv("conv2d_dilation_stride", (1, 2, 7, 8), (3, 2, 3, 2), strides=[2, 1], dilations=[2, 3],
          pads=[1, 2, 2, 1]),
    _conv("conv2d_groups2", (2, 4, 5, 6), (6, 2, 3, 3), group=2, strides=[2, 2], pads=[1, 1, 0, 0]),
    _conv("conv2d_depthwise", (2, 3, 6, 5), (3, 1, 3, 3), group=3, pads=[1, 1, 1, 1], strides=[2, 1]),
    _conv("conv2d_depthwise_mult2", (1, 3, 5, 5), (6, 1, 2, 2), group=3, strides=[2, 2]),
    _conv("conv2d_same_upper", (1, 2, 7, 6), (3, 2, 3, 3), strides=[2, 2], auto_pad="SAME_UPPER"),
    _conv("conv2d_same_lower", (1, 2, 7, 6), (3, 2, 2, 4), strides=[2, 3], auto_pad="SAME_LOWER"),
    _conv("conv2d_valid", (1, 2, 8, 7), (3, 2, 3, 2), strides=[3, 2], auto_pad="VALID"),
    _conv("conv1d", (2, 3, 9), (4, 3, 3), strides=[2], pads=[2, 1], dilations=[2], bias=True),
    _conv("conv1d_groups", (2, 4, 10), (4, 2, 4), strides=[3], pads=[0, 2], group=2),
    _conv("conv3d", (1, 2, 5, 4, 5), (3, 2, 2, 3, 2), strides=[2, 1, 2], pads=[1, 0, 1, 0, 1, 1]),
    _conv("conv3d_depthwise_dil", (1, 2, 5, 6, 5), (2, 1, 2, 2, 2), group=2, dilations=[2, 1, 2],
          strides=[1, 2, 2]),
    # weight (and bias) cotangents: only computed when the weight itself is attributed
    _conv("conv2d_dW", (2, 3, 5, 6), (4, 3, 3, 2), strides=[2, 1], pads=[1, 0, 0, 1], which="XWB", bias=True),
    _conv("conv2d_dW_only", (2, 3, 6, 5), (4, 3, 2, 3), strides=[2, 2], dilations=[1, 2], which="W"),
    _conv("conv2d_dW_groups", (2, 4, 6, 5), (6, 2, 3, 2), group=2, strides=[2, 1], pads=[1, 1, 1, 0],
          which="XW"),
    _conv("conv2d_dW_depthwise", (2, 3, 5, 5), (3, 1, 3, 3), group=3, pads=[1, 1, 1, 1], which="W"),
    _conv("conv1d_dW_dil", (3, 2, 11), (3, 2, 3), strides=[2], dilations=[3], pads=[1, 0], which="XWB",
          bias=True),
    _conv("conv3d_dW", (1, 2, 4, 5, 4), (2, 2, 2, 2, 3), strides=[1, 2, 1], pads=[0, 1, 1, 1, 0, 1],
          which="XW"),
    _conv("conv2d_same_dW", (2, 2, 7, 6), (3, 2, 3, 3), strides=[2, 2], auto_pad="SAME_LOWER", which="XW"),
    # dynamic batch dimension
    _conv("conv2d_dyn_batch", (2, 3, 7, 6), (4, 3, 3, 3), strides=[2, 2], pads=[1, 1, 0, 0], dynamic=True),
    _conv("conv2d_dyn_batch_dW", (2, 4, 6, 5), (4, 2, 2, 2), group=2, strides=[2, 2], which="XWB", bias=True,
          dynamic=True),
]


# ------------------------------------------------------------------------------ ConvTranspose
def _torch_convT(n, strides, pads, outpad, dilations, group):
    """torch transposed convolution; ONNX pads are crops of the full output, so crop by slicing."""
    convT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[n]

    def fn(x, w, *b):
        y = convT(x, w, b[0] if b else None, stride=strides, output_padding=0, groups=group,
                  dilation=dilations)
        y = F.pad(y, sum(([0, outpad[i]] for i in reversed(range(n))), []))   # output_padding: zeros at the end
        idx = [slice(None), slice(None)] + [slice(pads[i], y.shape[2 + i] - pads[n + i]) for i in range(n)]
        return y[tuple(idx)]
    return fn


def _convT(name, xs, ws, *, strides=None, pads=None, outpad=None, dilations=None, group=1, which="X",
           bias=False, extra=None, torch_pads=None):
    n = len(xs) - 2
    strides = strides or [1] * n
    dilations = dilations or [1] * n
    pads_ = pads or [0] * (2 * n)
    outpad_ = outpad or [0] * n
    attrs = dict(strides=strides, dilations=dilations, group=group)
    if pads:
        attrs["pads"] = pads
    if outpad:
        attrs["output_padding"] = outpad
    attrs.update(extra or {})
    inputs = [xs if "X" in which else arr(*xs), ws if "W" in which else arr(*ws)]
    if bias:
        inputs.append((ws[1] * group,) if "B" in which else arr(ws[1] * group))
    tp = torch_pads or pads_
    return Case(name, "ConvTranspose", inputs, _torch_convT(n, strides, tp, outpad_, dilations, group),
                attrs=attrs)


CONV_T = [
    _convT("convT2d_basic", (2, 3, 4, 4), (3, 2, 3, 3), pads=[1, 1, 1, 1], bias=True),
    _convT("convT2d_stride_outpad", (2, 3, 3, 4), (3, 4, 3, 3), strides=[2, 2], pads=[1, 1, 1, 1],
           outpad=[1, 0]),
    _convT("convT2d_asym_pads", (1, 2, 4, 3), (2, 3, 3, 2), strides=[2, 3], pads=[0, 1, 2, 0],
           outpad=[1, 2]),
    _convT("convT2d_dilation", (2, 2, 3, 4), (2, 3, 2, 3), strides=[2, 1], dilations=[2, 2], pads=[1, 0, 0, 1]),
    _convT("convT1d", (2, 3, 5), (3, 2, 4), strides=[3], pads=[2, 1], outpad=[2]),
    _convT("convT3d", (1, 2, 3, 2, 3), (2, 2, 2, 3, 2), strides=[2, 1, 2], pads=[0, 1, 1, 1, 0, 0]),
    _convT("convT2d_dW", (2, 3, 3, 4), (3, 2, 3, 2), strides=[2, 2], pads=[1, 0, 1, 1], outpad=[1, 1],
           which="XWB", bias=True),
    # auto_pad, alone and with output_shape: torch gets the pads the spec implies
    _convT("convT2d_same_upper", (1, 2, 3, 3), (2, 2, 3, 3), strides=[2, 2],
           extra=dict(auto_pad="SAME_UPPER"), torch_pads=[0, 0, 1, 1]),
    _convT("convT2d_same_lower", (1, 2, 3, 3), (2, 2, 3, 3), strides=[2, 2],
           extra=dict(auto_pad="SAME_LOWER"), torch_pads=[1, 1, 0, 0]),
    _convT("convT2d_output_shape_same_upper", (1, 2, 3, 3), (2, 2, 3, 3), strides=[2, 2],
           extra=dict(output_shape=[6, 5], auto_pad="SAME_UPPER"), torch_pads=[0, 1, 1, 1]),
    # output_shape past the kernel's reach: the outputs beyond it are zeros (bias only), an odd one at the end
    Case("convT2d_output_shape_past_reach", "ConvTranspose", [(1, 1, 3, 3), (1, 2, 3, 3), (2,)],
         lambda x, w, b: F.pad(F.conv_transpose2d(x, w, stride=(3, 2)), (0, 1, 0, 1)) + b[:, None, None],
         attrs=dict(strides=[3, 2], output_shape=[10, 8])),
]

# Grouped ConvTranspose: onnx.reference computes the *forward* wrongly when group > 1 (it slices
# the weight by output channels and writes one channel per group), so the finite differences of
# these cases run with the reference op patched to do one group at a time (see the fixture).
CONV_T_GROUPED = [
    _convT("convT2d_groups_dil", (2, 4, 3, 4), (4, 2, 2, 3), strides=[2, 1], dilations=[2, 2], group=2,
           pads=[1, 0, 0, 1]),
    _convT("convT2d_depthwise", (1, 3, 4, 4), (3, 1, 3, 3), strides=[2, 2], group=3, pads=[1, 1, 1, 1],
           outpad=[1, 1]),
    _convT("convT2d_dW_groups", (2, 4, 3, 3), (4, 3, 2, 2), strides=[2, 2], group=2, which="XWB", bias=True),
]

def singular(rng, shape):
    """Matrices of rank n - 1 (det 0, the cofactors not all 0): the last row a mix of the others."""
    a = rng.standard_normal(shape)
    a[..., -1, :] = a[..., 0, :] - 2 * a[..., 1, :]
    return a


def laplace_det(a):
    """det by cofactor expansion along the first row: its autograd is the adjugate everywhere, singular
    matrices included (torch.linalg.det's backward takes another path there)."""
    n = a.shape[-1]
    if n == 1:
        return a[..., 0, 0]
    total = 0
    for j in range(n):
        minor = torch.cat([a[..., 1:, :j], a[..., 1:, j + 1:]], dim=-1)
        total = total + (-1) ** j * a[..., 0, j] * laplace_det(minor)
    return total


DET = [
    Case("det_3x3", "Det", [(3, 3)], torch.linalg.det),
    Case("det_batched_4x4", "Det", [(2, 5, 4, 4)], torch.linalg.det),
    Case("det_2x2_dynamic", "Det", [(3, 2, 2)], torch.linalg.det, dynamic=True),
    Case("det_1x1", "Det", [(4, 1, 1)], torch.linalg.det),
    Case("det_singular", "Det", [(2, 3, 3)], laplace_det, sampler=singular),
]

ALL = GEMM + MATMUL + MATMUL_UNRANKED + CONV + CONV_T + DET


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
def test_case(case):
    check_case(case)


@pytest.fixture
def grouped_conv_transpose_reference(monkeypatch):
    """onnx.reference's ConvTranspose with group > 1, fixed: one group=1 call per group."""
    from onnx.reference.ops.op_conv_transpose import ConvTranspose
    original = ConvTranspose._run

    def run(self, X, W, B=None, **attrs):
        g = attrs.get("group") or 1
        if g == 1:
            return original(self, X, W, B, **attrs)
        cx, cw = X.shape[1] // g, W.shape[0] // g
        nb = 0 if B is None else B.shape[0] // g
        outs = [original(self, X[:, i * cx:(i + 1) * cx], W[i * cw:(i + 1) * cw],
                         None if B is None else B[i * nb:(i + 1) * nb], **{**attrs, "group": 1})[0]
                for i in range(g)]
        return (np.concatenate(outs, axis=1),)
    monkeypatch.setattr(ConvTranspose, "_run", run)


@pytest.mark.parametrize("case", CONV_T_GROUPED, ids=lambda c: c.name)
def test_grouped_conv_transpose(case, grouped_conv_transpose_reference):
    check_case(case)


# ------------------------------------------------------------------------ onnxruntime-only checks
def _model(op, attrs, x_dims, consts, n_out_dims):
    """A one-node float32 model with input x (dims may be symbolic) and initializer constants."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_dims))]
    inits = [onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()]
    node = helper.make_node(op, ["x"] + list(consts), ["y"], **attrs)
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"o{i}" for i in range(n_out_dims)])
    graph = helper.make_graph([node], "g", inputs, [out], inits)
    return normalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), dynamic_batch=False)


def _ort_against_torch(model, torch_fn, shapes, consts):
    """Gradient of x from the backward graph in onnxruntime against torch autograd, per input shape."""
    vm = vjp_model(model, ["x"], "y")
    sess = ort.InferenceSession(vm.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in shapes:
        x = torch.tensor(RNG.standard_normal(shape), requires_grad=True)
        y = torch_fn(x, *[torch.tensor(v) for v in consts.values()])
        dy = RNG.standard_normal(tuple(y.shape))
        (gx,) = torch.autograd.grad(y, [x], torch.tensor(dy))
        out = sess.run(None, {"x": x.detach().numpy().astype(np.float32), "dy": dy.astype(np.float32)})
        np.testing.assert_allclose(out[0], y.detach().numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out[1], gx.numpy(), rtol=1e-4, atol=1e-4)


def test_conv_transpose_output_shape():
    """output_shape without auto_pad: onnx.reference cannot run this forward, so onnxruntime only."""
    w = {"w": RNG.standard_normal((2, 3, 3, 3))}
    model = _model("ConvTranspose", dict(strides=[2, 2], output_shape=[6, 5]), (2, 2, 3, 3), w, 4)
    _ort_against_torch(model, _torch_convT(2, [2, 2], [1, 1, 0, 1], [0, 0], [1, 1], 1), [(2, 2, 3, 3)], w)


# ------------------------------------------------------------------ Conv with dynamic spatial dims
@pytest.mark.parametrize("attrs,xs,ws", [
    (dict(strides=[2, 2], pads=[1, 0, 0, 2]), (2, 3, 7, 6), (4, 3, 3, 3)),
    (dict(strides=[3, 1], dilations=[2, 1], pads=[0, 1, 2, 0], group=3), (1, 3, 9, 5), (3, 1, 2, 3)),
    (dict(strides=[2], pads=[1, 1]), (2, 2, 8), (3, 2, 3)),
    (dict(strides=[2, 3], group=2), (1, 4, 7, 8), (6, 2, 3, 2)),
])
def test_conv_dynamic_spatial(attrs, xs, ws):
    """Unknown spatial sizes: the rule slices at run time; one session serves two input sizes."""
    n = len(xs) - 2
    w = {"w": RNG.standard_normal(ws)}
    model = _model("Conv", attrs, ["N", xs[1]] + [f"S{i}" for i in range(n)], w, n + 2)
    conv = _torch_conv(n, attrs.get("pads", [0] * 2 * n), attrs.get("strides"), attrs.get("dilations", [1] * n),
                       attrs.get("group", 1))
    _ort_against_torch(model, conv, [xs, xs[:2] + tuple(s + 1 for s in xs[2:])], w)


def test_conv_same_dynamic_spatial_fails_clearly():
    w = {"w": RNG.standard_normal((2, 3, 3, 3))}
    model = _model("Conv", dict(auto_pad="SAME_UPPER", strides=[2, 2]), ["N", 3, "H", "W"], w, 4)
    with pytest.raises(UnsupportedOperatorError, match="static spatial sizes"):
        vjp_model(model, ["x"], "y")
