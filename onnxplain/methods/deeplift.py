"""DeepLIFT (Rescale) and DeepLiftShap, the reference pass inside the same run.

The expanded batch is ``[inputs; references]``: ``K`` copies of the inputs
stacked on ``K*N`` reference rows (``K = 1`` for DeepLIFT, whose baselines are
per row or shared; ``K = B`` for DeepLiftShap, whose ``B`` baselines are a
distribution shared by every row).  Each row meets its reference row through
:class:`onnxplain.rules.Partner`, so the Rescale rule is elementwise; the
references are seeded with zeros.  The attribution of a (row, baseline) pair is
``(x - b) * multiplier``; DeepLiftShap averages it over the baselines.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..backward import backward
from ..rules import Partner
from ..rules.rescale import RESCALE
from .base import (Method, Spec, baseline_feeds, batch_rows, declare_param, declare_target_weights, emit_outputs,
                   flatten_steps, open_forward, per_row_sum, rows, split_steps, tile_rows)

DEFAULT_EPS = 1e-10   # Captum's threshold below which the Rescale rule falls back to the gradient


class DeepLift(Method):
    name = "deeplift"
    aliases = ("rescale", "deeplift_rescale")
    has_delta = True
    defaults = {"baselines": None, "eps": DEFAULT_EPS}
    row_axes = {"baselines": 0}

    def build(self, b, spec: Spec) -> None:
        inside, outputs = open_forward(b, spec)
        first = spec.wrt[0]
        tw = declare_target_weights(b, spec)
        eps = declare_param(b, "eps", b.elem_type(first) or TensorProto.FLOAT, 0, np.asarray(self.defaults["eps"]))
        n = batch_rows(b, first)
        copies, refs, k = None, {}, None
        for x in spec.wrt:
            k, refs[x] = self.references(b, spec, x)
            copies = tile_rows(b, x, k, b.rank(x))
            b.op("Concat", copies, refs[x], axis=0, outputs=[inside[x]])
        half = b.mul(k, n)
        for p in spec.passthrough:
            b.op("Identity", tile_rows(b, p, b.add(k, k), b.rank(p)), outputs=[inside[p]])

        out_rank = b.rank(spec.output)
        seed = b.op("Concat", tile_rows(b, tw, k, out_rank), b.zeros_like(tile_rows(b, tw, k, out_rank)), axis=0)
        out_rows = outputs[spec.output]
        picked = emit_outputs(b, spec, outputs, b.ints([0]), n)
        grads = backward(b, out_rows, seed, [inside[x] for x in spec.wrt], overrides=RESCALE,
                         ref=Partner(b, half), params={"eps": eps})

        totals = []
        for x in spec.wrt:
            multipliers = split_steps(b, grads[inside[x]], k, x)                 # (K, N, *row)
            diff = b.sub(b.unsqueeze(x, [0]), b.reshape(refs[x], b.shape_of(multipliers)))
            attr = b.reduce("ReduceMean", b.mul(multipliers, diff), [0], keepdims=0)
            name = spec.attribution_name(x)
            b.op("Identity", attr, outputs=[name])
            b.add_output(name, b.elem_type(x), b.shape(x))
            totals.append(per_row_sum(b, attr, b.rank(x)))
        f_x = per_row_sum(b, b.mul(tw, picked[spec.output]), out_rank)
        ref_out = split_steps(b, rows(b, out_rows, half, half), k, tw)            # (K, N, *out)
        f_b = b.reduce("ReduceMean", _per_pair_sum(b, b.mul(b.unsqueeze(tw, [0]), ref_out), out_rank + 1), [0],
                       keepdims=0)
        b.op("Sub", b.sum(totals), b.sub(f_x, f_b), outputs=["delta"])
        b.add_output("delta", b.elem_type(spec.output), [b.shape(spec.output)[0]])

    def references(self, b, spec: Spec, x: str) -> tuple[str, str]:
        """``(K, reference rows)``: one reference row per input row, per row or shared."""
        rank = b.rank(x)
        default = np.full((1,) * rank, float(self.defaults["baselines"] or 0.0))
        base = declare_param(b, spec.param("baselines", x), b.elem_type(x), rank, default)
        return b.ints([1]), b.op("Expand", base, b.shape_of(x))

    def check_params(self, params):
        p = super().check_params(params)
        if not np.isscalar(p["eps"]) or not p["eps"] >= 0:
            raise ValueError(f"eps must be a non-negative float, got {p['eps']!r}")
        return p

    def parts(self, params, spec, inputs, bytes_per_row, budget):
        dtype = np.asarray(inputs[spec.wrt[0]]).dtype
        return [{"eps": np.asarray(params["eps"], dtype=dtype), **self.baselines(params, spec, inputs)}]

    def baselines(self, params, spec, inputs) -> dict:
        return baseline_feeds(spec, params["baselines"], inputs)

    def expansion(self, part):
        return 2


class DeepLiftShap(DeepLift):
    """DeepLIFT averaged over a distribution of ``B`` baselines, all pairs in one run."""

    name = "deeplift_shap"
    aliases = ("deepliftshap", "deep_shap")
    row_axes = {}

    def references(self, b, spec, x):
        rank = b.rank(x)
        base = declare_param(b, spec.param("baselines", x), b.elem_type(x), rank, np.zeros((1,) * rank))
        k = b.op("Slice", b.shape_of(base), b.ints([0]), b.ints([1]))
        # reference (k, n) = baseline k, for every row n: rows ordered k-major like the tiled inputs
        per_pair = b.op("Expand", b.unsqueeze(base, [1]), b.op("Concat", k, b.shape_of(x), axis=0))
        return k, flatten_steps(b, per_pair, x)

    def baselines(self, params, spec, inputs):
        given = params["baselines"]
        if given is None:
            raise ValueError("deeplift_shap needs baselines: an array of B reference rows shaped (B, *row) "
                             "(or a dict of them by input name)")
        per = given if isinstance(given, dict) else ({spec.wrt[0]: given} if spec.single else None)
        if per is None:
            if not isinstance(given, (tuple, list)) or len(given) != len(spec.wrt):
                raise ValueError(f"give deeplift_shap one baseline set per attributed input {spec.wrt} "
                                 f"(a tuple or a dict by name)")
            per = dict(zip(spec.wrt, given))
        feeds, count = {}, None
        for x in spec.wrt:
            xv = np.asarray(inputs[x])
            if x not in per:
                raise ValueError(f"deeplift_shap needs baselines for input {x!r}")
            v = np.asarray(per[x], dtype=xv.dtype)
            if v.ndim != xv.ndim or v.shape[1:] != xv.shape[1:] or v.shape[0] < 1:
                raise ValueError(f"baselines for input {x!r} must have shape (B, *{xv.shape[1:]}) with B >= 1, "
                                 f"got {v.shape}")
            if count is not None and v.shape[0] != count:
                raise ValueError("every input needs the same number B of baselines")
            count = v.shape[0]
            feeds[spec.param("baselines", x)] = np.ascontiguousarray(v)
        return feeds

    def expansion(self, part):
        return 2 * next(v.shape[0] for k, v in part.items() if k.startswith("baselines"))


def _per_pair_sum(b, t: str, rank: int) -> str:
    """Sum over every axis but the first two: shape ``(K, N)``."""
    return t if rank == 2 else b.reduce_sum(t, list(range(2, rank)), keepdims=0)
