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
