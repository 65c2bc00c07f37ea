"""DeepLIFT's two forms on the benchmark CNN, timed side by side in one process.

    python benchmarks/deeplift_forms.py [--rows 16] [--baselines 4] [--repeats 7]

- ``stacked``: one batch ``[inputs; references]`` walked back whole, the references' half seeded
  with zeros (what onnxplain builds by default);
- ``copies``: with ``batch_size`` as large as the call's rows, the references run through a copy
  of the forward pass of their own and only the inputs' copy is walked back: half the backward's
  rows, at the price of a second forward copy.

Both forms are checked to give the same attributions before they are timed; calls are
interleaved and each figure is a median.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from run import cnn


def explainers(model, batch_size: int | None) -> dict:
    import onnxplain
    return {m: onnxplain.Explainer(model, m, batch_size=batch_size) for m in ("deeplift", "deeplift_shap")}


def main() -> None:
    import torch

    import onnxplain
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--baselines", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    x = rng.random((args.rows, 3, 32, 32), dtype=np.float32)
    model = onnxplain.from_torch(cnn().eval(), torch.from_numpy(x[:2]))
    target = [int(t) for t in rng.integers(0, 10, args.rows)]
    params = {"deeplift": {}, "deeplift_shap": {"baselines": rng.random((args.baselines, 3, 32, 32), dtype=np.float32)}}
    forms = {"copies": explainers(model, args.rows * args.baselines), "stacked": explainers(model, None)}
    for method, kw in params.items():
        first = [forms[f][method].explain(x, target=target, **kw) for f in forms]
        gap = float(np.abs(first[0] - first[1]).max())
        times = {f: [] for f in forms}
        for _ in range(args.repeats):
            for form, made in forms.items():
                start = time.perf_counter()
                made[method].explain(x, target=target, **kw)
                times[form].append(time.perf_counter() - start)
        copies, stacked = (statistics.median(times[f]) * 1e3 for f in forms)
        print(f"{method}, {args.rows} rows: copies {copies:.1f} ms, stacked {stacked:.1f} ms "
              f"(stacked / copies {stacked / copies:.2f}x; largest difference {gap:.1e})")


if __name__ == "__main__":
    main()
