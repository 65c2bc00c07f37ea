"""Backward rules of InstanceNormalization, GroupNormalization, LpNormalization,
MeanVarianceNormalization, Resize, GridSample and DeformConv against finite differences and torch autograd,
and DeepLIFT's summation-to-delta through GridSample and DeformConv with active grids and offsets."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator


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
    _resize("cubic_not_larger", (1, 2, 5, 6), [1, 2, 8, 7], opset=18, mode="cubic",
            keep_aspect_ratio_policy="not_larger"),
    # antialias (opset 18): the kernel widened by 1 / scale when downsampling (PyTorch's antialias is
    # another filter: finite differences only); no effect when upsampling
    _resize("linear_antialias_down", (1, 2, 9, 11), [1, 2, 4, 5], opset=18, mode="linear", antialias=1),
    _resize("cubic_antialias_down", (1, 2, 9, 11), [1, 2, 4, 3], opset=18, mode="cubic", antialias=1),
    _resize("cubic_antialias_exclude_outside", (1, 2, 9, 7), [1, 2, 4, 3], opset=18, mode="cubic", antialias=1,
            exclude_outside=1, cubic_coeff_a=-0.5),
    _resize("linear_antialias_up", (1, 2, 3, 4), [1, 2, 7, 9], _interp((7, 9), mode="bilinear", align_corners=False),
            opset=18, mode="linear", antialias=1),
    _resize("linear_antialias_axes", (2, 3, 9, 8), [3, 4], opset=18, axes=[3, 2], mode="linear", antialias=1),
    # tf_crop_and_resize with a constant roi: cubic, and crops reaching outside (extrapolation_value)
    _resize("cubic_tf_crop_and_resize", (1, 2, 6, 5), [1, 2, 4, 7], mode="cubic",
            coordinate_transformation_mode="tf_crop_and_resize", roi=[0, 0, 0.2, 0.1, 1, 1, 0.9, 0.8]),
    _resize("linear_tf_crop_extrapolated", (1, 2, 6, 5), [1, 2, 5, 6], mode="linear",
            coordinate_transformation_mode="tf_crop_and_resize", roi=[0, 0, -0.3, 0.4, 1, 1, 1.2, 1.7],
            extrapolation_value=10.0),
    _resize("linear_tf_crop_axes", (2, 3, 6, 5), [4, 7], opset=18, axes=[3, 2], mode="linear",
            coordinate_transformation_mode="tf_crop_and_resize", roi=[0.1, 0.2, 0.7, 0.9]),
]

# ---------------------------------------------------------------------------------- GridSample
# Grid values reach past [-1, 1] so that every padding mode is exercised.  onnx.reference clamps a cubic
# border coordinate into the image before taking its taps, where onnxruntime and PyTorch (which the
# operator's documentation refers to) clamp the taps: the rule follows the latter, checked in onnxruntime
# below; the harness cases keep cubic border grids inside, where all agree.
TORCH_GRID_MODES = {None: "bilinear", "linear": "bilinear", "bilinear": "bilinear", "cubic": "bicubic",
                    "bicubic": "bicubic", "nearest": "nearest"}


def _grid(name, xs, gs, mode="linear", padding="zeros", align=0, opset=20, which="XG", torch_check=True,
          reach=1.2, **kwargs):
    """GridSample of X (xs) at grid (gs), both attributed unless ``which`` says otherwise (``mode`` None:
    the attribute left out)."""
    def draw(rng, shape):
        return rng.uniform(-reach, reach, shape)
    inputs = [xs if "X" in which else RNG.standard_normal(xs), gs if "G" in which else draw(RNG, gs)]
    attrs = dict(padding_mode=padding, align_corners=align)
    if mode is not None:
        attrs["mode"] = mode

    def fn(x, g):
        return F.grid_sample(x, g, mode=TORCH_GRID_MODES[mode], padding_mode=padding, align_corners=bool(align))
    return Case(name, "GridSample", inputs, fn if torch_check else None, attrs=attrs, opset=opset, sampler=draw,
                **kwargs)


GRID = [_grid(f"gs_{mode}_{padding}_ac{align}", (2, 3, 4, 5), (2, 3, 4, 2), mode, padding, align,
              reach=0.98 if (mode, padding) == ("cubic", "border") else 1.2)
        for mode in ("linear", "nearest", "cubic") for padding in ("zeros", "border", "reflection") for align in (0, 1)]
GRID += [
    _grid("gs22_linear_reflection", (2, 2, 5, 4), (2, 3, 3, 2), "linear", "reflection", 1, opset=22),
    _grid("gs22_cubic_zeros", (1, 2, 5, 4), (1, 4, 3, 2), "cubic", "zeros", 0, opset=22),
    _grid("gs22_nearest_border", (2, 2, 3, 4), (2, 3, 3, 2), "nearest", "border", 0, opset=22),
    # GridSample-16: 4-D only, its default mode (bilinear) left out (onnx.reference knows the name bilinear
    # only as that default; the names bilinear and bicubic are checked in onnxruntime below)
    _grid("gs16_default_zeros", (2, 3, 4, 5), (2, 3, 4, 2), None, "zeros", 0, opset=16),
    _grid("gs16_default_reflection", (2, 3, 4, 5), (2, 3, 4, 2), None, "reflection", 1, opset=16),
    _grid("gs16_nearest_border", (2, 3, 4, 5), (2, 3, 4, 2), "nearest", "border", 1, opset=16),
    # volumetric (GridSample-20 on); onnxruntime has no 5-D cubic, PyTorch no volumetric bicubic
    _grid("gs5d_linear_zeros", (1, 2, 3, 4, 3), (1, 2, 3, 2, 3), "linear", "zeros", 0),
    _grid("gs5d_linear_border", (2, 2, 3, 4, 3), (2, 2, 2, 2, 3), "linear", "border", 1),
    _grid("gs5d_linear_reflection", (1, 2, 3, 4, 3), (1, 2, 3, 2, 3), "linear", "reflection", 0),
    _grid("gs5d_nearest_reflection", (1, 2, 3, 4, 3), (1, 2, 3, 2, 3), "nearest", "reflection", 1),
    _grid("gs5d_nearest_zeros", (1, 2, 3, 4, 3), (1, 2, 3, 2, 3), "nearest", "zeros", 0),
    _grid("gs5d_cubic_reflection", (1, 2, 3, 4, 3), (1, 2, 3, 2, 3), "cubic", "reflection", 0, torch_check=False),
    # one input attributed, a dynamic batch, an output larger than the image
    _grid("gs_image_only", (2, 3, 4, 5), (2, 3, 4, 2), "linear", "border", 0, which="X"),
    _grid("gs_grid_only", (2, 3, 4, 5), (2, 3, 4, 2), "cubic", "reflection", 1, which="G"),
    _grid("gs_nearest_grid_only", (2, 3, 4, 5), (2, 3, 4, 2), "nearest", "zeros", 0, which="G"),
    _grid("gs_dynamic_batch", (3, 2, 4, 5), (3, 3, 4, 2), "linear", "reflection", 0, dynamic=True),
    _grid("gs_upsampling_grid", (1, 2, 3, 3), (1, 7, 6, 2), "cubic", "zeros", 1),
]
REFERENCE_ONLY = {"gs5d_cubic_reflection"}


# ---------------------------------------------------------------------------------- DeformConv
def deform_conv_torch(x, w, offset, bias=None, mask=None, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                      group=1, offset_group=1):
    """DeformConv (2-D) written by hand with F.grid_sample (torchvision is not installed): bilinear samples,
    zeros outside, at the kernel taps moved by the offsets (channels ordered (offset group, kh, kw, (dy, dx))),
    times the mask, contracted with the weight per group."""
    n, c, h, wd = x.shape
    m, cpg, kh, kw = w.shape
    oh, ow = offset.shape[2:]
    g, k = offset_group, kh * kw
    off = offset.reshape(n, g, kh, kw, 2, oh, ow)

    def ar(v):
        return torch.arange(v, dtype=x.dtype)
    base_h = -pads[0] + strides[0] * ar(oh)[None, None, :, None] + dilations[0] * ar(kh)[:, None, None, None]
    base_w = -pads[1] + strides[1] * ar(ow)[None, None, None, :] + dilations[1] * ar(kw)[None, :, None, None]
    py, px = off[:, :, :, :, 0] + base_h, off[:, :, :, :, 1] + base_w          # (N, G, kh, kw, oh, ow)
    grid = torch.stack([px / (wd - 1) * 2 - 1, py / (h - 1) * 2 - 1], -1).reshape(n * g, k * oh, ow, 2)
    s = F.grid_sample(x.reshape(n * g, c // g, h, wd), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    s = s.reshape(n, g, c // g, k, oh, ow)
    if mask is not None:
        s = s * mask.reshape(n, g, 1, k, oh, ow)
    y = (w.reshape(group, m // group, cpg * k) @ s.reshape(n, group, c // group * k, oh * ow)).reshape(n, m, oh, ow)
    return y if bias is None else y + bias.reshape(1, -1, 1, 1)


def _deform_shapes(xs, ws, attrs):
    n, _, h, w = xs
    kh, kw = ws[2:]
    pads, st, dl = attrs.get("pads", [0] * 4), attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    oh = (h + pads[0] + pads[2] - (kh - 1) * dl[0] - 1) // st[0] + 1
    ow = (w + pads[1] + pads[3] - (kw - 1) * dl[1] - 1) // st[1] + 1
    g = attrs.get("offset_group", 1)
    return [xs, ws, (n, 2 * g * kh * kw, oh, ow), (ws[0],), (n, g * kh * kw, oh, ow)]


def _deform(name, xs, ws, attrs=None, which="XWOBM", mask=True, bias=True, opset=19, **kwargs):
    """DeformConv with X, W, offset, B, mask; ``which`` of them attributed (the others constants)."""
    attrs = dict(attrs or {}, kernel_shape=list(ws[2:]))
    inputs = [shape if key in which else RNG.standard_normal(shape) for key, shape in
              zip("XWOBM", _deform_shapes(xs, ws, attrs))]
    if not bias:
        inputs[3] = None
    if not mask:
        inputs = inputs[:4]
    present = [i for i, v in enumerate(inputs) if v is not None]
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in attrs.items() if k != "kernel_shape"}

    def fn(*args):
        full = [None] * 5
        for i, a in zip(present, args):
            full[i] = a
        return deform_conv_torch(*full, **options)
    return Case(name, "DeformConv", inputs, fn, attrs=attrs, opset=opset, **kwargs)


DEFORM = [
    _deform("dc_basic", (2, 4, 5, 6), (6, 4, 3, 2)),
    _deform("dc_pads_strides_dilations", (2, 3, 7, 6), (4, 3, 2, 3), dict(pads=[1, 0, 1, 2], strides=[2, 1],
                                                                          dilations=[1, 2])),
    _deform("dc_groups", (2, 4, 5, 5), (6, 2, 2, 3), dict(group=2, offset_group=2, pads=[1, 1, 0, 1])),
    _deform("dc_offset_groups", (1, 4, 5, 6), (3, 4, 3, 3), dict(offset_group=4, pads=[1, 1, 1, 1])),
    _deform("dc_no_mask_no_bias", (2, 2, 4, 5), (3, 2, 2, 2), mask=False, bias=False),
    _deform("dc_mask_no_bias", (2, 2, 4, 5), (3, 2, 2, 2), bias=False),
    _deform("dc_image_only", (2, 4, 5, 6), (6, 4, 3, 2), dict(pads=[1, 1, 1, 1]), which="X"),
    _deform("dc_offsets_only", (2, 4, 5, 6), (6, 4, 3, 2), which="O"),
    _deform("dc_mask_and_offsets", (2, 4, 5, 6), (6, 2, 3, 2), dict(group=2, offset_group=2), which="OM"),
    _deform("dc22_strides", (2, 3, 6, 7), (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1]), opset=22),
    _deform("dc_dynamic_batch", (3, 2, 5, 4), (2, 2, 2, 2), dynamic=True),
]



# ------------------------------------------------------------------------- AffineGrid
def _affine(name, n, size, align=0, dynamic=False):
    r = len(size) - 2
    return Case(name, "AffineGrid", [(n, r, r + 1), np.array([n, *size[1:]], np.int64)],
                lambda theta, _size: F.affine_grid(theta, [n, *size[1:]], align_corners=bool(align)),
                attrs=dict(align_corners=align), opset=20, dynamic=dynamic)


AFFINE = [
    _affine("ag_2d", 2, (2, 3, 5, 7)),
    _affine("ag_2d_align", 3, (3, 1, 4, 6), align=1),
    _affine("ag_3d", 2, (2, 2, 3, 4, 5)),
    _affine("ag_3d_align", 1, (1, 1, 4, 3, 2), align=1),
    _affine("ag_2d_one_pixel", 2, (2, 1, 1, 3)),
]

ALL = INSTANCE + LP_MVN + RESIZE + GRID + DEFORM + AFFINE


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
def test_case(case):
    check_case(case, ort_check=case.name not in REFERENCE_ONLY)


def _sampling_model(op, shapes, attrs, opset):
    """One node over float32 graph inputs ``in0, in1, ...`` (static shapes), its output sized by onnx.reference."""
    names = [f"in{i}" for i in range(len(shapes))]
    infos = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in zip(names, shapes)]

    def make(out_shape):
        graph = helper.make_graph([helper.make_node(op, names, ["y"], **attrs)], "g", infos,
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 9
        return model
    return make, names


@pytest.mark.parametrize("attrs,opset,reach", [
    (dict(mode="bilinear", padding_mode="reflection"), 16, 1.3),
    (dict(mode="bicubic", padding_mode="zeros", align_corners=1), 16, 1.3),
    (dict(mode="bicubic", padding_mode="border"), 16, 1.5),
    (dict(mode="nearest", padding_mode="border"), 16, 1.3),
    (dict(mode="cubic", padding_mode="border"), 20, 1.5),        # taps clamped (onnx.reference: the coordinate)
    (dict(mode="cubic", padding_mode="border", align_corners=1), 22, 1.5),
    (dict(mode="cubic", padding_mode="reflection", align_corners=1), 20, 2.5),
])
def test_grid_sample_in_onnxruntime_against_torch(attrs, opset, reach):
    """GridSample-16's mode names and cubic border grids far outside the image: onnxruntime's forward pass
    and the backward graph in float32 against PyTorch's grid_sample and autograd in float64."""
    xs, gs = (2, 3, 4, 5), (2, 4, 3, 2)
    make, names = _sampling_model("GridSample", [xs, gs], attrs, opset)
    y_shape = [2, 3, 4, 3]
    model = normalize(make(y_shape), dynamic_batch=False)
    sess = ort.InferenceSession(vjp_model(model, names, "y").SerializeToString(), providers=["CPUExecutionProvider"])
    x, g = RNG.standard_normal(xs), RNG.uniform(-reach, reach, gs)
    tx, tg = torch.tensor(x, requires_grad=True), torch.tensor(g, requires_grad=True)
    mode = TORCH_GRID_MODES[attrs["mode"]]
    ty = F.grid_sample(tx, tg, mode=mode, padding_mode=attrs["padding_mode"], align_corners=bool(attrs.get("align_corners")))
    dy = RNG.standard_normal(tuple(ty.shape))
    refs = torch.autograd.grad(ty, [tx, tg], torch.tensor(dy))
    out = sess.run(None, {"in0": x.astype(np.float32), "in1": g.astype(np.float32), "dy": dy.astype(np.float32)})
    np.testing.assert_allclose(out[0], ty.detach().numpy(), rtol=1e-4, atol=1e-5)
    for got, ref in zip(out[1:], refs):
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref.numpy()).max())))


@pytest.mark.parametrize("attrs", [dict(), dict(pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2]),
                                   dict(group=2, offset_group=2), dict(offset_group=4, pads=[1, 1, 1, 1])])
def test_deform_conv_reference_against_onnxruntime(attrs):
    """The hand-written DeformConv above computes onnxruntime's DeformConv (and the node tests' outputs,
    checked by the oracle): the harness cases hold the rule to its autograd."""
    xs, ws = (2, 4, 6, 7), (4, 4 // attrs.get("group", 1), 3, 2)
    attrs = dict(attrs, kernel_shape=[3, 2])
    shapes = _deform_shapes(xs, ws, attrs)
    values = [RNG.standard_normal(s) for s in shapes]
    make, _ = _sampling_model("DeformConv", shapes, attrs, 19)
    y = deform_conv_torch(*map(torch.tensor, values), **{k: v for k, v in attrs.items() if k != "kernel_shape"}).numpy()
    sess = ort.InferenceSession(make(list(y.shape)).SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {f"in{i}": v.astype(np.float32) for i, v in enumerate(values)})[0]
    np.testing.assert_allclose(got, y, rtol=1e-4, atol=1e-4 * np.abs(y).max())


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
    (onnx.reference); in float32 in onnxruntime the same numbers as in onnx.reference, and against
    onnxruntime's own forward pass wherever that follows the specification (Resize is linear:
    <dy, y(x + d) - y(x - d)> / 2 = <J^T dy, d> up to rounding).  onnxruntime's linear and cubic Resize
    divide by the rounded output size where the specification divides by ``scale * n_in`` (align_corners,
    pytorch_half_pixel with scales whose ``scale * n_in`` is fractional: 3 * 0.5 below); the rule follows the
    specification there."""
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
        np.testing.assert_allclose(g32, grad, rtol=1e-4, atol=1e-4 * np.abs(grad).max())
        others = {k: v for k, v in feeds32.items() if k not in ("x", "dy")}
        y32 = forward32.run(None, {"x": feeds32["x"], **others})[0]
        if not np.allclose(y32, y, atol=1e-4):      # onnxruntime's own reading of the coordinates
            assert how == "fed_scales" and (h, w) == (6, 3) and attrs["mode"] != "nearest" and \
                attrs["coordinate_transformation_mode"] in ("align_corners", "pytorch_half_pixel")
            continue
        d = RNG.standard_normal(x.shape).astype(np.float32)
        up, down = (forward32.run(None, {"x": feeds32["x"] + sign * d, **others})[0] for sign in (1, -1))
        jvp = float(np.sum(dy * (up.astype(np.float64) - down) / 2))
        assert abs(jvp - float(np.sum(g32 * d))) <= 1e-4 * max(1.0, abs(jvp))


def test_resize_runtime_sizes_leave_batch_and_channels_alone():
    """Sizes copied from the input's own shape (batch, channels) get no interpolation matrix: only the
    two spatial axes are transposed through one, whatever the exporter's form (linear: a matrix built from
    the formulas, one Ceil of the source coordinates each; nearest: the runtime's Resize of an identity)."""
    for how in ("dynamo", "torchscript"):
        vm = vjp_model(_runtime_resize_model(TensorProto.FLOAT, how, mode="linear"), ["x"], "y")
        assert sum(n.op_type == "Ceil" for n in vm.graph.node) == 2, how
        assert sum(n.op_type == "MatMul" for n in vm.graph.node) == 2, how
        vm = vjp_model(_runtime_resize_model(TensorProto.FLOAT, how, mode="nearest"), ["x"], "y")
        assert sum(n.op_type == "EyeLike" for n in vm.graph.node) == 2, how


# -------------------------------------------- Resize with scales, sizes and roi fed at run time
# As the ONNX node tests write Resize: scales, sizes and roi are graph inputs.  The linear and cubic
# matrices are then built at run time from the specification's formulas (antialias, exclude_outside, the
# scale a keep_aspect_ratio_policy shares, tf_crop_and_resize's roi, which gets a cotangent too).
def _fed_resize_model(dtype, shape, fed: dict, opset=19, **attrs):
    """y = Resize(x, roi, scales, sizes) with those of roi / scales / sizes that ``fed`` holds as graph inputs."""
    types = {"roi": dtype, "scales": TensorProto.FLOAT, "sizes": TensorProto.INT64}
    inputs, names = [helper.make_tensor_value_info("x", dtype, list(shape))], ["x"]
    for key in ("roi", "scales", "sizes"):
        names.append(key if key in fed else "")
        if key in fed:
            inputs.append(helper.make_tensor_value_info(key, types[key], [len(fed[key])]))
    def make(out_shape):
        graph = helper.make_graph([helper.make_node("Resize", names, ["y"], **attrs)], "resize", inputs,
                                  [helper.make_tensor_value_info("y", dtype, out_shape)])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    probe = {"x": np.zeros(shape), **{k: np.asarray(v, np.float32 if k == "scales" else np.int64 if k == "sizes"
                                                    else np.float64) for k, v in fed.items()}}
    out_shape = list(ReferenceEvaluator(make([])).run(None, probe)[0].shape)
    return normalize(make(out_shape), dynamic_batch=False)


FED = [
    # the specification divides by scale * n_in (fractional here) where onnxruntime divides by the output size
    ((2, 3, 5, 7), dict(scales=[1, 1, 0.6, 0.7]), dict(mode="linear", coordinate_transformation_mode="align_corners")),
    ((2, 3, 5, 6), dict(scales=[1, 1, 0.8, 1.3]), dict(mode="cubic", coordinate_transformation_mode="align_corners")),
    ((2, 3, 6, 5), dict(scales=[1, 1, 1.5, 0.3]), dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel")),
    ((2, 3, 5, 6), dict(scales=[1, 1, 0.6, 1.7]), dict(mode="linear", coordinate_transformation_mode="half_pixel_symmetric")),
    ((2, 3, 5, 6), dict(scales=[1, 1, 1.7, 0.8]), dict(mode="cubic", exclude_outside=1, cubic_coeff_a=-0.5)),
    # antialias, with scales and with sizes
    ((2, 3, 9, 11), dict(scales=[1, 1, 0.6, 0.45]), dict(mode="linear", antialias=1)),
    ((2, 3, 9, 11), dict(sizes=[2, 3, 4, 5]), dict(mode="cubic", antialias=1)),
    ((2, 3, 9, 7), dict(scales=[1, 1, 0.7, 0.55]), dict(mode="cubic", antialias=1, exclude_outside=1, cubic_coeff_a=-0.5)),
    # keep_aspect_ratio_policy: one scale shared by the axes (an axis may keep its size and still move)
    ((2, 3, 4, 6), dict(sizes=[9, 8]), dict(mode="linear", axes=[2, 3], keep_aspect_ratio_policy="not_larger")),
    ((2, 3, 4, 6), dict(sizes=[5, 4]), dict(mode="cubic", axes=[2, 3], keep_aspect_ratio_policy="not_smaller")),
    ((2, 3, 4, 8), dict(sizes=[2, 6]), dict(mode="nearest", axes=[2, 3], keep_aspect_ratio_policy="not_smaller")),
    ((2, 3, 4, 8), dict(sizes=[7, 6]), dict(mode="nearest", axes=[2, 3], keep_aspect_ratio_policy="not_larger")),
    # tf_crop_and_resize with the roi attributed: inside, reaching outside (extrapolation_value), with axes
    ((2, 3, 6, 5), dict(roi=[0, 0, 0.41, 0.1, 1, 1, 0.83, 0.9], sizes=[2, 3, 4, 6]),
     dict(mode="linear", coordinate_transformation_mode="tf_crop_and_resize")),
    ((2, 3, 6, 5), dict(roi=[0, 0, -0.3, 0.4, 1, 1, 1.2, 1.7], sizes=[2, 3, 5, 4]),
     dict(mode="cubic", coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=10.0)),
    ((2, 3, 6, 5), dict(roi=[0.1, 0.3, 0.8, 0.63], sizes=[4, 3]),
     dict(mode="linear", axes=[3, 2], coordinate_transformation_mode="tf_crop_and_resize")),
    ((2, 3, 6, 5), dict(roi=[0, 0, 0.15, 0.1, 1, 1, 0.85, 0.75], sizes=[2, 3, 4, 6]),
     dict(mode="nearest", coordinate_transformation_mode="tf_crop_and_resize")),
]


@pytest.mark.parametrize("shape,fed,attrs", FED, ids=lambda v: str(v))
def test_resize_fed_at_run_time(shape, fed, attrs):
    """Finite differences in float64 (x and the roi together; crops chosen off the integer coordinates,
    where linear interpolation has kinks), and onnxruntime in float32 gives the same cotangents as
    onnx.reference."""
    roi = "roi" in fed
    model = _fed_resize_model(TensorProto.DOUBLE, shape, fed, **attrs)
    wrt = ["x", "roi"] if roi else ["x"]
    vm = vjp_model(model, wrt, "y")
    onnx.checker.check_model(vm, full_check=True)
    consts = {k: np.asarray(v, np.float32 if k == "scales" else np.int64) for k, v in fed.items() if k != "roi"}
    xs = {"x": RNG.standard_normal(shape)}
    if roi:
        xs["roi"] = np.asarray(fed["roi"], np.float64)
    y = run_reference(model, {**xs, **consts})[0]
    dy = RNG.standard_normal(y.shape)
    got = run_reference(vm, {**xs, **consts, "dy": dy})
    grads = dict(zip(wrt, got[1:]))
    assert all(grads[k].shape == xs[k].shape for k in wrt)
    if roi and attrs["mode"] != "nearest":
        assert np.abs(grads["roi"]).max() > 0
    # the direction moves the roi of the resized axes only: at the batch's and channels' roi of exactly
    # [0, 1] the crop sits on the edge of extrapolation (a jump)
    dirs = {k: RNG.standard_normal(v.shape) for k, v in xs.items()}
    if roi and len(fed["roi"]) == 2 * len(shape):
        dirs["roi"][[0, 1, len(shape), len(shape) + 1]] = 0.0
    h = 1e-6
    plus, minus = (run_reference(model, {**consts, **{k: v + s * h * dirs[k] for k, v in xs.items()}})[0] for s in (1, -1))
    jvp = float(np.sum(dy * (plus - minus)) / (2 * h))
    vjp = float(sum(np.sum(grads[k] * dirs[k]) for k in wrt))
    assert abs(jvp - vjp) <= 1e-6 * max(1.0, abs(jvp)), (jvp, vjp)
    m32 = _fed_resize_model(TensorProto.FLOAT, shape, fed, **attrs)
    sess = ort.InferenceSession(vjp_model(m32, wrt, "y").SerializeToString(), providers=["CPUExecutionProvider"])
    got32 = sess.run(None, {**{k: v.astype(np.float32) for k, v in xs.items()}, **consts, "dy": dy.astype(np.float32)})
    for k, g32 in zip(wrt, got32[1:]):
        np.testing.assert_allclose(g32, grads[k], rtol=1e-4, atol=1e-4 * max(1.0, np.abs(grads[k]).max()), err_msg=k)


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


# ------------------------------------------------------------- DeepLIFT through GridSample and DeformConv
# GridSample and DeformConv are linear in the image (and the mask) but not in the grid (the offsets); with
# the grid computed from the input, DeepLIFT takes exact Shapley values over the image and the grid's
# coordinate components (onnxplain/rules/rescale_sampling.py).  Summation-to-delta against the model's own
# forward pass in onnxruntime, as tests/test_deeplift_conservation.py checks the other op families.
def _const(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _head(nodes, inits, z, dims, channels, opset=18):
    """z (N, channels, spatial) -> mean over space -> @ head -> y (N, 3)."""
    axes = list(range(2, 2 + dims))
    inits.append(_const("head", np.random.default_rng(9).standard_normal((channels, 3))))
    if opset >= 18:
        inits.append(_const("sp_axes", axes, np.int64))
        nodes.append(helper.make_node("ReduceMean", [z, "sp_axes"], ["pooled"], keepdims=0))
    else:
        nodes.append(helper.make_node("ReduceMean", [z], ["pooled"], axes=axes, keepdims=0))
    nodes.append(helper.make_node("MatMul", ["pooled", "head"], ["y"]))


def grid_sample_model(mode="linear", padding="zeros", align=0, image="x", dims=2, opset=20):
    """x (N, 2, spatial) -> grid = 1.2 tanh(conv(x)) (outputs reach past the image) -> GridSample(image, grid),
    the image being x itself, relu(x), or a constant one (only the grid moves)."""
    g = np.random.default_rng(3)
    spatial = [4, 5] if dims == 2 else [3, 4, 3]
    nodes = [helper.make_node("Conv", ["x", "wg"], ["c"], pads=[1] * (2 * dims)),
             helper.make_node("Tanh", ["c"], ["t"]), helper.make_node("Mul", ["t", "reach"], ["ts"]),
             helper.make_node("Transpose", ["ts"], ["grid"], perm=[0] + list(range(2, 2 + dims)) + [1])]
    inits = [_const("wg", 0.8 * g.standard_normal([dims, 2] + [3] * dims)), _const("reach", 1.2)]
    if image == "relu":
        nodes.append(helper.make_node("Relu", ["x"], ["image"]))
    elif image == "constant":
        inits.append(_const("picture", g.standard_normal([1, 2] + spatial)))
        nodes += [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Expand", ["picture", "shape"], ["image"])]
    attrs = dict(mode=mode, padding_mode=padding, align_corners=align)
    nodes.append(helper.make_node("GridSample", ["x" if image == "x" else "image", "grid"], ["s"], **attrs))
    _head(nodes, inits, "s", dims, 2, opset)
    graph = helper.make_graph(nodes, "gs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2] + spatial)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model, (2, *spatial)


def deform_conv_model(mask="active", group=1, offset_group=1):
    """x (N, 4, 5, 6) -> offsets = 0.8 tanh(conv(x)), mask = sigmoid(conv(x)) (or a constant one, or none) ->
    DeformConv(x, W, offsets, B, mask)."""
    g = np.random.default_rng(4)
    c, m, kh, kw, h, w = 4, 4, 3, 2, 5, 6
    taps, oh, ow = kh * kw * offset_group, h - kh + 3, w - kw + 2
    conv = dict(pads=[1, 0, 1, 1])
    inits = [_const("w", g.standard_normal((m, c // group, kh, kw))), _const("bias", g.standard_normal(m)),
             _const("wo", 0.3 * g.standard_normal((2 * taps, c, kh, kw))), _const("wm", 0.5 * g.standard_normal((taps, c, kh, kw))),
             _const("scale", 0.8)]
    nodes = [helper.make_node("Conv", ["x", "wo"], ["o"], **conv), helper.make_node("Tanh", ["o"], ["ot"]),
             helper.make_node("Mul", ["ot", "scale"], ["offset"])]
    ins = ["x", "w", "offset", "bias"]
    if mask == "active":
        nodes += [helper.make_node("Conv", ["x", "wm"], ["mc"], **conv), helper.make_node("Sigmoid", ["mc"], ["mask"])]
        ins.append("mask")
    elif mask == "constant":
        inits.append(_const("fixed", g.uniform(0.2, 1.0, (1, taps, oh, ow))))
        nodes += [helper.make_node("Shape", ["o"], ["oshape"]), helper.make_node("Slice", ["oshape", "zero", "one"], ["n"]),
                  helper.make_node("Concat", ["n", "rest"], ["mshape"], axis=0),
                  helper.make_node("Expand", ["fixed", "mshape"], ["mask"])]
        inits += [_const("zero", [0], np.int64), _const("one", [1], np.int64), _const("rest", [taps, oh, ow], np.int64)]
        ins.append("mask")
    nodes.append(helper.make_node("DeformConv", ins, ["d"], kernel_shape=[kh, kw], group=group, offset_group=offset_group,
                                  **conv))
    _head(nodes, inits, "d", 2, m)
    graph = helper.make_graph(nodes, "dc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model, (c, h, w)


def _forward_gap(model, x, base, target):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0][:, target] - sess.run(None, {"x": base})[0][:, target]


def _assert_conserves(model, shape, target=1):
    import onnxplain
    g = np.random.default_rng(21)
    x = g.standard_normal((3,) + tuple(shape)).astype(np.float32)
    base = (0.5 * g.standard_normal((3,) + tuple(shape))).astype(np.float32)
    base[0, 0, 0] = x[0, 0, 0]           # rows of entries that did not move: the rules' gradient fallback
    attr, delta = onnxplain.Explainer(model, "deeplift").explain(x, target=target, baselines=base,
                                                                return_convergence_delta=True)
    assert np.all(np.isfinite(attr)) and np.abs(attr).max() > 0
    expected = _forward_gap(model, x, base, target)
    assert np.abs(expected).max() > 1e-2
    scale = max(1.0, float(np.abs(attr).reshape(len(attr), -1).sum(1).max()))
    np.testing.assert_allclose(attr.reshape(len(attr), -1).sum(1), expected, rtol=0, atol=2e-5 * scale)
    np.testing.assert_allclose(delta, 0, atol=2e-5 * scale)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("align", [0, 1])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
def test_deeplift_conserves_through_grid_sample(mode, padding, align):
    _assert_conserves(*grid_sample_model(mode, padding, align))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("kind", ["relu_image", "constant_image", "volumetric_linear", "volumetric_nearest", "opset16"])
def test_deeplift_conserves_through_grid_sample_variants(kind):
    """The image behind an activation, a constant image (the grid alone moves), 5-D grids, GridSample-16."""
    model = {"relu_image": lambda: grid_sample_model(image="relu"),
             "constant_image": lambda: grid_sample_model("cubic", "border", image="constant"),
             "volumetric_linear": lambda: grid_sample_model("linear", "reflection", dims=3),
             "volumetric_nearest": lambda: grid_sample_model("nearest", "border", 1, dims=3),
             "opset16": lambda: grid_sample_model("bilinear", "zeros", opset=16)}[kind]
    _assert_conserves(*model())


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("mask,group,offset_group", [("active", 1, 1), ("none", 1, 1), ("constant", 1, 1),
                                                     ("active", 2, 2), ("active", 1, 2)])
def test_deeplift_conserves_through_deform_conv(mask, group, offset_group):
    _assert_conserves(*deform_conv_model(mask, group, offset_group))


@pytest.mark.filterwarnings("ignore")
def test_deeplift_grid_sample_falls_back_to_the_gradient_where_nothing_moved():
    """A baseline equal to the input: the multipliers are the gradient (the Shapley values vanish with the
    differences)."""
    import onnxplain
    model, shape = grid_sample_model("cubic", "reflection", 1)
    x = np.random.default_rng(2).standard_normal((2,) + shape).astype(np.float32)
    multipliers = onnxplain.Explainer(model, "deeplift").explain(x, target=0, baselines=x, multiply_by_inputs=False)
    gradient = onnxplain.Explainer(model, "gradient").explain(x, target=0)
    np.testing.assert_allclose(multipliers, gradient, rtol=1e-4, atol=1e-5 * np.abs(gradient).max())


@pytest.mark.filterwarnings("ignore")
def test_deeplift_sampling_graphs_run_in_onnx_reference(tmp_path):
    """The DeepLIFT rules emit standard ops only: the same numbers in onnx.reference as in onnxruntime."""
    import onnxplain
    for model, shape in (grid_sample_model("linear", "reflection"), deform_conv_model("active")):
        graph = onnxplain.convert(model, tmp_path / "deeplift.onnx", method="deeplift")
        assert all(node.domain in ("", "ai.onnx") for node in graph.graph.node)
        g = np.random.default_rng(8)
        tw = np.zeros((2, 3), np.float32)
        tw[:, 1] = 1
        feeds = {"x": g.standard_normal((2,) + shape).astype(np.float32), "target_weights": tw,
                 "baselines": (0.5 * g.standard_normal((2,) + shape)).astype(np.float32)}
        got = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
        ref = ReferenceEvaluator(graph).run(None, feeds)
        for a, r in zip(got, ref):
            np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(r).max())))


def _rescale_backward(model, wrt):
    """DeepLIFT's backward pass of ``model``'s output "y" to ``wrt`` (the rules' table, inputs stacked with
    their references)."""
    from onnxplain.backward import backward
    from onnxplain.graph import GraphBuilder
    from onnxplain.rules import Partner
    from onnxplain.rules.deeplift import RESCALE
    b = GraphBuilder(normalize(model, dynamic_batch=False))
    seed = b.add_input("dy", TensorProto.FLOAT, b.shape("y"))
    return backward(b, "y", seed, wrt, overrides=RESCALE, ref=Partner(b), params={"eps": b.const(1e-10)})


def test_deeplift_refuses_resize_with_an_attributed_roi():
    from onnxplain.errors import UnsupportedOperatorError
    node = helper.make_node("Resize", ["x", "roi", "", "sizes"], ["y"], mode="linear",
                            coordinate_transformation_mode="tf_crop_and_resize")
    graph = helper.make_graph([node], "r", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, 4, 4]),
                                            helper.make_tensor_value_info("roi", TensorProto.FLOAT, [8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1, 3, 3])],
                              [_const("sizes", [2, 1, 3, 3], np.int64)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    _rescale_backward(model, ["x"])                       # the image alone: the plain rule
    with pytest.raises(UnsupportedOperatorError, match="roi or scales"):
        _rescale_backward(model, ["x", "roi"])


def test_deeplift_refuses_deform_conv_with_an_attributed_weight_and_image():
    from onnxplain.errors import UnsupportedOperatorError
    shapes = _deform_shapes((2, 2, 4, 5), (3, 2, 2, 2), {})
    names = ["x", "w", "offset"]
    graph = helper.make_graph([helper.make_node("DeformConv", names, ["y"], kernel_shape=[2, 2])], "d",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in zip(names, shapes)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 3, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    _rescale_backward(model, ["w"])                       # the weight alone: the plain rule
    _rescale_backward(model, ["x", "offset"])             # image and offsets: Shapley
    with pytest.raises(UnsupportedOperatorError, match="weight"):
        _rescale_backward(model, ["x", "w"])
