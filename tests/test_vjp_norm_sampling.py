"""Backward rules of InstanceNormalization, GroupNormalization, LpNormalization,
MeanVarianceNormalization and Resize against finite differences and torch autograd."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from onnxplain.converters.normalize import normalize
from onnxplain.vjp.sampling import interpolation_matrix
from vjp_harness import Case, assert_matches_finite_differences, check_case, run_reference, vjp_model

RNG = np.random.default_rng(5)

# onnx.reference divides by a zero norm on the all-zeros probe that sizes each case (its result is unused)
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")


# ---------------------------------------------------------------------- InstanceNormalization
def _instance(name, xs, which="X", eps=1e-5, dynamic=False):
    c = xs[1]
    inputs = [xs if "X" in which else RNG.standard_normal(xs),
              (c,) if "S" in which else RNG.uniform(0.5, 2, c),
              (c,) if "B" in which else RNG.standard_normal(c)]

    def fn(x, s, b):
        return F.instance_norm(x, weight=s, bias=b, eps=eps)
    return Case(name, "InstanceNormalization", inputs, fn, attrs=dict(epsilon=eps), dynamic=dynamic)


INSTANCE = [
    _instance("in4d", (2, 3, 4, 5)),
    _instance("in3d_eps", (2, 3, 7), eps=1e-2),
    _instance("in5d", (1, 2, 3, 2, 4)),
    _instance("in4d_affine_attributed", (2, 3, 3, 4), which="XSB"),
    _instance("in4d_scale_bias_only", (2, 3, 3, 4), which="SB"),
    _instance("in4d_dyn", (3, 2, 4, 4), dynamic=True),
]


# ------------------------------------------------------------------------- GroupNormalization
# (opset 21 on: per-channel scale and bias; GroupNormalization-18 is deprecated and fails onnx.checker.
# onnx.reference runs the op's function body in float32 (stash_type), too coarse for finite differences
# in float64: onnxruntime-only tests against torch autograd below)


# ----------------------------------------------------------------------------- LpNormalization
def _lp(name, xs, p, axis):
    return Case(name, "LpNormalization", [xs], lambda x: x / x.norm(p, dim=axis, keepdim=True),
                attrs=dict(p=p, axis=axis))


LP_MVN = [
    _lp("lp2_last", (3, 5), 2, -1),
    _lp("lp2_axis1", (2, 4, 3), 2, 1),
    # (p = 1 and MeanVarianceNormalization: onnx.reference computes LpNormalization's 1-norm without
    # the absolute value, and runs MeanVarianceNormalization's function body with float32 constants,
    # which a float64 model cannot mix; onnxruntime-only tests below)
]


# -------------------------------------------------------------------------------------- Resize
def _resize(name, xs, sizes, torch_fn=None, opset=17, roi=None, axes=None, **attrs):
    """Resize to constant ``sizes`` (int64; the harness cannot declare float32 scales in a float64 model)."""
    if axes is not None:
        attrs["axes"] = axes
    inputs = [xs, None if roi is None else np.asarray(roi, np.float64), None, np.asarray(sizes, np.int64)]
    return Case(name, "Resize", inputs, torch_fn, attrs=attrs, opset=opset)


def _interp(size, **kwargs):
    return lambda x, *constants: F.interpolate(x, size=size, **kwargs)


RESIZE = [
    # nearest: the exporters' form (asymmetric, floor) and every nearest_mode
    _resize("nearest_up2_asym_floor", (2, 3, 4, 5), [2, 3, 8, 10], _interp((8, 10), mode="nearest"),
            mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    _resize("nearest_odd_asym_floor", (1, 2, 5, 4), [1, 2, 7, 11], _interp((7, 11), mode="nearest"),
            mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    _resize("nearest_down_asym_floor", (2, 2, 7, 6), [2, 2, 3, 4], _interp((3, 4), mode="nearest"),
            mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    _resize("nearest_half_pixel_prefer_ceil", (1, 2, 5, 4), [1, 2, 7, 9], _interp((7, 9), mode="nearest-exact"),
            mode="nearest", coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_ceil"),
    _resize("nearest_default_modes", (1, 2, 5, 4), [1, 2, 8, 3], mode="nearest"),   # half_pixel, prefer floor
    _resize("nearest_align_corners_ceil", (1, 2, 4, 5), [1, 2, 7, 3], mode="nearest",
            coordinate_transformation_mode="align_corners", nearest_mode="ceil"),
    _resize("nearest_tf_crop_and_resize", (1, 2, 6, 5), [1, 2, 4, 7], mode="nearest",
            coordinate_transformation_mode="tf_crop_and_resize", roi=[0, 0, -0.2, 0.1, 1, 1, 0.8, 1.3],
            extrapolation_value=0.5),
    _resize("nearest_axes_attr", (2, 3, 4, 5), [7, 3], _interp((7, 3), mode="nearest"), opset=18, axes=[2, 3],
            mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    _resize("nearest_3d_asym", (1, 2, 3, 2, 3), [1, 2, 6, 4, 5], _interp((6, 4, 5), mode="nearest"),
            mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    # linear: bilinear as PyTorch exports it (half_pixel), align_corners, 1-D and 3-D
    _resize("linear_up2_half_pixel", (2, 3, 4, 5), [2, 3, 8, 10],
            _interp((8, 10), mode="bilinear", align_corners=False),
            mode="linear", coordinate_transformation_mode="half_pixel"),
    _resize("linear_odd_half_pixel", (1, 2, 5, 4), [1, 2, 7, 9],
            _interp((7, 9), mode="bilinear", align_corners=False),
            mode="linear", coordinate_transformation_mode="half_pixel"),
    _resize("linear_down_half_pixel", (2, 2, 8, 7), [2, 2, 4, 3],
            _interp((4, 3), mode="bilinear", align_corners=False),
            mode="linear", coordinate_transformation_mode="half_pixel"),
    _resize("linear_align_corners", (1, 2, 4, 5), [1, 2, 9, 7],
            _interp((9, 7), mode="bilinear", align_corners=True),
            mode="linear", coordinate_transformation_mode="align_corners"),
    _resize("linear_pytorch_half_pixel", (1, 2, 4, 5), [1, 2, 9, 7],
            _interp((9, 7), mode="bilinear", align_corners=False),
            mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
    _resize("linear_pytorch_half_pixel_to_1", (1, 2, 4, 5), [1, 2, 1, 7], mode="linear",
            coordinate_transformation_mode="pytorch_half_pixel"),
    _resize("linear_asymmetric", (1, 2, 4, 5), [1, 2, 9, 7], mode="linear",
            coordinate_transformation_mode="asymmetric"),
    _resize("linear_1d", (2, 3, 6), [2, 3, 11], _interp(11, mode="linear", align_corners=False),
            mode="linear", coordinate_transformation_mode="half_pixel"),
    _resize("linear_3d", (1, 2, 3, 4, 2), [1, 2, 5, 6, 4], _interp((5, 6, 4), mode="trilinear", align_corners=False),
            mode="linear", coordinate_transformation_mode="half_pixel"),
    _resize("linear_tf_crop_and_resize", (1, 2, 6, 5), [1, 2, 4, 7], mode="linear",
            coordinate_transformation_mode="tf_crop_and_resize", roi=[0, 0, -0.2, 0.1, 1, 1, 0.8, 1.3],
            extrapolation_value=0.5),
    _resize("linear_half_pixel_symmetric", (1, 2, 5, 4), [1, 2, 7, 9], opset=19, mode="linear",
            coordinate_transformation_mode="half_pixel_symmetric"),
    # cubic: PyTorch's bicubic (a = -0.75, half_pixel / align_corners) and exclude_outside
    # (torch's bicubic differs from the ONNX formula by ~1e-6 in float64, more than the harness's
    # rtol: finite differences here, torch's backward in float32 in test_resize_scales / below)
    _resize("cubic_up_half_pixel", (1, 2, 4, 5), [1, 2, 9, 8], mode="cubic",
            coordinate_transformation_mode="half_pixel"),
    _resize("cubic_align_corners", (1, 2, 5, 4), [1, 2, 7, 9], mode="cubic",
            coordinate_transformation_mode="align_corners"),
    _resize("cubic_exclude_outside_a05", (1, 2, 5, 6), [1, 2, 8, 4], mode="cubic", cubic_coeff_a=-0.5,
            exclude_outside=1),
    # opset 18: axes and keep_aspect_ratio_policy
    _resize("linear_axes_attr", (2, 3, 4, 5), [7, 9], _interp((7, 9), mode="bilinear", align_corners=False),
            opset=18, axes=[2, 3], mode="linear"),
    _resize("nearest_not_larger", (1, 2, 4, 6), [1, 2, 8, 9], opset=18, mode="nearest",
            keep_aspect_ratio_policy="not_larger"),
    _resize("linear_not_smaller", (1, 2, 4, 6), [6, 4], opset=18, axes=[2, 3], mode="linear",
            keep_aspect_ratio_policy="not_smaller"),
]

ALL = INSTANCE + LP_MVN + RESIZE


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
def test_case(case):
    check_case(case)


# ------------------------------------------------------------ Resize with constant scales
# PyTorch's exporters give Resize constant float32 scales (F.interpolate(scale_factor=...)); the
# coordinates then use the scale itself, not out/in (they differ when in * scale is not an integer).
def _scales_model(shape, scales, dtype, **attrs):
    x = helper.make_tensor_value_info("x", dtype, list(shape))
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], **attrs)
    init = numpy_helper.from_array(np.asarray(scales, np.float32), "scales")
    out = [d if isinstance(d, str) else int(np.floor(d * float(np.float32(s)))) for d, s in zip(shape, scales)]
    graph = helper.make_graph([node], "resize", [x], [helper.make_tensor_value_info("y", dtype, out)], [init])
    return normalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), dynamic_batch=True)


SCALES = [
    ((2, 3, 4, 5), [1, 1, 2, 2], dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
     dict(mode="nearest")),
    ((2, 3, 5, 7), [1, 1, 0.5, 0.5], dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                                          nearest_mode="floor"), dict(mode="nearest")),
    ((2, 3, 4, 5), [1, 1, 2, 2], dict(mode="linear", coordinate_transformation_mode="half_pixel"),
     dict(mode="bilinear", align_corners=False)),
    ((2, 2, 5, 7), [1, 1, 0.5, 0.5], dict(mode="linear", coordinate_transformation_mode="half_pixel"),
     dict(mode="bilinear", align_corners=False)),
    ((2, 2, 5, 6), [1, 1, 1.5, 2.5], dict(mode="linear", coordinate_transformation_mode="half_pixel"),
     dict(mode="bilinear", align_corners=False)),
    ((2, 2, 4, 5), [1, 1, 2, 2], dict(mode="cubic", coordinate_transformation_mode="half_pixel"),
     dict(mode="bicubic", align_corners=False)),
]


@pytest.mark.parametrize("shape,scales,attrs,torch_kwargs", SCALES, ids=lambda v: str(v))
def test_resize_scales(shape, scales, attrs, torch_kwargs):
    """Finite differences in float64 (onnx.reference) and F.interpolate's backward in float32 (onnxruntime)."""
    x = RNG.standard_normal(shape)
    model = _scales_model(shape, scales, TensorProto.DOUBLE, **attrs)
    vm = vjp_model(model, ["x"], "y")
    onnx.checker.check_model(vm, full_check=True)
    y = run_reference(model, {"x": x})[0]
    dy = RNG.standard_normal(y.shape)
    direction = RNG.standard_normal(shape)
    grad = run_reference(vm, {"x": x, "dy": dy})[1]
    h = 1e-6
    jvp = np.sum(dy * (run_reference(model, {"x": x + h * direction})[0]
                       - run_reference(model, {"x": x - h * direction})[0]) / (2 * h))
    assert abs(jvp - np.sum(grad * direction)) <= 1e-6 * max(1.0, abs(jvp))

    tx = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    ty = F.interpolate(tx, scale_factor=tuple(scales[2:]), recompute_scale_factor=False, **torch_kwargs)
    (tg,) = torch.autograd.grad(ty, tx, torch.tensor(dy, dtype=torch.float32))
    m32 = _scales_model(shape, scales, TensorProto.FLOAT, **attrs)
    sess = ort.InferenceSession(vjp_model(m32, ["x"], "y").SerializeToString(), providers=["CPUExecutionProvider"])
    y32, g32 = sess.run(None, {"x": x.astype(np.float32), "dy": dy.astype(np.float32)})
    np.testing.assert_allclose(y32, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g32, tg.numpy(), rtol=1e-5, atol=1e-5)


def test_resize_dynamic_batch_one_session():
    """The batch axis stays dynamic: one session, two batch sizes, against F.interpolate's backward."""
    model = _scales_model(("N", 2, 4, 5), [1, 1, 2, 2], TensorProto.FLOAT, mode="linear",
                          coordinate_transformation_mode="half_pixel")
    sess = ort.InferenceSession(vjp_model(model, ["x"], "y").SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (1, 4):
        tx = torch.randn(n, 2, 4, 5, requires_grad=True)
        ty = F.interpolate(tx, scale_factor=2, mode="bilinear", align_corners=False)
        dy = torch.randn(ty.shape)
        (tg,) = torch.autograd.grad(ty, tx, dy)
        _, g = sess.run(None, {"x": tx.detach().numpy(), "dy": dy.numpy()})
        np.testing.assert_allclose(g, tg.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode,coord,n_in,n_out", [
    ("linear", "half_pixel", 5, 9), ("linear", "align_corners", 4, 7), ("cubic", "half_pixel", 6, 11),
    ("linear", "asymmetric", 5, 3), ("cubic", "align_corners", 3, 8),
])
def test_interpolation_rows_sum_to_one(mode, coord, n_in, n_out):
    """Interpolating a constant gives the constant: every row of W sums to one (edges clamped)."""
    w = interpolation_matrix(n_in, n_out, n_out / n_in, mode=mode, coordinate_mode=coord)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-12)


def _ort_resize_jacobian(n_in, n_out, attrs):
    """Resize's Jacobian along the last axis as onnxruntime's own forward pass computes it (W[:, j] = Resize(e_j))."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n_in, 1, 1, n_in])
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                               [n_in, 1, 1, n_out])],
                              [numpy_helper.from_array(np.array([n_in, 1, 1, n_out], np.int64), "sizes")])
    model = normalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), dynamic_batch=False)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    basis = np.eye(n_in, dtype=np.float32).reshape(n_in, 1, 1, n_in)
    return sess.run(None, {"x": basis})[0].reshape(n_in, n_out).T, model


# Size pairs where onnxruntime's float32 coordinates land on the other side of a tie (an integer for
# floor/ceil, a half for round_*) than exact arithmetic: on each of these, the neighbours the ONNX formula
# picks in exact arithmetic differ from onnxruntime's for at least one output.  Which neighbour the
# forward pass takes is the runtime's call, and the cotangent must follow it.
@pytest.mark.parametrize("coord,nearest_mode,n_in,n_out", [
    ("half_pixel", "round_prefer_floor", 14, 17),
    ("half_pixel", "round_prefer_ceil", 14, 9),
    ("half_pixel", "floor", 7, 9),
    ("half_pixel", "ceil", 7, 17),
    ("asymmetric", "round_prefer_floor", 10, 28),
    ("asymmetric", "floor", 14, 2),
    ("asymmetric", "ceil", 20, 28),
    ("pytorch_half_pixel", "round_prefer_ceil", 14, 9),
])
def test_resize_nearest_follows_the_runtime_at_ties(coord, nearest_mode, n_in, n_out):
    attrs = dict(mode="nearest", coordinate_transformation_mode=coord, nearest_mode=nearest_mode)
    w, model = _ort_resize_jacobian(n_in, n_out, attrs)
    sess = ort.InferenceSession(vjp_model(model, ["x"], "y").SerializeToString(), providers=["CPUExecutionProvider"])
    dy = RNG.standard_normal((n_in, 1, 1, n_out)).astype(np.float32)
    x = RNG.standard_normal((n_in, 1, 1, n_in)).astype(np.float32)
    _, g = sess.run(None, {"x": x, "dy": dy})
    np.testing.assert_allclose(g, dy @ w, rtol=1e-6, atol=1e-6)


# ------------------------------------------------ Resize with sizes and scales known at run time
# Detectors and segmenters are exported with dynamic height and width: the sizes of an upsampling to a
# skip connection's size are computed from shapes (both PyTorch exporters' forms below), and constant
# scales resize axes whose sizes are symbolic.  One backward graph must serve every image size.
def _sizes_from_shapes(style: str):
    """Nodes computing ``sizes`` = (x's N and C, skip's H and W), as each exporter writes them."""
    if style == "dynamo":   # Shape with start/end, Concat
        return [helper.make_node("Shape", ["x"], ["nc"], start=0, end=2),
                helper.make_node("Shape", ["skip"], ["hw"], start=2, end=4),
                helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0)]
    # torchscript: Slice of Shape(x), then Gather/Unsqueeze of Shape(skip) cast to int64
    nodes = [helper.make_node("Shape", ["x"], ["sx"]), helper.make_node("Shape", ["skip"], ["ss"]),
             helper.make_node("Slice", ["sx", "i0", "i2", "i0"], ["nc"])]
    for k in (2, 3):
        nodes += [helper.make_node("Gather", ["ss", f"k{k}"], [f"g{k}"], axis=0),
                  helper.make_node("Unsqueeze", [f"g{k}", "i0"], [f"u{k}"])]
    return nodes + [helper.make_node("Concat", ["u2", "u3"], ["hw"], axis=0),
                    helper.make_node("Cast", ["hw"], ["hw64"], to=TensorProto.INT64),
                    helper.make_node("Concat", ["nc", "hw64"], ["sizes"], axis=0)]


def _runtime_resize_model(dtype, how: str, **attrs):
    """y = Resize(x) * 1.5 with x (N, 3, h, w) dynamic; ``how``: "dynamo" / "torchscript" sizes from skip's
    shape, "scales" constant (1, 1, 2, 2), or "fed_scales" (a graph input)."""
    x = helper.make_tensor_value_info("x", dtype, ["N", 3, "h", "w"])
    inputs, inits = [x], []
    if how in ("dynamo", "torchscript"):
        inits += [numpy_helper.from_array(np.asarray(v, np.int64), n)
                  for n, v in (("i0", [0]), ("i2", [2]), ("k2", 2), ("k3", 3))] if how == "torchscript" else []
        inputs.append(helper.make_tensor_value_info("skip", dtype, ["N", 2, "H", "W"]))
        nodes = _sizes_from_shapes(how) + [helper.make_node("Resize", ["x", "", "", "sizes"], ["r"], **attrs)]
    else:
        if how == "fed_scales":
            inputs.append(helper.make_tensor_value_info("scales", TensorProto.FLOAT, [4]))
        else:
            inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
        nodes = [helper.make_node("Resize", ["x", "", "scales"], ["r"], **attrs)]
    inits.append(numpy_helper.from_array(np.array(1.5, helper.tensor_dtype_to_np_dtype(dtype)), "c"))
    nodes.append(helper.make_node("Mul", ["r", "c"], ["y"]))
    out = helper.make_tensor_value_info("y", dtype, ["N", 3, "oh", "ow"])
    graph = helper.make_graph(nodes, "resize", inputs, [out], inits)
    return normalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), dynamic_batch=False)


RUNTIME_MODES = [
    dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),   # F.interpolate nearest
    dict(mode="nearest", coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_floor"),
    dict(mode="linear", coordinate_transformation_mode="half_pixel"),        # bilinear, align_corners=False
    dict(mode="linear", coordinate_transformation_mode="align_corners"),     # bilinear, align_corners=True
    dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
    dict(mode="cubic", coordinate_transformation_mode="half_pixel"),
]


@pytest.mark.parametrize("how", ["dynamo", "torchscript", "scales", "fed_scales"])
@pytest.mark.parametrize("attrs", RUNTIME_MODES, ids=lambda a: "-".join(map(str, a.values())))
def test_resize_runtime_sizes(how, attrs):
    """One backward graph, two image sizes (odd, up and down): finite differences in float64
    (onnx.reference); in float32 in onnxruntime against onnxruntime's own forward pass, whose
    coordinates may differ from onnx.reference's (Resize is linear: <dy, y(x + d) - y(x - d)> / 2
    = <J^T dy, d> up to rounding)."""
    model = _runtime_resize_model(TensorProto.DOUBLE, how, **attrs)
    vm = vjp_model(model, ["x"], "y")
    onnx.checker.check_model(vm, full_check=True)
    m32 = _runtime_resize_model(TensorProto.FLOAT, how, **attrs)
    forward32 = ort.InferenceSession(m32.SerializeToString(), providers=["CPUExecutionProvider"])
    sess = ort.InferenceSession(vjp_model(m32, ["x"], "y").SerializeToString(), providers=["CPUExecutionProvider"])
    for (h, w), (sh, sw), scales in [((5, 7), (9, 4), [1, 1, 2, 2]), ((6, 3), (6, 11), [1, 1, 1.5, 0.5])]:
        x = RNG.standard_normal((2, 3, h, w))
        consts = {}
        if how in ("dynamo", "torchscript"):
            consts["skip"] = RNG.standard_normal((2, 2, sh, sw))
        elif how == "fed_scales":
            consts["scales"] = np.asarray(scales, np.float32)
        y = run_reference(model, {"x": x, **consts})[0]
        dy = RNG.standard_normal(y.shape)
        grad = run_reference(vm, {"x": x, "dy": dy, **consts})[1]
        assert grad.shape == x.shape
        assert_matches_finite_differences(model, {"x": x}, consts, dy, {"x": grad}, RNG, 1e-6, str((how, h, w)))
        feeds32 = {k: v.astype(np.float32) for k, v in {"x": x, "dy": dy, **consts}.items()}
        _, g32 = sess.run(None, feeds32)
        d = RNG.standard_normal(x.shape).astype(np.float32)
        others = {k: v for k, v in feeds32.items() if k not in ("x", "dy")}
        up, down = (forward32.run(None, {"x": feeds32["x"] + sign * d, **others})[0] for sign in (1, -1))
        jvp = float(np.sum(dy * (up.astype(np.float64) - down) / 2))
        assert abs(jvp - float(np.sum(g32 * d))) <= 1e-4 * max(1.0, abs(jvp))


def test_resize_runtime_sizes_leave_batch_and_channels_alone():
    """Sizes copied from the input's own shape (batch, channels) get no interpolation matrix: only the
    two spatial axes are transposed through one, whatever the exporter's form."""
    for how in ("dynamo", "torchscript"):
        vm = vjp_model(_runtime_resize_model(TensorProto.FLOAT, how, mode="linear"), ["x"], "y")
        assert sum(n.op_type == "EyeLike" for n in vm.graph.node) == 2, how


# ------------------------------------------------------------------------ onnxruntime-only checks
def _ort_grad_check(op, attrs, shape, fn, opset=17, consts=(), attributed=""):
    """The backward graph in onnxruntime (float32) against torch autograd (float64), batch dynamic.

    ``consts``: the node's other inputs (arrays); ``attributed``: indices (as a string, e.g. "012")
    of the inputs that get cotangents (default: the first only)."""
    attributed = attributed or "0"
    values = [None] + [np.asarray(c, np.float64) for c in consts]
    names = [f"in{i}" for i in range(len(values))]
    infos, inits = [], []
    for i, name in enumerate(names):
        if i == 0:
            infos.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N"] + list(shape[1:])))
        elif str(i) in attributed:
            infos.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(values[i].shape)))
        else:
            inits.append(numpy_helper.from_array(values[i].astype(np.float32), name))
    graph = helper.make_graph([helper.make_node(op, names, ["y"], **attrs)], "g", infos,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"] + list(shape[1:]))], inits)
    model = normalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    wrt = [names[int(i)] for i in attributed]
    sess = ort.InferenceSession(vjp_model(model, wrt, "y").SerializeToString(), providers=["CPUExecutionProvider"])
    for rows in (shape[0], 1):
        args = [torch.tensor(RNG.standard_normal((rows,) + tuple(shape[1:])))] + [torch.tensor(v) for v in values[1:]]
        for i in attributed:
            args[int(i)].requires_grad_()
        y = fn(*args)
        dy = torch.tensor(RNG.standard_normal(tuple(y.shape)))
        grads = torch.autograd.grad(y, [args[int(i)] for i in attributed], dy)
        feeds = {names[int(i)]: args[int(i)].detach().numpy().astype(np.float32) for i in attributed}
        feeds["dy"] = dy.numpy().astype(np.float32)
        if "0" not in attributed:
            feeds["in0"] = args[0].numpy().astype(np.float32)
        out = sess.run(None, feeds)
        np.testing.assert_allclose(out[0], y.detach().numpy(), rtol=1e-4, atol=1e-5)
        for got, ref in zip(out[1:], grads):
            np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-4 * float(np.abs(ref.numpy()).max()))


def _gn(groups, eps=1e-5):
    return lambda x, s, b: F.group_norm(x, groups, s, b, eps)


def _affine(c):
    return (RNG.uniform(0.5, 2, c), RNG.standard_normal(c))


@pytest.mark.parametrize("shape,groups,attributed,opset", [
    ((2, 4, 3, 3), 2, "0", 21),
    ((2, 4, 3), 1, "0", 21),
    ((2, 4, 5), 4, "0", 21),            # one channel per group: instance normalisation
    ((2, 6, 2, 3), 3, "012", 21),       # scale and bias attributed too
    ((2, 4, 3, 2), 2, "12", 21),        # scale and bias only
    ((2, 4, 2, 3, 2), 2, "0", 22),
])
def test_group_normalization(shape, groups, attributed, opset):
    _ort_grad_check("GroupNormalization", dict(num_groups=groups, epsilon=1e-5), shape, _gn(groups), opset=opset,
                    consts=_affine(shape[1]), attributed=attributed)


def _mvn_fn(dims):
    def fn(x):
        xc = x - x.mean(dim=dims, keepdim=True)
        return xc / (torch.sqrt((xc * xc).mean(dim=dims, keepdim=True)) + 1e-9)
    return fn


@pytest.mark.parametrize("op,attrs,shape,fn", [
    ("LpNormalization", dict(p=1, axis=-1), (3, 5), lambda x: x / x.abs().sum(-1, keepdim=True)),
    ("LpNormalization", dict(p=1, axis=1), (2, 4, 3), lambda x: x / x.abs().sum(1, keepdim=True)),
    ("LpNormalization", dict(p=2, axis=-1), (3, 2, 5), lambda x: x / x.norm(2, dim=-1, keepdim=True)),
    ("MeanVarianceNormalization", {}, (2, 3, 4, 5), _mvn_fn((0, 2, 3))),
    ("MeanVarianceNormalization", dict(axes=[2, 3]), (2, 3, 4, 5), _mvn_fn((2, 3))),
    ("MeanVarianceNormalization", dict(axes=[1]), (3, 6), _mvn_fn((1,))),
])
def test_onnxruntime_against_torch(op, attrs, shape, fn):
    _ort_grad_check(op, attrs, shape, fn)
