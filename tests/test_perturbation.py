"""Perturbation methods: occlusion, feature_ablation, shapley_sampling, shapley_values.

Held against Captum on PyTorch models exported to ONNX, against brute-force
Shapley values written here, against a scikit-learn tree ensemble's own
``predict_proba``, and against the properties that must hold exactly
(efficiency, exactness on linear models).
"""
from __future__ import annotations

import functools
import io
import warnings

import captum
import numpy as np
import onnx
import pytest
import torch
from captum.attr import FeatureAblation, Occlusion, ShapleyValues, ShapleyValueSampling
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import models as zoo
from checks import assert_refused_before_running, brute_force_shapley
import onnxplain
from onnxplain.errors import UnsupportedOperatorError
from onnxplain.kernels.shapley import MAX_EXACT_GROUPS, sample_permutations
from onnxplain.methods.perturbation import TARGET_OUTPUT, BufferPool

N_ROWS = 3
ATOL = 2e-6


@functools.lru_cache(maxsize=None)
def zoo_case(name):
    module, row = {"cnn": zoo.conv_bn_cnn, "pools": zoo.pool_cnn,
                   "mlp": functools.partial(zoo.mlp, "tanh", "softmax")}[name]()
    g = torch.Generator().manual_seed(len(name))
    x = torch.randn((N_ROWS,) + tuple(row), generator=g)
    return module, zoo.export(module, row), x


def close(a, ref, scale=None):
    ref = np.asarray(ref)
    tol = ATOL * max(1.0, float(np.abs(ref).max()) if scale is None else scale)
    np.testing.assert_allclose(a, ref, rtol=1e-4, atol=tol)


# ---------------------------------------------------------------------- occlusion vs Captum
OCCLUSION = [
    ("cnn", dict(sliding_window_shapes=(1, 3, 3), strides=(1, 2, 2))),       # 8 - 3 = 5: last window cut
    ("cnn", dict(sliding_window_shapes=(2, 2, 3), strides=(1, 2, 1), baselines=0.25)),
    ("pools", dict(sliding_window_shapes=(3, 4, 4), strides=(3, 3, 2), perturbations_per_eval=3)),
    ("mlp", dict(sliding_window_shapes=(2,), strides=1, baselines="rows")),
    ("mlp", dict(sliding_window_shapes=(6,))),
]


@pytest.mark.parametrize("name,kwargs", OCCLUSION)
def test_occlusion_equals_captum(name, kwargs):
    module, onx, x = zoo_case(name)
    kwargs = dict(kwargs)
    if kwargs.get("baselines") == "rows":
        kwargs["baselines"] = 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    ref = Occlusion(module).attribute(x, target=[2, 0, 1], **kwargs).numpy()
    ours = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    a = onnxplain.Explainer(onx, "occlusion").explain(x.numpy(), target=[2, 0, 1], **ours)
    assert a.shape == x.shape and a.dtype == np.float32
    close(a, ref)


def test_occlusion_chunking_and_budget_do_not_change_results():
    module, onx, x = zoo_case("cnn")
    kw = dict(sliding_window_shapes=(1, 3, 3), strides=(1, 2, 2), target=1)
    whole = onnxplain.Explainer(onx, "occlusion").explain(x.numpy(), **kw)
    ex = onnxplain.Explainer(onx, "occlusion", memory_budget=2)       # one row per run
    calls = []
    inner = ex.session.run
    ex.session.run = lambda feeds, out: calls.append(len(feeds["target_weights"])) or inner(feeds, out)
    try:
        small = ex.explain(x.numpy(), perturbations_per_eval=5, **kw)
    finally:
        del ex.session.run
    np.testing.assert_allclose(small, whole, rtol=1e-5, atol=1e-7)
    windows = 2 * 4 * 4
    assert len(calls) == N_ROWS * (1 + windows) and max(calls) == 1
    ex = onnxplain.Explainer(onx, "occlusion")
    calls.clear()
    inner = ex.session.run
    ex.session.run = lambda feeds, out: calls.append(len(feeds["target_weights"])) or inner(feeds, out)
    try:
        capped = ex.explain(x.numpy(), perturbations_per_eval=5, **kw)
    finally:
        del ex.session.run
    np.testing.assert_allclose(capped, whole, rtol=1e-5, atol=1e-7)
    assert calls == [N_ROWS] + [5 * N_ROWS] * 6 + [2 * N_ROWS]        # Captum's cap: 5 windows per run


# ---------------------------------------------------------------------- feature ablation vs Captum
def superpixels(shape, size):
    h, w = shape
    return (np.arange(h)[:, None] // size * ((w + size - 1) // size) + np.arange(w)[None, :] // size)


ABLATION = [
    ("mlp", None, None),
    ("cnn", "superpixels", 0.5),
    ("cnn", "per_row", "rows"),
    ("pools", "sparse_ids", None),
]


@pytest.mark.parametrize("name,mask,baselines", ABLATION)
def test_feature_ablation_equals_captum(name, mask, baselines):
    module, onx, x = zoo_case(name)
    if mask == "superpixels":                      # (1, 1, H, W): shared by rows and channels
        mask = superpixels(x.shape[2:], 3)[None, None]
    elif mask == "per_row":                        # (N, C, H, W): one mask per row
        mask = np.stack([np.roll(superpixels(x.shape[2:], 4), r, axis=1) for r in range(N_ROWS)])[:, None]
        mask = np.repeat(mask, x.shape[1], axis=1) + np.arange(x.shape[1])[None, :, None, None] * 100
    elif mask == "sparse_ids":                     # ids neither consecutive nor from 0, no batch dimension
        mask = superpixels(x.shape[2:], 4)[None] * 7 + 3
    if baselines == "rows":
        baselines = 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    kw = {} if baselines is None else {"baselines": baselines}
    if mask is not None:
        kw["feature_mask"] = torch.from_numpy(np.asarray(mask))
    ref = FeatureAblation(module).attribute(x, target=1, **kw).numpy()
    ours = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    a = onnxplain.Explainer(onx, "feature_ablation").explain(x.numpy(), target=1, **ours)
    assert a.shape == x.shape and a.dtype == np.float32
    close(a, ref)
    if name == "cnn":      # one row per run: per-row masks and baselines follow their rows across blocks
        small = onnxplain.Explainer(onx, "feature_ablation", memory_budget=2)
        close(small.explain(x.numpy(), target=1, perturbations_per_eval=2, **ours), ref)


# ---------------------------------------------------------------------- two inputs
class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.fa = nn.Linear(4, 6)
        self.fb = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, a, b):
        return self.head(torch.tanh(self.fa(a)) * torch.sigmoid(self.fb(b.flatten(1))))


@functools.lru_cache(maxsize=None)
def two_inputs():
    module = TwoInputs().eval()
    g = torch.Generator().manual_seed(11)
    a, b = torch.randn(N_ROWS, 4, generator=g), torch.randn(N_ROWS, 2, 3, generator=g)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (a, b), buf, dynamo=False, opset_version=17, input_names=["a", "b"],
                          output_names=["y"], dynamic_axes={"a": {0: "n"}, "b": {0: "n"}, "y": {0: "n"}})
    return module, buf.getvalue(), a, b


def test_two_inputs_equal_captum_with_tuples_and_dicts():
    module, onx, a, b = two_inputs()
    feeds = {"a": a.numpy(), "b": b.numpy()}
    occ = Occlusion(module).attribute((a, b), sliding_window_shapes=((2,), (1, 2)), strides=(1, (1, 1)), target=0,
                                      baselines=(0.1, -0.2))
    ex = onnxplain.Explainer(onx, "occlusion")
    for windows, strides in [(((2,), (1, 2)), (1, (1, 1))), ({"b": (1, 2), "a": (2,)}, {"a": 1, "b": (1, 1)})]:
        got = ex.explain(feeds, target=0, sliding_window_shapes=windows, strides=strides, baselines=(0.1, -0.2))
        close(got["a"], occ[0])
        close(got["b"], occ[1])
    # one group id used in both inputs: ablated together (Captum's cross-tensor groups, its only mode since 0.9)
    ma, mb = np.array([[0, 1, 1, 2]]), np.array([[[2, 3, 3], [4, 4, 0]]])
    got = onnxplain.Explainer(onx, "feature_ablation").explain(feeds, target=2, feature_mask={"a": ma, "b": mb})
    if tuple(int(v) for v in captum.__version__.split(".")[:2]) >= (0, 9):
        abl = FeatureAblation(module).attribute((a, b), feature_mask=(torch.from_numpy(ma), torch.from_numpy(mb)),
                                                target=2)
        close(got["a"], abl[0])
        close(got["b"], abl[1])
    exact = ShapleyValues(module).attribute((a, b), feature_mask=(torch.from_numpy(ma), torch.from_numpy(mb)),
                                            target=2)
    got = onnxplain.Explainer(onx, "shapley_values").explain(feeds, target=2, feature_mask=(ma, mb))
    close(got["a"], exact[0])
    close(got["b"], exact[1])


def test_integer_inputs_are_passed_through_to_every_perturbed_row():
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("MatMul", ["t", "W2"], ["z"]), helper.make_node("Cast", ["gate"], ["g"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["z", "g"], ["y"])]
    graph = helper.make_graph(nodes, "gated", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5]),
                                                helper.make_tensor_value_info("gate", TensorProto.INT64, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                              [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((4, 5)).astype(np.float32)
    gate = rng.integers(0, 3, size=(4, 3))

    def f(v):
        return (np.tanh(v @ w1) @ w2 * gate)[:, 1]

    ref = np.stack([f(x) - f(np.where(np.arange(5) == i, 0, x)) for i in range(5)], axis=1)
    a = onnxplain.Explainer(model, "feature_ablation", memory_budget=64).explain({"x": x, "gate": gate}, target=1)
    close(a, ref)


# ---------------------------------------------------------------------- brute-force Shapley values
def torch_target(module, target):
    def f(v):
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))).double()[:, target].numpy()
    return f


def mlp_groups():
    return np.array([0, 0, 1, 2, 3, 3])          # 4 groups over the MLP's 6 features


def test_shapley_values_equal_brute_force_and_captum():
    module, onx, x = zoo_case("mlp")
    labels = mlp_groups()
    base = np.full(6, -0.3, np.float32)
    ref = brute_force_shapley(torch_target(module, 2), x.numpy(), base, labels, 4)
    a = onnxplain.Explainer(onx, "shapley_values").explain(x.numpy(), target=2, feature_mask=labels[None],
                                                           baselines=base)
    close(a, ref[:, labels])
    chunked = onnxplain.Explainer(onx, "shapley_values", memory_budget=2).explain(
        x.numpy(), target=2, feature_mask=labels[None], baselines=base, perturbations_per_eval=5)
    close(chunked, ref[:, labels])
    captum = ShapleyValues(module).attribute(x, target=2, feature_mask=torch.from_numpy(labels)[None],
                                             baselines=torch.from_numpy(base)[None])
    close(a, captum.numpy())


def test_shapley_sampling_equals_captum_on_the_same_permutations():
    module, onx, x = zoo_case("mlp")
    labels = mlp_groups()
    perms = sample_permutations(4, 7, np.random.default_rng(5))
    algo = ShapleyValueSampling(module)
    algo.permutation_generator = lambda n_groups, n_samples: iter(perms.tolist())
    ref = algo.attribute(x, target=1, n_samples=7, feature_mask=torch.from_numpy(labels)[None]).numpy()
    ex = onnxplain.Explainer(onx, "shapley_sampling")
    a = ex.explain(x.numpy(), target=1, n_samples=7, seed=5, feature_mask=labels[None])
    close(a, ref)
    # chunks that end inside a permutation carry the previous output across runs
    close(ex.explain(x.numpy(), target=1, n_samples=7, seed=5, feature_mask=labels[None], perturbations_per_eval=3),
          ref)


@pytest.mark.parametrize("n_samples,antithetic", [(1, False), (3, True), (10, False)])
def test_shapley_sampling_is_exact_on_a_linear_model(n_samples, antithetic):
    torch.manual_seed(0)
    linear = nn.Linear(6, 3).eval()
    onx = zoo.export(linear, (6,))
    x = torch.randn(5, 6).numpy()
    base = np.linspace(-1, 1, 6, dtype=np.float32)
    w = linear.weight.detach().numpy()[0]
    ex = onnxplain.Explainer(onx, "shapley_sampling")
    a = ex.explain(x, target=0, n_samples=n_samples, antithetic=antithetic, baselines=base)
    close(a, w * (x - base))
    labels = mlp_groups()
    grouped = ex.explain(x, target=0, n_samples=n_samples, feature_mask=labels, baselines=base)
    per_group = np.stack([(w * (x - base))[:, labels == g].sum(1) for g in range(4)], axis=1)
    close(grouped, per_group[:, labels])


def test_shapley_sampling_efficiency_on_nonlinear_models():
    module, onx, x = zoo_case("cnn")
    f = torch_target(module, 3)
    base = 0.1 * np.ones(x.shape[1:], np.float32)
    gap = f(x.numpy()) - f(np.broadcast_to(base, x.shape))
    ex = onnxplain.Explainer(onx, "shapley_sampling")
    a = ex.explain(x.numpy(), target=3, n_samples=2, baselines=base)          # every element a group
    close(a.reshape(N_ROWS, -1).sum(1), gap, scale=np.abs(gap).max())
    mask = superpixels(x.shape[2:], 4)[None, None]                              # 4 groups of 2x4x4
    a = ex.explain(x.numpy(), target=3, n_samples=3, feature_mask=mask, baselines=base, antithetic=True)
    close(a[:, 0, ::4, ::4].reshape(N_ROWS, -1).sum(1), gap, scale=np.abs(gap).max())
    again = ex.explain(x.numpy(), target=3, n_samples=3, feature_mask=mask, baselines=base, antithetic=True,
                       seed=1)
    assert not np.allclose(again, ex.explain(x.numpy(), target=3, n_samples=3, feature_mask=mask, baselines=base,
                                             antithetic=True, seed=2))
    np.testing.assert_array_equal(again, ex.explain(x.numpy(), target=3, n_samples=3, feature_mask=mask,
                                                    baselines=base, antithetic=True, seed=1))


def test_shapley_sampling_converges_to_brute_force():
    module, onx, x = zoo_case("mlp")
    labels = np.arange(6)
    ref = brute_force_shapley(torch_target(module, 0), x.numpy(), np.zeros(6, np.float32), labels, 6)
    ex = onnxplain.Explainer(onx, "shapley_sampling")
    errors = {}
    for n_samples in (4, 1500):
        errors[n_samples] = [np.abs(ex.explain(x.numpy(), target=0, n_samples=n_samples, seed=s) - ref).max()
                             for s in range(3)]
    assert max(errors[1500]) < 0.1 * np.abs(ref).max()
    assert np.mean(errors[1500]) < 0.3 * np.mean(errors[4])
    anti = ex.explain(x.numpy(), target=0, n_samples=1500, seed=0, antithetic=True)
    assert np.abs(anti - ref).max() < 0.1 * np.abs(ref).max()


# ---------------------------------------------------------------------- scikit-learn through skl2onnx
@functools.lru_cache(maxsize=None)
def sklearn_case(kind):
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from skl2onnx import to_onnx
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 5)).astype(np.float32)
    y = ((X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int) + (X[:, 3] > 1)).astype(int)   # 3 classes
    clf = (GradientBoostingClassifier(n_estimators=15, max_depth=2, random_state=0) if kind == "gb"
           else RandomForestClassifier(n_estimators=8, max_depth=4, random_state=0)).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onx = to_onnx(clf, X[:1], options={"zipmap": False}, target_opset={"": 13, "ai.onnx.ml": 1})
    return clf, onx, X[:4], X.mean(0)


@pytest.mark.parametrize("kind", ["gb", "rf"])
def test_sklearn_tree_ensemble_is_explained(kind):
    clf, onx, x, base = sklearn_case(kind)

    def f(v):
        return clf.predict_proba(np.asarray(v, np.float32))[:, 1]

    ex = onnxplain.Explainer(onx, "feature_ablation")
    assert ex.output == "probabilities"          # not the int64 label output
    ref = np.stack([f(x) - f(np.where(np.arange(5) == i, base, x)) for i in range(5)], axis=1)
    close(ex.explain(x, target=1, baselines=base), ref)

    occ = onnxplain.Explainer(onx, "occlusion").explain(x, target=1, baselines=base, sliding_window_shapes=(2,))
    sums, counts = np.zeros_like(ref), np.zeros(5)
    for s in range(4):
        occluded = x.copy()
        occluded[:, s:s + 2] = base[s:s + 2]
        sums[:, s:s + 2] += (f(x) - f(occluded))[:, None]
        counts[s:s + 2] += 1
    close(occ, sums / counts)

    labels = np.array([0, 1, 1, 2, 3])
    exact = brute_force_shapley(f, x, base, labels, 4)
    got = onnxplain.Explainer(onx, "shapley_values").explain(x, target=1, baselines=base, feature_mask=labels)
    close(got, exact[:, labels])
    sampled = onnxplain.Explainer(onx, "shapley_sampling").explain(x, target=1, baselines=base, n_samples=5)
    close(sampled.sum(1), f(x) - f(np.broadcast_to(base, x.shape)))


def test_sklearn_graph_needs_no_backward_rules_and_runs_in_the_reference_evaluator():
    from onnx.reference import ReferenceEvaluator
    clf, onx, x, _ = sklearn_case("gb")
    with pytest.raises(UnsupportedOperatorError):            # no VJP for TreeEnsembleClassifier ...
        onnxplain.Explainer(onx, "saliency")
    ex = onnxplain.Explainer(onx, "shapley_sampling")        # ... and none needed here
    assert {d.domain for d in ex.graph.opset_import} == {"", "ai.onnx.ml"}
    assert {n.domain for n in ex.graph.graph.node} <= {"", "ai.onnx.ml"}
    tw = np.zeros((len(x), 3), np.float32)
    tw[:, 2] = 1
    feeds = {"X": x, "target_weights": tw}
    ours = ex.session.run(feeds, [TARGET_OUTPUT])[TARGET_OUTPUT]
    ref = ReferenceEvaluator(ex.graph).run([TARGET_OUTPUT], feeds)[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours, clf.predict_proba(x)[:, 2], rtol=1e-5, atol=1e-6)


def test_zipmap_outputs_are_refused_with_a_clear_error():
    from sklearn.linear_model import LogisticRegression
    from skl2onnx import to_onnx
    X = np.random.default_rng(1).standard_normal((50, 3)).astype(np.float32)
    onx = to_onnx(LogisticRegression().fit(X, X[:, 0] > 0), X[:1])          # ZipMap on by default
    with pytest.raises(ValueError, match="floating-point output"):
        onnxplain.Explainer(onx, "feature_ablation")


# ---------------------------------------------------------------------- the graph
def test_graph_is_the_forward_pass_and_a_target_reduction():
    from onnx.reference import ReferenceEvaluator
    module, onx, x = zoo_case("cnn")
    ex = onnxplain.Explainer(onx, "occlusion")
    graph = ex.graph.graph
    assert [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}] \
        == ["x", "target_weights"]
    assert [o.name for o in graph.output] == ["y", TARGET_OUTPUT]
    onnx.checker.check_model(ex.graph, full_check=True)
    tw = np.random.default_rng(0).standard_normal((N_ROWS, 4)).astype(np.float32)
    feeds = {"x": x.numpy(), "target_weights": tw}
    got = ex.session.run(feeds, [TARGET_OUTPUT])[TARGET_OUTPUT]
    ref = ReferenceEvaluator(ex.graph).run([TARGET_OUTPUT], feeds)[0]
    with torch.no_grad():
        expected = (module(x).numpy() * tw).sum(1)
    assert got.shape == (N_ROWS,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref, expected, rtol=1e-5, atol=1e-6)
    assert onnxplain.Explainer(onx, "feature_ablation").session is not ex.session
    assert onnxplain.Explainer(onx, "occlusion").session is ex.session     # built once, reused


def test_batch_buffers_are_reused_between_calls_but_never_shared():
    pool = BufferPool(keep=2)
    a = pool.take((4, 5), np.float32)
    b = pool.take((4, 5), np.float32)
    assert not np.shares_memory(a, b)                   # taken twice: two buffers
    pool.give([a, b])
    c = pool.take((2, 3), np.float64)                    # a smaller request reuses a free buffer
    assert c.shape == (2, 3) and c.dtype == np.float64
    assert np.shares_memory(c, a) or np.shares_memory(c, b)
    pool.give([np.empty(1, np.uint8), np.empty(2, np.uint8)])
    assert len(pool._free) == 2


# ---------------------------------------------------------------------- bad arguments
BAD = [
    ("occlusion", {}, "needs sliding_window_shapes"),
    ("occlusion", dict(sliding_window_shapes=(1, 9, 3)), r"exceed the shape of one row \(2, 8, 8\)"),
    ("occlusion", dict(sliding_window_shapes=(1, 3, 3), strides=0), "strides .* must be positive"),
    ("occlusion", dict(sliding_window_shapes=(1, 3, 3), strides=(1, -1, 1)), "must be positive"),
    ("occlusion", dict(sliding_window_shapes=(1, 3, 3), strides=(1, 4, 1)), "larger than the window"),
    ("occlusion", dict(sliding_window_shapes=(3, 3)), r"needs 3 value\(s\)"),
    ("feature_ablation", dict(feature_mask=np.zeros((8, 8, 8), int)), r"broadcastable to the input's shape"),
    ("feature_ablation", dict(feature_mask=np.zeros((2, 1, 8, 8), int)), r"first 1 or 3\), got shape \(2, 1, 8, 8\)"),
    ("feature_ablation", dict(feature_mask=np.zeros((1, 8, 8))), "integer group ids, got dtype float64"),
    ("feature_ablation", dict(feature_mask=np.zeros((1, 8, 8), bool)), "integer group ids, got dtype bool"),
    ("feature_ablation", dict(baselines=np.zeros((5, 5))), "baselines for input 'x'"),
    ("shapley_sampling", dict(n_samples=0), "n_samples must be a positive int, got 0"),
    ("shapley_sampling", dict(n_samples=2.5), "n_samples must be a positive int"),
    ("shapley_sampling", dict(antithetic="yes"), "antithetic"),
    ("shapley_values", {}, f"at most {MAX_EXACT_GROUPS} groups; got 128 features"),
    ("shapley_values", dict(feature_mask=np.arange(64).reshape(8, 8)), f"at most {MAX_EXACT_GROUPS} groups; got 64"),
    ("feature_ablation", dict(perturbations_per_eval=0), "perturbations_per_eval must be a positive int"),
]


@pytest.mark.parametrize("method,kwargs,match", BAD)
def test_bad_arguments_fail_before_anything_runs(method, kwargs, match):
    module, onx, x = zoo_case("cnn")
    assert_refused_before_running(onnxplain.Explainer(onx, method), match, x.numpy(), target=0, **kwargs)


def test_unknown_parameters_are_named():
    module, onx, x = zoo_case("mlp")
    with pytest.raises(TypeError, match="sliding_window_shapes"):
        onnxplain.Explainer(onx, "feature_ablation").explain(x.numpy(), target=0, sliding_window_shapes=(2,))
