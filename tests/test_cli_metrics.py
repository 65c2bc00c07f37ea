"""``onnxplain metrics``, through ``main(argv)``: the wiring of the command line to :mod:`onnxplain.metrics`.

The numbers the command prints and writes are held against the Python functions called here on the same
arrays (those functions are held against Captum and brute-force references in tests/test_metrics.py), with
the perturbation functions the command documents built here from their seeds; attributions it computes are
held against :meth:`onnxplain.Explainer.explain`.  Bad input is held against exit code 2, one line on
stderr, and a folder left as it was.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import models as zoo
import onnxplain
from onnxplain import metrics
from onnxplain.cli import main
from onnxplain.metrics.perturbations import gaussian_perturbation, uniform_perturbation
from vision_models import export_dynamo

N_ROWS = 3


@pytest.fixture(autouse=True)
def _in_a_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """The pooled CNN (3x10x9 inputs, 5 classes; dynamo exporter), three rows, attributions with ties."""
    model, row = zoo.pool_cnn()
    folder = tmp_path_factory.mktemp("cnn")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N_ROWS,) + row).astype(np.float32)
    attr = np.round(rng.standard_normal(x.shape), 0).astype(np.float32)
    files = {"model": folder / "cnn.onnx", "x": folder / "x.npy", "attr": folder / "attr.npy"}
    files["model"].write_bytes(export_dynamo(model, row))
    np.save(files["x"], x)
    np.save(files["attr"], attr)
    return {k: str(v) for k, v in files.items()}, x, attr


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """The ReLU MLP (6 features, 4 classes; TorchScript exporter), four rows."""
    model, row = zoo.mlp("relu")
    folder = tmp_path_factory.mktemp("mlp")
    x = np.random.default_rng(0).standard_normal((4,) + row).astype(np.float32)
    files = {"model": folder / "mlp.onnx", "x": folder / "x.npy"}
    files["model"].write_bytes(zoo.export(model, row))
    np.save(files["x"], x)
    return {k: str(v) for k, v in files.items()}, x


def _run(argv, capsys) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _fails(capsys, argv, *fragments):
    """main(argv) exits 2 with one line on stderr that contains every fragment, and no traceback."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxplain: error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def _same(ours, ref, what):
    """The command and the Python function ran the same code on the same arrays: equal to rounding."""
    np.testing.assert_allclose(np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64),
                               rtol=1e-12, atol=0, err_msg=what)


# ---------------------------------------------------------------------- numbers against the Python functions
def test_given_attributions_per_row_targets_baselines_and_mask_vs_python(cnn, tmp_path, capsys):
    """Attributions from a file, one target per row from a file, per-row baselines and superpixel groups for
    the curves, all four metrics; sensitivity_max explains with --method saliency."""
    files, x, attr = cnn
    rng = np.random.default_rng(4)
    targets = np.array([2, 0, 4])
    base = rng.standard_normal(x.shape).astype(np.float32)
    h, w = x.shape[2:]
    mask = ((np.arange(h)[:, None] // 2) * 10 + np.arange(w)[None, :] // 3)[None, None]
    np.save(tmp_path / "t.npy", targets)
    np.save(tmp_path / "b.npy", base)
    np.save(tmp_path / "mask.npy", mask)
    out = _run(["metrics", files["model"], files["x"], "--attributions", files["attr"], "--target-file", "t.npy",
                "--baseline", "b.npy", "--feature-mask", "mask.npy", "--steps", "7", "--n-perturb-samples", "4",
                "-m", "saliency", "--out", "m.json"], capsys)
    doc = json.loads((tmp_path / "m.json").read_text())
    got = doc["metrics"]
    t = targets.tolist()
    for name, fn in (("deletion", metrics.deletion), ("insertion", metrics.insertion)):
        ref = fn(files["model"], x, attr, target=t, baselines=base, steps=7, feature_mask=mask)
        _same(got[name]["values"], ref.values, f"{name} curve")
        _same(got[name]["fractions"], ref.fractions, f"{name} fractions")
        _same(got[name]["area"], ref.area, f"{name} area")
        assert len(ref.fractions) == 8
    _same(got["infidelity"], metrics.infidelity(files["model"], None, x, attr, target=t, n_perturb_samples=4),
          "infidelity")
    sal = onnxplain.Explainer(files["model"], "saliency")
    _same(got["sensitivity_max"], metrics.sensitivity_max(sal, x, n_perturb_samples=4, target=t), "sensitivity_max")
    assert doc["target"] == t and doc["method"] == "saliency" and doc["attributions"] == files["attr"]
    # the table: a line per row with its target and the four values, then the means
    lines = out.splitlines()
    header = lines.index(next(s for s in lines if s.startswith("row")))
    assert lines[header].split() == ["row", "target", "deletion", "AUC", "insertion", "AUC", "infidelity",
                                     "sensitivity_max"]
    values = [got["deletion"]["area"], got["insertion"]["area"], got["infidelity"], got["sensitivity_max"]]
    for r in range(N_ROWS):
        cells = lines[header + 1 + r].split()
        assert cells[:2] == [str(r), str(t[r])]
        np.testing.assert_allclose([float(c) for c in cells[2:]], [v[r] for v in values], rtol=1e-5)
    mean = lines[header + 1 + N_ROWS].split()
    assert mean[0] == "mean"
    np.testing.assert_allclose([float(c) for c in mean[1:]], [np.mean(v) for v in values], rtol=1e-5)


def test_computed_attributions_share_the_baseline_and_seeded_noise_vs_python(mlp, tmp_path, capsys):
    """No --attributions: integrated gradients (the default method) with --n-steps and --baseline, which is also
    the curves' baseline; the noise flags (seed, stdev, radius, norm, normalize, chunks) reach the metrics."""
    files, x = mlp
    _run(["metrics", files["model"], files["x"], "--target", "1", "--n-steps", "8", "--baseline", "0.25",
          "--n-perturb-samples", "5", "--max-examples-per-batch", "7", "--perturb-seed", "3",
          "--perturb-stdev", "0.05", "--normalize", "true", "--perturb-radius", "0.1", "--norm-ord", "1",
          "--out", "m.npz"], capsys)
    with np.load(tmp_path / "m.npz") as f:
        got = {k: f[k] for k in f.files}
    ig = onnxplain.Explainer(files["model"], "integrated_gradients")
    attr = ig.explain(x, target=1, n_steps=8, baselines=0.25)
    for name, fn in (("deletion", metrics.deletion), ("insertion", metrics.insertion)):
        ref = fn(files["model"], x, attr, target=1, baselines=0.25)
        _same(got[f"{name}_values"], ref.values, f"{name} curve")
        _same(got[f"{name}_area"], ref.area, f"{name} area")
        assert got[f"{name}_values"].shape == (4, 7)       # the default steps: one per feature (6)
    _same(got["infidelity"], metrics.infidelity(files["model"], gaussian_perturbation(0.05, seed=3), x, attr,
                                                target=1, n_perturb_samples=5, max_examples_per_batch=7,
                                                normalize=True), "infidelity")
    ref = metrics.sensitivity_max((ig, {"n_steps": 8, "baselines": 0.25}), x, uniform_perturbation(seed=3),
                                  perturb_radius=0.1, n_perturb_samples=5, norm_ord=1, max_examples_per_batch=7,
                                  target=1)
    _same(got["sensitivity_max"], ref, "sensitivity_max")
    # the seed matters: another seed gives other infidelity values (the flag is not ignored)
    other = metrics.infidelity(files["model"], gaussian_perturbation(0.05, seed=4), x, attr, target=1,
                               n_perturb_samples=5, normalize=True)
    assert not np.allclose(other, got["infidelity"])


def test_explain_output_feeds_metrics_and_pred_targets(mlp, tmp_path, capsys):
    """'explain --out attr.npz' (arrays named as the explanation graph names them, with delta) read back by
    --attributions; --target pred is each row's argmax of the model's output."""
    files, x = mlp
    pred = onnxplain.Explainer(files["model"], "saliency").forward(x)["y"].argmax(axis=1)
    _run(["explain", files["model"], files["x"], "-m", "ig", "--n-steps", "6", "--target", *map(str, pred),
          "--out", "attr.npz"], capsys)
    _run(["metrics", files["model"], files["x"], "--attributions", "attr.npz", "--target", "pred",
          "--metric", "insertion, deletion", "--steps", "3", "--out", "m.json"], capsys)
    got = json.loads((tmp_path / "m.json").read_text())
    assert got["target"] == pred.tolist() and list(got["metrics"]) == ["deletion", "insertion"]
    attr = onnxplain.Explainer(files["model"], "ig").explain(x, target=pred.tolist(), n_steps=6)
    ref = metrics.deletion(files["model"], x, attr, target=pred.tolist(), steps=3)
    _same(got["metrics"]["deletion"]["values"], ref.values, "deletion curve")


def test_plot_draws_the_curves(cnn, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    files, x, _ = cnn
    out = _run(["metrics", files["model"], files["x"], "--attributions", files["attr"], "--target", "1",
                "--metric", "deletion,insertion", "--steps", "10", "--plot", "curves.png"], capsys)
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and "wrote curves.png" in out


# ---------------------------------------------------------------------- errors, before anything runs
def test_bad_input_is_one_line_and_leaves_nothing(cnn, tmp_path, capsys):
    files, x, attr = cnn
    np.save(tmp_path / "narrow.npy", attr[:, :2])
    np.save(tmp_path / "short.npy", attr[:2])
    (tmp_path / "dir.json").mkdir()
    before = sorted(os.listdir(tmp_path))
    m, xi = files["model"], files["x"]
    given = [m, xi, "--attributions", files["attr"], "--target", "1"]
    _fails(capsys, ["metrics", m, xi, "--attributions", "narrow.npy", "--target", "1", "--out", "m.json"],
           "--attributions", "shape (3, 3, 10, 9)", "(3, 2, 10, 9)")
    _fails(capsys, ["metrics", m, xi, "--attributions", "short.npy", "--target", "1"], "shape (3, 3, 10, 9)")
    _fails(capsys, ["metrics", m, xi, "--attributions", "missing.npy", "--target", "1"], "missing.npy")
    _fails(capsys, ["metrics", *given, "--metric", "deletion,aopc"], "unknown metric", "'aopc'", "deletion")
    _fails(capsys, ["metrics", *given, "--out", "no/such/m.json"], "does not exist")
    _fails(capsys, ["metrics", *given, "--out", "m.txt"], ".json or .npz")
    _fails(capsys, ["metrics", *given, "--out", "dir.json"], "is a folder")
    _fails(capsys, ["metrics", *given, "--plot", "c.gif"], ".png")
    _fails(capsys, ["metrics", *given, "--metric", "infidelity", "--plot", "c.png"], "deletion or insertion")
    _fails(capsys, ["metrics", *given, "--metric", "infidelity", "--steps", "4"], "--steps", "deletion")
    _fails(capsys, ["metrics", *given, "--metric", "deletion", "-m", "saliency"], "no method runs")
    _fails(capsys, ["metrics", *given, "--target-file", "short.npy"], "--target and --target-file")
    _fails(capsys, ["metrics", *given, "--steps", "0", "--out", "m.json"], "steps must be a positive int")
    _fails(capsys, ["metrics", *given, "--n-perturb-samples", "0"], "n_perturb_samples must be a positive int")
    _fails(capsys, ["metrics", *given, "--perturb-radius", "-1"], "--perturb-radius must be a number >= 0")
    _fails(capsys, ["metrics", *given, "--norm-ord", "nuc"], "fro or a number")
    _fails(capsys, ["metrics", m, xi, "--target", "1", "-m", "saliency", "--n-steps", "4"], "n_steps")
    _fails(capsys, ["metrics", m, xi, "--attributions", files["attr"], "--metric", "deletion", "--out",
                    "m.json"], "target")
    assert sorted(os.listdir(tmp_path)) == before
