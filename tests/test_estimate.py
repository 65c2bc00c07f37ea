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
    capped = budget == "batch_size"
    if budget == "small":   # two rows of a backward pass (some four of a forward pass) per run
        budget = 2 * bytes_per_row(onnx.load_from_string(model), 3.0, {"x": x})
    ex = onnxplain.Explainer(model, method, memory_budget=None if capped else budget,
                             batch_size=BATCH_SIZE if capped else None)
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
