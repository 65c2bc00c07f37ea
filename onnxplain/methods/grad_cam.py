"""Grad-CAM (Selvaraju et al., 2017) and Guided Grad-CAM, one run over the inputs themselves.

Grad-CAM weighs each channel of a layer's activation ``A`` (``(N, C, *spatial)``) by the mean over
its spatial positions of the gradient ``d target / d A`` and sums the weighted channels:
``cam = sum_c mean_hw(dA)[c] * A[c]``, shaped ``(N, 1, *spatial)`` (Captum's ``LayerGradCam``).
Guided Grad-CAM multiplies the guided-backpropagation attributions of the inputs by the rectified
map upsampled to the inputs' spatial size (Captum's ``GuidedGradCam``).  Its graph holds one forward
pass and two backward passes from it: the plain one to the layer and the guided one to the inputs.

The layer is ``Explainer(..., layer="tensor name")``; without one, :func:`default_layer` picks the
last feature map of the model.  Every option is a graph feed: ``relu_attributions`` and
``attr_dim_summation`` are booleans, the interpolation is a Resize whose target size and mode are
chosen by two boolean feeds (``interpolate_to_input``, ``interpolate_bilinear``), so the
attribution's shape follows the call without a rebuild.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from ..backward import backward
from ..graph import FLOAT_TYPES, GraphBuilder, node_reads
from ..rules.guided import GUIDED
from .base import Method, Spec, declare_param, declare_target_weights, emit_outputs, open_forward
from .params import Param

INTERPOLATIONS = ("none", "nearest", "bilinear")
MODES = ("nearest", "bilinear")

RELU_ATTRIBUTIONS = Param("relu_attributions", False, "bool", "keep only the positive part of the map (True is "
                          "the published Grad-CAM; Captum's default False keeps both signs)", own_check=True)
ATTR_DIM_SUMMATION = Param("attr_dim_summation", True, "bool", "sum the weighted channels (False: one map per "
                           "channel, shaped like the layer)", own_check=True)
INTERPOLATE = Param("interpolate", "none", "choice", "upsample the map to the input's spatial size "
                    "(Captum's LayerAttribution.interpolate), or not", choices=INTERPOLATIONS, own_check=True)
INTERPOLATE_MODE = Param("interpolate_mode", "nearest", "choice", "how the map is upsampled to the input's "
                         "spatial size", choices=MODES, own_check=True)


# ---------------------------------------------------------------------- the default layer
def default_layer(model: onnx.ModelProto, output: str, inputs) -> str:
    """The layer Grad-CAM explains when none is given: the last feature map on the way to ``output``.

    A feature map is a floating-point tensor of rank 4, ``(N, C, H, W)`` with the inputs' batch dimension
    first, whose spatial size is not known to be 1 x 1 (a global pooling's ``(N, C, 1, 1)`` output is not one), that depends on the
    attributed ``inputs`` and that ``output`` depends on (the output itself excluded).  The last such
    tensor in the graph's order is the one before the global pooling or flattening of a CNN: a
    ResNet's last block output.  (In a vision transformer it would be an attention tensor: name the
    layer there.)  Raises ValueError when the model has none.
    """
    nodes = list(model.graph.node)
    reached = set(inputs)
    for node in nodes:
        if node_reads(node) & reached:
            reached.update(o for o in node.output if o)
    needed = {output}
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            needed.update(node_reads(node))
    types = _value_types(model)
    batch = {types[x][1][0] for x in inputs if x in types and types[x][1]}   # the inputs' batch dimension
    maps = [o for node in nodes for o in node.output
            if o in reached and o in needed and o != output and _is_feature_map(types.get(o), batch)]
    if not maps:
        raise ValueError(f"Grad-CAM needs a layer: found no feature map (a 4-D (N, C, H, W) activation, batch "
                         f"first, with a spatial size other than 1x1) between the inputs {list(inputs)} and output "
                         f"{output!r}; name one with layer='tensor name' (onnxplain.inspect(model)['layers'] lists "
                         f"the model's tensors)")
    return maps[-1]


def _value_types(model: onnx.ModelProto) -> dict:
    """Tensor name -> (element type, dims) for every tensor with a known shape."""
    out = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.HasField("shape"):
            out[vi.name] = (tt.elem_type, tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                                for d in tt.shape.dim))
    return out


def _is_feature_map(typed, batch: set) -> bool:
    """Rank 4, float, not 1 x 1, and batch first: its axis 0 is the inputs' batch dimension (a recurrent
    net's ``(seq, directions, N, hidden)`` output is no feature map)."""
    if typed is None:
        return False
    elem, dims = typed
    return elem in FLOAT_TYPES and len(dims) == 4 and dims[2:] != (1, 1) and dims[0] in batch


# ---------------------------------------------------------------------- graph pieces
def channel_weighted(b: GraphBuilder, grad: str, act: str, summation: str) -> str:
    """``mean_spatial(grad) * act``, summed over the channels (axis 1, kept) where ``summation`` holds.

    A layer of rank 2 ``(N, F)`` has no spatial axes: its gradient is the weight itself (Captum's).
    The channel sum is a ReduceSum over axes fed at run time (``[1]`` or none), so the shape of the
    result follows the ``summation`` feed.
    """
    rank = b.rank(act)
    weights = b.reduce("ReduceMean", grad, list(range(2, rank)), keepdims=1) if rank > 2 else grad
    weighted = b.mul(weights, act)
    axes = b.op("Compress", b.ints([1]), b.reshape(summation, b.ints([1])))
    return b.op("ReduceSum", weighted, axes, keepdims=1, noop_with_empty_axes=1)


def rectified(b: GraphBuilder, cam: str, relu: str) -> str:
    """``relu(cam)`` where the bool feed ``relu`` holds, ``cam`` elsewhere."""
    return b.where(relu, b.op("Relu", cam), cam)


def upsampled(b: GraphBuilder, cam: str, like: str, to_input: str | None, bilinear: str) -> str:
    """``cam`` resized to the spatial size of ``like`` (when the bool feed ``to_input`` holds, or always when it is
    None), nearest or (bi)linear as the bool feed ``bilinear`` says, as PyTorch's ``F.interpolate`` (Captum's
    ``LayerAttribution.interpolate``) computes them: nearest takes source ``floor(dst * in / out)``
    (ONNX's asymmetric, floor), linear the half-pixel centres of ``align_corners=False``."""
    own = b.shape_of(cam)
    size = b.op("Concat", b.op("Slice", own, b.ints([0]), b.ints([2])),
                b.op("Slice", b.shape_of(like), b.ints([2]), b.ints([np.iinfo(np.int64).max])), axis=0)
    if to_input is not None:
        size = b.where(to_input, size, own)
    near = b.op("Resize", cam, "", "", size, mode="nearest", coordinate_transformation_mode="asymmetric",
                nearest_mode="floor")
    linear = b.op("Resize", cam, "", "", size, mode="linear", coordinate_transformation_mode="pytorch_half_pixel")
    return b.where(bilinear, linear, near)


def declare_flag(b: GraphBuilder, name: str, default: bool) -> str:
    """A boolean parameter feed (scalar) with its default stored in the graph."""
    return declare_param(b, name, TensorProto.BOOL, 0, np.asarray(bool(default)))


def emit_map(b: GraphBuilder, spec: Spec, key: str, value: str, like: str) -> None:
    """Name ``value`` as the attribution output of ``key``: rows first, the other axes as the call makes them."""
    name = spec.attribution_name(key)
    b.op("Identity", value, outputs=[name])
    rows = (b.shape(like) or (None,))[0]
    b.add_output(name, b.elem_type(like), [rows] + [None] * (b.rank(like) - 1))


def guide_layer(spec: Spec, method: str) -> str:
    """The layer whose activation the map is made of (a clear error when the spec has none)."""
    if spec.layer is None:
        raise ValueError(f"method {method!r} needs a layer (layer='tensor name', or the default one found "
                         f"when layer is not given)")
    return spec.layer


def can_interpolate(b: GraphBuilder, layer: str, x: str) -> bool:
    """Whether the map of ``layer`` can be resized to the spatial size of input ``x``: both of one rank, 3 to 5."""
    return b.rank(layer) is not None and b.rank(layer) == b.rank(x) and 3 <= b.rank(x) <= 5


def _check_flag(p: dict, name: str) -> None:
    if not isinstance(p[name], (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {p[name]!r}")


def _check_choice(p: dict, name: str, choices: tuple) -> None:
    if not isinstance(p[name], str) or p[name] not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {p[name]!r}")


class _CamRun(Method):
    """One block of rows: the forward pass, its outputs, the target weights; the layer's map built by subclasses."""

    default_layer = staticmethod(default_layer)
    #: a noise tunnel's spec would carry no layer (make_spec finds the default layer of this method only)
    noise_tunnel_refusal = "the layer it explains is chosen for it, and a noise tunnel's graph carries no layer"

    def reference_rows(self, b, total, block):
        return b.ints([0])   # every row holds inputs

    def open(self, b, spec: Spec) -> tuple[dict, dict, str]:
        inside, outputs = open_forward(b, spec)
        for name, internal in inside.items():
            b.op("Identity", name, outputs=[internal])
        tw = declare_target_weights(b, spec)
        emit_outputs(b, spec, outputs, None, None)
        return inside, outputs, tw


class GradCam(_CamRun):
    """Grad-CAM at a layer (Captum's ``LayerGradCam``, same defaults: ``relu_attributions=False``,
    ``attr_dim_summation=True``): ``(N, 1, *spatial)`` maps, or ``(N, C, *spatial)`` without the channel sum.

    ``interpolate`` upsamples the map to the spatial size of the (first) attributed input, as Captum's
    ``LayerAttribution.interpolate(attr, x.shape[2:], mode)`` does after the call: for a layer of the
    input's rank (3 to 5), with the ReLU (when asked) applied before, as Captum orders them.
    """

    name = "grad_cam"
    aliases = ("gradcam", "layer_grad_cam")
    captum = "`LayerGradCam` (`interpolate`: `LayerAttribution.interpolate`)"
    deepexplain = "–"
    table_note = "attributes the layer (`layer=`; default: the last 4-D feature map)"
    parameters = (RELU_ATTRIBUTIONS, ATTR_DIM_SUMMATION, INTERPOLATE)

    def build(self, b, spec: Spec) -> None:
        layer = guide_layer(spec, self.name)
        _, outputs, tw = self.open(b, spec)
        relu = declare_flag(b, "relu_attributions", self.defaults["relu_attributions"])
        summation = declare_flag(b, "attr_dim_summation", self.defaults["attr_dim_summation"])
        grad = backward(b, outputs[spec.output], tw, [layer])[layer]
        cam = rectified(b, channel_weighted(b, grad, layer, summation), relu)
        x = spec.carriers[0]
        if can_interpolate(b, layer, x):
            mode = self.defaults["interpolate"]
            to_input = declare_flag(b, "interpolate_to_input", mode != "none")
            bilinear = declare_flag(b, "interpolate_bilinear", mode == "bilinear")
            cam = upsampled(b, cam, x, to_input, bilinear)
        elif self.defaults["interpolate"] != "none":
            raise ValueError(_no_interpolation(self.name, layer, x, b.rank(layer), b.rank(x)))
        emit_map(b, spec, spec.points[0].key, cam, layer)

    def check_params(self, params):
        p = super().check_params(params)
        _check_flag(p, "relu_attributions")
        _check_flag(p, "attr_dim_summation")
        _check_choice(p, "interpolate", INTERPOLATIONS)
        return p

    def parts(self, params, spec, inputs, bytes_per_row, budget):
        feeds = {"relu_attributions": np.asarray(bool(params["relu_attributions"])),
                 "attr_dim_summation": np.asarray(bool(params["attr_dim_summation"]))}
        mode = params["interpolate"]
        layer, x = spec.layer, spec.carriers[0]
        if _rank(spec.model, layer) == _rank(spec.model, x) and 3 <= (_rank(spec.model, x) or 0) <= 5:
            feeds["interpolate_to_input"] = np.asarray(mode != "none")
            feeds["interpolate_bilinear"] = np.asarray(mode == "bilinear")
        elif mode != "none":
            raise ValueError(_no_interpolation(self.name, layer, x, _rank(spec.model, layer), _rank(spec.model, x)))
        return [feeds]


class GuidedGradCam(_CamRun):
    """Guided Grad-CAM (Captum's ``GuidedGradCam``): guided-backpropagation attributions of each input times
    the rectified Grad-CAM map of the layer (``relu_attributions=True``, channels summed), upsampled to the
    input's spatial size (``interpolate_mode``, Captum's default ``"nearest"``; ``"bilinear"`` too).

    Captum returns an empty tensor, with a warning, for an input the map cannot be upsampled to; here such
    an input is an error when the graph is built (attribute the image input only, with ``inputs=``).
    """

    name = "guided_grad_cam"
    aliases = ("guided_gradcam",)
    captum = "`GuidedGradCam`"
    deepexplain = "–"
    table_note = "`layer=` names the Grad-CAM layer (default: the last 4-D feature map); attributes the inputs"
    overrides = GUIDED
    supports_layers = False
    #: ``layer=`` names the layer that weighs the inputs' attributions; the inputs are attributed
    layer_guides = True
    parameters = (INTERPOLATE_MODE,)

    def build(self, b, spec: Spec) -> None:
        layer = guide_layer(spec, self.name)
        inside, outputs, tw = self.open(b, spec)
        bad = [(p.key, b.rank(p.tensor)) for p in spec.points if not can_interpolate(b, layer, p.tensor)]
        if bad:
            key, rank = bad[0]
            raise ValueError(_no_interpolation(self.name, layer, key, b.rank(layer), rank))
        bilinear = declare_flag(b, "interpolate_bilinear", self.defaults["interpolate_mode"] == "bilinear")
        y = outputs[spec.output]
        grad = backward(b, y, tw, [layer])[layer]     # the plain backward pass to the layer
        guided = backward(b, y, tw, [inside[p.carrier] for p in spec.points], overrides=GUIDED)
        cam = b.op("Relu", channel_weighted(b, grad, layer, b.const(np.asarray(True), dtype=np.bool_)))
        for p in spec.points:
            x = inside[p.carrier]
            attr = b.mul(guided[x], upsampled(b, cam, x, None, bilinear))
            name = spec.attribution_name(p.key)
            b.op("Identity", attr, outputs=[name])
            b.add_output(name, b.elem_type(p.tensor), b.shape(p.tensor))

    def check_params(self, params):
        p = super().check_params(params)
        _check_choice(p, "interpolate_mode", MODES)
        return p

    def parts(self, params, spec, inputs, bytes_per_row, budget):
        return [{"interpolate_bilinear": np.asarray(params["interpolate_mode"] == "bilinear")}]


def _rank(model: onnx.ModelProto, name: str) -> int | None:
    typed = _value_types(model).get(name)
    return None if typed is None else len(typed[1])


def _no_interpolation(method: str, layer: str, x: str, layer_rank, x_rank) -> str:
    return (f"method {method!r} cannot upsample the map of layer {layer!r} (rank {layer_rank}) to the spatial "
            f"size of input {x!r} (rank {x_rank}): both must be (N, C, *spatial) of one rank, 3 to 5")
