"""Memory kept, not hoped for: the resident set size sampled during each call stays within 1.5x the budget
over its size before the call, for every method family; DeepLiftShap's baseline parts and ``n_baselines``
against Captum.

Each call runs in an interpreter of its own (no memory freed by earlier work to reuse), so onnxruntime's
arena and every buffer of the call grow during the call that is measured.
"""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from captum.attr import DeepLiftShap
from torch import nn

import onnxplain
from models import export

BUDGET = 48 << 20

MEASURE = textwrap.dedent("""
    import json, os, sys, threading, time
    import numpy as np
    import onnxplain

    PAGE = os.sysconf("SC_PAGE_SIZE")

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE

    def peak_over(call):
        top, stop = [0], threading.Event()
        def watch():
            while not stop.is_set():
                top[0] = max(top[0], rss())
                time.sleep(0.001)
        before = rss()
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            call()
        finally:
            stop.set()
            watcher.join()
        return max(top[0], rss()) - before

    def linear_model():
        from onnx import TensorProto, helper, numpy_helper
        w = numpy_helper.from_array(np.ones((3 * 32 * 32, 10), np.float32), "w")
        nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])]
        graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", 1, ["n", 3, 32, 32])],
                                  [helper.make_tensor_value_info("y", 1, ["n", 10])], [w])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    model, budget, method = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 3, 32, 32)).astype(np.float32)
    mask = (np.arange(32 * 32).reshape(1, 1, 32, 32) // 4).repeat(3, axis=1)      # 256 groups
    cases = {
        "saliency": {},
        "integrated_gradients": dict(n_steps=50),
        "smoothgrad": dict(nt_samples=20, stdevs=0.1),
        "deeplift": {},
        "deeplift_shap": dict(baselines=rng.standard_normal((100, 3, 32, 32)).astype(np.float32)),
        "occlusion": dict(sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4)),
        "shapley_sampling": dict(n_samples=2, feature_mask=mask, seed=0),
    }
    rows = {"deeplift_shap": 8, "shapley_sampling": 8, "occlusion": 32}
    params = cases[method]
    ex = onnxplain.Explainer(model, method, memory_budget=budget)
    if ex.method.forward_only:   # compile the Numba kernels first (code, not the call's memory), on another model
        warm = onnxplain.Explainer(linear_model(), method, memory_budget=1 << 20)
        warm.explain(x[:1], target=1, **{**params, "n_samples": 1} if "n_samples" in params else params)
    xs = x[:rows.get(method, len(x))]
    runs = ex.estimate(xs, target=1, **params).runs
    print(json.dumps({"peak": peak_over(lambda: ex.explain(xs, target=1, **params)), "runs": runs}))
""")


class CNN(nn.Module):
    """3x32x32 -> 10 classes: convolutions, ReLU, max pooling, a linear head."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(32, 10))

    def forward(self, x):
        return self.body(x)


@pytest.fixture(scope="module")
def measure(tmp_path_factory):
    """``measure(method)``: the peak and the runs of one call, in an interpreter of its own."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("memory")
    (folder / "cnn.onnx").write_bytes(export(CNN().eval(), (3, 32, 32)))
    (folder / "measure.py").write_text(MEASURE)

    def run(method):
        done = subprocess.run([sys.executable, str(folder / "measure.py"), str(folder / "cnn.onnx"), str(BUDGET),
                               method], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])
    return run


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "smoothgrad", "deeplift", "deeplift_shap",
                                    "occlusion", "shapley_sampling"])
def test_peak_resident_memory_of_a_call_stays_within_the_budget(measure, method):
    measured = measure(method)
    assert measured["runs"] > 1, "the budget must split the call for the measure to mean anything"
    assert measured["peak"] <= 1.5 * BUDGET, \
        f"{method}: peak {measured['peak'] / 2**20:.0f} MiB over the RSS before the call, budget {BUDGET >> 20} MiB"


# ---------------------------------------------------------------------- DeepLiftShap against Captum
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(7, 16), nn.ReLU(), nn.Linear(16, 9), nn.Tanh(), nn.Linear(9, 3))

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(3)
    module = Net().eval()
    return module, export(module, (7,))


def test_a_baseline_set_larger_than_the_budget_is_split_and_still_matches_captum(net):
    module, onx = net
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 7)).astype(np.float32)
    background = rng.standard_normal((37, 7)).astype(np.float32)
    ex = onnxplain.Explainer(onx, "deeplift_shap", memory_budget=6000)   # a few baselines per run
    assert ex.estimate(x, target=2, baselines=background).runs > 5
    attr, delta = ex.explain(x, target=2, baselines=background, return_convergence_delta=True)
    ref = DeepLiftShap(module).attribute(torch.from_numpy(x), torch.from_numpy(background), target=2)
    np.testing.assert_allclose(attr, ref.detach().numpy(), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        f = module(torch.from_numpy(x))[:, 2].numpy() - module(torch.from_numpy(background))[:, 2].numpy().mean()
    np.testing.assert_allclose(delta, attr.sum(1) - f, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(delta, 0, atol=1e-4)


def test_n_baselines_draws_k_rows_of_the_background_seeded(net):
    module, onx = net
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 7)).astype(np.float32)
    background = rng.standard_normal((500, 7)).astype(np.float32)
    ex = onnxplain.Explainer(onx, "deeplift_shap")
    a = ex.explain(x, target=0, baselines=background, n_baselines=20, seed=5)
    drawn = background[np.sort(np.random.default_rng(5).choice(500, size=20, replace=False))]
    ref = DeepLiftShap(module).attribute(torch.from_numpy(x), torch.from_numpy(drawn), target=0)
    np.testing.assert_allclose(a, ref.detach().numpy(), rtol=1e-4, atol=1e-5)
    full = DeepLiftShap(module).attribute(torch.from_numpy(x), torch.from_numpy(background), target=0)
    errors = [np.abs(ex.explain(x, target=0, baselines=background, n_baselines=k) - full.detach().numpy()).mean()
              for k in (5, 80, 500)]
    assert errors[2] < 1e-5 and errors[1] < errors[0], f"more baselines, closer to the whole set: {errors}"
    with pytest.raises(ValueError, match="n_baselines"):
        ex.explain(x, target=0, baselines=background, n_baselines=0)


# ---------------------------------------------------------------------- background sets of the perturbation methods
def test_ablation_and_shapley_against_a_background_set_drawn_k_rows_of(net):
    """Mean over the drawn baselines of the textbook values, each against one baseline row."""
    from checks import brute_force_shapley
    module, onx = net
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 7)).astype(np.float32)
    background = rng.standard_normal((300, 7)).astype(np.float32)
    drawn = background[np.sort(np.random.default_rng(9).choice(300, size=6, replace=False))]

    def f(rows):
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)))[:, 1].double().numpy()

    mask = np.array([0, 0, 1, 2, 2, 3, 1])
    ablation = np.mean([np.stack([f(x) - f(np.where(np.arange(7) == j, b, x)) for j in range(7)], 1)
                        for b in drawn], axis=0)
    got = onnxplain.Explainer(onx, "feature_ablation").explain(x, target=1, baselines=background, n_baselines=6,
                                                                seed=9)
    np.testing.assert_allclose(got, ablation, rtol=1e-4, atol=1e-5)

    shapley = np.mean([brute_force_shapley(f, x, b[None], mask[None], 4)[:, mask] for b in drawn], axis=0)
    got = onnxplain.Explainer(onx, "shapley_values").explain(x, target=1, feature_mask=mask[None],
                                                              baselines=background, n_baselines=6, seed=9)
    np.testing.assert_allclose(got, shapley, rtol=1e-4, atol=1e-5)

    sampled = onnxplain.Explainer(onx, "shapley_sampling").explain(x, target=1, baselines=background,
                                                                   n_baselines=6, seed=9, n_samples=3)
    efficiency = f(x) - np.mean([f(b[None])[0] for b in drawn])
    np.testing.assert_allclose(sampled.sum(1), efficiency, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="background set"):
        onnxplain.Explainer(onx, "feature_ablation").explain(x, target=1, baselines=background[0], n_baselines=2)
