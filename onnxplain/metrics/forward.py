"""The forward-only graph the metrics run, the checked pieces of a call, and how perturbation samples are
cut into calls."""
from __future__ import annotations

import weakref

import numpy as np

from ..api import Explainer
from ..methods.base import TARGET_WEIGHTS
from ..methods.perturbation import TARGET_OUTPUT, chunking, check_positive_int, per_input


# ---------------------------------------------------------------------- the model's forward-only graph
class Forward:
    """The forward-only Explainer of a metric, and the checked feeds, targets and attributions of a call."""

    def __init__(self, model, output=None):
        if isinstance(model, Explainer):
            own = model
            if not all(p.is_input for p in own.spec.points):
                raise ValueError("the metrics perturb the model's inputs: build the Explainer without layer= and "
                                 "for inputs attributed as themselves (not at a token embedding)")
            if output is not None and output != own.output:
                raise ValueError(f"output {output!r} differs from the Explainer's {own.output!r}")
            self.fwd = own if own.method.forward_only else forward_of(own)
        else:
            own = self.fwd = Explainer(model, "feature_ablation", output=output)
        self.own = own
        self.spec, self.runner = self.fwd.spec, self.fwd.runner

    def call(self, inputs, target, target_weights) -> tuple[dict, np.ndarray]:
        """Batch-first feeds and target weights of a call."""
        if self.fwd is self.own:
            feeds, tw, _ = self.own.checked_call(inputs, target, target_weights, {})
        else:    # the forward Explainer takes the inputs batch first
            feeds, tw, _ = self.fwd.checked_call(self.own.check_inputs(inputs), target, target_weights, {})
        return feeds, np.ascontiguousarray(tw)

    def attributions(self, attributions, feeds: dict) -> dict:
        """The attributions by input name, batch first, float64, each checked against its input's shape."""
        given = per_input(attributions, self.spec, "attributions", lambda v: False)
        out = {}
        for x, a in given.items():
            a = np.asarray(a)
            axis = self.own.batch_axes.get(x)
            if axis:
                a = np.moveaxis(a, axis, 0) if a.ndim > axis else a
            if a.shape != feeds[x].shape:
                raise ValueError(f"attributions for input {x!r} must have the input's shape {feeds[x].shape} "
                                 f"(batch first), got {a.shape}")
            if a.dtype.kind not in "fiub":
                raise ValueError(f"attributions for input {x!r} must be numbers, got dtype {a.dtype}")
            out[x] = a.astype(np.float64, copy=False)
        return out

    def outputs(self, feeds: dict, tw: np.ndarray) -> np.ndarray:
        """``target_output`` of every row of ``feeds`` (batch first), in runs of rows the budget holds."""
        n = tw.shape[0]
        runner = self.runner
        block, _ = chunking(n, 1, runner.row_cost(feeds), runner.memory_budget, None, self.spec.batch_size)
        out = []
        for start in range(0, n, block):
            run = runner.row_slice(feeds, start, min(n, start + block))
            run[TARGET_WEIGHTS] = tw[start:start + block]
            out.append(runner.run(run, [TARGET_OUTPUT])[TARGET_OUTPUT].reshape(-1))
        return np.concatenate(out).astype(np.float64)

    def repeated(self, feeds: dict, k: int) -> dict:
        """Every batched input's rows each repeated ``k`` times in a row (Captum's ``repeat_interleave``)."""
        return {x: v if x in self.spec.unbatched else np.repeat(v, k, axis=0) for x, v in feeds.items()}

    def stacked(self, first: dict, second: dict) -> dict:
        """The rows of ``first`` then those of ``second`` for every batched input (unbatched ones as they are)."""
        return {x: v if x in self.spec.unbatched else np.concatenate([v, second[x]]) for x, v in first.items()}

    def packed(self, values: dict):
        return values[self.spec.wrt[0]] if self.spec.single else dict(values)

    def unpacked(self, value, what: str) -> dict:
        return {x: np.asarray(v) for x, v in per_input(value, self.spec, what, lambda v: False).items()}


#: the forward-only Explainer made for an Explainer whose method walks back: made on its first metric, kept as
#: long as that Explainer lives
_FORWARDS: "weakref.WeakKeyDictionary[Explainer, Explainer]" = weakref.WeakKeyDictionary()


def forward_of(own: Explainer) -> Explainer:
    """The forward-only Explainer of the same model, inputs, providers, budget and batch size as ``own``
    (batch first: the metrics hand it ``own``'s feeds), made once per ``own``."""
    fwd = _FORWARDS.get(own)
    if fwd is None:
        axes = {x: (None if k is None else 0) for x, k in own.batch_axes.items()}
        fwd = _FORWARDS[own] = Explainer(own.model, "feature_ablation", output=own.output, inputs=own.inputs,
                                         providers=own.providers, memory_budget=own.memory_budget,
                                         threads=own.threads, batch_axes=axes, batch_size=own.spec.batch_size)
    return fwd


def samples_per_call(n_rows: int, samples: int, max_examples_per_batch, row_bytes: int = 0,
                      budget: int | None = None) -> int:
    """Samples per row drawn in one call of the perturbation function: Captum's rule for
    ``max_examples_per_batch`` (``max_examples_per_batch // rows``, at least 1, at most ``samples``); None:
    all of them (Captum's) unless their perturbed copies (``row_bytes`` each, three arrays) exceed ``budget``."""
    if max_examples_per_batch is not None:
        check_positive_int(max_examples_per_batch, "max_examples_per_batch")
        return min(max(max_examples_per_batch // n_rows, 1), samples)
    if budget is None or row_bytes == 0:
        return samples
    return int(min(samples, max(1, budget // (3 * row_bytes * n_rows))))


def sample_chunks(samples: int, per_call: int) -> list[int]:
    return [min(per_call, samples - s) for s in range(0, samples, per_call)]
