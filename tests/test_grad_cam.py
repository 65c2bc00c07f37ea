"""Grad-CAM and Guided Grad-CAM against Captum 0.9 (``LayerGradCam``, ``GuidedGradCam``).

The CNN takes 13x11 images (odd sizes: the map is 7x6, so nearest upsampling repeats rows and
columns unevenly and bilinear interpolation has no symmetric weights), uses ``nn.ReLU`` modules
(Captum's guided backpropagation hooks modules) and is exported with a dynamic batch by both of
PyTorch's exporters.  Captum explains the same float32 module at the same torch layer; the ONNX
layer is the tensor that module produces.  A ResNet-shaped net checks the default layer: the last
block's output, the tensor its global pooling reads.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from captum.attr import GuidedGradCam, LayerAttribution, LayerGradCam
from onnx.reference import ReferenceEvaluator
from torch import nn

import models as zoo
import onnxplain
import vision_models as vm
from checks import assert_close
from onnxplain.cli import main

ROW = (3, 13, 11)
RTOL = 1e-4
LAYER2 = "/relu2/Relu_output_0"     # the TorchScript exporter's name of CNN.relu2's output
LAYER1 = "/relu1/Relu_output_0"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()
        self.pool = nn.MaxPool2d(2, ceil_mode=True)               # 13x11 -> 7x6
        self.conv2, self.relu2 = nn.Conv2d(6, 8, 3, padding=1), nn.ReLU()
        self.gap, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 4)

    def forward(self, x):
        x = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))
        return self.fc(torch.flatten(self.gap(x), 1))


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(11)
    model = CNN().eval()
    with torch.no_grad():   # fan-in scaled weights: attributions of order 1, not 1e-6
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(3.0)
    return model, zoo.export(model, ROW)


@pytest.fixture(scope="module")
def x():
    return torch.randn((3,) + ROW, generator=torch.Generator().manual_seed(5))


def _np(t):
    return t.detach().numpy()


# ---------------------------------------------------------------------- grad_cam vs LayerGradCam
def test_default_layer_and_defaults_match_layer_grad_cam(cnn, x):
    model, onx = cnn
    ex = onnxplain.Explainer(onx, "grad_cam")
    assert ex.spec.layer == LAYER2 and ex.inputs == [LAYER2]
    for target in (1, [0, 3, 2]):
        ours = ex.explain(x.numpy(), target=target)
        ref = LayerGradCam(model, model.relu2).attribute(x, target=target)   # relu_attributions=False
        assert ours.shape == (3, 1, 7, 6)
        assert (ours < 0).any()   # Captum's default keeps the negative part
        assert_close(ours, ref, RTOL)
    one = ex.explain(x[:1].numpy(), target=2)   # dynamic batch: another row count, same graph
    assert_close(one, LayerGradCam(model, model.relu2).attribute(x[:1], target=2), RTOL)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("interpolate", ["nearest", "bilinear"])
def test_relu_and_interpolation_match_captum(cnn, x, relu, interpolate):
    model, onx = cnn
    ex = onnxplain.Explainer(onx, "grad_cam")
    ours = ex.explain(x.numpy(), target=[2, 1, 0], relu_attributions=relu, interpolate=interpolate)
    cam = LayerGradCam(model, model.relu2).attribute(x, target=[2, 1, 0], relu_attributions=relu)
    ref = LayerAttribution.interpolate(cam, ROW[1:], interpolate_mode=interpolate)
    assert ours.shape == (3, 1, 13, 11)
    assert_close(ours, ref, RTOL)


def test_channels_unsummed_match_captum(cnn, x):
    model, onx = cnn
    ex = onnxplain.Explainer(onx, "grad_cam")
    ours = ex.explain(x.numpy(), target=3, attr_dim_summation=False)
    assert ours.shape == (3, 8, 7, 6)
    assert_close(ours, LayerGradCam(model, model.relu2).attribute(x, target=3, attr_dim_summation=False), RTOL)
    both = ex.explain(x.numpy(), target=3, attr_dim_summation=False, relu_attributions=True, interpolate="nearest")
    ref = LayerGradCam(model, model.relu2).attribute(x, target=3, attr_dim_summation=False, relu_attributions=True)
    assert_close(both, LayerAttribution.interpolate(ref, ROW[1:]), RTOL)


def test_a_named_layer(cnn, x):
    model, onx = cnn
    ours = onnxplain.Explainer(onx, "grad_cam", layer=LAYER1).explain(x.numpy(), target=1)
    assert ours.shape == (3, 1, 13, 11)
    assert_close(ours, LayerGradCam(model, model.relu1).attribute(x, target=1), RTOL)


# ---------------------------------------------------------------------- guided_grad_cam vs GuidedGradCam
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_guided_grad_cam_matches_captum(cnn, x, mode):
    model, onx = cnn
    ex = onnxplain.Explainer(onx, "guided_grad_cam")
    assert ex.spec.layer == LAYER2 and ex.inputs == ["x"]
    ours = ex.explain(x.numpy(), target=[1, 0, 3], interpolate_mode=mode)
    assert_close(ours, GuidedGradCam(model, model.relu2).attribute(x, target=[1, 0, 3], interpolate_mode=mode),
                 RTOL)


def test_guided_grad_cam_at_a_named_layer_is_its_own_graph(cnn, x):
    model, onx = cnn
    at_default = onnxplain.Explainer(onx, "guided_grad_cam")
    named = onnxplain.Explainer(onx, "guided_grad_cam", layer=LAYER1)
    assert named.session is not at_default.session   # the layer is part of the graph's identity
    assert_close(named.explain(x.numpy(), target=2), GuidedGradCam(model, model.relu1).attribute(x, target=2), RTOL)


# ---------------------------------------------------------------------- the default layer on ResNets, both exporters
@pytest.fixture(scope="module")
def resnet():
    model, _ = vm.resnet()
    return model, {name: export(model, ROW) for name, export in vm.EXPORTERS.items()}


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_default_layer_is_the_last_block_before_global_pooling(resnet, x, exporter):
    model, exported = resnet
    onx = exported[exporter]
    g = onnx.load_from_string(onx).graph
    pools = [n for n in g.node if n.op_type in ("GlobalAveragePool", "ReduceMean")]
    assert len(pools) == 1
    ex = onnxplain.Explainer(onx, "grad_cam")
    assert ex.spec.layer == pools[0].input[0]   # what the global pooling reads: layer2's last ReLU
    if exporter == "torchscript":
        assert ex.spec.layer == "/layer2/relu2/Relu_output_0"
    assert_close(ex.explain(x.numpy(), target=4), LayerGradCam(model, model.layer2.relu2).attribute(x, target=4),
                 RTOL)
    guided = onnxplain.Explainer(onx, "guided_grad_cam").explain(x.numpy(), target=[0, 1, 2])
    assert_close(guided, GuidedGradCam(model, model.layer2.relu2).attribute(x, target=[0, 1, 2]), RTOL)


# ---------------------------------------------------------------------- errors
def test_a_model_without_a_feature_map_is_refused_clearly():
    model, row = zoo.mlp("relu")
    onx = zoo.export(model, row)
    for method in ("grad_cam", "guided_grad_cam"):
        with pytest.raises(ValueError, match=r"4-D \(N, C, H, W\) activation.*layer="):
            onnxplain.Explainer(onx, method)
    facts = onnxplain.inspect(onx)
    assert not facts["methods"]["grad_cam"]["available"]
    assert "4-D" in facts["methods"]["grad_cam"]["reason"]


def test_bad_parameters_are_refused_before_running(cnn, x):
    _, onx = cnn
    ex = onnxplain.Explainer(onx, "grad_cam")
    with pytest.raises(ValueError, match="relu_attributions must be True or False"):
        ex.explain(x.numpy(), target=0, relu_attributions=1)
    with pytest.raises(ValueError, match="interpolate must be one of none, nearest, bilinear"):
        ex.explain(x.numpy(), target=0, interpolate="bicubic")
    with pytest.raises(ValueError, match="interpolate_mode must be one of nearest, bilinear"):
        onnxplain.Explainer(onx, "guided_grad_cam").explain(x.numpy(), target=0, interpolate_mode="area")
    with pytest.raises(ValueError, match="is not a tensor computed by the model"):
        onnxplain.Explainer(onx, "guided_grad_cam", layer="nope")
    flat = "/Flatten_output_0"    # rank 2: a map, but nothing to upsample to the image
    with pytest.raises(ValueError, match="cannot upsample the map"):
        onnxplain.Explainer(onx, "guided_grad_cam", layer=flat)
    with pytest.raises(ValueError, match="cannot upsample the map"):
        onnxplain.Explainer(onx, "grad_cam", layer=flat).explain(x.numpy(), target=0, interpolate="nearest")


# ---------------------------------------------------------------------- standalone graphs, CLI, inspect
def test_converted_graphs_run_in_the_reference_evaluator(cnn, x, tmp_path):
    model, onx = cnn
    tw = np.eye(4, dtype=np.float32)[[1, 2, 0]]
    feeds = {"x": x.numpy(), "target_weights": tw}   # every parameter at the default stored by convert
    path = tmp_path / "cam.onnx"
    onnxplain.convert(onx, str(path), "grad_cam", relu_attributions=True, interpolate="bilinear")
    cam = LayerGradCam(model, model.relu2).attribute(x, target=[1, 2, 0], relu_attributions=True)
    ref = LayerAttribution.interpolate(cam, ROW[1:], interpolate_mode="bilinear")
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["attributions"], feeds)[0]
    assert_close(got, ref, RTOL)
    assert_close(ReferenceEvaluator(str(path)).run(["attributions"], feeds)[0], ref, RTOL)
    path = tmp_path / "guided.onnx"
    onnxplain.convert(onx, str(path), "guided_grad_cam")
    ref = GuidedGradCam(model, model.relu2).attribute(x, target=[1, 2, 0])
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["attributions"], feeds)[0]
    assert_close(got, ref, RTOL)
    assert_close(ReferenceEvaluator(str(path)).run(["attributions"], feeds)[0], ref, RTOL)


def test_cli_and_inspect(cnn, x, tmp_path, capsys):
    model, onx = cnn
    (tmp_path / "m.onnx").write_bytes(onx)
    np.save(tmp_path / "x.npy", x.numpy())
    out = tmp_path / "a.npy"
    assert main(["explain", str(tmp_path / "m.onnx"), str(tmp_path / "x.npy"), "--method", "grad_cam",
                 "--layer", LAYER1, "--target", "2", "--relu-attributions", "true", "--interpolate", "nearest",
                 "--out", str(out)]) == 0
    ref = LayerGradCam(model, model.relu1).attribute(x, target=2, relu_attributions=True)
    assert_close(np.load(out), LayerAttribution.interpolate(ref, ROW[1:]), RTOL)
    assert main(["inspect", str(tmp_path / "m.onnx")]) == 0
    text = capsys.readouterr().out
    assert "grad_cam" in text and "guided_grad_cam" in text
    methods = onnxplain.inspect(onx)["methods"]
    assert methods["grad_cam"]["available"] and methods["guided_grad_cam"]["available"]


def test_no_noise_tunnel_over_grad_cam(cnn):
    _, onx = cnn
    for method in ("grad_cam", "guided_grad_cam"):
        with pytest.raises(ValueError, match=method):
            onnxplain.Explainer(onx, method, noise_tunnel="smoothgrad")
