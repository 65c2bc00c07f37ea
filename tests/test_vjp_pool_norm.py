"""Backward rules of pooling and normalisation against finite differences and torch."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from onnxplain.converters.normalize import normalize
from vjp_harness import Case, check_case, vjp_model

RNG = np.random.default_rng(11)
NEG_INF = float("-inf")


def _tpad(pads):
    """ONNX (begin..., end...) pads as F.pad's (last axis first) list."""
    n = len(pads) // 2
    out = []
    for i in reversed(range(n)):
        out += [pads[i], pads[n + i]]
    return out


def _pool_fn(n, kind):
    return {("max", 1): F.max_pool1d, ("max", 2): F.max_pool2d, ("max", 3): F.max_pool3d,
            ("avg", 1): F.avg_pool1d, ("avg", 2): F.avg_pool2d, ("avg", 3): F.avg_pool3d}[(kind, n)]


# ------------------------------------------------------------------------------------ MaxPool
def _maxpool(name, xs, kernel, *, strides=None, pads=None, dilations=None, ceil_mode=0, auto_pad=None,
             torch_pads=None, storage_order=None, n_outputs=1, dynamic=False, opset=17):
    n = len(kernel)
    attrs = dict(kernel_shape=kernel)
    for key, v in dict(strides=strides, pads=pads, dilations=dilations, auto_pad=auto_pad,
                       storage_order=storage_order).items():
        if v is not None:
            attrs[key] = v
    if ceil_mode:
        attrs["ceil_mode"] = 1
    tp = torch_pads if torch_pads is not None else (pads or [0] * (2 * n))
    pool = _pool_fn(n, "max")
    sym = tp[:n] == tp[n:] and all(2 * p <= k for p, k in zip(tp[:n], kernel))

    def fn(x):
        if sym:   # torch's own padding (needed for its ceil_mode rule)
            return pool(x, kernel, strides or 1, padding=tp[:n], dilation=dilations or 1, ceil_mode=bool(ceil_mode))
        return pool(F.pad(x, _tpad(tp), value=NEG_INF), kernel, strides or 1, dilation=dilations or 1,
                    ceil_mode=bool(ceil_mode))
    return Case(name, "MaxPool", [xs], fn, attrs=attrs, n_outputs=n_outputs, dynamic=dynamic, opset=opset)


MAXPOOL = [
    _maxpool("maxpool2d_k2s2", (2, 3, 6, 6), [2, 2], strides=[2, 2]),
    _maxpool("maxpool2d_k3s2_asym_odd", (2, 2, 7, 6), [3, 3], strides=[2, 2], pads=[1, 0, 1, 2]),
    _maxpool("maxpool2d_k3s1_pad1", (2, 2, 5, 6), [3, 3], pads=[1, 1, 1, 1]),       # unit-stride path
    _maxpool("maxpool2d_k2s1", (1, 3, 4, 5), [2, 2]),
    _maxpool("maxpool2d_k2s1_strides_given", (1, 2, 4, 5), [2, 3], strides=[1, 1], dilations=[1, 1]),
    _maxpool("maxpool2d_dilation", (1, 2, 7, 7), [2, 3], dilations=[2, 1], pads=[1, 1, 0, 1]),
    _maxpool("maxpool2d_dilation_stride", (2, 2, 8, 7), [3, 2], strides=[2, 3], dilations=[2, 2]),
    _maxpool("maxpool2d_ceil_pad", (1, 2, 6, 7), [3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    _maxpool("maxpool2d_ceil", (2, 2, 5, 5), [2, 2], strides=[2, 2], ceil_mode=1),
    _maxpool("maxpool2d_ceil_rect", (1, 2, 7, 8), [3, 2], strides=[2, 3], ceil_mode=1),
    _maxpool("maxpool1d", (2, 3, 9), [3], strides=[2], pads=[1, 1]),
    _maxpool("maxpool1d_unit_stride", (2, 2, 7), [3]),
    _maxpool("maxpool1d_ceil_dil", (1, 2, 10), [2], strides=[3], dilations=[2], ceil_mode=1),
    _maxpool("maxpool3d", (1, 2, 5, 4, 5), [2, 2, 3], strides=[2, 1, 2], pads=[1, 0, 1, 0, 1, 0]),
    _maxpool("maxpool2d_same_upper_s1", (1, 2, 5, 4), [2, 3], auto_pad="SAME_UPPER", torch_pads=[0, 1, 1, 1]),
    # (SAME_LOWER with an odd total padding: onnx.reference splits it like SAME_UPPER; see the
    # onnxruntime-only tests below)
    _maxpool("maxpool2d_same_lower_s2_even", (1, 2, 6, 6), [4, 2], strides=[2, 2], auto_pad="SAME_LOWER",
             torch_pads=[1, 0, 1, 0]),
    _maxpool("maxpool2d_valid", (1, 2, 7, 6), [3, 2], strides=[2, 2], auto_pad="VALID"),
    # column-major Indices asked for by the model: the rule pools once more for row-major ones
    _maxpool("maxpool2d_storage_order1", (2, 2, 6, 5), [2, 2], strides=[2, 1], storage_order=1),
    # the node already has an Indices output: it is reused
    _maxpool("maxpool2d_indices_output", (2, 2, 6, 6), [3, 3], strides=[2, 2], n_outputs=2),
    _maxpool("maxpool2d_indices_output_s1", (1, 2, 5, 5), [2, 2], n_outputs=2),
    _maxpool("maxpool2d_indices_storage1", (1, 2, 6, 6), [2, 2], strides=[2, 2], n_outputs=2, storage_order=1),
    _maxpool("maxpool2d_dyn_batch", (3, 2, 6, 7), [3, 3], strides=[2, 2], pads=[1, 1, 1, 1], dynamic=True),
    # (stride 1 with asymmetric pads: onnx.reference's forward is wrong; onnxruntime-only test below)
    _maxpool("maxpool2d_dyn_batch_s1", (3, 2, 5, 4), [3, 3], pads=[1, 1, 1, 1], dynamic=True),
    _maxpool("maxpool2d_opset22", (2, 2, 6, 6), [2, 2], strides=[2, 2], opset=22),
]


# -------------------------------------------------------------------------------- AveragePool
def _avgpool(name, xs, kernel, *, strides=None, pads=None, include_pad=0, ceil_mode=0, dilations=None,
             auto_pad=None, torch_pads=None, dynamic=False, opset=17):
    n = len(kernel)
    attrs = dict(kernel_shape=kernel, count_include_pad=include_pad)
    for key, v in dict(strides=strides, pads=pads, dilations=dilations, auto_pad=auto_pad).items():
        if v is not None:
            attrs[key] = v
    if ceil_mode:
        attrs["ceil_mode"] = 1
    tp = torch_pads if torch_pads is not None else (pads or [0] * (2 * n))
    pool = _pool_fn(n, "avg")
    s = strides or 1
    sym = tp[:n] == tp[n:] and all(2 * p <= k for p, k in zip(tp[:n], kernel))
    fn = None   # torch's average pooling has no dilation: finite differences alone check those cases
    if dilations is None and sym:
        def fn(x):
            return pool(x, kernel, s, padding=tp[:n], ceil_mode=bool(ceil_mode), count_include_pad=bool(include_pad))
    elif dilations is None and not ceil_mode:
        def fn(x):   # explicit zero padding; excluding it = ratio of window sums of x and of ones
            xp = F.pad(x, _tpad(tp))
            if include_pad:
                return pool(xp, kernel, s)
            return pool(xp, kernel, s) / pool(F.pad(torch.ones_like(x), _tpad(tp)), kernel, s)
    return Case(name, "AveragePool", [xs], fn, attrs=attrs, dynamic=dynamic, opset=opset)


AVGPOOL = [
    _avgpool("avgpool2d_k2s2", (2, 3, 6, 6), [2, 2], strides=[2, 2]),
    _avgpool("avgpool2d_k3s2_pad_incl", (2, 2, 7, 6), [3, 3], strides=[2, 2], pads=[1, 1, 1, 1], include_pad=1),
    _avgpool("avgpool2d_k3s2_pad_excl", (2, 2, 7, 6), [3, 3], strides=[2, 2], pads=[1, 1, 1, 1], include_pad=0),
    _avgpool("avgpool2d_ceil_pad_incl", (1, 2, 6, 7), [3, 3], strides=[2, 2], pads=[1, 1, 1, 1], include_pad=1,
             ceil_mode=1),
    _avgpool("avgpool2d_ceil_pad_excl", (1, 2, 6, 7), [3, 3], strides=[2, 2], pads=[1, 1, 1, 1], include_pad=0,
             ceil_mode=1),
    _avgpool("avgpool2d_ceil_incl", (2, 2, 5, 5), [2, 2], strides=[2, 2], include_pad=1, ceil_mode=1),
    _avgpool("avgpool2d_ceil_excl", (2, 2, 5, 7), [2, 3], strides=[2, 2], include_pad=0, ceil_mode=1),
    _avgpool("avgpool2d_odd_skip_rows", (1, 2, 8, 7), [2, 2], strides=[3, 3], pads=[1, 0, 0, 1]),
    _avgpool("avgpool2d_asym_incl", (1, 2, 7, 6), [3, 2], strides=[2, 1], pads=[2, 0, 0, 1], include_pad=1),
    _avgpool("avgpool2d_asym_excl", (1, 2, 7, 6), [3, 2], strides=[2, 1], pads=[2, 0, 0, 1], include_pad=0),
    _avgpool("avgpool2d_s1", (1, 2, 5, 5), [3, 3], pads=[1, 1, 1, 1]),
    _avgpool("avgpool1d_excl", (2, 3, 9), [3], strides=[2], pads=[1, 1]),
    _avgpool("avgpool1d_incl_ceil", (2, 3, 8), [3], strides=[2], pads=[1, 1], include_pad=1, ceil_mode=1),
    _avgpool("avgpool3d", (1, 2, 5, 4, 5), [2, 2, 3], strides=[2, 1, 2], pads=[1, 0, 1, 1, 0, 1]),
    _avgpool("avgpool2d_same_upper", (1, 2, 7, 6), [3, 3], strides=[2, 2], auto_pad="SAME_UPPER",
             torch_pads=[1, 0, 1, 1]),
    _avgpool("avgpool2d_valid", (1, 2, 7, 8), [3, 2], strides=[2, 3], auto_pad="VALID"),
    # opset 19 added dilations (no torch equivalent: finite differences only)
    _avgpool("avgpool2d_dilation_excl", (1, 2, 7, 8), [2, 3], strides=[2, 2], dilations=[2, 2],
             pads=[1, 0, 1, 1], opset=19),
    _avgpool("avgpool2d_dilation_incl", (1, 2, 8, 7), [3, 2], strides=[1, 2], dilations=[2, 1],
             pads=[1, 1, 1, 1], include_pad=1, opset=19),
    _avgpool("avgpool2d_dyn_batch", (3, 2, 7, 6), [3, 3], strides=[2, 2], pads=[1, 1, 1, 1], dynamic=True),
    _avgpool("avgpool2d_opset22", (2, 2, 6, 5), [2, 2], strides=[2, 2], pads=[0, 1, 0, 0], opset=22),
]


# ----------------------------------------------------------------------------- Global pooling
def _dims(n):
    return tuple(range(2, 2 + n))


GLOBAL = [
    Case("gap2d", "GlobalAveragePool", [(2, 3, 4, 5)], lambda x: x.mean(dim=(2, 3), keepdim=True)),
    Case("gap1d", "GlobalAveragePool", [(2, 3, 7)], lambda x: x.mean(dim=2, keepdim=True)),
    Case("gap3d", "GlobalAveragePool", [(1, 2, 3, 4, 2)], lambda x: x.mean(dim=(2, 3, 4), keepdim=True)),
    Case("gap2d_dyn", "GlobalAveragePool", [(3, 2, 4, 4)], lambda x: x.mean(dim=(2, 3), keepdim=True), dynamic=True),
    Case("gmp2d", "GlobalMaxPool", [(2, 3, 4, 5)], lambda x: F.adaptive_max_pool2d(x, 1)),
    # (1-D and 3-D GlobalMaxPool: onnx.reference returns wrong shapes; onnxruntime-only tests below)
    Case("gmp2d_dyn", "GlobalMaxPool", [(3, 2, 4, 4)], lambda x: F.adaptive_max_pool2d(x, 1), dynamic=True),
]


# ------------------------------------------------------------------------- BatchNormalization
def _bn(name, xs, which="X", eps=1e-5, training=False, dynamic=False):
    c = xs[1]
    specs = [("X", xs, RNG.standard_normal(xs)), ("S", (c,), RNG.uniform(0.5, 2, c)), ("B", (c,), RNG.standard_normal(c)),
             ("M", (c,), RNG.standard_normal(c)), ("V", (c,), RNG.uniform(0.5, 2, c))]
    inputs = [shape if key in which else value for key, shape, value in specs]
    attrs = dict(epsilon=eps)
    if training:
        attrs["training_mode"] = 1

    def fn(x, s, b, m, v):
        if training:
            return F.batch_norm(x, None, None, s, b, training=True, eps=eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)   # written out: torch cannot differentiate running stats
        return (x - m.reshape(shape)) / torch.sqrt(v.reshape(shape) + eps) * s.reshape(shape) + b.reshape(shape)
    def positive_stats(rng, shape):   # attributed variances must stay positive
        return rng.uniform(0.5, 2.0, shape) if shape == (c,) else rng.standard_normal(shape)
    sampler = positive_stats if "V" in which else None
    return Case(name, "BatchNormalization", inputs, fn, attrs=attrs, sampler=sampler, dynamic=dynamic,
                n_outputs=3 if training else 1)


BATCHNORM = [
    _bn("bn4d", (2, 3, 4, 5)),
    _bn("bn2d", (4, 3)),
    _bn("bn3d_eps", (2, 3, 5), eps=1e-2),
    _bn("bn4d_all_inputs", (2, 3, 3, 2), which="XSBMV"),
    _bn("bn4d_scale_bias", (2, 3, 3, 2), which="SB"),
    _bn("bn4d_dyn", (3, 2, 3, 3), dynamic=True),
    _bn("bn_train4d", (3, 2, 3, 4), training=True),
    _bn("bn_train2d_affine", (5, 3), which="XSB", training=True),
    _bn("bn_train3d_eps", (2, 3, 4), training=True, eps=0.1),
]


# ------------------------------------------------------------------------- LayerNormalization
def _ln(name, xs, axis=-1, eps=1e-5, scale_shape=None, bias=True, which="X", n_outputs=1, output=0,
        dynamic=False):
    rank = len(xs)
    ax = axis + rank if axis < 0 else axis
    norm_shape = tuple(xs[ax:])
    scale_shape = scale_shape or norm_shape
    inputs = [xs if "X" in which else RNG.standard_normal(xs),
              scale_shape if "S" in which else RNG.uniform(0.5, 2, scale_shape)]
    if bias:
        inputs.append(scale_shape if "B" in which else RNG.standard_normal(scale_shape))
    dims = tuple(range(ax, rank))

    def fn(x, s, *b):
        if output == 1:
            return x.mean(dim=dims, keepdim=True)
        if output == 2:
            return 1 / torch.sqrt(x.var(dim=dims, unbiased=False, keepdim=True) + eps)
        y = F.layer_norm(x, norm_shape, None, None, eps) * s
        return y + b[0] if b else y
    return Case(name, "LayerNormalization", inputs, fn, attrs=dict(axis=axis, epsilon=eps),
                n_outputs=n_outputs, output=output, dynamic=dynamic)


LAYERNORM = [
    _ln("ln_last", (2, 3, 5)),
    _ln("ln_last_no_bias", (4, 6), bias=False),
    _ln("ln_axis1_multi", (2, 3, 2, 4), axis=1),
    _ln("ln_axis_neg2", (2, 3, 4, 5), axis=-2, eps=1e-3),
    _ln("ln_axis0", (3, 4), axis=0),
    _ln("ln_scale_broadcast", (2, 3, 4, 5), axis=-2, scale_shape=(5,)),
    _ln("ln_all_attributed", (2, 3, 4), which="XSB"),
    _ln("ln_scale_bias_only", (2, 3, 4), axis=1, which="SB"),
    _ln("ln_extra_outputs_unused", (2, 3, 5), n_outputs=3),
    # (cotangents of Mean / InvStdDev: those outputs are float even for double inputs, which the
    # float64 harness cannot declare; onnxruntime-only tests below)
    _ln("ln_dyn", (3, 4, 6), dynamic=True),
]

def unpooled(shape):
    """MaxUnpool written out: zeros of ``shape`` with x's elements written at the flat indices in order, a
    later write replacing an earlier one."""
    def fn(x, indices, *_):
        flat, src = torch.zeros(int(np.prod(shape)), dtype=x.dtype), x.reshape(-1)
        for k, i in enumerate(indices.reshape(-1).tolist()):
            flat = torch.cat([flat[:i], src[k:k + 1], flat[i + 1:]])
        return flat.reshape(shape)
    return fn


UNPOOL_AT = np.array([[[[0, 3], [9, 14]], [[17, 18], [28, 31]]]], np.int64)          # one per 2x2 window
UNPOOL_TWICE = np.array([[[[5, 5], [9, 14]], [[17, 18], [18, 31]]]], np.int64)       # overlapping picks
UNPOOL_FIRST_ROW = np.array([[[[0, 1], [2, 3]], [[3, 2], [1, 0]]]], np.int64)
MAXUNPOOL = [
    Case("max_unpool", "MaxUnpool", [(1, 2, 2, 2), UNPOOL_AT], unpooled((1, 2, 4, 4)),
         attrs=dict(kernel_shape=[2, 2], strides=[2, 2])),
    Case("max_unpool_repeated_index", "MaxUnpool", [(1, 2, 2, 2), UNPOOL_TWICE], unpooled((1, 2, 4, 4)),
         attrs=dict(kernel_shape=[2, 2], strides=[2, 2])),
    # indices on the first row and channel: the same elements whether read flat over the padded output_shape
    # (onnxruntime) or over the unpadded shape (onnx.reference)
    Case("max_unpool_output_shape", "MaxUnpool", [(1, 2, 2, 2), UNPOOL_FIRST_ROW, np.array([1, 2, 5, 5], np.int64)],
         unpooled((1, 2, 5, 5)), attrs=dict(kernel_shape=[2, 2], strides=[2, 2])),
]

def lp_pool(p, kernel, stride, pad=0, dilation=1):
    """(sum over the window of |x|^p)^(1/p), written with unfold (zeros in the padding)."""
    def fn(x):
        n, c = x.shape[:2]
        cols = F.unfold(x.abs() ** p, kernel, dilation=dilation, padding=pad, stride=stride)  # (n, c*k, L)
        out = [(s + 2 * pad - dilation * (k - 1) - 1) // stride + 1 for s, k in zip(x.shape[2:], kernel)]
        return cols.reshape(n, c, -1, cols.shape[-1]).sum(2).reshape(n, c, *out) ** (1 / p)
    return fn


LPPOOL = [
    Case("lp_pool_p2", "LpPool", [(2, 3, 7, 6)], lambda x: F.lp_pool2d(x, 2, 3, stride=2),
         attrs=dict(kernel_shape=[3, 3], strides=[2, 2])),
    Case("lp_pool_p3_pads_dilations", "LpPool", [(1, 2, 6, 7)], lp_pool(3, (2, 3), 1, pad=1, dilation=2),
         attrs=dict(kernel_shape=[2, 3], pads=[1, 1, 1, 1], dilations=[2, 2], p=3), opset=18),
    Case("lp_pool_p1", "LpPool", [(2, 2, 5, 5)], lp_pool(1, (2, 2), 2),
         attrs=dict(kernel_shape=[2, 2], strides=[2, 2], p=1), away_from=0.0),
    Case("lp_pool_dynamic", "LpPool", [(3, 2, 6, 6)], lambda x: F.lp_pool2d(x, 2, 2),
         attrs=dict(kernel_shape=[2, 2], strides=[2, 2]), dynamic=True),
]

def lrn(size, alpha=1e-4, beta=0.75, bias=1.0):
    """ONNX's LRN written out: the window over channels c - floor((size-1)/2) .. c + ceil((size-1)/2)."""
    def fn(x):
        lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
        sq = F.pad((x * x).transpose(1, -1), (lo, hi)).transpose(1, -1)
        s = sum(sq.narrow(1, k, x.shape[1]) for k in range(size))
        return x / (bias + alpha / size * s) ** beta
    return fn


LRN = [
    Case("lrn_odd_against_torch", "LRN", [(2, 5, 3, 4)],
         lambda x: F.local_response_norm(x, 3, alpha=0.5, beta=0.75, k=2.0),
         attrs=dict(size=3, alpha=0.5, beta=0.75, bias=2.0)),
    Case("lrn_size5", "LRN", [(2, 6, 5, 2)], lrn(5, alpha=0.8, beta=0.6, bias=1.5),     # onnxruntime: odd sizes only
         attrs=dict(size=5, alpha=0.8, beta=0.6, bias=1.5)),
    Case("lrn_window_wider_than_channels", "LRN", [(1, 3, 2, 2)], lrn(5, alpha=1.0), attrs=dict(size=5, alpha=1.0)),
    Case("lrn_dynamic", "LRN", [(3, 4, 2, 3)], lrn(3, alpha=0.3), attrs=dict(size=3, alpha=0.3), dynamic=True),
]

ALL = MAXPOOL + AVGPOOL + GLOBAL + BATCHNORM + LAYERNORM + MAXUNPOOL + LPPOOL


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
def test_case(case):
    check_case(case)


@pytest.mark.parametrize("case", LRN, ids=lambda c: c.name)
def test_lrn_against_torch_in_onnxruntime(case):
    """LRN's rule in float32 in onnxruntime against torch autograd in float64 (onnx.reference's LRN takes window
    sums for as many channels as the batch has rows, and 0 for the others, so finite differences through it
    do not apply)."""
    from vjp_harness import build_case_model
    model, wrt, out = build_case_model(case, TensorProto.FLOAT)
    vm = vjp_model(model, wrt, out)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(case.inputs[0]).astype(np.float32)
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = case.torch_fn(t)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    (expected,) = torch.autograd.grad(y, [t], torch.tensor(dy, dtype=torch.float64))
    got_y, got = ort.InferenceSession(vm.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"in0": x, "dy": dy})
    np.testing.assert_allclose(got_y, y.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_maxpool_node_gets_indices_output():
    """A strided MaxPool without Indices gets one appended (no second pooling)."""
    from vjp_harness import build_case_model
    model, wrt, out = build_case_model(MAXPOOL[0])
    vm = vjp_model(model, wrt, out)
    pools = [n for n in vm.graph.node if n.op_type == "MaxPool"]
    assert len(pools) == 1 and len(pools[0].output) == 2


# ------------------------------------------------------------------------ onnxruntime-only checks
# Cases whose forward onnx.reference computes wrongly (or cannot declare): the backward graph runs in
# onnxruntime (float32) and its gradient is held against torch autograd.
def _ort_model(op, attrs, dims, consts, n_outputs, output):
    outs = [f"y{k}" for k in range(n_outputs)]
    node = helper.make_node(op, ["x"] + list(consts), outs, **attrs)
    inits = [onnx.numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in consts.items()]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))],
                              [helper.make_tensor_value_info(outs[output], TensorProto.FLOAT,
                                                             [f"o{i}" for i in range(len(dims))])], inits)
    return normalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), dynamic_batch=False)


def _ort_check(op, attrs, dims, fn, shapes, consts=None, n_outputs=1, output=0):
    consts = consts or {}
    model = _ort_model(op, attrs, dims, consts, n_outputs, output)
    out_name = f"y{output}"
    vm = vjp_model(model, ["x"], out_name)
    sess = ort.InferenceSession(vm.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in shapes:
        x = torch.tensor(RNG.standard_normal(shape), requires_grad=True)
        y = fn(x, *[torch.tensor(np.asarray(v, np.float64)) for v in consts.values()])
        dy = RNG.standard_normal(tuple(y.shape))
        (gx,) = torch.autograd.grad(y, [x], torch.tensor(dy))
        res = dict(zip([o.name for o in vm.graph.output],
                       sess.run(None, {"x": x.detach().numpy().astype(np.float32), "dy": dy.astype(np.float32)})))
        np.testing.assert_allclose(res[out_name], y.detach().numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(res["grad_x"], gx.numpy(), rtol=1e-4, atol=1e-4)


DYN = ["N", "C", "H", "W"]
LN_SCALE = RNG.uniform(0.5, 2, 4)


@pytest.mark.parametrize("op,attrs,dims,fn,shapes", [
    # unknown batch and spatial sizes: one session serves two input sizes
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 0, 1], count_include_pad=0), DYN,
     lambda x: F.avg_pool2d(F.pad(x, [0, 1, 1, 0]), 3, 2) / F.avg_pool2d(F.pad(torch.ones_like(x), [0, 1, 1, 0]), 3, 2),
     [(2, 3, 7, 6), (1, 2, 8, 9)]),
    ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1), DYN,
     lambda x: F.avg_pool2d(x, 2, 2, padding=1, count_include_pad=True), [(2, 2, 5, 6), (1, 2, 6, 7)]),
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), DYN,
     lambda x: F.max_pool2d(x, 3, 2, padding=1), [(2, 2, 7, 6), (1, 2, 5, 8)]),
    ("MaxPool", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), DYN,
     lambda x: F.max_pool2d(x, 3, 1, padding=1), [(2, 2, 5, 6), (1, 2, 4, 7)]),
    ("GlobalAveragePool", {}, DYN, lambda x: x.mean(dim=(2, 3), keepdim=True), [(2, 3, 4, 5), (1, 3, 6, 2)]),
    ("GlobalMaxPool", {}, DYN, lambda x: F.adaptive_max_pool2d(x, 1), [(2, 3, 4, 5), (1, 3, 6, 2)]),
    ("LayerNormalization", dict(axis=-2), ["N", "T", "D"],
     lambda x, s: F.layer_norm(x, tuple(x.shape[-2:])) * s, [(2, 3, 4), (1, 5, 4)]),
    # onnx.reference's forward is wrong here
    ("MaxPool", dict(kernel_shape=[3, 2], pads=[1, 0, 2, 1]), (2, 3, 5, 4),
     lambda x: F.max_pool2d(F.pad(x, [0, 1, 1, 2], value=NEG_INF), (3, 2), 1), [(2, 3, 5, 4)]),
    ("MaxPool", dict(kernel_shape=[3], pads=[2, 0]), (2, 2, 7),
     lambda x: F.max_pool1d(F.pad(x, [2, 0], value=NEG_INF), 3, 1), [(2, 2, 7)]),
    ("MaxPool", dict(kernel_shape=[2, 3], strides=[2, 2], auto_pad="SAME_LOWER"), (1, 2, 5, 6),
     lambda x: F.max_pool2d(F.pad(x, [1, 0, 1, 0], value=NEG_INF), (2, 3), 2), [(1, 2, 5, 6)]),
    ("AveragePool", dict(kernel_shape=[2, 3], strides=[2, 2], auto_pad="SAME_LOWER", count_include_pad=0), (1, 2, 5, 6),
     lambda x: F.avg_pool2d(F.pad(x, [1, 0, 1, 0]), (2, 3), 2) / F.avg_pool2d(F.pad(torch.ones_like(x), [1, 0, 1, 0]), (2, 3), 2),
     [(1, 2, 5, 6)]),
    ("AveragePool", dict(kernel_shape=[3], strides=[3], ceil_mode=1, count_include_pad=1), (2, 2, 7),
     lambda x: F.avg_pool1d(x, 3, 3, ceil_mode=True, count_include_pad=True), [(2, 2, 7)]),
    ("AveragePool", dict(kernel_shape=[3, 2], strides=[3, 2], pads=[1, 0, 1, 0], ceil_mode=1, count_include_pad=1),
     (1, 2, 7, 5), lambda x: F.avg_pool2d(x, (3, 2), (3, 2), padding=(1, 0), ceil_mode=True, count_include_pad=True),
     [(1, 2, 7, 5)]),
    ("MaxPool", dict(kernel_shape=[2, 3, 2], pads=[1, 1, 0, 1, 1, 1]), (1, 2, 4, 3, 4),    # 3-D, unit strides
     lambda x: F.max_pool3d(F.pad(x, [0, 1, 1, 1, 1, 1], value=NEG_INF), (2, 3, 2), 1), [(1, 2, 4, 3, 4)]),
    ("GlobalMaxPool", {}, (2, 3, 7), lambda x: F.adaptive_max_pool1d(x, 1), [(2, 3, 7)]),
    ("GlobalMaxPool", {}, (1, 2, 3, 4, 2), lambda x: F.adaptive_max_pool3d(x, 1), [(1, 2, 3, 4, 2)]),
])
def test_onnxruntime_against_torch(op, attrs, dims, fn, shapes):
    consts = {"scale": LN_SCALE} if op == "LayerNormalization" else None
    _ort_check(op, attrs, dims, fn, shapes, consts)


def _ln_stat(kind, dims, eps):
    def fn(x, s, b):
        if kind == "mean":
            return x.mean(dim=dims, keepdim=True)
        return 1 / torch.sqrt(x.var(dim=dims, unbiased=False, keepdim=True) + eps)
    return fn


@pytest.mark.parametrize("output,axis,eps", [(1, -1, 1e-5), (1, 1, 1e-5), (2, -2, 0.1), (2, 1, 1e-2)])
def test_layer_norm_statistics_outputs(output, axis, eps):
    """Cotangents arriving on LayerNormalization's Mean (output 1) or InvStdDev (output 2)."""
    xs = (2, 3, 4)
    ax = axis % 3
    consts = {"s": RNG.uniform(0.5, 2, xs[ax:]), "b": RNG.standard_normal(xs[ax:])}
    fn = _ln_stat("mean" if output == 1 else "inv", tuple(range(ax, 3)), eps)
    _ort_check("LayerNormalization", dict(axis=axis, epsilon=eps), xs, fn, [xs], consts, n_outputs=3, output=output)
