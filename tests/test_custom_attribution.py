"""custom_attribution_func of deeplift and deeplift_shap against Captum's DeepLift and DeepLiftShap given the same
function: the graph returns the multipliers of each (row, baseline) pair and the function is applied to them after
the run; where no Python callable can go (a standalone graph, the command line, a server request) it is refused."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import DeepLift, DeepLiftShap

import onnxplain
from models import export
from onnxplain.cli import main
from onnxplain.serve.protocol import Interface, RequestError
from test_layer_path import ROW, SmallCNN
from vision_models import export_dynamo

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def squared_difference(multipliers, inputs, baselines):
    return tuple(m * (x - b) ** 2 for m, x, b in zip(multipliers, inputs, baselines))


def times_inputs(multipliers, inputs):     # ignores the baselines
    return tuple(m * x for m, x in zip(multipliers, inputs))


def multipliers_alone(multipliers):
    return multipliers


FUNCS = [squared_difference, times_inputs, multipliers_alone]


@pytest.fixture(scope="module")
def net():
    return SmallCNN().eval()


@pytest.fixture(scope="module")
def models(net):
    return {"torchscript": export(net, ROW), "dynamo": export_dynamo(net, ROW)}


def draws(seed, n, scale=1.0):
    return (np.random.default_rng(seed).standard_normal((n,) + ROW) * scale).astype(np.float32)


X, TARGET = draws(0, 3), [0, 2, 1]
BASE, BASE_SET = draws(1, 1, 0.3), draws(2, 5, 0.3)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("func", FUNCS)
def test_deeplift_with_a_custom_function_matches_captum(net, models, exporter, func):
    got, delta = onnxplain.Explainer(models[exporter], "deeplift").explain(
        X, target=TARGET, baselines=BASE, custom_attribution_func=func, return_convergence_delta=True)
    want, want_delta = DeepLift(net).attribute(torch.from_numpy(X), torch.from_numpy(BASE), target=TARGET,
                                               custom_attribution_func=func, return_convergence_delta=True)
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(delta, want_delta.detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("func", FUNCS)
def test_deeplift_shap_applies_it_per_baseline_then_averages_as_captum(net, models, func):
    onx = models["torchscript"]
    want, want_delta = DeepLiftShap(net).attribute(torch.from_numpy(X), torch.from_numpy(BASE_SET), target=TARGET,
                                                   custom_attribution_func=func, return_convergence_delta=True)
    want_delta = want_delta.detach().numpy().reshape(len(X), len(BASE_SET)).mean(axis=1)   # ours: per row
    whole = onnxplain.Explainer(onx, "deeplift_shap")
    split = onnxplain.Explainer(onx, "deeplift_shap", memory_budget=30_000)   # parts of baselines, weighted
    assert split.estimate(X, target=TARGET, baselines=BASE_SET, custom_attribution_func=func).runs > 2
    for ex in (whole, split):
        got, delta = ex.explain(X, target=TARGET, baselines=BASE_SET, custom_attribution_func=func,
                                return_convergence_delta=True)
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(delta, want_delta, rtol=1e-4, atol=1e-5)


def test_the_graph_returns_the_multipliers_per_pair(net, models):
    """The multipliers output (N, K, *row) of the graph: Captum's DeepLift with multiply_by_inputs=False, per
    baseline."""
    ex = onnxplain.Explainer(models["torchscript"], "deeplift_shap")
    tw = np.zeros((len(X), 3), np.float32)
    tw[np.arange(len(X)), TARGET] = 1
    got = ex.session.run({"x": X, "target_weights": tw, "baselines": BASE_SET[:2]}, ["multipliers"])["multipliers"]
    assert got.shape == (len(X), 2) + ROW
    for k in range(2):
        want = DeepLift(net, multiply_by_inputs=False).attribute(torch.from_numpy(X), torch.from_numpy(BASE_SET[k:k + 1]),
                                                                 target=TARGET)
        np.testing.assert_allclose(got[:, k], want.detach().numpy(), rtol=1e-4, atol=1e-6)


def test_where_a_callable_cannot_go_it_is_refused(models, tmp_path, capsys):
    onx = models["torchscript"]
    with pytest.raises(ValueError, match="a standalone graph cannot hold it.*multipliers"):
        onnxplain.convert(onx, str(tmp_path / "g.onnx"), "deeplift", custom_attribution_func=squared_difference)
    assert not (tmp_path / "g.onnx").exists()
    (tmp_path / "m.onnx").write_bytes(onx)
    np.save(tmp_path / "x.npy", X)
    assert main(["explain", str(tmp_path / "m.onnx"), str(tmp_path / "x.npy"), "--method", "deeplift", "--target", "0",
                 "--custom-attribution-func", "squared_difference", "--out", str(tmp_path / "a.npy")]) != 0
    assert "the command line and server requests cannot carry a function" in capsys.readouterr().err
    interface = Interface(onnxplain.Explainer(onx, "deeplift_shap"))
    with pytest.raises(RequestError, match=r"unknown input\(s\) \['custom_attribution_func'\]"):
        interface.call({"x": ("FP32", X), "custom_attribution_func": ("BYTES", np.array([b"f"]))}, None)
    with pytest.raises(ValueError, match="noise tunnel"):
        onnxplain.Explainer(onx, "deeplift", noise_tunnel="smoothgrad").explain(
            X, target=0, custom_attribution_func=squared_difference, nt_samples=2)


@pytest.mark.parametrize("func, message", [
    ("not callable", "must be a Python callable"),
    (lambda a, b, c, d: a, "must take 1 to 3 arguments"),
    (lambda m: (m[0], m[0]), "must return a tuple of 1 array"),
    (lambda m: (m[0][:1],), "shaped like the multipliers"),
])
def test_bad_functions_are_refused_with_what_was_expected(models, func, message):
    ex = onnxplain.Explainer(models["torchscript"], "deeplift")
    with pytest.raises(ValueError, match=message):
        ex.explain(X, target=0, custom_attribution_func=func)

