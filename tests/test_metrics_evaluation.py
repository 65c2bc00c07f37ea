"""``onnxplain.metrics.evaluate``: several metrics of the same attributions in one Python call.

Its numbers are held against the individual functions of :mod:`onnxplain.metrics` called here on the same
arrays (those are held against Captum and brute-force references in tests/test_metrics.py), computed
attributions against :meth:`onnxplain.Explainer.explain`, ``target="pred"`` against the PyTorch model's own
argmax, and :meth:`MetricsReport.save` against reading the file back.  Bad arguments are errors before
anything runs, leaving the folder as it was.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import models as zoo
import onnxplain
from onnxplain import metrics
from onnxplain.metrics.perturbations import gaussian_perturbation, uniform_perturbation

ROWS = 5


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """The tanh MLP (6 features, 4 classes; TorchScript exporter), five rows, attributions with ties."""
    model, row = zoo.mlp("tanh", seed=3)
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    path.write_bytes(zoo.export(model, row))
    rng = np.random.default_rng(7)
    x = rng.standard_normal((ROWS,) + row).astype(np.float32)
    attr = np.round(rng.standard_normal(x.shape), 0).astype(np.float32)
    return str(path), model, x, attr


def _same(ours, ref, what):
    """evaluate and the metric's own function ran the same code on the same arrays: equal to rounding."""
    np.testing.assert_allclose(np.asarray(ours, np.float64), np.asarray(ref, np.float64), rtol=1e-12, atol=0,
                               err_msg=what)


def test_given_attributions_equal_the_individual_metrics(mlp):
    path, _, x, attr = mlp
    target = [0, 3, 1, 2, 3]
    base = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    mask = np.array([[0, 0, 1, 2, 2, 1]])
    report = metrics.evaluate(path, x, attr, target=target, method="saliency", baselines=base, feature_mask=mask,
                              steps=4, n_perturb_samples=6, perturb_seed=5, perturb_stdev=0.01, normalize=True,
                              perturb_radius=0.05, norm_ord=1)
    assert list(report.results) == list(metrics.METRIC_NAMES)
    for name, fn in (("deletion", metrics.deletion), ("insertion", metrics.insertion)):
        ref = fn(path, x, attr, target=target, baselines=base, steps=4, feature_mask=mask)
        got = report.results[name]
        _same(got.values, ref.values, f"{name} curve")
        _same(got.fractions, ref.fractions, f"{name} fractions")
        _same(report.per_row()[name], ref.area, f"{name} area")
        assert got.values.shape == (ROWS, 5)
    _same(report.results["infidelity"],
          metrics.infidelity(path, gaussian_perturbation(0.01, seed=5), x, attr, target=target, n_perturb_samples=6,
                             normalize=True), "infidelity")
    sal = onnxplain.Explainer(path, "saliency")
    _same(report.results["sensitivity_max"],
          metrics.sensitivity_max(sal, x, uniform_perturbation(seed=5), perturb_radius=0.05, n_perturb_samples=6,
                                  norm_ord=1, target=target), "sensitivity_max")
    assert report.method == "saliency" and report.target == target and report.rows == ROWS
    # the table: a line per row with its target and values, then the means
    lines = report.table().splitlines()
    header = next(k for k, s in enumerate(lines) if s.startswith("row"))
    values = list(report.per_row().values())
    for r in range(ROWS):
        cells = lines[header + 1 + r].split()
        assert cells[:2] == [str(r), str(target[r])]
        np.testing.assert_allclose([float(c) for c in cells[2:]], [v[r] for v in values], rtol=1e-5)
    assert lines[header + 1 + ROWS].split()[0] == "mean"


def test_computed_attributions_through_an_explainer_and_pred_targets(mlp):
    """No attributions: the Explainer's own method explains first; "pred" is each row's argmax of the PyTorch
    model's output."""
    path, model, x, _ = mlp
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(dim=1).tolist()
    ig = onnxplain.Explainer(path, "integrated_gradients")
    report = metrics.evaluate(ig, x, metrics="insertion,sensitivity_max", target="pred",
                              params={"n_steps": 6}, n_perturb_samples=3)
    assert report.target == pred and list(report.results) == ["insertion", "sensitivity_max"]
    attr = ig.explain(x, target=pred, n_steps=6)
    _same(report.results["insertion"].values, metrics.insertion(path, x, attr, target=pred).values, "insertion")
    _same(report.results["sensitivity_max"],
          metrics.sensitivity_max((ig, {"n_steps": 6}), x, n_perturb_samples=3, target=pred), "sensitivity_max")


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_save_round_trips(mlp, tmp_path, suffix):
    path, _, x, attr = mlp
    report = metrics.evaluate(path, x, attr, ("deletion", "infidelity"), target=2, steps=3, n_perturb_samples=2)
    out = tmp_path / f"m{suffix}"
    assert report.save(out) == str(out)
    assert sorted(os.listdir(tmp_path)) == [out.name]       # no temporary file left beside it
    curve = report.results["deletion"]
    if suffix == ".npz":
        with np.load(out) as f:
            back = {k: f[k] for k in f.files}
        assert sorted(back) == ["deletion_area", "deletion_fractions", "deletion_values", "infidelity"]
        _same(back["deletion_values"], curve.values, "curve")
        _same(back["deletion_fractions"], curve.fractions, "fractions")
        _same(back["deletion_area"], curve.area, "area")
        _same(back["infidelity"], report.results["infidelity"], "infidelity")
    else:
        doc = json.loads(out.read_text())
        assert doc["model"] == path and doc["target"] == 2 and doc["method"] is None
        _same(doc["metrics"]["deletion"]["values"], curve.values, "curve")
        _same(doc["metrics"]["deletion"]["area"], curve.area, "area")
        _same(doc["metrics"]["infidelity"], report.results["infidelity"], "infidelity")


def test_a_failed_picture_leaves_no_report_behind(mlp, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from onnxplain import viz
    path, _, x, attr = mlp

    def broken(figure, where):
        open(where, "wb").close()          # a half-written picture
        raise OSError("disk full")
    monkeypatch.setattr(viz, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        metrics.evaluate(path, x, attr, "deletion", target=1, steps=2, out=tmp_path / "m.json",
                         plot=tmp_path / "c.png")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kwargs, fragments", [
    ({"metrics": "deletion,aopc"}, ["unknown metric", "'aopc'"]),
    ({"metrics": "infidelity", "steps": 4}, ["steps applies to deletion and insertion", "metrics"]),
    ({"metrics": "deletion", "method": "saliency"}, ["method", "no method runs"]),
    ({"metrics": "deletion", "params": {"n_steps": 4}}, ["parameter n_steps", "no method runs"]),
    ({"metrics": "infidelity", "baselines": 0.5}, ["baselines", "by neither"]),
    ({"perturb_radius": -1.0}, ["perturb_radius must be a number >= 0"]),
    ({"n_perturb_samples": 0}, ["n_perturb_samples must be a positive int"]),
    ({"norm_ord": "nuc"}, ["norm_ord must be 'fro' or a number"]),
    ({"out": "m.txt"}, [".json or .npz"]),
    ({"metrics": "infidelity", "plot": "c.png"}, ["deletion or insertion"]),
    ({"attributions": "short"}, ["shape (5, 6)", "(2, 6)"]),
    ({"target": 1, "target_weights": np.ones((ROWS, 4), np.float32)}, ["not both"]),
])
def test_bad_arguments_fail_before_anything_runs(mlp, tmp_path, monkeypatch, kwargs, fragments):
    path, _, x, attr = mlp
    monkeypatch.chdir(tmp_path)
    if kwargs.get("attributions") == "short":
        np.save(tmp_path / "short.npy", attr[:2])
        kwargs = {**kwargs, "attributions": str(tmp_path / "short.npy")}
    if "plot" in kwargs:
        pytest.importorskip("matplotlib")
    before = sorted(os.listdir(tmp_path))
    call = {"attributions": attr, "target": 1, **kwargs}
    with pytest.raises(ValueError) as info:
        metrics.evaluate(path, x, **call)
    for f in fragments:
        assert f in str(info.value), (f, str(info.value))
    assert sorted(os.listdir(tmp_path)) == before


def test_an_explainer_takes_its_own_options(mlp):
    path, _, x, attr = mlp
    with pytest.raises(ValueError, match="method, memory_budget: give them to the Explainer"):
        metrics.evaluate(onnxplain.Explainer(path, "saliency"), x, attr, target=1, method="ig",
                         memory_budget="64MiB")
