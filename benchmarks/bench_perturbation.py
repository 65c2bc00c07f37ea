"""Perturbation methods against Captum on the same torch model, in one run.

    python benchmarks/bench_perturbation.py            # full sizes
    python benchmarks/bench_perturbation.py --quick    # smaller batches, fewer repeats

For occlusion and Shapley value sampling it reports onnxplain's time per call
(graph and session already built, Numba kernels compiled: the first call is a
warm-up), Captum's time with its default ``perturbations_per_eval=1`` and with
a batched ``perturbations_per_eval``, the speed-up, the largest difference
(occlusion is deterministic; for Shapley sampling the efficiency residual is
shown instead) and the share of onnxplain's time spent outside the session's
``run`` (filling batches, folding outputs, Python): the goal is under 10%.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
import warnings

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir))

import onnxplain  # noqa: E402


class CNN(nn.Module):
    """3x32x32 images -> 10 classes."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(32, 10))

    def forward(self, x):
        return self.body(x)


class MLP(nn.Module):
    """40 tabular features -> 3 classes (softmax)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(40, 64), nn.Tanh(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))

    def forward(self, x):
        return torch.softmax(self.net(x), dim=1)


def export(model, row_shape) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros((2,) + row_shape),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return buf.getvalue()


def best_of(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def timed_onnxplain(ex, kwargs, repeats):
    """(seconds per call, seconds inside session.run per call, attributions)."""
    session = ex.session
    inner = session.run
    spent = [0.0]

    def run(*args, **kw):
        t = time.perf_counter()
        try:
            return inner(*args, **kw)
        finally:
            spent[0] += time.perf_counter() - t

    session.run = run
    try:
        ex.explain(**kwargs)             # warm-up: Numba cache load, onnxruntime arena
        best, best_run, out = None, None, None
        for _ in range(repeats):
            spent[0] = 0.0
            t = time.perf_counter()
            out = ex.explain(**kwargs)
            total = time.perf_counter() - t
            if best is None or total < best:
                best, best_run = total, spent[0]
    finally:
        del session.run
    return best, best_run, out


def case(name, model, row_shape, x, method, captum_cls, captum_kwargs, ox_kwargs, repeats, check):
    onx = export(model, row_shape)
    ex = onnxplain.Explainer(onx, method)
    t_ox, t_run, a = timed_onnxplain(ex, dict(inputs=x, **ox_kwargs), repeats)
    xt = torch.from_numpy(x)
    algo = captum_cls(model)
    with torch.no_grad():
        rows = []
        for ppe in (1, 64):
            t_c, ref = best_of(lambda: algo.attribute(xt, perturbations_per_eval=ppe, **captum_kwargs).numpy(),
                               1 if ppe == 1 else repeats)
            rows.append((ppe, t_c, ref))
    err = check(a, rows[-1][2])
    outside = 1.0 - t_run / t_ox
    print(f"{name:<34} onnxplain {t_ox * 1e3:8.1f} ms  (outside run {100 * outside:4.1f}%)")
    for ppe, t_c, _ in rows:
        print(f"{'':<34} captum ppe={ppe:<3d} {t_c * 1e3:8.1f} ms  speed-up x{t_c / t_ox:6.1f}")
    print(f"{'':<34} {err}")
    return outside


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    repeats = 2 if args.quick else 5
    n_img = 2 if args.quick else 8
    n_tab = 8 if args.quick else 32
    print(f"onnxruntime threads: default; torch threads: {torch.get_num_threads()}; cpus: {os.cpu_count()}")

    cnn = CNN().eval()
    images = rng.standard_normal((n_img, 3, 32, 32)).astype(np.float32)
    mlp = MLP().eval()
    table = rng.standard_normal((n_tab, 40)).astype(np.float32)
    superpixels = (np.arange(32)[:, None] // 8 * 4 + np.arange(32)[None, :] // 8)[None, None]   # 16 groups of 8x8

    def max_diff(a, ref):
        return f"max |onnxplain - captum| = {np.abs(a - ref).max():.2e} (|captum| <= {np.abs(ref).max():.2e})"

    def efficiency(model, x, target):
        def check(a, _ref):
            with torch.no_grad():
                xt = torch.from_numpy(x)
                gap = (model(xt)[:, target] - model(torch.zeros_like(xt))[:, target]).numpy()
            residual = np.abs(a.reshape(len(x), -1).sum(1) - gap).max()
            return f"efficiency residual max |sum(a) - (f(x) - f(0))| = {residual:.2e}"
        return check

    def group_efficiency(model, x, target):
        def check(a, _ref):
            with torch.no_grad():
                xt = torch.from_numpy(x)
                gap = (model(xt)[:, target] - model(torch.zeros_like(xt))[:, target]).numpy()
            per_group = a[:, 0, ::8, ::8].reshape(len(x), -1).sum(1)
            return f"efficiency residual over the 16 groups = {np.abs(per_group - gap).max():.2e}"
        return check

    from captum.attr import Occlusion, ShapleyValueSampling
    outside = []
    outside.append(case(f"occlusion CNN {n_img}x3x32x32 w(3,4,4) s2", cnn, (3, 32, 32), images, "occlusion", Occlusion,
                        dict(sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2), target=3),
                        dict(sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2), target=3), repeats, max_diff))
    outside.append(case(f"occlusion MLP {n_tab}x40 w(4,) s1", mlp, (40,), table, "occlusion", Occlusion,
                        dict(sliding_window_shapes=(4,), strides=1, target=1),
                        dict(sliding_window_shapes=(4,), strides=1, target=1), repeats, max_diff))
    outside.append(case(f"shapley_sampling MLP {n_tab}x40 n=25", mlp, (40,), table, "shapley_sampling",
                        ShapleyValueSampling, dict(n_samples=25, target=1), dict(n_samples=25, target=1, seed=0),
                        repeats, efficiency(mlp, table, 1)))
    outside.append(case(f"shapley_sampling CNN {n_img} 16 groups n=25", cnn, (3, 32, 32), images, "shapley_sampling",
                        ShapleyValueSampling,
                        dict(n_samples=25, target=3, feature_mask=torch.from_numpy(superpixels)),
                        dict(n_samples=25, target=3, seed=0, feature_mask=superpixels), repeats,
                        group_efficiency(cnn, images, 3)))
    print("share of onnxplain's time outside session.run (goal < 10%): "
          + ", ".join(f"{100 * v:.1f}%" for v in outside))


if __name__ == "__main__":
    main()
