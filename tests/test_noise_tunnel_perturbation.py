"""A noise tunnel over the perturbation methods, against Captum's NoiseTunnel over the same methods.

onnxplain gets the very noise Captum draws (checks.captum_noise, and its per-batch draws under
nt_samples_batch_size); Captum runs ``NoiseTunnel(FeatureAblation(model))`` (Occlusion, ShapleyValues) with the
same parameters.  The methods that draw their own perturbations (permutations, coalitions) are held to exact
properties: one noisy sample without noise is the method itself, and noise-free copies have no variance.
"""
import warnings

import numpy as np
import pytest
import torch
from captum.attr import FeatureAblation, NoiseTunnel, Occlusion, ShapleyValues
from torch import nn

import onnxplain
from checks import assert_close, captum_noise
from test_noise_tunnel import captum_batched_noise

warnings.filterwarnings("ignore", category=UserWarning)

SAMPLES = 4
STDEV = 0.25          # a power of two: Captum's draws are reproduced exactly
SEED = 7
RTOL = 2e-5
NT_TYPES = ["smoothgrad", "smoothgrad_sq", "vargrad"]


def mlp():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 7), nn.ReLU(), nn.Linear(7, 3)).eval()


def cnn():
    torch.manual_seed(4)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 3), nn.Softmax(-1)).eval()


class Case:
    def __init__(self, net, row, dynamo):
        self.net = net
        g = torch.Generator().manual_seed(11)
        self.x = torch.randn((3,) + row, generator=g)
        self.baselines = 0.3 * torch.randn((3,) + row, generator=g)
        self.onnx = onnxplain.from_torch(net, self.x, dynamo=dynamo)


@pytest.fixture(scope="module")
def cases():
    return {"mlp": Case(mlp(), (6,), False), "cnn": Case(cnn(), (2, 7, 7), True)}


def captum_reference(case, captum_method, kinds, **kwargs):
    """Captum's NoiseTunnel over ``captum_method`` for each statistic, each after ``torch.manual_seed(SEED)``."""
    out = {}
    for kind in kinds:
        torch.manual_seed(SEED)
        out[kind] = NoiseTunnel(captum_method).attribute(case.x, nt_type=kind, stdevs=STDEV, **kwargs).detach()
    return out


def check_against(ours, ref, kind):
    """VarGrad's float32 error is relative to E[a^2]: measure it on the scale of smoothgrad_sq."""
    assert_close(ours, ref[kind], RTOL, scale=float(ref["smoothgrad_sq"].abs().max()) if kind == "vargrad" else None)


@pytest.mark.parametrize("kind", NT_TYPES)
def test_feature_ablation_matches_captum_with_per_row_targets_baselines_and_masks(cases, kind):
    """Per-row targets, baselines and feature masks follow their noisy rows (Captum repeats them per sample)."""
    case = cases["mlp"]
    mask = np.array([[0, 0, 1, 1, 2, 2], [0, 1, 1, 2, 2, 2], [3, 3, 3, 0, 1, 2]], np.int64)
    target = [2, 0, 1]
    ex = onnxplain.Explainer(case.onnx, "feature_ablation", noise_tunnel=kind)
    ours = ex.explain(case.x.numpy(), target=target, nt_samples=SAMPLES, stdevs=STDEV,
                      noise=captum_noise(case.x, SEED, SAMPLES, STDEV), baselines=case.baselines.numpy(),
                      feature_mask=mask)
    ref = captum_reference(case, FeatureAblation(case.net), {"smoothgrad_sq", kind}, nt_samples=SAMPLES,
                           target=target, baselines=case.baselines, feature_mask=torch.from_numpy(mask))
    check_against(ours, ref, kind)


@pytest.mark.parametrize("kind", NT_TYPES)
def test_occlusion_on_a_cnn_matches_captum_in_batches_of_samples(cases, kind):
    """Occlusion windows on a torch.export CNN, 5 samples in Captum's batches of 2 (and the rest), fed Captum's
    per-batch draws; the same draws unbatched give the same numbers."""
    case = cases["cnn"]
    samples, per_batch = 5, 2
    noise = captum_batched_noise(case.x, SEED, samples, per_batch, STDEV)
    ex = onnxplain.Explainer(case.onnx, "occlusion", noise_tunnel=kind)
    graph = ex.graph
    params = dict(target=1, nt_samples=samples, stdevs=STDEV, noise=noise, sliding_window_shapes=(1, 3, 3),
                  strides=(1, 2, 2), baselines=0.5)
    ref = captum_reference(case, Occlusion(case.net), {"smoothgrad_sq", kind}, nt_samples=samples,
                           nt_samples_batch_size=per_batch, target=1, sliding_window_shapes=(1, 3, 3),
                           strides=(1, 2, 2), baselines=0.5, perturbations_per_eval=18)
    check_against(ex.explain(case.x.numpy(), nt_samples_batch_size=per_batch, **params), ref, kind)
    check_against(ex.explain(case.x.numpy(), **params), ref, kind)
    assert ex.graph is graph


@pytest.mark.parametrize("method", ["shapley_values", "kernel_shap"])
def test_exact_shapley_methods_match_captum_shapley_values(cases, method):
    """Exact Shapley values of 3 groups (kernel_shap is exact once n_samples >= 2**groups) under smoothgrad_sq,
    against Captum's NoiseTunnel(ShapleyValues)."""
    case = cases["mlp"]
    mask = np.array([[0, 0, 1, 2, 2, 1]], np.int64)
    extra = {"n_samples": 8} if method == "kernel_shap" else {}
    ours = onnxplain.Explainer(case.onnx, method, noise_tunnel="smoothgrad_sq").explain(
        case.x.numpy(), target=0, nt_samples=SAMPLES, stdevs=STDEV, noise=captum_noise(case.x, SEED, SAMPLES, STDEV),
        feature_mask=mask, **extra)
    ref = captum_reference(case, ShapleyValues(case.net), {"smoothgrad_sq"}, nt_samples=SAMPLES, target=0,
                           feature_mask=torch.from_numpy(mask))
    check_against(ours, ref, "smoothgrad_sq")


SEEDED = {"shapley_sampling": {"n_samples": 3}, "lime": {"n_samples": 12}, "kernel_shap": {"n_samples": 10},
          "feature_permutation": {}}


@pytest.mark.parametrize("method", sorted(SEEDED))
def test_methods_with_their_own_draws_take_the_seed(cases, method):
    """One noise-free sample is the method itself (the same seed draws its permutations or coalitions); with
    noise-free copies its own draws are shared by every copy, so vargrad is zero (feature_permutation shuffles
    between the copies, so only the first holds for it)."""
    case = cases["mlp"]
    x = case.x.numpy()
    params = {"target": 1, "seed": 5, "stdevs": 0.0, **SEEDED[method]}
    alone = onnxplain.Explainer(case.onnx, method).explain(x, **{k: v for k, v in params.items() if k != "stdevs"})
    ours = onnxplain.Explainer(case.onnx, method, noise_tunnel="smoothgrad").explain(x, nt_samples=1, **params)
    assert_close(ours, alone, 1e-6)
    if method != "feature_permutation":
        var = onnxplain.Explainer(case.onnx, method, noise_tunnel="vargrad").explain(
            x, nt_samples=3, nt_samples_batch_size=2, **params)
        assert np.abs(var).max() <= 1e-6 * np.abs(alone).max() ** 2 + 1e-12


def test_noisy_rows_and_the_estimate_of_a_perturbation_noise_tunnel(cases):
    """The estimate is the method's own for the B*N noisy rows of each batch of samples."""
    case = cases["mlp"]
    x = case.x.numpy()
    tunnel = onnxplain.Explainer(case.onnx, "feature_ablation", noise_tunnel="smoothgrad")
    alone = onnxplain.Explainer(case.onnx, "feature_ablation")
    cost = tunnel.estimate(x, target=0, nt_samples=5, nt_samples_batch_size=2, perturbations_per_eval=2)
    batches = [alone.estimate(np.concatenate([x] * k), target=0, perturbations_per_eval=2) for k in (2, 2, 1)]
    assert (cost.rows, cost.runs) == (sum(c.rows for c in batches), sum(c.runs for c in batches))


def test_what_a_perturbation_noise_tunnel_refuses(cases, tmp_path):
    from test_layers_and_tokens import TokenNet
    ids = torch.tensor([[1, 5, 7, 2], [4, 4, 8, 1]])
    mask = torch.ones_like(ids)
    tokens = onnxplain.from_torch(TokenNet().eval(), {"ids": ids, "mask": mask})
    with pytest.raises(ValueError, match=r"adds its noise to the attributed inputs themselves.*\['ids'\]"):
        onnxplain.Explainer(tokens, "occlusion", noise_tunnel="smoothgrad")
    with pytest.raises(ValueError, match="a standalone graph cannot carry it"):
        onnxplain.convert(cases["mlp"].onnx, tmp_path / "g.onnx", "feature_ablation", noise_tunnel="vargrad")
    ex = onnxplain.Explainer(cases["mlp"].onnx, "feature_ablation", noise_tunnel="vargrad")
    ex.session.run = lambda *a, **k: pytest.fail("the session ran")
    with pytest.raises(ValueError, match="nt_samples_batch_size must be a positive int"):
        ex.explain(cases["mlp"].x.numpy(), target=0, nt_samples_batch_size=-1)
    with pytest.raises(ValueError, match="noise for input 'input' must have shape"):
        ex.explain(cases["mlp"].x.numpy(), target=0, nt_samples=2, noise=np.zeros((3, 3, 6), np.float32))
    with pytest.raises(ValueError, match="feature_mask for input"):
        ex.explain(cases["mlp"].x.numpy(), target=0, feature_mask=np.zeros((2, 6), np.int64))


def test_command_line_and_request_parameters(cases, tmp_path):
    """``--noise-tunnel`` over occlusion with the generated ``--nt-samples-batch-size`` flag; a server request
    carries nt_samples_batch_size as an input of its own."""
    from onnxplain import cli
    from onnxplain.serve.protocol import Interface
    case = cases["mlp"]
    model, rows, out = tmp_path / "m.onnx", tmp_path / "x.npy", tmp_path / "a.npy"
    model.write_bytes(case.onnx if isinstance(case.onnx, bytes) else case.onnx.SerializeToString())
    np.save(rows, case.x.numpy())
    assert cli.main(["explain", str(model), str(rows), "-m", "occlusion", "--noise-tunnel", "smoothgrad",
                     "--sliding-window-shapes", "2", "--nt-samples", "3", "--nt-samples-batch-size", "2",
                     "--stdevs", "0.125", "--seed", "4", "--target", "1", "--out", str(out)]) == 0
    ex = onnxplain.Explainer(case.onnx, "occlusion", noise_tunnel="smoothgrad")
    expected = ex.explain(case.x.numpy(), target=1, sliding_window_shapes=(2,), nt_samples=3, stdevs=0.125, seed=4)
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-6)
    interface = Interface(ex)
    assert "nt_samples_batch_size" in {t.name for t in interface.inputs}
    *_, params, _ = interface.call({"input": ("FP32", case.x.numpy()),
                                    "nt_samples_batch_size": ("INT64", np.array([2], np.int64))}, None)
    assert params["nt_samples_batch_size"] == 2
