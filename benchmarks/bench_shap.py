"""KernelSHAP against SHAP's ``KernelExplainer`` on the benchmark's 64-feature MLP, in one run.

    python benchmarks/bench_shap.py [--rows 16] [--samples 200] [--repeats 5]

Both explain the same rows against an all-zero background row with the same coalition count; the times
are medians of interleaved calls (one untimed call of each first), PyTorch with as many threads as
onnxruntime.  SHAP's explainer calls the PyTorch model through numpy.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    import shap
    import torch

    import onnxplain
    from onnxplain.runtime import usable_cores
    from run import mlp64

    warnings.simplefilter("ignore")
    torch.set_num_threads(usable_cores())
    torch.manual_seed(1)
    net = mlp64().eval()
    x = np.random.default_rng(0).standard_normal((args.rows, 64)).astype(np.float32)
    ex = onnxplain.Explainer(onnxplain.from_torch(net, torch.from_numpy(x[:2])), "kernel_shap")

    def model_output(a):
        with torch.no_grad():
            return net(torch.from_numpy(np.asarray(a, dtype=np.float32)))[:, 1].numpy()

    kernel = shap.KernelExplainer(model_output, np.zeros((1, 64), np.float32))
    calls = {"onnxplain": lambda: ex.explain(x, target=1, n_samples=args.samples, seed=0),
             "shap": lambda: kernel.shap_values(x, nsamples=args.samples, silent=True)}
    times = {k: [] for k in calls}
    for name, call in calls.items():
        call()                                   # untimed
    for _ in range(args.repeats):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    ours, theirs = statistics.median(times["onnxplain"]), statistics.median(times["shap"])
    print(f"kernel_shap, {args.rows} rows x 64 features, {args.samples} coalitions: onnxplain {ours * 1e3:.1f} ms, "
          f"shap.KernelExplainer {theirs * 1e3:.1f} ms: {theirs / ours:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
