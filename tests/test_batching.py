"""Inputs without a batch axis first, unbatched inputs, models that run one row at a time, and the
models whose outputs are not batch first (refused when the Explainer is built)."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from captum.attr import DeepLift, FeatureAblation, IntegratedGradients, Occlusion
from onnx.reference import ReferenceEvaluator
from torch import nn

import onnxplain
from checks import assert_close
from models import export, pool_cnn
from onnxplain.cli import main
from onnxplain.converters.normalize import batch_axes_of
from onnxplain.errors import ModelError

LAYERS, STEPS, FEATURES, HIDDEN, CLASSES = 2, 3, 5, 6, 4


class Recurrent(nn.Module):
    """An unrolled two-layer tanh recurrence: ``x`` (N, T, F), ``state`` (layers, N, hidden), a scalar ``sr``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(FEATURES, HIDDEN)
        self.rec = nn.ModuleList(nn.Linear(HIDDEN, HIDDEN) for _ in range(LAYERS))
        self.out = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x, state, sr):
        h = [state[layer] for layer in range(LAYERS)]
        top = h[-1]
        for t in range(STEPS):
            top = torch.tanh(self.inp(x[:, t]) * sr)
            for layer in range(LAYERS):
                h[layer] = torch.tanh(self.rec[layer](h[layer]) + top)
                top = h[layer]
        return self.out(top)


class BatchFirst(nn.Module):
    """The recurrent model with its state given batch first (the layout Captum expands along)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, state, sr):
        return self.model(x, state.transpose(0, 1), sr)


def recurrent_inputs(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, STEPS, FEATURES, generator=g), torch.randn(LAYERS, n, HIDDEN, generator=g),
            torch.tensor(0.7))


@pytest.fixture(scope="module")
def torch_recurrent():
    return Recurrent().eval()


@pytest.fixture(scope="module", params=[False, True], ids=["torchscript", "dynamo"])
def recurrent(request, torch_recurrent):
    """The model exported with its batch on axis 0 of ``x`` and axis 1 of ``state``."""
    if request.param:
        batch = torch.export.Dim("batch")
        dynamic = {"dynamic_shapes": ({0: batch}, {1: batch}, None)}
    else:
        dynamic = {"dynamic_axes": {"x": {0: "batch"}, "state": {1: "batch"}, "logits": {0: "batch"}}}
    return onnxplain.from_torch(torch_recurrent, recurrent_inputs(), input_names=["x", "state", "sr"],
                                output_names=["logits"], dynamo=request.param, **dynamic)


def feeds_of(x, state, sr):
    return {"x": x.numpy(), "state": state.numpy(), "sr": sr.numpy()}


def test_batch_axes_are_detected_and_only_the_batch_axis_is_dynamic(recurrent):
    assert batch_axes_of(recurrent) == {"x": 0, "state": 1, "sr": None}
    dims = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
            for vi in recurrent.graph.input}
    assert dims["sr"] == [] and dims["state"][0] == LAYERS and isinstance(dims["state"][1], str)
    assert onnxplain.inspect(recurrent)["batch_axes"] == {"x": 0, "state": 1, "sr": None}


def test_detection_follows_the_batch_symbol_whatever_its_name():
    from onnx import TensorProto, helper
    from onnxplain.converters.normalize import normalize
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["aw"]), helper.make_node("ReduceSum", ["s", "axes"], ["s1"],
                                                                         keepdims=0),
         helper.make_node("Mul", ["aw", "r"], ["awr"]), helper.make_node("Transpose", ["s1"], ["s1t"], perm=[1, 0]),
         helper.make_node("Add", ["awr", "s1t"], ["y"])], "g",
        [vi("a", TensorProto.FLOAT, ["N", 3]), vi("s", TensorProto.FLOAT, [2, 3, "N"]),
         vi("w", TensorProto.FLOAT, [3, 3]), vi("r", TensorProto.FLOAT, [])],
        [vi("y", TensorProto.FLOAT, ["N", 3])],
        [onnx.numpy_helper.from_array(np.array([0], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert batch_axes_of(model) == {"a": 0, "s": 2, "w": None, "r": None}
    assert batch_axes_of(model, {"w": 0, "s": -1}) == {"a": 0, "s": 2, "w": 0, "r": None}
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in normalize(model).graph.input}
    assert shapes["w"] == [3, 3] and shapes["s"] == [2, 3, "N"] and shapes["r"] == []
    rng = np.random.default_rng(10)
    a, s, w = (rng.standard_normal(shape).astype(np.float32) for shape in [(4, 3), (2, 3, 4), (3, 3)])
    got = onnxplain.Explainer(model, "gradient").explain({"a": a, "s": s, "w": w, "r": np.float32(1.5)},
                                                         target_weights=np.ones((4, 3), np.float32))
    np.testing.assert_allclose(got["a"], np.tile(1.5 * w.sum(1), (4, 1)), rtol=1e-6)   # d sum(a w r) / d a
    np.testing.assert_allclose(got["s"], np.ones((2, 3, 4)), rtol=1e-6)                # y adds sum_k s[k]^T


def test_scalar_input_is_not_attributed_by_default_and_refused_when_asked(recurrent):
    assert onnxplain.Explainer(recurrent, "gradient").inputs == ["x", "state"]
    with pytest.raises(ValueError, match=r"cannot attribute \['sr'\]: they have no batch axis"):
        onnxplain.Explainer(recurrent, "gradient", inputs=["x", "sr"])


@pytest.mark.parametrize("sr", [0.7, -1.3])
def test_gradients_of_the_input_and_the_state_match_autograd(recurrent, torch_recurrent, sr):
    x, state, _ = recurrent_inputs()
    sr = torch.tensor(sr)
    got = onnxplain.Explainer(recurrent, "gradient").explain(feeds_of(x, state, sr), target=2)
    with pytest.raises(ValueError, match=r"input 'state' must have shape \(2, '\w+', 6\) \(batch on axis 1\)"):
        onnxplain.Explainer(recurrent, "gradient").explain(feeds_of(x, state.transpose(0, 1).contiguous(), sr), target=2)
    x.requires_grad_(), state.requires_grad_()
    torch_recurrent(x, state, sr)[:, 2].sum().backward()
    assert got["state"].shape == (LAYERS, 3, HIDDEN)     # the state's own layout
    assert_close(got["x"], x.grad, 1e-5)
    assert_close(got["state"], state.grad, 1e-5)


def test_integrated_gradients_of_the_input_and_the_state_match_captum(recurrent, torch_recurrent):
    x, state, sr = recurrent_inputs(n=4)
    rng = np.random.default_rng(2)
    base_x = rng.standard_normal((1, STEPS, FEATURES)).astype(np.float32) * 0.1
    base_state = rng.standard_normal((LAYERS, 1, HIDDEN)).astype(np.float32) * 0.1   # own layout, one row
    ex = onnxplain.Explainer(recurrent, "integrated_gradients", memory_budget=40_000)   # several chunks of rows
    got, delta = ex.explain(feeds_of(x, state, sr), target=[0, 3, 1, 2], n_steps=16,
                            baselines={"x": base_x, "state": base_state}, return_convergence_delta=True)
    ig = IntegratedGradients(BatchFirst(torch_recurrent))
    ref, ref_delta = ig.attribute((x, state.transpose(0, 1)), target=[0, 3, 1, 2], n_steps=16,
                                  baselines=(torch.from_numpy(base_x), torch.from_numpy(base_state).transpose(0, 1)),
                                  additional_forward_args=(sr,), return_convergence_delta=True)
    assert_close(got["x"], ref[0], 1e-4)
    assert_close(got["state"], ref[1].transpose(0, 1), 1e-4)
    np.testing.assert_allclose(delta, ref_delta.numpy(), atol=1e-4)


@pytest.mark.parametrize("batch_size", [None, 2])
def test_deeplift_sums_to_the_difference_with_a_state_and_a_scalar(recurrent, torch_recurrent, batch_size):
    x, state, sr = recurrent_inputs(n=3)
    base_state = np.full((LAYERS, 1, HIDDEN), 0.2, np.float32)
    got, delta = onnxplain.Explainer(recurrent, "deeplift", batch_size=batch_size).explain(
        feeds_of(x, state, sr), target=1, baselines={"state": base_state}, return_convergence_delta=True)
    with torch.no_grad():
        f = torch_recurrent(x, state, sr)[:, 1]
        f0 = torch_recurrent(torch.zeros_like(x), torch.from_numpy(base_state).expand(LAYERS, 3, HIDDEN), sr)[:, 1]
    total = got["x"].sum(axis=(1, 2)) + got["state"].sum(axis=(0, 2))   # the state's rows are on axis 1
    np.testing.assert_allclose(total, (f - f0).numpy(), atol=1e-5)
    np.testing.assert_allclose(delta, 0, atol=1e-5)
    assert np.abs(got["state"]).max() > 1e-3


@pytest.mark.parametrize("method", ["occlusion", "feature_ablation"])
def test_perturbations_pass_the_state_and_the_scalar_to_every_run(recurrent, torch_recurrent, method):
    x, state, sr = recurrent_inputs(n=3)
    if method == "occlusion":
        params = {"sliding_window_shapes": (2, 2), "strides": (1, 2)}
        captum = Occlusion(torch_recurrent)
    else:
        params = {"feature_mask": np.arange(STEPS * FEATURES).reshape(1, STEPS, FEATURES) // 2}
        captum = FeatureAblation(torch_recurrent)
        params_ref = {"feature_mask": torch.from_numpy(params["feature_mask"])}
    # by default the perturbation methods attribute the batch-first inputs: x, with the state passed through
    got = onnxplain.Explainer(recurrent, method).explain(feeds_of(x, state, sr), target=1, **params)
    # Captum evaluates one perturbation per run by default, so the state is never expanded along its layers axis
    ref = captum.attribute(x, target=1, additional_forward_args=(state, sr),
                           **(params if method == "occlusion" else params_ref))
    assert_close(got, ref, 1e-5)


def test_perturbation_methods_refuse_inputs_whose_batch_axis_is_not_first(recurrent):
    with pytest.raises(ValueError, match=r"cannot attribute \['state'\], whose batch axis is not 0"):
        onnxplain.Explainer(recurrent, "occlusion", inputs=["x", "state"])
    assert onnxplain.inspect(recurrent)["methods"]["occlusion"]["available"]    # by default: x alone


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_from_torch_exports_the_batch_on_the_axes_given(torch_recurrent, dynamo):
    model = onnxplain.from_torch(torch_recurrent, recurrent_inputs(), input_names=["x", "state", "sr"],
                                 dynamo=dynamo, batch_axes={"state": 1})
    assert batch_axes_of(model) == {"x": 0, "state": 1, "sr": None}
    x, state, sr = recurrent_inputs(n=5)   # another batch size than the example's
    got = onnxplain.Explainer(model, "gradient", inputs="state").explain(feeds_of(x, state, sr), target=3)
    state.requires_grad_()
    torch_recurrent(x, state, sr)[:, 3].sum().backward()
    assert_close(got, state.grad, 1e-5)


def test_batch_axes_given_by_name(torch_recurrent):
    """A TorchScript export with a fixed batch: the batch axes come from ``batch_axes``."""
    x, state, sr = recurrent_inputs(n=1)
    fixed = onnxplain.from_torch(torch_recurrent, (x, state, sr), input_names=["x", "state", "sr"],
                                 output_names=["logits"], dynamic_batch=False)
    x, state, sr = recurrent_inputs(n=3)
    with pytest.raises(ModelError, match=r"batch_axes names \['h0'\], which are not inputs"):
        onnxplain.Explainer(fixed, "gradient", batch_axes={"h0": 1})
    with pytest.raises(ModelError, match=r"batch_axes\['state'\] must be None or an axis"):
        onnxplain.Explainer(fixed, "gradient", batch_axes={"state": 3})
    got = onnxplain.explain(fixed, feeds_of(x, state, sr), "gradient", target=0,
                            batch_axes={"x": 0, "state": 1, "sr": None})
    x.requires_grad_(), state.requires_grad_()
    torch_recurrent(x, state, sr)[:, 0].sum().backward()
    assert_close(got["state"], state.grad, 1e-5)


def test_saved_graph_takes_the_state_in_its_own_layout(recurrent, torch_recurrent, tmp_path):
    x, state, sr = recurrent_inputs(n=2)
    path = tmp_path / "ig.onnx"
    graph = onnxplain.convert(recurrent, path, "integrated_gradients", n_steps=8)
    dims = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
            for vi in list(graph.graph.input) + list(graph.graph.output)}
    assert dims["state"][0] == LAYERS and dims["attributions_state"][0] == LAYERS and dims["sr"] == []
    saved = tmp_path / "saved.onnx"
    onnxplain.Explainer(recurrent, "integrated_gradients").save(saved)
    assert [d.dim_param or d.dim_value for d in onnx.load(str(saved)).graph.input[1].type.tensor_type.shape.dim] \
        == dims["state"]
    tw = np.zeros((2, CLASSES), np.float32)
    tw[:, 1] = 1
    feeds = {**feeds_of(x, state, sr), "target_weights": tw}
    names = [o.name for o in graph.graph.output]
    got = dict(zip(names, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)))
    ref = dict(zip(names, ReferenceEvaluator(str(path)).run(None, feeds)))
    ig = IntegratedGradients(BatchFirst(torch_recurrent))
    expected = ig.attribute((x, state.transpose(0, 1)), target=1, n_steps=8, additional_forward_args=(sr,))
    assert_close(got["attributions_state"], expected[1].transpose(0, 1), 1e-4)
    assert_close(ref["attributions_state"], expected[1].transpose(0, 1), 1e-4)
    assert_close(got["attributions_x"], expected[0], 1e-4)


def test_saved_smoothgrad_graph_takes_the_noise_of_the_state_in_the_state_s_own_layout(recurrent, torch_recurrent,
                                                                                     tmp_path):
    """noise_state is (samples, *state's own layout): (S, layers, N, hidden); SmoothGrad against the mean of
    PyTorch's gradients at the noisy inputs, in onnxruntime and onnx.reference."""
    x, state, sr = recurrent_inputs(n=2)
    path = tmp_path / "sg.onnx"
    onnxplain.convert(recurrent, path, "smoothgrad")
    rng = np.random.default_rng(5)
    noise_x = rng.standard_normal((3,) + tuple(x.shape)).astype(np.float32)
    noise_state = rng.standard_normal((3,) + tuple(state.shape)).astype(np.float32)     # (S, layers, N, hidden)
    tw = np.zeros((2, CLASSES), np.float32)
    tw[:, 1] = 1
    feeds = {**feeds_of(x, state, sr), "target_weights": tw, "noise_x": noise_x, "noise_state": noise_state,
             "stdevs_x": np.array(0.5, np.float32), "stdevs_state": np.array(0.5, np.float32)}
    grads_x, grads_state = [], []
    for zx, zs in zip(torch.from_numpy(noise_x), torch.from_numpy(noise_state)):
        xn, sn = (x + 0.5 * zx).requires_grad_(), (state + 0.5 * zs).requires_grad_()
        torch_recurrent(xn, sn, sr)[:, 1].sum().backward()
        grads_x.append(xn.grad)
        grads_state.append(sn.grad)
    want_x, want_state = torch.stack(grads_x).mean(0), torch.stack(grads_state).mean(0)
    graph = onnx.load(str(path))
    names = [o.name for o in graph.graph.output]
    for run in (ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run,
                ReferenceEvaluator(str(path)).run):
        got = dict(zip(names, run(None, feeds)))
        assert_close(got["attributions_state"], want_state, 1e-4)
        assert_close(got["attributions_x"], want_x, 1e-4)


# ---------------------------------------------------------------------- models that run one row at a time
class Gated(nn.Module):
    """A scale chosen by an ``if`` on a single-element condition: one row at a time only."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.Linear(5, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x):
        h = self.a(x)
        if bool(h.sum(dim=1) > 0):
            scale = torch.full([1], 2.0)
        else:
            scale = torch.full([1], 0.5)
        return self.b(torch.tanh(h)) * scale


@pytest.fixture(scope="module")
def torch_gated():
    return torch.jit.script(Gated().eval())


@pytest.fixture(scope="module")
def gated(torch_gated):
    return onnxplain.from_torch(torch_gated, (torch.zeros(1, 5),), input_names=["x"], output_names=["y"])


def gated_rows():
    return torch.randn(5, 5, generator=torch.Generator().manual_seed(4))


def test_a_model_that_runs_one_row_at_a_time_asks_for_batch_size_1(gated):
    assert any(n.op_type == "If" for n in gated.graph.node)
    x = gated_rows().numpy()
    for method, params in [("saliency", {}), ("integrated_gradients", {}), ("occlusion",
                                                                            {"sliding_window_shapes": (2,)})]:
        with pytest.raises(ModelError, match=r"runs on one row.*batch_size=1"):
            onnxplain.Explainer(gated, method).explain(x, target=0, **params)


def test_batch_size_1_saliency_and_integrated_gradients_match_per_row_references(gated, torch_gated):
    x = gated_rows()
    sal = onnxplain.Explainer(gated, "saliency", batch_size=1).explain(x.numpy(), target=1)
    ig = onnxplain.Explainer(gated, "integrated_gradients", batch_size=1).explain(x.numpy(), target=1, n_steps=12)
    for r in range(len(x)):
        row = x[r:r + 1].clone().requires_grad_()
        torch_gated(row)[0, 1].backward()
        assert_close(sal[r:r + 1], row.grad.abs(), 1e-5)
        # internal_batch_size=1: Captum runs each integration step alone, as the model needs
        ref = IntegratedGradients(torch_gated).attribute(x[r:r + 1], target=1, n_steps=12, internal_batch_size=1)
        assert_close(ig[r:r + 1], ref, 1e-4)


def test_batch_size_1_deeplift_matches_the_rescale_rule_per_row(gated, torch_gated):
    x = gated_rows()
    base = np.full((1, 5), 0.1, np.float32)
    got, delta = onnxplain.Explainer(gated, "deeplift", batch_size=1).explain(
        x.numpy(), target=2, baselines=base, return_convergence_delta=True)
    a, b = torch_gated.a, torch_gated.b
    w_a, w_b = a.weight.detach().numpy(), b.weight.detach().numpy()
    for r in range(len(x)):
        h = x[r].numpy() @ w_a.T + a.bias.detach().numpy()
        h0 = base[0] @ w_a.T + a.bias.detach().numpy()
        scale = 2.0 if h.sum() > 0 else 0.5
        f = torch_gated(x[r:r + 1])[0, 2].item()
        f0 = torch_gated(torch.from_numpy(base))[0, 2].item()
        # Rescale at tanh: (tanh h - tanh h0) / (h - h0); linear layers pass multipliers through
        multiplier = ((w_b[2] * scale) * (np.tanh(h) - np.tanh(h0)) / (h - h0)) @ w_a
        assert_close(got[r], (x[r].numpy() - base[0]) * multiplier, 1e-4)
        if scale == (2.0 if h0.sum() > 0 else 0.5):   # same branch: the attributions sum to f(x) - f(ref)
            assert abs(got[r].sum() - (f - f0)) < 1e-4 and abs(delta[r]) < 1e-4


def test_batch_size_1_occlusion_matches_captum_per_row(gated, torch_gated):
    x = gated_rows()
    got = onnxplain.Explainer(gated, "occlusion", batch_size=1).explain(x.numpy(), target=0,
                                                                        sliding_window_shapes=(2,))
    for r in range(len(x)):
        ref = Occlusion(torch_gated).attribute(x[r:r + 1], target=0, sliding_window_shapes=(2,))
        assert_close(got[r:r + 1], ref, 1e-5)


def test_batch_size_graphs_are_standard_onnx_and_see_one_row(gated, tmp_path):
    """Each block of the expanded batch runs through its own copy of the forward pass."""
    x = gated_rows().numpy()[:1]
    for method in ("integrated_gradients", "deeplift"):
        path = tmp_path / f"{method}.onnx"
        graph = onnxplain.convert(gated, path, method, batch_size=1, n_steps=1) if method != "deeplift" else \
            onnxplain.convert(gated, path, method, batch_size=1)
        assert sum(n.op_type == "If" for n in graph.graph.node) == (3 if method != "deeplift" else 2)
        tw = np.eye(3, dtype=np.float32)[:1]
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x, "target_weights": tw})
        ref = ReferenceEvaluator(str(path)).run(None, {"x": x, "target_weights": tw})
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method, noise_tunnel", [("smoothgrad", None), ("vargrad", None),
                                                  ("integrated_gradients", "smoothgrad_sq")])
def test_noise_tunnel_runs_its_samples_one_at_a_time_under_batch_size(gated, torch_gated, method, noise_tunnel):
    """The batch-1 model sees one row per run: each noisy sample is its own call of the inner method,
    and the statistic over the samples is Captum's, computed here from per-row autograd / Captum."""
    x = gated_rows().numpy()
    noise = np.random.default_rng(3).standard_normal((3,) + x.shape).astype(np.float32)
    ex = onnxplain.Explainer(gated, method, batch_size=1, noise_tunnel=noise_tunnel)
    extra = {"n_steps": 4} if method == "integrated_gradients" else {}
    ours = ex.explain(x, target=0, nt_samples=3, stdevs=0.5, noise=noise, **extra)
    per_sample = []
    for z in noise:
        rows = []
        for r in torch.from_numpy(x + 0.5 * z):
            r = r[None].clone().requires_grad_()
            if method == "integrated_gradients":
                rows.append(IntegratedGradients(torch_gated).attribute(r.detach(), target=0, n_steps=4,
                                                                       internal_batch_size=1))
            else:
                torch_gated(r)[0, 0].backward()
                rows.append(r.grad)
        per_sample.append(torch.cat(rows).detach())
    g = torch.stack(per_sample).numpy()
    expected = {"smoothgrad": g.mean(0), "vargrad": (g * g).mean(0) - g.mean(0) ** 2,
                "smoothgrad_sq": (g * g).mean(0)}[noise_tunnel or method]
    assert_close(ours, expected, 1e-4)


def test_a_standalone_graph_with_batch_size_carries_no_noise_tunnel(gated, tmp_path):
    with pytest.raises(ValueError, match="cannot carry a noise tunnel"):
        onnxplain.convert(gated, tmp_path / "g.onnx", "integrated_gradients", batch_size=1, noise_tunnel="vargrad")
    assert list(tmp_path.iterdir()) == []


def test_batch_size_is_checked(gated):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        onnxplain.Explainer(gated, "saliency", batch_size=0)
    ex = onnxplain.Explainer(gated, "deeplift_shap", batch_size=2)
    with pytest.raises(ValueError, match=r"runs 3 rows of each input row.*at most batch_size baselines"):
        ex.explain(gated_rows().numpy(), target=0, baselines=np.zeros((3, 5), np.float32))


def test_deeplift_through_max_pooling_on_separate_forward_copies():
    """MaxPool's cross-max rule takes the reference's winners from the reference's own copy of the
    pooling: attributions equal those of the stacked batch and sum to f(x) - f(0) of the torch model."""
    net, row = pool_cnn()
    model = export(net, row)
    x = np.random.default_rng(8).standard_normal((3,) + row).astype(np.float32)
    ours = onnxplain.Explainer(model, "deeplift", batch_size=1).explain(x, target=2)
    assert_close(ours, onnxplain.Explainer(model, "deeplift").explain(x, target=2), 1e-5)
    with torch.no_grad():
        gap = (net(torch.from_numpy(x)) - net(torch.zeros((1,) + row)))[:, 2].numpy()
    np.testing.assert_allclose(ours.reshape(3, -1).sum(1), gap, atol=1e-4)


def test_batch_size_refuses_what_separate_forward_copies_cannot_do():
    net, row = pool_cnn()
    model = export(net, row)
    layer = onnxplain.inspect(model)["layers"][2]
    with pytest.raises(ValueError, match=r"internal tensors \['.*'\] \(a layer or a token embedding\)"):
        onnxplain.Explainer(model, "integrated_gradients", batch_size=1, layer=layer)
    x = np.random.default_rng(9).standard_normal((3,) + row).astype(np.float32)   # one-block methods just run smaller chunks
    x_t = torch.from_numpy(x).requires_grad_()
    net(x_t)[:, 0].sum().backward()
    assert_close(onnxplain.Explainer(model, "gradient", batch_size=2).explain(x, target=0), x_t.grad, 1e-4)


# ---------------------------------------------------------------------- refusals at build time
class Head(nn.Module):
    def __init__(self, reduce):
        super().__init__()
        torch.manual_seed(5)
        self.lin = nn.Linear(4, 3)
        self.reduce = reduce

    def forward(self, x):
        y = self.lin(x)
        return {"sum": lambda: y.sum(0), "mean": lambda: y.mean(), "transpose": lambda: y.t(),
                "mean_keepdim": lambda: y.mean(0, keepdim=True)}[self.reduce]()


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("reduce,message", [
    ("sum", r"output 'y' has shape \[3\] with no batch axis: the forward aggregates over the rows"),
    ("mean", r"output 'y' is a scalar: the forward reduces over the batch"),
    ("transpose", r"output 'y' has the batch on axis 1"),
])
def test_outputs_that_are_not_batch_first_are_refused_when_built(reduce, message, dynamo):
    kwargs = {"dynamic_axes": {"x": {0: "batch"}}} if not dynamo else {}
    model = onnxplain.from_torch(Head(reduce), (torch.randn(2, 4),), input_names=["x"], output_names=["y"],
                                 dynamo=dynamo, **kwargs)
    for method in ("saliency", "occlusion"):
        with pytest.raises(ModelError, match=message):
            onnxplain.Explainer(model, method)
    facts = onnxplain.inspect(model)
    assert not any(m["available"] for m in facts["methods"].values())
    assert all(r"batch first" in m["reason"] for m in facts["methods"].values())


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_an_output_of_one_row_for_the_whole_batch_is_refused_when_built(dynamo):
    """A batch mean kept as a (1, C) row: its first axis looks like a batch of one; the node that mixes is named."""
    kwargs = {"dynamic_axes": {"x": {0: "batch"}}} if not dynamo else {}
    model = onnxplain.from_torch(Head("mean_keepdim"), (torch.randn(2, 4),), input_names=["x"], output_names=["y"],
                                 dynamo=dynamo, **kwargs)
    for method in ("saliency", "deeplift", "occlusion"):
        with pytest.raises(ModelError, match=r"mixes the rows of a batch \(node '[^']+': ReduceMean turns"):
            onnxplain.Explainer(model, method)
    # each row run on its own is what batch_size=1 explains: the gradient of the row's own output
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    attr = onnxplain.Explainer(model, "saliency", batch_size=1).explain(x, target=1)
    weight = Head("mean_keepdim").lin.weight.detach().numpy()
    np.testing.assert_allclose(attr, np.broadcast_to(np.abs(weight[1]), x.shape), rtol=1e-6)


def pinned_to_one_row() -> onnx.ModelProto:
    """An export pinned to one row: Reshape(tanh(x W), [1, -1]), whose first axis shape inference cannot follow."""
    w = onnx.numpy_helper.from_array(np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32), "W")
    shape = onnx.numpy_helper.from_array(np.array([1, -1], np.int64), "S")
    nodes = [onnx.helper.make_node("MatMul", ["x", "W"], ["h"]), onnx.helper.make_node("Tanh", ["h"], ["t"]),
             onnx.helper.make_node("Reshape", ["t", "S"], ["y"])]
    graph = onnx.helper.make_graph(nodes, "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])], [w, shape])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_an_output_pinned_to_one_row_is_refused_before_the_graph_runs(tmp_path, capsys):
    model = pinned_to_one_row()
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    message = r"output 'y' has a first axis of fixed size 1 .* not the call's 5 rows: on 2 rows the model gives shape \(1, 6\)"
    for method in ("saliency", "deeplift", "occlusion"):
        ex = onnxplain.Explainer(model, method)
        ex.session.run = None                   # nothing of the explanation graph may run
        try:
            with pytest.raises(ModelError, match=message):
                ex.explain(x, target=1, **({"sliding_window_shapes": (1,)} if method == "occlusion" else {}))
        finally:
            del ex.session.run                  # the session is shared by every Explainer of this graph
    attr = onnxplain.Explainer(model, "gradient", batch_size=1).explain(x, target=1)
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_allclose(attr, (1 - np.tanh(x @ w)[:, 1:2] ** 2) * w[:, 1], rtol=1e-5, atol=1e-7)
    path = tmp_path / "pinned.onnx"
    onnx.save(model, path)
    np.save(tmp_path / "x.npy", x)
    assert main(["explain", str(path), str(tmp_path / "x.npy"), "--method", "saliency", "--target", "1"]) == 2
    assert "fixed size 1" in capsys.readouterr().err


class TakesWeight(nn.Module):
    def forward(self, x, w):
        return torch.tanh(x @ w)


def test_a_weight_given_as_an_input_is_unbatched_and_keeps_its_shape():
    w = torch.randn(4, 3, generator=torch.Generator().manual_seed(6))
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(7))
    model = onnxplain.from_torch(TakesWeight(), (x[:2], w), input_names=["x", "w"], output_names=["y"],
                                 dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    w_dims = [d.dim_value for d in next(vi for vi in model.graph.input if vi.name == "w").type.tensor_type.shape.dim]
    assert w_dims == [4, 3]
    assert batch_axes_of(model) == {"x": 0, "w": None}
    ex = onnxplain.Explainer(model, "integrated_gradients")
    assert ex.inputs == ["x"]
    got = ex.explain({"x": x.numpy(), "w": w.numpy()}, target=0, n_steps=10)
    # the weight closed over: Captum would expand an additional argument along its first axis
    ref = IntegratedGradients(lambda rows: TakesWeight()(rows, w)).attribute(x, target=0, n_steps=10)
    assert_close(got, ref, 1e-4)
    with pytest.raises(ValueError, match=r"cannot attribute \['w'\]: they have no batch axis"):
        onnxplain.Explainer(model, "saliency", inputs=["w"])


def test_weights_kept_as_inputs_by_the_exporter_are_not_fed_nor_made_dynamic(tmp_path):
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(8))
    path = tmp_path / "kept.onnx"
    torch.onnx.export(net, (x[:1],), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], keep_initializers_as_inputs=True)
    raw = onnx.load(str(path))
    assert len(raw.graph.input) > 1   # the weights are graph inputs with initializers
    ex = onnxplain.Explainer(raw, "deeplift")
    assert ex.model_inputs == ["x"]
    weight_dims = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
                   for vi in ex.model.graph.input if vi.name != "x"}
    assert all(all(isinstance(d, int) and d > 0 for d in dims) for dims in weight_dims.values())
    got = ex.explain(x.numpy(), target=1)
    assert_close(got, DeepLift(net).attribute(x, target=1), 1e-4)


def test_command_line_takes_batch_axes_and_batch_size(gated, torch_gated, recurrent, torch_recurrent, tmp_path,
                                                      capsys):
    from onnxplain.cli import main
    model, rows, out = tmp_path / "gated.onnx", tmp_path / "x.npy", tmp_path / "sal.npy"
    onnx.save(gated, str(model))
    x = gated_rows()
    np.save(rows, x.numpy())
    assert main(["explain", str(model), str(rows), "-m", "saliency", "--target", "1", "--model-batch-size", "1",
                 "--out", str(out)]) == 0
    row = x[:1].clone().requires_grad_()
    torch_gated(row)[0, 1].backward()
    assert_close(np.load(out)[:1], row.grad.abs(), 1e-5)

    # --batch-size is the rows of a streamed batch; the model still sees one row per forward pass
    streamed = tmp_path / "streamed.npy"
    assert main(["explain", str(model), str(rows), "-m", "saliency", "--target", "1", "--model-batch-size", "1",
                 "--batch-size", "2", "--no-progress", "--out", str(streamed)]) == 0
    every = x.clone().requires_grad_()
    torch.stack([torch_gated(every[i:i + 1])[0, 1] for i in range(len(x))]).sum().backward()
    assert_close(np.load(streamed), every.grad.abs(), 1e-5)

    model, data, out = tmp_path / "rec.onnx", tmp_path / "rec.npz", tmp_path / "g.npz"
    onnx.save(recurrent, str(model))
    x, state, sr = recurrent_inputs(n=2)
    np.savez(data, **feeds_of(x, state, sr))
    assert main(["explain", str(model), str(data), "-m", "gradient", "--target", "0", "--input", "state",
                 "--batch-axis", "state=1", "--batch-axis", "sr=none", "--out", str(out)]) == 0
    state.requires_grad_()
    torch_recurrent(x, state, sr)[:, 0].sum().backward()
    assert_close(np.load(out)["attributions"], state.grad, 1e-5)
    assert main(["explain", str(model), str(data), "-m", "gradient", "--batch-axis", "state"]) == 2
    assert "--batch-axis expects NAME=AXIS" in capsys.readouterr().err
    assert main(["inspect", str(model), "--batch-axis", "sr=none"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()
            if line.strip().startswith(("x ", "state ", "sr "))}
    assert rows["x"][-1] == "0" and rows["state"][-1] == "1" and rows["sr"][-1] == "none"


def test_deeplift_rules_that_derive_tensors_work_on_separate_forward_copies():
    """With batch_size the references run through their own copy of the forward pass; rules that compute
    new tensors from forward ones (Softmax's centring, Shapley products) replay them on the partner copy,
    so summation-to-delta still holds against the torch model's own outputs."""
    from models import mlp
    net, row = mlp("tanh", "softmax")
    x = np.random.default_rng(4).standard_normal((5,) + row).astype(np.float32)
    base = np.full(row, 0.3, np.float32)
    attr, delta = onnxplain.Explainer(export(net, row), "deeplift", batch_size=2).explain(
        x, target=1, baselines=base, return_convergence_delta=True)
    with torch.no_grad():
        gap = (net(torch.from_numpy(x)) - net(torch.from_numpy(base)[None]))[:, 1].numpy()
    np.testing.assert_allclose(attr.sum(1), gap, atol=1e-5)
    assert np.abs(delta).max() < 1e-5


def test_a_scalar_input_stays_a_scalar_for_every_method():
    """A rank-0 index input (which column to read) is fed as a scalar, not as shape (1,): a linear
    model's attributions with a zero baseline are x * W[:, k] for every method (exact for these)."""
    from onnx import TensorProto, helper, numpy_helper

    w = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Gather", ["h", "k"], ["g"], axis=1),
         helper.make_node("Unsqueeze", ["g", "one"], ["y"])], "pick",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
         helper.make_tensor_value_info("k", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1], np.int64), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    x = np.random.default_rng(0).random((3, 4)).astype(np.float32)
    for k in (0, 2):
        want = x * w[:, k]
        for method, params in [("feature_ablation", {}), ("shapley_sampling", {"n_samples": 3}),
                               ("occlusion", {"sliding_window_shapes": (1,)}), ("integrated_gradients", {}),
                               ("saliency", {})]:
            ex = onnxplain.Explainer(model, method, inputs=["x"])
            got = ex.explain({"x": x, "k": np.array(k, np.int64)}, target=0, **params)
            expected = np.abs(w[:, k]) * np.ones_like(x) if method == "saliency" else want
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6, err_msg=f"{method}, k={k}")


def static_two_input_model(op: str) -> onnx.ModelProto:
    """A fully static export with two inputs: Conv(X, W), MatMul(A, B) or Add(A, M) (all shapes fixed)."""
    shapes = {"Conv": ([1, 2, 5, 5], [3, 2, 3, 3], [1, 3, 5, 5]), "MatMul": ([1, 4], [4, 3], [1, 3]),
              "Add": ([1, 4], [1, 4], [1, 4])}[op]
    names = ("X", "W") if op == "Conv" else ("A", "B")
    node = onnx.helper.make_node(op, list(names), ["Y"], **({"pads": [1, 1, 1, 1]} if op == "Conv" else {}))
    graph = onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in zip(names, shapes)],
        [onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, shapes[2])])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


@pytest.mark.parametrize("op, expected", [("Conv", {"X": 0, "W": None}), ("MatMul", {"A": 0, "B": None}),
                                          ("Add", {"A": 0, "B": 0})])
def test_a_static_export_batches_the_inputs_whose_rows_reach_the_outputs(op, expected):
    """No batch symbol to go by: an input is batched when shape inference carries its axis 0 to the outputs'
    (a Conv's or a MatMul's weight given as an input is not; a broadcast of two such inputs keeps both)."""
    model = static_two_input_model(op)
    assert onnxplain.inspect(model)["batch_axes"] == expected
    ex = onnxplain.Explainer(model, "gradient")
    assert ex.inputs == [n for n, axis in expected.items() if axis == 0]
    if op == "Add":
        return
    g = np.random.default_rng(0)
    x = g.standard_normal((4, 2, 5, 5) if op == "Conv" else (4, 4)).astype(np.float32)   # 4 rows, exported with 1
    w = g.standard_normal((3, 2, 3, 3) if op == "Conv" else (4, 3)).astype(np.float32)
    tw = g.standard_normal((4, 3, 5, 5) if op == "Conv" else (4, 3)).astype(np.float32)
    first, second = expected
    attr = ex.explain({first: x, second: w}, target_weights=tw)
    xt = torch.tensor(x, requires_grad=True)
    y = torch.nn.functional.conv2d(xt, torch.tensor(w), padding=1) if op == "Conv" else xt @ torch.tensor(w)
    (y * torch.tensor(tw)).sum().backward()
    np.testing.assert_allclose(attr, xt.grad.numpy(), rtol=1e-5, atol=1e-5)
