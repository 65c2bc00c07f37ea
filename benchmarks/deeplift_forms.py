"""DeepLIFT's two forms on the benchmark CNN, timed side by side in one process.

    python benchmarks/deeplift_forms.py [--rows 16] [--baselines 4] [--repeats 7]

- ``copies``: the references run through a copy of the forward pass of their own and only the
  inputs' copy is walked back (what onnxplain builds for a model without loops, branches or
  recurrent cells when the inputs are attributed);
- ``stacked``: one batch ``[inputs; references]`` walked back whole, the references' half seeded
  with zeros (what onnxplain keeps for the other models).

Both forms are checked to give the same attributions before they are timed; calls are
interleaved and each figure is a median.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from run import cnn


def explainers(stacked: bool, model) -> dict:
    import onnxplain
    from onnxplain.cache import clear_cache
    from onnxplain.methods.deeplift import DeepLift
    clear_cache()    # the form is not part of the graph cache's key: never take the other form's graph
    choice = DeepLift.stacks_references
    DeepLift.stacks_references = lambda self, spec: stacked     # the form is chosen when the graph is built
    try:
        return {m: onnxplain.Explainer(model, m) for m in ("deeplift", "deeplift_shap")}
    finally:
        DeepLift.stacks_references = choice


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
    forms = {"copies": explainers(False, model), "stacked": explainers(True, model)}
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
