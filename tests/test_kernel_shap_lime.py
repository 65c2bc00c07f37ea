"""kernel_shap and lime: surrogate linear models over coalitions of feature groups.

Held against brute-force Shapley values written in tests/checks.py (KernelSHAP on a
linear model, and with every coalition enumerated on a nonlinear MLP), against
the Shapley kernel's formula written here, against Captum's ``KernelShap`` and
``Lime`` fed the same coalitions (a replaying ``perturb_func``), against
scikit-learn's ``Lasso`` on the same weighted data, and against the exact
efficiency property of the constrained regression.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from math import comb

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from captum._utils.models.linear_model import SkLearnLasso, SkLearnLinearRegression, SkLearnRidge
from captum.attr import KernelShap, Lime
from onnx.reference import ReferenceEvaluator
from torch import nn

import models as zoo
import onnxplain
from checks import assert_close, assert_refused_before_running, brute_force_shapley
from onnxplain.kernels.coalitions import (all_coalitions, draw_bernoulli_coalitions, draw_shapley_coalitions,
                                          shapley_kernel_weights, shapley_size_distribution)
from onnxplain.methods.perturbation import TARGET_OUTPUT
from onnxplain.methods.surrogate import kernel_shap_coalitions

RTOL = 1e-5
GROUPS = np.array([0, 0, 1, 2, 3, 3])          # 4 groups over the MLP's 6 features


# ---------------------------------------------------------------------- models (module-scoped)
@pytest.fixture(scope="module")
def mlp():
    module, row = zoo.mlp("tanh", "softmax")
    x = torch.randn((4,) + row, generator=torch.Generator().manual_seed(3))
    return module, zoo.export(module, row), x


@pytest.fixture(scope="module")
def linear():
    torch.manual_seed(1)
    module = nn.Linear(7, 3).eval()
    return module, zoo.export(module, (7,)), torch.randn(5, 7, generator=torch.Generator().manual_seed(2))


def scores(module, target):
    def f(v):
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))).double()[:, target].numpy()
    return f


def replay(z, full_and_empty: bool = False):
    """A Captum ``perturb_func`` (a generator function) yielding the coalitions ``z`` (KernelShap's: after the
    full and the empty coalition it always yields first)."""
    def perturb(original, **kwargs):
        if full_and_empty:
            yield torch.ones(1, z.shape[1], dtype=torch.long)
            yield torch.zeros(1, z.shape[1], dtype=torch.long)
        for row in z:
            yield torch.from_numpy(row.astype(np.int64))[None]
    return perturb


@contextlib.contextmanager
def quiet():
    """Captum warns that each example of a batch trains its own surrogate: expected here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ---------------------------------------------------------------------- the draws
def test_shapley_kernel_weights_and_size_distribution_follow_the_formula():
    for g in (2, 3, 7, 12):
        sizes = np.arange(1, g)
        expected = [(g - 1) / (comb(g, k) * k * (g - k)) for k in sizes]
        np.testing.assert_allclose(shapley_kernel_weights(g, sizes), expected, rtol=1e-12)
        # a size's probability is its weight times the coalitions of that size, normalised
        p = np.array([comb(g, k) * w for k, w in zip(sizes, expected)])
        np.testing.assert_allclose(shapley_size_distribution(g)[1:g], p / p.sum(), rtol=1e-12)
    g, count = 9, 40000
    z = draw_shapley_coalitions(g, count, np.random.default_rng(0), paired=False)
    freq = np.bincount(z.sum(axis=1), minlength=g + 1) / count
    p = shapley_size_distribution(g)
    np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(p * (1 - p) / count).max())
    # members uniform within a size: every group equally often among size-2 coalitions
    pairs = z[z.sum(axis=1) == 2]
    np.testing.assert_allclose(pairs.mean(axis=0), 2 / g, atol=0.02)
    paired = draw_shapley_coalitions(g, 11, np.random.default_rng(1))
    assert paired.shape == (11, g) and ((paired[0:10:2] + paired[1:10:2]) == 1).all()
    assert ((paired.sum(1) >= 1) & (paired.sum(1) <= g - 1)).all()
    bern = draw_bernoulli_coalitions(5, 20000, np.random.default_rng(2))
    np.testing.assert_allclose(bern.mean(axis=0), 0.5, atol=0.02)
    assert {tuple(r) for r in all_coalitions(4)} == {tuple((c >> np.arange(4)) & 1) for c in range(1, 15)}


# ---------------------------------------------------------------------- KernelSHAP: exact values
@pytest.mark.parametrize("seed,paired", [(0, True), (5, False)])
def test_kernel_shap_is_exact_on_a_linear_model(linear, seed, paired):
    module, onx, x = linear
    base = np.linspace(-1, 1, 7, dtype=np.float32)
    ref = brute_force_shapley(scores(module, 2), x.numpy(), base, np.arange(7), 7)
    a = onnxplain.Explainer(onx, "kernel_shap").explain(x.numpy(), target=2, baselines=base, n_samples=30,
                                                        seed=seed, paired=paired)
    assert_close(a, ref, RTOL)


def test_kernel_shap_enumerates_every_coalition_into_exact_shapley_values(mlp):
    module, onx, x = mlp
    base = np.full(6, -0.4, np.float32)
    ref = brute_force_shapley(scores(module, 1), x.numpy(), base, GROUPS, 4)[:, GROUPS]
    ex = onnxplain.Explainer(onx, "kernel_shap")
    a = ex.explain(x.numpy(), target=1, feature_mask=GROUPS[None], baselines=base, n_samples=16)
    assert_close(a, ref, RTOL)
    chunked = onnxplain.Explainer(onx, "kernel_shap", memory_budget=2).explain(
        x.numpy(), target=1, feature_mask=GROUPS[None], baselines=base, n_samples=100, perturbations_per_eval=3)
    assert_close(chunked, ref, RTOL)
    # per-row masks (each row its own grouping) take the per-row fill path
    masks = np.stack([np.roll(GROUPS, r) for r in range(4)])
    per_row = ex.explain(x.numpy(), target=1, feature_mask=masks, baselines=base, n_samples=16)
    for r in range(4):
        one = brute_force_shapley(scores(module, 1), x.numpy()[r:r + 1], base, masks[r], 4)[:, masks[r]]
        assert_close(per_row[r:r + 1], one, RTOL)


@pytest.mark.parametrize("seed,n_samples,paired", [(0, 25, True), (1, 9, False), (2, 4, True), (3, 200, True)])
def test_kernel_shap_efficiency_is_exact_for_any_draw(mlp, seed, n_samples, paired):
    """sum(phi) = f(x) - f(baselines) even with fewer coalitions than features (an underdetermined fit)."""
    module, onx, x = mlp
    base = np.full(6, 0.3, np.float32)
    a = onnxplain.Explainer(onx, "kernel_shap").explain(x.numpy(), target=0, baselines=base, n_samples=n_samples,
                                                        seed=seed, paired=paired)
    f = scores(module, 0)
    gap = f(x.numpy()) - f(np.broadcast_to(base, x.shape))
    np.testing.assert_allclose(a.sum(axis=1), gap, rtol=1e-5, atol=1e-6 * np.abs(gap).max())


def test_kernel_shap_equals_captum_fed_the_same_coalitions(mlp):
    """Captum fits an unconstrained regression with weight 1e6 on the empty and full coalitions; the
    constrained fit is its limit, so the two agree to about 1e-6 of the attributions' scale."""
    module, onx, x = mlp
    ex = onnxplain.Explainer(onx, "kernel_shap")
    for mask, n_groups, n_samples in [(None, 6, 30), (GROUPS[None], 4, 12)]:     # fewer than 2**G: drawn
        z, _ = kernel_shap_coalitions(n_groups, n_samples, np.random.default_rng(7))
        assert len(z) == n_samples - 2
        algo = KernelShap(module)
        algo.perturb_func = replay(z, full_and_empty=True)
        with quiet():
            ref = algo.attribute(x, target=3, n_samples=n_samples, baselines=0.2,
                                 feature_mask=None if mask is None else torch.from_numpy(mask))
        got = ex.explain(x.numpy(), target=3, n_samples=n_samples, seed=7, feature_mask=mask, baselines=0.2)
        assert_close(got, ref, 1e-4)


# ---------------------------------------------------------------------- LIME vs Captum and scikit-learn
LIME_CASES = [
    ("lasso", {}, dict()),
    ("ridge", dict(alpha=0.5), dict(kernel_width=0.7)),
    ("linear", {}, dict(distance_mode="euclidean", kernel_width=2.0)),
    ("lasso", dict(alpha=0.002), dict(distance_mode="euclidean")),
]
SURROGATES = {"lasso": SkLearnLasso, "ridge": SkLearnRidge, "linear": SkLearnLinearRegression}


def captum_similarity(kind="cosine", width=1.0):
    from captum.attr._core.lime import get_exp_kernel_similarity_function
    return get_exp_kernel_similarity_function(kind, width)


@pytest.mark.parametrize("model,model_kwargs,params", LIME_CASES)
def test_lime_equals_captum_fed_the_same_coalitions(mlp, model, model_kwargs, params):
    module, onx, x = mlp
    n_samples, seed = 40, 11
    z = draw_bernoulli_coalitions(4, n_samples, np.random.default_rng(seed))
    alpha = model_kwargs.get("alpha", 0.01)
    surrogate = SURROGATES[model](**({"alpha": alpha} if model != "linear" else {}))
    algo = Lime(module, interpretable_model=surrogate, perturb_func=replay(z),
                similarity_func=captum_similarity(params.get("distance_mode", "cosine"),
                                                  params.get("kernel_width", 1.0)))
    with quiet():
        ref = algo.attribute(x, target=2, n_samples=n_samples, feature_mask=torch.from_numpy(GROUPS)[None],
                             baselines=-0.1)
    got = onnxplain.Explainer(onx, "lime").explain(x.numpy(), target=2, n_samples=n_samples, seed=seed,
                                                   feature_mask=GROUPS[None], baselines=-0.1,
                                                   interpretable_model=model, alpha=alpha, **params)
    # Captum fits in float32 (and its lasso stops at scikit-learn's default tolerance 1e-4)
    assert_close(got, ref, 2e-3 if model == "lasso" else 1e-4)


def test_lime_defaults_are_captums(mlp):
    module, onx, x = mlp
    z = draw_bernoulli_coalitions(6, 25, np.random.default_rng(4))
    with quiet():
        ref = Lime(module, perturb_func=replay(z)).attribute(x, target=1)         # n_samples 25, lasso 0.01
    got = onnxplain.Explainer(onx, "lime").explain(x.numpy(), target=1, seed=4)
    assert_close(got, ref, 2e-3)


def test_lime_lasso_equals_scikit_learn_on_the_same_weighted_data(mlp):
    from sklearn.linear_model import Lasso
    module, onx, x = mlp
    n_samples, seed, alpha, width = 60, 3, 0.001, 0.8
    z = draw_bernoulli_coalitions(6, n_samples, np.random.default_rng(seed))
    got = onnxplain.Explainer(onx, "lime").explain(x.numpy(), target=0, n_samples=n_samples, seed=seed,
                                                   alpha=alpha, kernel_width=width, baselines=0.5)
    f = scores(module, 0)
    for r in range(x.shape[0]):
        xr = x.numpy()[r].astype(np.float64)
        perturbed = np.where(z == 1, xr, 0.5)
        cos = perturbed @ xr / (np.linalg.norm(perturbed, axis=1) * np.linalg.norm(xr))
        w = np.exp(-(1 - cos) ** 2 / (2 * width ** 2))
        fit = Lasso(alpha=alpha, tol=1e-12, max_iter=100000).fit(z.astype(np.float64), f(perturbed),
                                                                  sample_weight=w)
        assert_close(got[r], fit.coef_, 1e-5, scale=np.abs(fit.coef_).max())


# ---------------------------------------------------------------------- inputs of other kinds
class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.fa, self.fb, self.head = nn.Linear(3, 5), nn.Linear(4, 5), nn.Linear(5, 2)

    def forward(self, a, b):
        return self.head(torch.tanh(self.fa(a)) * torch.sigmoid(self.fb(b.flatten(1))))


@pytest.fixture(scope="module")
def two_inputs():
    module = TwoInputs().eval()
    g = torch.Generator().manual_seed(11)
    a, b = torch.randn(3, 3, generator=g), torch.randn(3, 2, 2, generator=g)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (a, b), buf, dynamo=False, opset_version=17, input_names=["a", "b"],
                          output_names=["y"], dynamic_axes={"a": {0: "n"}, "b": {0: "n"}, "y": {0: "n"}})
    return module, buf.getvalue(), a, b


def test_two_inputs_with_groups_shared_across_inputs(two_inputs):
    module, onx, a, b = two_inputs
    ma, mb = np.array([[0, 1, 1]]), np.array([[[2, 3], [3, 0]]])       # group 0 and 3 span both inputs
    feeds = {"a": a.numpy(), "b": b.numpy()}
    z = draw_bernoulli_coalitions(4, 30, np.random.default_rng(2))
    masks = (torch.from_numpy(ma), torch.from_numpy(mb))
    with quiet():
        ref = Lime(module, interpretable_model=SkLearnRidge(alpha=0.1), perturb_func=replay(z)).attribute(
            (a, b), target=1, n_samples=30, feature_mask=masks, baselines=(0.1, -0.2))
    got = onnxplain.Explainer(onx, "lime").explain(feeds, target=1, n_samples=30, seed=2, feature_mask=(ma, mb),
                                                   baselines=(0.1, -0.2), interpretable_model="ridge", alpha=0.1)
    scale = max(float(ref[0].abs().max()), float(ref[1].abs().max()))
    assert_close(got["a"], ref[0], 1e-4, scale=scale)
    assert_close(got["b"], ref[1], 1e-4, scale=scale)
    exact = onnxplain.Explainer(onx, "kernel_shap").explain(feeds, target=1, n_samples=16, feature_mask={"a": ma, "b": mb},
                                                            baselines=(0.1, -0.2))

    def f(flat):   # the two inputs as one row of 7 features
        with torch.no_grad():
            fa, fb = torch.from_numpy(flat[:, :3].astype(np.float32)), torch.from_numpy(flat[:, 3:].astype(np.float32))
            return module(fa, fb.reshape(-1, 2, 2)).double()[:, 1].numpy()
    flat = np.concatenate([a.numpy(), b.numpy().reshape(3, 4)], axis=1)
    labels = np.concatenate([ma[0], mb.reshape(-1)])
    base = np.array([0.1] * 3 + [-0.2] * 4, np.float32)
    ref = brute_force_shapley(f, flat, base, labels, 4)[:, labels]
    assert_close(np.concatenate([exact["a"], exact["b"].reshape(3, 4)], axis=1), ref, RTOL)


class Tokens(nn.Module):
    """int64 ids -> embedding -> mean -> tanh -> linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.embed, self.head = nn.Embedding(20, 6, padding_idx=0), nn.Linear(6, 3)

    def forward(self, ids):
        return self.head(torch.tanh(self.embed(ids).mean(dim=1)))


@pytest.fixture(scope="module")
def tokens():
    module = Tokens().eval()
    ids = torch.tensor([[3, 7, 7, 12, 0], [5, 1, 19, 2, 8]], dtype=torch.int64)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (ids,), buf, dynamo=False, opset_version=17, input_names=["ids"],
                          output_names=["y"], dynamic_axes={"ids": {0: "n"}, "y": {0: "n"}})
    return module, buf.getvalue(), ids


def test_token_ids_with_a_padding_id_baseline(tokens):
    module, onx, ids = tokens
    words = np.array([[0, 1, 1, 2, 3]])

    def f(v):
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64))).double()[:, 2].numpy()
    ref = brute_force_shapley(f, ids.numpy(), 0, words[0], 4)[:, words[0]]
    got = onnxplain.Explainer(onx, "kernel_shap").explain(ids.numpy(), target=2, baselines=0, feature_mask=words,
                                                          n_samples=16)
    assert got.dtype == np.float32
    assert_close(got, ref, RTOL)
    z = draw_bernoulli_coalitions(4, 20, np.random.default_rng(9))
    with quiet():
        lime = Lime(module, interpretable_model=SkLearnRidge(alpha=0.05), perturb_func=replay(z)).attribute(
            ids, target=2, n_samples=20, baselines=0, feature_mask=torch.from_numpy(words))
    got = onnxplain.Explainer(onx, "lime").explain(ids.numpy(), target=2, baselines=0, feature_mask=words,
                                                   n_samples=20, seed=9, interpretable_model="ridge", alpha=0.05)
    assert_close(got, lime, 1e-4)


def test_dynamo_export_and_background_baselines(mlp):
    from vision_models import export_dynamo
    module, _, x = mlp
    onx = export_dynamo(module, (6,))
    background = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    got = onnxplain.Explainer(onx, "kernel_shap").explain(x.numpy(), target=1, feature_mask=GROUPS[None],
                                                          n_samples=16, baselines=background, n_baselines=3, seed=1)
    from onnxplain.methods.base import draw_rows
    picked = draw_rows(5, 3, 1)
    ref = np.mean([brute_force_shapley(scores(module, 1), x.numpy(), background[i], GROUPS, 4) for i in picked],
                  axis=0)[:, GROUPS]
    assert_close(got, ref, RTOL)


# ---------------------------------------------------------------------- errors, CLI, graph
BAD = [
    ("kernel_shap", dict(n_samples=1), "n_samples must be an int >= 2"),
    ("kernel_shap", dict(n_samples=3.0), "n_samples must be an int >= 2"),
    ("kernel_shap", dict(paired="yes"), "paired must be True or False"),
    ("kernel_shap", dict(feature_mask=np.zeros((1, 6))), "integer group ids"),
    ("lime", dict(n_samples=0), "n_samples must be a positive int"),
    ("lime", dict(alpha=-1.0), "alpha must be a finite number >= 0"),
    ("lime", dict(kernel_width=0.0), "kernel_width must be a finite number > 0"),
    ("lime", dict(interpretable_model="svm"), "interpretable_model must be one of lasso, ridge, linear"),
    ("lime", dict(distance_mode="l1"), "distance_mode must be one of cosine, euclidean"),
    ("lime", dict(baselines=np.zeros((2, 5))), "baselines for input 'x'"),
]


@pytest.mark.parametrize("method,kwargs,match", BAD)
def test_bad_arguments_fail_before_anything_runs(mlp, method, kwargs, match):
    _, onx, x = mlp
    assert_refused_before_running(onnxplain.Explainer(onx, method), match, x.numpy(), target=0, **kwargs)


def test_cli_explain_equals_the_api(mlp, tmp_path):
    from onnxplain.cli import main
    _, onx, x = mlp
    model, rows, out = tmp_path / "m.onnx", tmp_path / "x.npy", tmp_path / "a.npy"
    model.write_bytes(onx)
    np.save(rows, x.numpy())
    for method, flags, params in [("kernel_shap", ["--n-samples", "12", "--paired", "false", "--seed", "3"],
                                   dict(n_samples=12, paired=False, seed=3)),
                                  ("lime", ["--interpretable-model", "ridge", "--alpha", "0.2", "--kernel-width",
                                            "0.5", "--seed", "1"],
                                   dict(interpretable_model="ridge", alpha=0.2, kernel_width=0.5, seed=1))]:
        assert main(["explain", str(model), str(rows), "-m", method, "--target", "1", *flags, "--out", str(out)]) == 0
        expected = onnxplain.explain(onx, x.numpy(), method=method, target=1, **params)
        np.testing.assert_allclose(np.load(out), expected, rtol=1e-6, atol=1e-7)
    assert main(["inspect", str(model), "--json"]) == 0


def test_inspect_lists_both_methods(mlp):
    _, onx, _ = mlp
    methods = onnxplain.inspect(onx)["methods"]
    for name in ("kernel_shap", "lime"):
        assert methods[name]["available"] and methods[name]["forward_only"]


def test_converted_graph_is_the_forward_pass_and_runs_in_the_reference_evaluator(mlp, tmp_path):
    module, onx, x = mlp
    for method in ("kernel_shap", "lime"):
        path = tmp_path / f"{method}.onnx"
        graph = onnxplain.convert(onx, path, method=method)
        onnx.checker.check_model(graph, full_check=True)
        assert all(n.domain in ("", "ai.onnx") for n in graph.graph.node)
        assert TARGET_OUTPUT in [o.name for o in graph.graph.output]
        tw = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
        feeds = {"x": x.numpy(), "target_weights": tw}
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run([TARGET_OUTPUT], feeds)[0]
        ref = ReferenceEvaluator(str(path)).run([TARGET_OUTPUT], feeds)[0]
        with torch.no_grad():
            expected = (module(x).numpy() * tw).sum(1)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ref, expected, rtol=1e-5, atol=1e-6)
