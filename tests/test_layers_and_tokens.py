"""Attributions at intermediate tensors and at token embeddings, and several inputs,
against Captum's Layer* methods."""
import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from captum.attr import (LayerDeepLift, LayerGradientXActivation, LayerIntegratedGradients)
from torch import nn

import onnxplain

warnings.filterwarnings("ignore")


class TokenNet(nn.Module):
    """ids -> embedding -> conv1d -> relu -> masked mean -> linear; an int mask passed through."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(11)
        self.emb = nn.Embedding(20, 8)
        self.conv = nn.Conv1d(8, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)

    def forward(self, ids, mask):
        h = torch.relu(self.conv(self.emb(ids).transpose(1, 2)))
        m = mask.to(h.dtype).unsqueeze(1)
        return self.head((h * m).sum(-1) / m.sum(-1))


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(12)
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2)
        self.head = nn.Linear(4 * 3 * 3, 3)
        self.relu, self.tanh = nn.ReLU(), nn.Tanh()   # modules, so Captum's DeepLift rules apply to them

    def forward(self, x):
        return self.head(self.tanh(self.conv2(self.relu(self.conv1(x)))).flatten(1))


def export(net, args, names, dynamic):
    buf = io.BytesIO()
    torch.onnx.export(net, args, buf, dynamo=False, opset_version=17, input_names=names, output_names=["y"],
                      dynamic_axes={**{n: {0: "batch"} for n in names}, "y": {0: "batch"}} if dynamic else None)
    return buf.getvalue()


def output_of(model_bytes, op_type, index=0):
    """Name of the output of the ``index``-th node of ``op_type`` (how a user finds a layer: inspect)."""
    nodes = [n for n in onnx.load_from_string(model_bytes).graph.node if n.op_type == op_type]
    return nodes[index].output[0]


IDS = torch.tensor([[1, 5, 7, 2, 9, 3, 0], [4, 4, 8, 1, 0, 0, 0], [2, 3, 11, 19, 7, 6, 5]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]])


@pytest.fixture(scope="module")
def token_model():
    net = TokenNet().eval()
    return net, export(net, (IDS, MASK), ["ids", "mask"], dynamic=True)


def close(ours, ref, rtol=1e-4):
    ref = ref.detach().numpy()
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * max(1e-6, float(np.abs(ref).max())))


def test_token_inputs_are_attributed_at_their_embedding_like_layer_integrated_gradients(token_model):
    net, model = token_model
    ex = onnxplain.Explainer(model, "integrated_gradients")
    assert ex.inputs == ["ids"]
    ours, delta = ex.explain({"ids": IDS.numpy(), "mask": MASK.numpy()}, target=1, baselines=0,
                             return_convergence_delta=True)
    ref, ref_delta = LayerIntegratedGradients(net, net.emb).attribute(
        IDS, baselines=torch.zeros_like(IDS), additional_forward_args=(MASK,), target=1,
        return_convergence_delta=True)
    assert ours.shape == (3, 7, 8)
    close(ours, ref)
    np.testing.assert_allclose(delta, ref_delta.detach().numpy(), atol=1e-4 * np.abs(ours).sum((1, 2)).max())
    tokens = ours.sum(-1)   # token-level scores
    assert tokens.shape == IDS.shape


def test_layer_integrated_gradients_at_a_conv_output_with_token_baselines(token_model):
    net, model = token_model
    layer = output_of(model, "Conv")
    ex = onnxplain.Explainer(model, "integrated_gradients", inputs=["ids"], layer=layer)
    pad = np.full((1, 7), 3, np.int64)
    ours = ex.explain({"ids": IDS.numpy(), "mask": MASK.numpy()}, target=[0, 2, 1], baselines={"ids": pad},
                      n_steps=20)
    ref = LayerIntegratedGradients(net, net.conv).attribute(
        IDS, baselines=torch.tensor(pad).expand(3, 7), additional_forward_args=(MASK,), target=[0, 2, 1], n_steps=20)
    close(ours, ref)


@pytest.fixture(scope="module")
def conv_model():
    net = ConvNet().eval()
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    return net, export(net, (x,), ["x"], dynamic=True), x


def test_layer_methods_at_a_conv_output_match_captum(conv_model):
    net, model, x = conv_model
    layer = output_of(model, "Conv", 1)
    base = 0.2 * torch.ones(1, 2, 8, 8)
    ig = onnxplain.Explainer(model, "integrated_gradients", layer=layer).explain(x.numpy(), target=2,
                                                                                 baselines=base.numpy())
    close(ig, LayerIntegratedGradients(net, net.conv2).attribute(x, baselines=base, target=2))
    dl = onnxplain.Explainer(model, "deeplift", layer=layer).explain(x.numpy(), target=2, baselines=base.numpy())
    close(dl, LayerDeepLift(net, net.conv2).attribute(x, baselines=base, target=2))
    gxa = onnxplain.Explainer(model, "input_x_gradient", layer=layer).explain(x.numpy(), target=2)
    close(gxa, LayerGradientXActivation(net, net.conv2).attribute(x, target=2))


def test_layer_and_token_errors(token_model, conv_model):
    _, model = token_model
    with pytest.raises(ValueError, match="not a tensor computed by the model"):
        onnxplain.Explainer(model, "integrated_gradients", layer="nope")
    with pytest.raises(ValueError, match=r"cannot attribute \['mask'\]"):
        onnxplain.Explainer(model, "saliency", inputs=["mask"])
    ex = onnxplain.Explainer(model, "integrated_gradients")
    with pytest.raises(ValueError, match="must be integer ids"):
        ex.explain({"ids": IDS.numpy(), "mask": MASK.numpy()}, target=0, baselines=0.5)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(13)
        self.a, self.b = nn.Linear(4, 5), nn.Linear(3, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, u, v):
        return self.head(torch.sigmoid(self.a(u)) * torch.tanh(self.b(v)))


def test_several_float_inputs_give_a_dict_and_take_baselines_by_name():
    from captum.attr import IntegratedGradients
    net = TwoInputs().eval()
    u, v = torch.randn(3, 4), torch.randn(3, 3)
    model = export(net, (u, v), ["u", "v"], dynamic=True)
    ours = onnxplain.Explainer(model, "integrated_gradients").explain(
        {"u": u.numpy(), "v": v.numpy()}, target=1, baselines={"v": 0.5})
    ref = IntegratedGradients(net).attribute((u, v), baselines=(0.0, 0.5), target=1)
    assert set(ours) == {"u", "v"}
    close(ours["u"], ref[0])
    close(ours["v"], ref[1])


def test_inspect_reports_what_each_method_can_do_on_a_token_model(token_model):
    _, model = token_model
    facts = onnxplain.inspect(model)
    assert [i["name"] for i in facts["inputs"]] == ["ids", "mask"]
    assert facts["output"] == "y" and facts["attributed"] == ["ids"]
    assert facts["ops"]["Gather"] >= 1 and facts["ops"]["Conv"] == 1
    assert facts["methods"]["integrated_gradients"]["available"]
    assert facts["methods"]["smoothgrad"]["available"]   # its noise goes to the embedding
    assert output_of(model, "Conv") in facts["layers"]


def test_memory_estimate_follows_the_sequence_length_of_each_call():
    """Symbolic dims take their size from the call's inputs, so a short sequence runs in one go."""
    net = TokenNet().eval()
    buf = io.BytesIO()
    torch.onnx.export(net, (IDS, MASK), buf, dynamo=False, opset_version=17, input_names=["ids", "mask"],
                      output_names=["y"], dynamic_axes={"ids": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"},
                                                        "y": {0: "batch"}})
    ex = onnxplain.Explainer(buf.getvalue(), "integrated_gradients")
    short = ex.row_cost({"ids": IDS.numpy(), "mask": MASK.numpy()})
    longer = ex.row_cost({"ids": np.tile(IDS.numpy(), 3), "mask": np.tile(MASK.numpy(), 3)})
    assert 2.5 * short < longer < 3.5 * short   # every activation of this net is linear in the sequence length
    runs = []
    real = ex.session.run
    ex.session.run = lambda *a, **k: runs.append(1) or real(*a, **k)
    ex.explain({"ids": IDS.numpy(), "mask": MASK.numpy()}, target=0)
    assert len(runs) == 1, "all 50 steps of all rows fit one run"


def test_integrated_gradients_on_a_float64_token_model():
    """The step feeds take the model's float type (here double), not the int type of the token input."""
    from onnx import TensorProto, helper, numpy_helper
    table = np.random.default_rng(0).standard_normal((10, 4))
    g = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["e"]),
                           helper.make_node("ReduceSum", ["e", "axes"], ["y"], keepdims=0)], "tok64",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["n", 4])],
                          [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([1]), "axes")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    a = onnxplain.Explainer(m, "integrated_gradients").explain(ids, target=2, baselines=0)
    expected = np.zeros((2, 3, 4))
    expected[..., 2] = table[ids, 2] - table[0, 2]   # a linear model: IG is exactly the difference
    np.testing.assert_allclose(a, expected, rtol=1e-12, atol=1e-12)


def test_an_output_with_a_symbolic_dim_is_measured_once_per_row_shape():
    """Per-token outputs (n, seq): target (t,) needs the output's row shape, read off the model once per shape."""
    from onnx import TensorProto, helper, numpy_helper
    table = np.random.default_rng(1).standard_normal((10, 4)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["e"]),
                           helper.make_node("ReduceSum", ["e", "axes"], ["y"], keepdims=0)], "per_token",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", "seq"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "seq"])],
                          [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([2]), "axes")])
    ex = onnxplain.Explainer(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), "gradient")
    runs = []
    real = ex.forward_session().run
    ex._forward.run = lambda *a, **k: runs.append(1) or real(*a, **k)
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    for _ in range(2):
        a = ex.explain(ids, target=(1,))
        expected = np.zeros((2, 3, 4), np.float32)
        expected[:, 1, :] = 1   # d y[:, 1] / d embedding of token 1: ones over the hidden axis
        np.testing.assert_array_equal(a, expected)
    assert len(runs) == 1
    with pytest.raises(ValueError, match="out of range"):
        ex.explain(ids[:, :1], target=(1,))
    assert len(runs) == 2
