"""gradient_shap against Captum 0.9's GradientShap fed the very same draws, and its exact properties.

Captum draws its background indices with ``np.random.choice`` (once per input), its noise with
``torch.normal(0, stdev_expanded)`` (once per input, rows ``x.repeat_interleave(S)``: the S samples of a
row are contiguous) and its alphas with ``np.random.uniform`` (once per call); the tests replace these by
the draws onnxplain makes (``gradient_shap_draws``), in Captum's row order ``i * S + s``.
"""
import warnings

import numpy as np
import onnx
import pytest
import torch
from captum.attr import GradientShap
from onnx.reference import ReferenceEvaluator
from torch import nn

import onnxplain
from checks import assert_close
from models import export, two_inputs
from onnxplain.cli import main
from onnxplain.methods.gradient_shap import gradient_shap_draws
from onnxplain.runtime import Session

warnings.filterwarnings("ignore", category=UserWarning)
RTOL = 2e-4
SAMPLES = 6


def mlp():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 5), nn.Tanh(), nn.Linear(5, 3)).eval()


def cnn():
    torch.manual_seed(4)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(5 * 3 * 3, 3)).eval()


class Case:
    def __init__(self, net, onnx_model, row, rows=5, background=4, seed=21):
        g = torch.Generator().manual_seed(seed)
        self.net, self.onnx = net, onnx_model
        self.x = torch.randn((rows,) + row, generator=g)
        self.background = 0.5 * torch.randn((background,) + row, generator=g)
        self.target = [i % 3 for i in range(rows)]


@pytest.fixture(scope="module")
def cases():
    return {"mlp": Case(mlp(), export(mlp(), (7,)), (7,)),
            "cnn": Case(cnn(), onnxplain.from_torch(cnn(), torch.zeros(2, 3, 7, 7), dynamo=True), (3, 7, 7), rows=3,
                        background=3)}


@pytest.fixture(scope="module")
def two():
    net, example = two_inputs()
    g = torch.Generator().manual_seed(5)
    x = {"a": torch.randn(4, 5, generator=g), "b": torch.randn(4, 3, generator=g)}
    background = {"a": torch.randn(3, 5, generator=g), "b": torch.randn(3, 3, generator=g)}
    return net, onnxplain.from_torch(net, (example["a"], example["b"]), input_names=["a", "b"]), x, background


def feed_captum(monkeypatch, draws, noises, stdevs):
    """Make Captum draw ``draws``: the same background indices for every input, ``stdev * noise`` per input
    in the order of the inputs, and the alphas (all in the row order ``i * S + s``)."""
    n, s = draws.indices.shape
    indices = draws.indices.reshape(-1)
    scaled = iter([torch.from_numpy(np.float32(sd) * z.reshape((n * s,) + z.shape[2:])) for z, sd in
                   zip(noises, stdevs)])

    def choice(count, size):
        assert size == n * s
        return indices.copy()

    def normal(mean, std):
        out = next(scaled)
        assert tuple(std.shape) == tuple(out.shape)
        return out.to(std.dtype)

    def uniform(low, high, size):
        assert (low, high, size) == (0.0, 1.0, n * s)
        return draws.alphas.reshape(-1).copy()

    monkeypatch.setattr(np.random, "choice", choice)
    monkeypatch.setattr(torch, "normal", normal)
    monkeypatch.setattr(np.random, "uniform", uniform)


def captum_gradient_shap(monkeypatch, net, x, background, target, draws, noises, stdevs, multiply):
    """Captum's attributions and its per-sample delta averaged per row ``(N,)``."""
    feed_captum(monkeypatch, draws, noises, stdevs)
    inputs = tuple(x) if isinstance(x, tuple) else x
    stdev_arg = tuple(float(v) for v in stdevs) if isinstance(x, tuple) else float(stdevs[0])
    attr, delta = GradientShap(net, multiply_by_inputs=multiply).attribute(
        inputs, baselines=background, n_samples=draws.indices.shape[1], stdevs=stdev_arg, target=target,
        return_convergence_delta=True)
    monkeypatch.undo()
    return attr, delta.reshape(draws.indices.shape).mean(dim=1)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("multiply", [True, False])
@pytest.mark.parametrize("stdev", [0.0, 0.3])
def test_matches_captum_fed_the_same_draws(cases, monkeypatch, name, multiply, stdev):
    case = cases[name]
    x, bg = case.x.numpy(), case.background.numpy()
    ours, delta = onnxplain.Explainer(case.onnx, "gradient_shap").explain(
        x, target=case.target, baselines=bg, n_samples=SAMPLES, stdevs=stdev, seed=9, multiply_by_inputs=multiply,
        return_convergence_delta=True)
    draws = gradient_shap_draws(x, len(bg), SAMPLES, seed=9)
    ref, ref_delta = captum_gradient_shap(monkeypatch, case.net, case.x, case.background, case.target, draws,
                                          [draws.noise], [stdev], multiply)
    assert_close(ours, ref, RTOL)
    assert_close(delta, ref_delta, RTOL, scale=max(1.0, float(ref_delta.abs().max())), what="delta")


@pytest.mark.parametrize("multiply", [True, False])
def test_two_inputs_match_captum_with_draws_shared_by_the_inputs(two, monkeypatch, multiply):
    net, model, x, background = two
    stdevs = (0.2, 0.5)
    feeds = {k: v.numpy() for k, v in x.items()}
    bg = {k: v.numpy() for k, v in background.items()}
    ours, delta = onnxplain.Explainer(model, "gradient_shap").explain(
        feeds, target=1, baselines=bg, n_samples=SAMPLES, stdevs=stdevs, seed=3, multiply_by_inputs=multiply,
        return_convergence_delta=True)
    draws = gradient_shap_draws(feeds, 3, SAMPLES, seed=3)
    ref, ref_delta = captum_gradient_shap(monkeypatch, net, (x["a"], x["b"]), (background["a"], background["b"]),
                                          1, draws, [draws.noise["a"], draws.noise["b"]], stdevs, multiply)
    assert_close(ours["a"], ref[0], RTOL, what="attributions of a")
    assert_close(ours["b"], ref[1], RTOL, what="attributions of b")
    assert_close(delta, ref_delta, RTOL, scale=1.0, what="delta")
    # the same background rows (a tuple in the inputs' order) give the same numbers
    again = onnxplain.explain(model, feeds, "gradient_shap", target=1, baselines=(bg["a"], bg["b"]),
                              n_samples=SAMPLES, stdevs=stdevs, seed=3, multiply_by_inputs=multiply)
    np.testing.assert_array_equal(again["a"], ours["a"])


@pytest.fixture(scope="module")
def linear():
    torch.manual_seed(8)
    net = nn.Linear(5, 3).eval()
    return net, export(net, (5,))


@pytest.mark.parametrize("multiply", [True, False])
def test_linear_model_is_exact_whatever_the_alphas(linear, multiply):
    net, model = linear
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    base = rng.standard_normal(5).astype(np.float32)   # one row: B = 1
    target = [0, 2, 1, 2]
    attr, delta = onnxplain.Explainer(model, "gradient_shap").explain(
        x, target=target, baselines=base, n_samples=40, seed=5, multiply_by_inputs=multiply,
        return_convergence_delta=True)
    w = net.weight.detach().numpy()[target]
    expected = w * (x - base) if multiply else w
    np.testing.assert_allclose(attr, expected, rtol=1e-5, atol=1e-6)
    if multiply:   # completeness holds exactly on a linear model
        np.testing.assert_allclose(delta, 0.0, atol=1e-5)


def test_result_does_not_depend_on_the_memory_budget_or_batch_size(cases):
    case = cases["mlp"]
    x, bg = case.x.numpy(), case.background.numpy()
    kw = dict(target=case.target, baselines=bg, n_samples=7, stdevs=0.2, seed=4, return_convergence_delta=True)
    default = onnxplain.Explainer(case.onnx, "gradient_shap")
    tiny = onnxplain.Explainer(case.onnx, "gradient_shap", memory_budget=1500)
    capped = onnxplain.Explainer(case.onnx, "gradient_shap", batch_size=4)
    one, many = default.estimate(x, **{k: v for k, v in kw.items() if k != "return_convergence_delta"}), \
        tiny.estimate(x, **{k: v for k, v in kw.items() if k != "return_convergence_delta"})
    assert one.runs == 1 and many.runs > 2 and many.rows > one.rows   # several parts of samples, several chunks
    a, d = default.explain(x, **kw)
    for other in (tiny, capped):
        a2, d2 = other.explain(x, **kw)
        np.testing.assert_allclose(a2, a, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(d2, d, rtol=1e-5, atol=1e-6)
    # a row's draws are its own: explaining a subset of rows gives those rows' numbers
    np.testing.assert_allclose(default.explain(x[:2], **{**kw, "target": case.target[:2]})[0], a[:2],
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("params, fragment", [
    ({}, "needs baselines"),
    ({"baselines": np.zeros((2, 6), np.float32)}, "shaped (B, *(7,))"),
    ({"baselines": np.zeros((2, 7), np.float32), "n_samples": 0}, "n_samples must be a positive int"),
    ({"baselines": np.zeros((2, 7), np.float32), "stdevs": -0.1}, "stdevs must be a non-negative"),
    ({"baselines": np.zeros((2, 7), np.float32), "seed": -1}, "seed must be a non-negative int"),
    ({"baselines": np.zeros((2, 7), np.float32), "multiply_by_inputs": 1}, "multiply_by_inputs must be"),
])
def test_bad_inputs_are_clear_errors(cases, params, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        onnxplain.explain(cases["mlp"].onnx, cases["mlp"].x.numpy(), "gradient_shap", target=0, **params)


def test_two_inputs_need_as_many_background_rows_and_no_layer(two, cases):
    _, model, x, _ = two
    feeds = {k: v.numpy() for k, v in x.items()}
    with pytest.raises(ValueError, match="same number B"):
        onnxplain.explain(model, feeds, "gradient_shap", target=0,
                          baselines={"a": np.zeros((3, 5), np.float32), "b": np.zeros((2, 3), np.float32)})
    with pytest.raises(ValueError, match="tuple"):
        onnxplain.explain(model, feeds, "gradient_shap", target=0, baselines=np.zeros((3, 5), np.float32))
    mlp_model = onnx.load_from_string(cases["mlp"].onnx)
    layer = next(n.output[0] for n in mlp_model.graph.node if n.op_type == "Relu")
    with pytest.raises(ValueError, match="layer= needs another method"):
        onnxplain.Explainer(mlp_model, "gradient_shap", layer=layer)
    with pytest.raises(ValueError, match="cannot run inside a noise tunnel"):
        onnxplain.Explainer(mlp_model, "gradient_shap", noise_tunnel="smoothgrad")


def test_standalone_graph_runs_in_onnx_reference_with_the_calls_draws(cases, tmp_path):
    case = cases["mlp"]
    x, bg = case.x.numpy()[:3], case.background.numpy()
    path = tmp_path / "gs.onnx"
    onnxplain.convert(case.onnx, path, "gradient_shap")
    expected, expected_delta = onnxplain.explain(case.onnx, x, "gradient_shap", target=2, baselines=bg, n_samples=4,
                                                 stdevs=0.25, seed=1, return_convergence_delta=True)
    draws = gradient_shap_draws(x, len(bg), 4, seed=1)
    tw = np.zeros((3, 3), np.float32)
    tw[:, 2] = 1
    feeds = {"x": x, "target_weights": tw, "alphas": draws.alphas.T.astype(np.float32),
             "baselines": bg[draws.indices].transpose(1, 0, 2), "noise": draws.noise.transpose(1, 0, 2),
             "stdevs": np.asarray(0.25, np.float32)}
    by_ort = Session(onnx.load(path)).run(feeds, ["attributions", "delta"])
    by_ref = ReferenceEvaluator(str(path)).run(["attributions", "delta", "y"], feeds)
    np.testing.assert_allclose(by_ort["attributions"], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(by_ort["delta"], expected_delta, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by_ref[0], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(by_ref[1], expected_delta, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(by_ref[2], case.net(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_cli_takes_the_background_set_from_a_file_and_inspect_lists_it(cases, tmp_path):
    case = cases["mlp"]
    model = tmp_path / "m.onnx"
    model.write_bytes(case.onnx)
    np.save(tmp_path / "x.npy", case.x.numpy())
    np.save(tmp_path / "bg.npy", case.background.numpy())
    out = tmp_path / "a.npy"
    assert main(["explain", str(model), str(tmp_path / "x.npy"), "-m", "gradient_shap", "--target", "1",
                 "--baseline", str(tmp_path / "bg.npy"), "--n-samples", "3", "--stdevs", "0.1",
                 "--out", str(out)]) == 0
    expected = onnxplain.explain(case.onnx, case.x.numpy(), "gradient_shap", target=1,
                                 baselines=case.background.numpy(), n_samples=3, stdevs=0.1)
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-6, atol=1e-8)
    assert onnxplain.inspect(case.onnx)["methods"]["gradient_shap"]["available"]


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_a_call_without_delta_skips_the_deltas_forward_rows_and_still_matches_captum(cases, monkeypatch, name):
    """The delta's forward copies see one sample instead of S when no delta is asked for: N (S + 3) rows,
    not N (3 S + 1), and the attributions are Captum's all the same."""
    case = cases[name]
    x, bg = case.x.numpy(), case.background.numpy()
    ex = onnxplain.Explainer(case.onnx, "gradient_shap")
    kw = dict(target=case.target, baselines=bg, n_samples=SAMPLES, stdevs=0.3, seed=2)
    n = len(x)
    assert ex.estimate(x, **kw).rows == n * (SAMPLES + 3)
    assert ex.estimate(x, **kw, return_convergence_delta=True).rows == n * (3 * SAMPLES + 1)
    ours = ex.explain(x, **kw)
    draws = gradient_shap_draws(x, len(bg), SAMPLES, seed=2)
    ref, _ = captum_gradient_shap(monkeypatch, case.net, case.x, case.background, case.target, draws,
                                  [draws.noise], [0.3], True)
    assert_close(ours, ref, RTOL)
