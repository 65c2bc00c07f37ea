"""Explainer.estimate: the rows and runs a call will take, for every method, and the progress bar.

The reference is the call itself: the session's ``run`` is wrapped and every
run and every row it executes is counted.  Rows of the expanded batch are read
off each run's feeds, by the graph contract of each method (integration steps
``alphas`` plus the input and baseline blocks, ``noise`` samples plus the
inputs, an (input, reference) pair per baseline).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import models as zoo
import onnxplain
from onnxplain.methods import perturbation
from onnxplain.runtime import bytes_per_row

N_ROWS = 5
BASELINES = np.random.default_rng(2).standard_normal((3, 6)).astype(np.float32)
PARAMS = {
    "integrated_gradients": dict(n_steps=9),
    "smoothgrad": dict(nt_samples=4, stdevs=0.1),
    "smoothgrad_sq": dict(nt_samples=3, stdevs=0.1),
    "vargrad": dict(nt_samples=3, stdevs=0.1),
    "deeplift_shap": dict(baselines=BASELINES),
    "gradient_shap": dict(baselines=BASELINES, n_samples=4),
    "layer_conductance": dict(n_steps=5),
    "internal_influence": dict(n_steps=5),
    "neuron_conductance": dict(n_steps=5, neuron_selector=(1,)),
    "occlusion": dict(sliding_window_shapes=(2,), strides=1),
    "shapley_sampling": dict(n_samples=3, seed=0),
    "shapley_values": dict(feature_mask=np.array([[0, 0, 1, 2, 3, 3]])),
}
#: memory budgets: the default (one run where possible), and one that forces runs of a few rows; or the
#: default budget with a cap on the rows the model sees per forward pass
BUDGETS = [None, "small", "batch_size"]
#: the batch_size case: fewer than N_ROWS, and at least DeepLiftShap's baselines (a noise tunnel then runs its
#: samples one after another)
BATCH_SIZE = 4


@pytest.fixture(scope="module")
def mlp():
    module, row = zoo.mlp("tanh", "softmax")
    x = np.random.default_rng(0).standard_normal((N_ROWS,) + tuple(row)).astype(np.float32)
    return zoo.export(module, row), x


def expanded_rows(method: str, feeds: dict) -> int:
    """The model rows one run of ``method``'s explanation graph executes, from its feeds."""
    n = len(feeds["target_weights"])
    if method == "deeplift_shap":   # an (input, reference) pair of rows per row and baseline
        return 2 * n * feeds["baselines"].shape[0]
    if method == "deeplift":
        return 2 * n
    if method == "gradient_shap":   # per sample an interpolated row; the noisy inputs and baselines of delta,
        samples = feeds["alphas"].shape[0]   # per sample, or one of each when the call wants no delta
        return n * (1 + samples + 2 * (samples if feeds["with_delta"] else 1))
    if method == "neuron_conductance":   # the steps, then the inputs (no baseline block: it has no delta)
        return n * (len(feeds["alphas"]) + 1)
    if "alphas" in feeds:
        return n * (len(feeds["alphas"]) + 2)
    noise = [v for k, v in feeds.items() if k.startswith("noise")]
    if noise:
        return n * (noise[0].shape[0] + 1)
    return n


def counting(ex):
    """Wrap the explanation session's run; return the list of per-run row counts it fills."""
    seen = []
    inner = ex.session.run

    def run(feeds, outputs=None):
        seen.append(expanded_rows(ex.method_name, feeds))
        return inner(feeds, outputs)

    ex.session.run = run
    return seen


@pytest.mark.parametrize("budget", BUDGETS, ids=["default-budget", "small-budget", "batch-size"])
@pytest.mark.parametrize("method", onnxplain.METHODS)
def test_estimate_equals_the_runs_and_rows_of_the_call(method, budget, mlp):
    model, x = mlp
    if method in ("grad_cam", "guided_grad_cam"):
        pytest.skip("Grad-CAM explains a 4-D feature map, which the MLP has not")
    capped = budget == "batch_size"
    layer = next(n.output[0] for n in onnx.load_from_string(model).graph.node if n.op_type == "Tanh") \
        if onnxplain.methods.get_method(method).needs_layer else None
    if layer is not None and capped:
        pytest.skip("a layer has no single value when batch_size copies the forward pass per block (refused)")
    if budget == "small":   # two rows of a backward pass (some four of a forward pass) per run
        budget = 2 * bytes_per_row(onnx.load_from_string(model), 3.0, {"x": x})
    ex = onnxplain.Explainer(model, method, memory_budget=None if capped else budget,
                             batch_size=BATCH_SIZE if capped else None, layer=layer)
    seen = counting(ex)
    try:
        params = PARAMS.get(method, {})
        cost = ex.estimate(x, target=2, **params)
        assert seen == [], "estimate runs nothing"
        ex.explain(x, target=2, **params)
    finally:
        del ex.session.run      # the session is shared by every Explainer of this graph
    assert (cost.runs, cost.rows, cost.rows_per_run) == (len(seen), sum(seen), max(seen))
    if budget is not None and not capped:
        assert cost.runs > 2, "the small budget splits the call"
    if capped:
        assert cost.runs >= 2, f"batch_size={BATCH_SIZE} splits a call of {N_ROWS} rows"


def test_estimate_follows_perturbations_per_eval_and_internal_batch_size(mlp):
    model, x = mlp
    ex = onnxplain.Explainer(model, "occlusion")
    # 5 windows of 2 over 6 features, chunks of 2 windows: the inputs' run, then 3 chunks
    cost = ex.estimate(x, target=0, sliding_window_shapes=(2,), perturbations_per_eval=2)
    assert (cost.runs, cost.rows, cost.rows_per_run) == (4, N_ROWS * 6, N_ROWS * 2)
    ig = onnxplain.Explainer(model, "integrated_gradients")
    cost = ig.estimate(x, target=0, n_steps=10, internal_batch_size=4 * N_ROWS)
    assert cost.runs == 3 and cost.rows == N_ROWS * (10 + 3 * 2)   # steps 4 + 4 + 2, inputs and baselines each run


def test_estimate_checks_its_arguments_like_the_call(mlp):
    model, x = mlp
    ex = onnxplain.Explainer(model, "occlusion")
    with pytest.raises(ValueError, match="sliding_window_shapes"):
        ex.estimate(x, target=0)
    with pytest.raises(TypeError, match="unexpected parameter"):
        ex.estimate(x, target=0, sliding_window_shapes=(2,), n_steps=3)


# ---------------------------------------------------------------------- progress
@pytest.mark.parametrize("progress,shown", [(True, True), (False, False), (None, False)])
def test_progress_bar_only_when_asked_or_on_a_terminal(progress, shown, mlp, capsys, monkeypatch):
    model, x = mlp
    monkeypatch.setattr(perturbation, "PROGRESS_DELAY", 0.0)   # show at once (a real call waits 2 s)
    ex = onnxplain.Explainer(model, "shapley_sampling", memory_budget=1000)
    ex.explain(x, target=1, n_samples=2, progress=progress)
    err = capsys.readouterr().err
    assert ("perturbations" in err) == shown           # pytest's stderr is not a terminal: None is quiet
    if shown:
        total = ex.estimate(x, target=1, n_samples=2).rows
        assert f"/{total}" in err.replace("\r", "\n")


def test_progress_must_be_a_flag(mlp):
    model, x = mlp
    with pytest.raises(ValueError, match="progress must be True, False or None"):
        onnxplain.Explainer(model, "feature_ablation").explain(x, target=0, progress="yes")


@pytest.mark.parametrize("multiply_by_inputs", [True, False])
def test_deeplift_shap_baseline_parts_under_batch_size(multiply_by_inputs, mlp):
    """A budget too small for the baseline set splits it into parts (a weighted mixture); with batch_size each
    part still pairs its references through their own forward copy.  The estimate counts those runs, and the
    result is the mean over the baselines of DeepLIFT with each one (DeepLiftShap's definition)."""
    model, x = mlp
    budget = 2 * bytes_per_row(onnx.load_from_string(model), 3.0, {"x": x})
    ex = onnxplain.Explainer(model, "deeplift_shap", memory_budget=budget, batch_size=BATCH_SIZE)
    seen = counting(ex)
    try:
        cost = ex.estimate(x, target=2, baselines=BASELINES, multiply_by_inputs=multiply_by_inputs)
        attr, delta = ex.explain(x, target=2, baselines=BASELINES, multiply_by_inputs=multiply_by_inputs,
                                 return_convergence_delta=True)
    finally:
        del ex.session.run
    assert (cost.runs, cost.rows, cost.rows_per_run) == (len(seen), sum(seen), max(seen))
    assert max(seen) < 2 * N_ROWS * len(BASELINES), "the baselines are split into parts"
    one = onnxplain.Explainer(model, "deeplift")
    per_baseline = [one.explain(x, target=2, baselines=b[None], multiply_by_inputs=multiply_by_inputs,
                                return_convergence_delta=True) for b in BASELINES]
    np.testing.assert_allclose(attr, np.mean([a for a, _ in per_baseline], axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(delta, np.mean([d for _, d in per_baseline], axis=0), rtol=1e-4, atol=1e-5)
