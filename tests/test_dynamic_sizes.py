"""Models exported with dynamic image sizes: one Explainer, several sizes.

A detector neck (tests/vision_models.py: strided conv backbone, top-down FPN with a bilinear
upsampling to a skip's size and a nearest x2 upsampling, a bilinear map back to the image size) is
exported by both PyTorch exporters with ``from_torch(..., dynamic="auto")``, so every Resize has
sizes known only at run time.  One Explainer per exporter explains images of 37x45 and 64x48:
saliency equals Captum's ``Saliency`` (PyTorch autograd) and integrated gradients Captum's
``IntegratedGradients`` with its defaults, delta included, at both sizes.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, Saliency

import onnxplain
from checks import assert_close
import vision_models as vm

pytestmark = pytest.mark.filterwarnings("ignore")

TARGET = 2
RTOL = 1e-4
SIZES = [(2, 37, 45), (1, 64, 48)]   # rows, height, width


@pytest.fixture(scope="module")
def neck():
    module, row_shape = vm.detector_neck()
    return module, row_shape


@pytest.fixture(scope="module", params=["torchscript", "dynamo"])
def exported(request, neck):
    module, row_shape = neck
    example = torch.randn((2,) + row_shape, generator=torch.Generator().manual_seed(0))
    onx = onnxplain.from_torch(module, example, input_names=["x"], dynamo=request.param == "dynamo",
                               dynamic="auto")
    return request.param, onx


def _image(rows, h, w, seed):
    return torch.randn(rows, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_resize_sizes_are_run_time(exported):
    """The exported graph really has dynamic spatial sizes and sizes computed at run time."""
    _, onx = exported
    dims = onx.graph.input[0].type.tensor_type.shape.dim
    assert all(not d.HasField("dim_value") for d in (dims[0], dims[2], dims[3]))
    resizes = [n for n in onx.graph.node if n.op_type == "Resize"]
    assert len(resizes) == 3


def test_saliency_two_sizes_one_explainer(neck, exported):
    module, _ = neck
    _, onx = exported
    ex = onnxplain.Explainer(onx, "saliency")
    assert onnxplain.inspect(onx)["methods"]["saliency"]["available"]
    for seed, (rows, h, w) in enumerate(SIZES):
        x = _image(rows, h, w, seed)
        ours = ex.explain(x.numpy(), target=TARGET)
        ref = Saliency(module).attribute(x.clone().requires_grad_(), target=TARGET)
        assert_close(ours, ref, RTOL, what=f"saliency at {h}x{w}")


def test_integrated_gradients_two_sizes_one_explainer(neck, exported):
    module, _ = neck
    _, onx = exported
    ex = onnxplain.Explainer(onx, "integrated_gradients")
    for seed, (rows, h, w) in enumerate(SIZES):
        x = _image(rows, h, w, 10 + seed)
        ours, delta = ex.explain(x.numpy(), target=TARGET, return_convergence_delta=True)
        ref, ref_delta = IntegratedGradients(module).attribute(x, target=TARGET, return_convergence_delta=True)
        assert_close(ours, ref, RTOL, what=f"integrated gradients at {h}x{w}")
        assert_close(delta, ref_delta, RTOL, scale=np.abs(ours).sum(axis=(1, 2, 3)).max(), what="delta")


def test_inspect_agrees_when_a_rule_refuses_its_node():
    """A node whose op has a rule that cannot build it (a 1-D DeformConv): inspect says so, with the
    Explainer's own message."""
    from onnx import TensorProto, helper
    from onnxplain.converters.normalize import normalize
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 7]),
              helper.make_tensor_value_info("offset", TensorProto.FLOAT, ["N", 2, 6])]
    nodes = [helper.make_node("DeformConv", ["x", "w", "offset"], ["c"]),
             helper.make_node("ReduceMean", ["c", "length"], ["y"], keepdims=0)]
    weight = helper.make_tensor("w", TensorProto.FLOAT, [3, 2, 2], np.linspace(-1, 1, 12).tolist())
    length = helper.make_tensor("length", TensorProto.INT64, [1], [2])
    graph = helper.make_graph(nodes, "deform1d", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [weight, length])
    onx = normalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]))
    with pytest.raises(onnxplain.UnsupportedOperatorError, match="only 2-D DeformConv") as e:
        onnxplain.Explainer(onx, "saliency")
    verdict = onnxplain.inspect(onx)["methods"]["saliency"]
    assert not verdict["available"] and verdict["reason"] == str(e.value)
    assert onnxplain.inspect(onx)["methods"]["occlusion"]["available"]


# ------------------------------------------------------------------ from_torch: which axes stay dynamic
class TinyConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


class BagOfWords(torch.nn.Module):
    """Token ids and a boolean mask (N, T) -> embedding -> masked mean over the sequence -> 2 classes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.fc = torch.nn.Embedding(20, 4), torch.nn.Linear(4, 2)

    def forward(self, ids, mask):
        keep = mask.float()
        e = self.embed(ids) * keep.unsqueeze(-1)
        return self.fc(e.sum(1) / keep.sum(1, keepdim=True))


def _dims(onx, i=0):
    return [d.dim_param or d.dim_value for d in onx.graph.input[i].type.tensor_type.shape.dim]


def test_dynamic_axes_and_shapes_are_passed_through():
    module, x = TinyConv().eval(), torch.randn(2, 3, 9, 11)
    ts = onnxplain.from_torch(module, x, input_names=["x"], dynamic_axes={"x": {0: "n", 2: "h"}, "output": {0: "n"}})
    assert _dims(ts) == ["n", 3, "h", 11]
    dims = _dims(onnxplain.from_torch(module, x, input_names=["x"], dynamo=True,
                                      dynamic_shapes=({3: torch.export.Dim("w", min=4)},)))
    assert dims[1:3] == [3, 9] and isinstance(dims[3], str)
    ex = onnxplain.Explainer(ts, "saliency")
    for h in (9, 14):   # only H is dynamic
        z = torch.randn(1, 3, h, 11)
        ref = Saliency(module).attribute(z.clone().requires_grad_(), target=1)
        assert_close(ex.explain(z.numpy(), target=1), ref, RTOL)


def test_dynamic_dict_picks_axes_and_checks_them():
    module, x = TinyConv().eval(), torch.randn(2, 3, 9, 11)
    onx = onnxplain.from_torch(module, x, input_names=["x"], dynamic={"x": [2, -1]})
    assert _dims(onx) == ["batch", 3, "x_2", "x_3"]
    with pytest.raises(ValueError, match="not inputs"):
        onnxplain.from_torch(module, x, input_names=["x"], dynamic={"y": [2]})
    with pytest.raises(ValueError, match="rank-4"):
        onnxplain.from_torch(module, x, input_names=["x"], dynamic={"x": [4]})
    with pytest.raises(ValueError, match="'auto'"):
        onnxplain.from_torch(module, x, input_names=["x"], dynamic="all")


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_dynamic_auto_lets_a_longer_sentence_run(dynamo):
    """Exported on 5 tokens, explained on 5 and on 9: IG at the embedding against Captum's
    LayerIntegratedGradients (defaults) on the torch module."""
    from captum.attr import LayerIntegratedGradients
    module = BagOfWords().eval()
    ids, mask = torch.randint(1, 20, (2, 5)), torch.ones(2, 5, dtype=torch.bool)
    onx = onnxplain.from_torch(module, {"ids": ids, "mask": mask}, dynamo=dynamo, dynamic="auto")
    assert isinstance(_dims(onx)[1], str)
    ex = onnxplain.Explainer(onx, "integrated_gradients")
    for t in (5, 9):
        ids = torch.randint(1, 20, (2, t), generator=torch.Generator().manual_seed(t))
        mask = torch.ones(2, t, dtype=torch.bool)
        mask[0, -2:] = False
        ours = ex.explain({"ids": ids.numpy(), "mask": mask.numpy()}, target=1)
        ref = LayerIntegratedGradients(module, module.embed).attribute(ids, additional_forward_args=(mask,),
                                                                       target=1)
        assert_close(ours, ref, RTOL, what=f"{t} tokens")
