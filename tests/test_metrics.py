"""onnxplain.metrics against Captum 0.9 and against brute-force references written here.

* ``infidelity`` and ``sensitivity_max``: Captum's ``captum.metrics`` on the same PyTorch module, fed the
  very same perturbations (a seeded numpy generator drawn in the same order of calls by both; Captum gets
  the draws as tensors), with attributions from onnxplain (saliency, IG) and from Captum (IG, Saliency).
* ``deletion`` / ``insertion``: a loop over the steps in numpy with PyTorch forwards, the order of the
  features taken by Python's stable ``sorted`` of the scores (ties on purpose, feature-mask groups).
* the area of a curve known in closed form (a sum model), and bad inputs.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, Saliency
from captum.metrics import infidelity as captum_infidelity
from captum.metrics import infidelity_perturb_func_decorator as captum_decorator
from captum.metrics import sensitivity_max as captum_sensitivity_max
from torch import nn

import models as zoo
import onnxplain
from checks import assert_close
from onnxplain import metrics
from vision_models import export_dynamo

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")

N_ROWS = 3
TARGET = 1
RTOL = 1e-4


@pytest.fixture(scope="module")
def mlp():
    model, row = zoo.mlp("relu")
    x = np.random.default_rng(0).standard_normal((N_ROWS,) + row).astype(np.float32)
    return model, zoo.export(model, row), x


@pytest.fixture(scope="module")
def cnn():
    model, row = zoo.pool_cnn()
    x = np.random.default_rng(1).standard_normal((N_ROWS,) + row).astype(np.float32)
    return model, export_dynamo(model, row), x


def shared_noise(seed: int, kind: str, scale: float):
    """Two perturbation functions drawing the same numbers: one for onnxplain (numpy), one for Captum (torch)."""
    def make(to_torch: bool):
        rng = np.random.default_rng(seed)

        def draw(shape):
            if kind == "normal":
                return rng.normal(0.0, scale, shape).astype(np.float32)
            return rng.uniform(-scale, scale, shape).astype(np.float32)
        if kind == "normal":
            def perturb(x):
                noise = draw(tuple(x.shape))
                noise = torch.from_numpy(noise) if to_torch else noise
                return noise, x - noise
        else:
            def perturb(x, radius):
                noise = draw(tuple(x.shape))
                return x + (torch.from_numpy(noise) if to_torch else noise)
        return perturb
    return make(False), make(True)


def captum_forward(model):
    def forward(*x):
        with torch.no_grad():
            return model(*x)
    return forward


# ---------------------------------------------------------------------- infidelity
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("per_batch", [None, 7])
def test_infidelity_saliency_mlp_vs_captum(mlp, normalize, per_batch):
    model, onx, x = mlp
    ex = onnxplain.Explainer(onx, "saliency")
    attr = ex.explain(x, target=TARGET)
    ours_f, theirs_f = shared_noise(3, "normal", 0.1)
    ours = metrics.infidelity(ex, ours_f, x, attr, target=TARGET, normalize=normalize,
                              max_examples_per_batch=per_batch)
    ref = captum_infidelity(captum_forward(model), theirs_f, torch.from_numpy(x), torch.from_numpy(attr),
                            target=TARGET, normalize=normalize, max_examples_per_batch=per_batch)
    assert_close(ours, ref.double(), RTOL, what="infidelity")


def test_infidelity_captum_ig_cnn_decorated_with_baselines(cnn):
    """Captum's IG attributions on the CNN, a perturbation function returning only the perturbed inputs
    (the decorator with multiply_by_inputs), full-batch baselines, one target per row."""
    model, onx, x = cnn
    xt = torch.from_numpy(x)
    base = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32) * 0.1
    targets = [0, 3, 1]
    attr = IntegratedGradients(model).attribute(xt, baselines=torch.from_numpy(base), target=targets, n_steps=16)
    rng_ours, rng_theirs = np.random.default_rng(5), np.random.default_rng(5)

    def ours_f(inputs, baselines):   # keep a random half of the elements, the rest at the baseline
        keep = (rng_ours.random(inputs.shape) < 0.5).astype(np.float32)
        return baselines + keep * (inputs - baselines)

    def theirs_f(inputs, baselines):
        keep = torch.from_numpy((rng_theirs.random(tuple(inputs.shape)) < 0.5).astype(np.float32))
        return baselines + keep * (inputs - baselines)

    ours = metrics.infidelity(onx, metrics.infidelity_perturb_func_decorator(True)(ours_f), x, attr.numpy(),
                              baselines=base, target=targets, n_perturb_samples=6, max_examples_per_batch=8)
    ref = captum_infidelity(captum_forward(model), captum_decorator(True)(theirs_f), xt, attr,
                            baselines=torch.from_numpy(base), target=targets, n_perturb_samples=6,
                            max_examples_per_batch=8)
    assert_close(ours, ref.double(), RTOL, what="infidelity")


def test_infidelity_default_perturbation_is_seeded_gaussian(mlp):
    """perturb_func=None is gaussian_perturbation(): the same value as that function given explicitly, and
    Captum's value when Captum is fed the same draws."""
    model, onx, x = mlp
    attr = onnxplain.Explainer(onx, "saliency").explain(x, target=TARGET)
    ours = metrics.infidelity(onx, None, x, attr, target=TARGET)
    rng = np.random.default_rng(0)

    def theirs_f(inputs):
        noise = torch.from_numpy(rng.standard_normal(tuple(inputs.shape), dtype=np.float32) * np.float32(0.003))
        return noise, inputs - noise
    ref = captum_infidelity(captum_forward(model), theirs_f, torch.from_numpy(x), torch.from_numpy(attr),
                            target=TARGET)
    # the default noise is tiny (0.003): the values are squares of float32 rounding-sized differences,
    # which onnxruntime and PyTorch round differently by up to 4e-5 of the value (measured)
    assert_close(ours, ref.double(), 1e-3, what="infidelity")


# ---------------------------------------------------------------------- sensitivity_max
def test_sensitivity_max_saliency_mlp_vs_captum(mlp):
    model, onx, x = mlp
    ex = onnxplain.Explainer(onx, "saliency")
    ours_f, theirs_f = shared_noise(11, "uniform", 0.05)
    ours = metrics.sensitivity_max(ex, x, ours_f, perturb_radius=0.05, target=TARGET)
    ref = captum_sensitivity_max(Saliency(model).attribute, torch.from_numpy(x), theirs_f, perturb_radius=0.05,
                                 target=TARGET)
    assert_close(ours, ref.double(), RTOL, what="sensitivity_max")


def test_sensitivity_max_ig_cnn_vs_captum(cnn):
    """IG through (Explainer, params) on the CNN, chunks of copies (max_examples_per_batch), a 1-norm."""
    model, onx, x = cnn
    ex = onnxplain.Explainer(onx, "integrated_gradients")
    ours_f, theirs_f = shared_noise(12, "uniform", 0.02)
    ours = metrics.sensitivity_max((ex, {"n_steps": 8}), x, ours_f, n_perturb_samples=5, norm_ord=1,
                                   max_examples_per_batch=7, target=TARGET)
    ref = captum_sensitivity_max(IntegratedGradients(model).attribute, torch.from_numpy(x), theirs_f,
                                 n_perturb_samples=5, norm_ord=1, max_examples_per_batch=7, target=TARGET,
                                 n_steps=8)
    assert_close(ours, ref.double(), 1e-3, what="sensitivity_max")


def test_sensitivity_max_of_a_callable_is_captums(mlp):
    """Any explanation function (here a numpy gradient of the MLP through PyTorch) with per-row targets."""
    model, _, x = mlp
    targets = [0, 2, 3]
    sal = Saliency(model)

    def numpy_saliency(inputs, target):
        return sal.attribute(torch.from_numpy(np.asarray(inputs)), target=target).numpy()
    ours_f, theirs_f = shared_noise(13, "uniform", 0.1)
    ours = metrics.sensitivity_max(numpy_saliency, x, ours_f, perturb_radius=0.1, n_perturb_samples=4,
                                   target=targets)
    ref = captum_sensitivity_max(sal.attribute, torch.from_numpy(x), theirs_f, perturb_radius=0.1,
                                 n_perturb_samples=4, target=targets)
    assert_close(ours, ref.double(), 1e-6, what="sensitivity_max")


# ---------------------------------------------------------------------- deletion and insertion
def brute_force_curve(model, x, attr, target, base, steps, labels, insert):
    """The curve by its definition: per row and step, flip the first ``k * G // steps`` groups of the
    scores' stable order (Python's sorted), run PyTorch.  Groups are the ids of the whole mask (a row's
    absent ids score 0 and flip nothing)."""
    n = x.shape[0]
    flat_x, flat_a = x.reshape(n, -1), attr.reshape(n, -1).astype(np.float64)
    flat_b = np.broadcast_to(base, x.shape).reshape(n, -1)
    flat_l = np.broadcast_to(labels, x.shape).reshape(n, -1)
    ids = sorted(set(flat_l.ravel().tolist()))
    values = np.zeros((n, steps + 1))
    for j in range(n):
        score = {g: flat_a[j][flat_l[j] == g].sum() for g in ids}
        order = sorted(ids, key=lambda g: -score[g])
        for k in range(steps + 1):
            flipped = np.isin(flat_l[j], order[:k * len(ids) // steps])
            start, other = (flat_b[j], flat_x[j]) if insert else (flat_x[j], flat_b[j])
            row = np.where(flipped, other, start).reshape((1,) + x.shape[1:])
            with torch.no_grad():
                values[j, k] = model(torch.from_numpy(row.astype(np.float32)))[0, target[j]].item()
    return values


@pytest.mark.parametrize("insert", [False, True])
def test_flipping_cnn_ties_and_masks_vs_brute_force(cnn, insert):
    """Attributions rounded to a few values (many ties), superpixel groups shared by the rows (2x3 patches
    over all channels), per-row baselines, steps not dividing the groups."""
    model, onx, x = cnn
    rng = np.random.default_rng(4)
    attr = np.round(rng.standard_normal(x.shape), 0).astype(np.float32)
    h, w = x.shape[2:]
    mask = ((np.arange(h)[:, None] // 2) * 10 + np.arange(w)[None, :] // 3)[None, None]   # ids not 0..G-1
    base = rng.standard_normal(x.shape).astype(np.float32)
    targets = [2, 0, 4]
    fn = metrics.insertion if insert else metrics.deletion
    curve = fn(onx, x, attr, target=targets, baselines=base, steps=7, feature_mask=mask)
    ref = brute_force_curve(model, x, attr, targets, base, 7, mask, insert)
    assert_close(curve.values, ref, RTOL, what="curve")
    n_groups = len(np.unique(mask))
    np.testing.assert_array_equal(curve.fractions, (np.arange(8) * n_groups // 7) / n_groups)


@pytest.mark.parametrize("insert", [False, True])
def test_flipping_mlp_elements_and_per_row_masks_vs_brute_force(mlp, insert):
    model, onx, x = mlp
    ex = onnxplain.Explainer(onx, "saliency")
    attr = np.abs(ex.explain(x, target=TARGET))
    attr[:, ::2] = attr[:, :1]                         # ties among elements
    targets = [TARGET] * N_ROWS
    fn = metrics.insertion if insert else metrics.deletion
    curve = fn(ex, x, attr, target=TARGET, baselines=0.25)
    ref = brute_force_curve(model, x, attr, targets, 0.25, 6, np.arange(6)[None], insert)
    assert_close(curve.values, ref, RTOL, what="curve (elements, default steps = features)")
    per_row = np.array([[0, 0, 1, 1, 2, 2], [5, 1, 5, 1, 5, 1], [3, 3, 3, 3, 3, 7]])
    curve = fn(ex, x, attr, target=TARGET, baselines=0.25, steps=4, feature_mask=per_row)
    ref = brute_force_curve(model, x, attr, targets, 0.25, 4, per_row, insert)
    assert_close(curve.values, ref, RTOL, what="curve (per-row groups)")


def test_area_of_a_sum_model():
    """f(x) = sum(x) on x = 1: deleting the 4 features one by one gives 4, 3, 2, 1, 0 (area 2 exactly);
    insertion from 0 gives 0..4 (area 2); with 2 steps the points are 4, 2, 0."""
    lin = nn.Linear(4, 1)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.zero_()
    onx = zoo.export(lin, (4,))
    x = np.ones((2, 4), np.float32)
    attr = np.array([[4, 3, 2, 1], [1, 1, 1, 1]], np.float32)
    d = metrics.deletion(onx, x, attr)
    np.testing.assert_allclose(d.values, [[4, 3, 2, 1, 0]] * 2, atol=1e-6)
    np.testing.assert_allclose(d.area, [2.0, 2.0], atol=1e-6)
    i = metrics.insertion(onx, x, attr, steps=2)
    np.testing.assert_allclose(i.fractions, [0, 0.5, 1])
    np.testing.assert_allclose(i.values, [[0, 2, 4]] * 2, atol=1e-6)
    np.testing.assert_allclose(i.area, [2.0, 2.0], atol=1e-6)


# ---------------------------------------------------------------------- bad inputs
def test_bad_inputs_are_clear_errors(mlp):
    _, onx, x = mlp
    ex = onnxplain.Explainer(onx, "saliency")
    attr = np.zeros_like(x)
    with pytest.raises(ValueError, match=r"attributions for input 'x' must have the input's shape \(3, 6\)"):
        metrics.deletion(ex, x, attr[:, :4], target=TARGET)
    with pytest.raises(ValueError, match="attributions for input 'x' must have the input's shape"):
        metrics.infidelity(ex, None, x, attr[:2], target=TARGET)
    for steps in (0, -2, 1.5):
        with pytest.raises(ValueError, match="steps must be a positive int"):
            metrics.insertion(ex, x, attr, target=TARGET, steps=steps)
    with pytest.raises(ValueError, match="n_perturb_samples must be a positive int"):
        metrics.infidelity(ex, None, x, attr, target=TARGET, n_perturb_samples=0)
    with pytest.raises(ValueError, match="must return \\(perturbations, perturbed_inputs\\)"):
        metrics.infidelity(ex, lambda v: v, x, attr, target=TARGET)
    with pytest.raises(ValueError, match="perturbed input for input 'x' must have the shape of the repeated"):
        metrics.infidelity(ex, lambda v: (v, v[:1]), x, attr, target=TARGET)
    with pytest.raises(ValueError, match="norm_ord must be 'fro' or a number"):
        metrics.sensitivity_max(ex, x, norm_ord="nuc", target=TARGET)
    with pytest.raises(ValueError, match="target"):
        metrics.deletion(ex, x, attr)            # a 4-class output needs a target


# ---------------------------------------------------------------------- several inputs
def export_named(model, example: dict) -> bytes:
    """TorchScript export of a model of named inputs, batch axis 0 dynamic."""
    import io
    import warnings
    buf = io.BytesIO()
    names = list(example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(example.values()), buf, dynamo=False, opset_version=17, input_names=names,
                          output_names=["y"], dynamic_axes={**{k: {0: "batch"} for k in names}, "y": {0: "batch"}})
    return buf.getvalue()


@pytest.fixture(scope="module")
def two():
    model, example = zoo.two_inputs()
    return model, export_named(model, example), {k: v.numpy() for k, v in example.items()}


def test_infidelity_two_inputs_vs_captum(two):
    """Inputs as a dict: the perturbation function gets and returns dicts; Captum gets tuples."""
    model, onx, x = two
    attr = onnxplain.Explainer(onx, "saliency").explain(x, target=TARGET)
    rng_o, rng_t = np.random.default_rng(8), np.random.default_rng(8)

    def ours_f(inputs):
        noise = {k: rng_o.normal(0, 0.2, v.shape).astype(np.float32) for k, v in inputs.items()}
        return noise, {k: v - noise[k] for k, v in inputs.items()}

    def theirs_f(inputs):
        noise = tuple(torch.from_numpy(rng_t.normal(0, 0.2, tuple(v.shape)).astype(np.float32)) for v in inputs)
        return noise, tuple(v - e for v, e in zip(inputs, noise))
    ours = metrics.infidelity(onx, ours_f, x, attr, target=TARGET, n_perturb_samples=4)
    ref = captum_infidelity(captum_forward(model), theirs_f, (torch.from_numpy(x["a"]), torch.from_numpy(x["b"])),
                            (torch.from_numpy(attr["a"]), torch.from_numpy(attr["b"])), target=TARGET,
                            n_perturb_samples=4)
    assert_close(ours, ref.double(), RTOL, what="infidelity")


def test_deletion_groups_across_inputs_vs_brute_force(two):
    """One group id shared by an element of each input (Captum's cross-input groups): flipped together."""
    model, onx, x = two
    attr = np.round(np.random.default_rng(9).standard_normal(8), 0).astype(np.float32)
    attributions = {"a": np.tile(attr[:5], (3, 1)), "b": np.tile(attr[5:], (3, 1))}
    mask = {"a": np.array([[0, 1, 2, 3, 4]]), "b": np.array([[4, 0, 9]])}
    curve = metrics.deletion(onx, x, attributions, target=TARGET, baselines={"a": 0.5, "b": -0.5},
                             feature_mask=mask)
    labels = np.concatenate([mask["a"][0], mask["b"][0]])
    flat_a = np.concatenate([attributions["a"], attributions["b"]], axis=1)
    flat_x = np.concatenate([x["a"], x["b"]], axis=1)
    base = np.array([0.5] * 5 + [-0.5] * 3)
    ids = sorted(set(labels.tolist()))
    ref = np.zeros((3, len(ids) + 1))
    for j in range(3):
        order = sorted(ids, key=lambda g: -flat_a[j][labels == g].sum())
        for k in range(len(ids) + 1):
            row = np.where(np.isin(labels, order[:k]), base, flat_x[j]).astype(np.float32)[None]
            with torch.no_grad():
                ref[j, k] = model(torch.from_numpy(row[:, :5]), torch.from_numpy(row[:, 5:]))[0, TARGET].item()
    assert_close(curve.values, ref, RTOL, what="curve")


def test_infidelity_passes_an_integer_input_through():
    """The mask input of a masked model is not attributed: repeated with its rows, never perturbed."""
    model, example = zoo.masked_tabular()
    onx = export_named(model, example)
    x = {k: v.numpy() for k, v in example.items()}
    attr = onnxplain.Explainer(onx, "saliency").explain(x, target=TARGET)
    ours_f, theirs_f = shared_noise(21, "normal", 0.3)
    ours = metrics.infidelity(onx, ours_f, x, attr, target=TARGET, n_perturb_samples=5)
    ref = captum_infidelity(captum_forward(model), theirs_f, example["x"], torch.from_numpy(attr),
                            additional_forward_args=(example["mask"],), target=TARGET, n_perturb_samples=5)
    assert_close(ours, ref.double(), RTOL, what="infidelity")
