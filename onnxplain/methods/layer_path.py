"""A layer's gradients along the straight path of the *inputs*: internal influence and layer conductance.

Integrated gradients at a layer (``layer=``) interpolate the layer's own values; these two interpolate the
inputs, ``b + alpha_s (x - b)``, and read the layer's gradient (and value) at each step, as Captum's
``InternalInfluence`` and ``LayerConductance`` do:

- ``internal_influence``: ``sum_s w_s grad_layer(x_s)``, the integral of the layer's gradient along the path
  (quadrature weights ``w_s``; Leino et al., 2018).
- ``layer_conductance``: ``sum_s grad_layer(x_s) * (layer(x_{s+1}) - layer(x_s))`` over ``n_steps + 1`` nodes
  of the scheme (Dhamdhere et al., 2018): the layer's share of the path integral, which adds up to
  ``f(x) - f(b)`` as the steps shrink (``delta``).

The expanded batch is ``S`` blocks of interpolated inputs, then the inputs and the baselines (the model's
outputs and delta).  The seed of step ``s`` is ``step_weights_s * target_weights``: the quadrature weights for
internal influence, 1 for conductance's steps but its last (whose gradient no difference follows).  Parts of a
call are chunks of steps (conductance's overlap by one node), added up.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..backward import backward
from .base import (Method, Spec, baseline_feeds, batch_rows, declare_baselines, declare_param, declare_target_weights,
                   emit_attribution, emit_outputs, ex_float, flatten_steps, forward_per_block, open_forward,
                   per_row_sum, rows, split_steps, tile_rows)
from .integrated_gradients import SCHEMES, interpolate_steps, quadrature
from .params import BASELINES, Param


class _LayerPath(Method):
    """The shared graph; :meth:`layer_term` makes a step's contribution from the layer's gradient and values."""

    parameters = (Param("n_steps", 50, "int", "integration steps", own_check=True),
                  Param("method", "gausslegendre", "choice", "the integration scheme", choices=SCHEMES,
                        own_check=True, cli="--integration SCHEME", request="integration"),
                  BASELINES)
    row_axes = {"baselines": 0}

    needs_layer = True

    def build(self, b, spec: Spec) -> None:
        inside, outputs = open_forward(b, spec)
        ftype = b.elem_type(spec.output) or TensorProto.FLOAT
        alphas_default, weights_default = self.nodes(self.defaults["n_steps"], self.defaults["method"])
        alphas = declare_param(b, "alphas", ftype, 1, alphas_default)
        step_weights = declare_param(b, "step_weights", ftype, 1, weights_default)
        tw = declare_target_weights(b, spec)
        steps = b.shape_of(alphas)
        n = batch_rows(b, spec.carriers[0])
        for c in spec.carriers:
            base = b.op("Expand", declare_baselines(b, spec, c, self.defaults["baselines"]), b.shape_of(c))
            b.op("Concat", interpolate_steps(b, alphas, c, base, b.rank(c)), c, base, axis=0, outputs=[inside[c]])
        for p in spec.passthrough:
            b.op("Identity", tile_rows(b, p, b.add(steps, b.ints([2])), b.rank(p)), outputs=[inside[p]])
        forward_per_block(b, spec, inside, outputs, [b.mul(steps, n), n, n])

        out_rank = b.rank(spec.output)
        w_col = b.reshape(step_weights, b.ints([-1] + [1] * out_rank))
        zeros = b.zeros_like(tw)
        seed = b.op("Concat", flatten_steps(b, b.mul(w_col, b.unsqueeze(tw, [0])), tw), zeros, zeros, axis=0)
        out_rows = outputs[spec.output]
        picked = emit_outputs(b, spec, outputs, b.mul(steps, n), n)
        grads = backward(b, out_rows, seed, [p.tensor for p in spec.points])
        totals = []
        for point in spec.points:
            on_x = rows(b, point.tensor, b.mul(steps, n), n)
            per_step = split_steps(b, grads[point.tensor], steps, on_x)             # (S, N, *layer)
            values = split_steps(b, point.tensor, steps, on_x)
            attr = b.reduce_sum(self.layer_term(b, per_step, values), [0], keepdims=0)
            totals.append(emit_attribution(b, spec, point, attr))
        if not self.has_delta:
            return
        f_x = per_row_sum(b, b.mul(tw, picked[spec.output]), out_rank)
        start = b.add(b.mul(steps, n), n)
        f_b = per_row_sum(b, b.mul(tw, rows(b, out_rows, start, n)), out_rank)
        b.op("Sub", b.sum(totals), b.sub(f_x, f_b), outputs=["delta"])
        b.add_output("delta", b.elem_type(spec.output), [b.shape(spec.output)[0]])

    def reference_rows(self, b, total, block):
        return block

    def nodes(self, n_steps: int, scheme: str) -> tuple[np.ndarray, np.ndarray]:
        """``(alphas, step_weights)`` of a call."""
        raise NotImplementedError

    def layer_term(self, b, grads: str, values: str) -> str:
        """``(S, N, *layer)``: each step's contribution, from the layer's (seeded) gradients and its values."""
        raise NotImplementedError

    def check_params(self, params):
        p = super().check_params(params)
        self.nodes(p["n_steps"], p["method"])   # validates both
        return p

    def parts(self, params, spec, inputs, bytes_per_row, budget):
        alphas, weights = self.nodes(params["n_steps"], params["method"])
        dtype = ex_float(spec)
        fit = max(self.overlap + 1, budget // max(1, bytes_per_row) - 2)
        if spec.batch_size is not None:
            fit = max(self.overlap + 1, min(fit, spec.batch_size))
        bases = baseline_feeds(spec, params["baselines"], inputs)
        stride = fit - self.overlap
        last = max(1, len(alphas) - self.overlap)
        return [{"alphas": alphas[start:start + fit].astype(dtype),
                 "step_weights": self.part_step_weights(weights, start, fit).astype(dtype), **bases}
                for start in range(0, last, stride)]

    #: nodes a part shares with the next (conductance's differences reach one node ahead)
    overlap = 0

    def part_step_weights(self, weights: np.ndarray, start: int, fit: int) -> np.ndarray:
        return weights[start:start + fit]

    def expansion(self, part):
        return len(part["alphas"]) + 2

    def block_rows(self, part):
        return len(part["alphas"])


class InternalInfluence(_LayerPath):
    """Captum's ``InternalInfluence``: the layer's gradient integrated along the inputs' path."""

    name = "internal_influence"
    captum = "`InternalInfluence` (same defaults)"
    deepexplain = "–"
    table_note = "needs `layer=`"
    has_delta = False   # an integral of gradients alone: nothing it should add up to

    def nodes(self, n_steps, scheme):
        return quadrature(n_steps, scheme)

    def layer_term(self, b, grads, values):
        return grads


class LayerConductance(_LayerPath):
    """Captum's ``LayerConductance``: ``sum_s grad_layer(x_s) * (layer(x_{s+1}) - layer(x_s))`` over the
    ``n_steps + 1`` nodes of the scheme."""

    name = "layer_conductance"
    captum = "`LayerConductance` (same defaults)"
    deepexplain = "–"
    table_note = "needs `layer=`; `delta` is `sum(attributions) - (f(x) - f(baselines))`, as Captum's"
    has_delta = True
    overlap = 1

    def nodes(self, n_steps, scheme):
        quadrature(n_steps, scheme)   # validates both
        alphas, _ = quadrature(n_steps + 1, scheme)
        weights = np.ones(len(alphas))
        weights[-1] = 0.0    # the last node only ends the previous step's difference
        return alphas, weights

    def part_step_weights(self, weights, start, fit):
        w = np.ones(len(weights[start:start + fit]))
        w[-1] = 0.0          # a part's last node begins the next part's first step
        return w

    def layer_term(self, b, grads, values):
        ahead = b.op("Slice", values, b.ints([1]), b.ints([np.iinfo(np.int64).max]), b.ints([0]))
        last = b.op("Slice", values, b.ints([-1]), b.ints([np.iinfo(np.int64).max]), b.ints([0]))
        diffs = b.sub(b.op("Concat", ahead, last, axis=0), values)    # the last node's difference is 0
        return b.mul(grads, diffs)
