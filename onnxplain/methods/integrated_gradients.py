"""Integrated gradients (Sundararajan et al., 2017), every step of a chunk in one run.

The expanded batch is ``S`` blocks of interpolated rows ``b + alpha_s (x - b)``,
then the inputs ``x`` and the baselines ``b`` (for the model's outputs and the
convergence delta).  The seed of step ``s`` is ``alpha_weight_s * target_weights``,
so summing the step cotangents performs the quadrature; the baseline and input
blocks are seeded with zeros.
"""
from __future__ import annotations

import functools

import numpy as np
from onnx import TensorProto

from ..backward import backward
from .base import (Method, Spec, baseline_feeds, batch_rows, declare_baselines, declare_param, declare_target_weights,
                   emit_attribution, emit_outputs, ex_float, flatten_steps, forward_per_block, open_forward,
                   per_row_sum, redirect_layer, rows, split_steps, tile_rows)
from .params import BASELINES, MULTIPLY_BY_INPUTS, Param

SCHEMES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def quadrature(n_steps: int, method: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """``(alphas, weights)`` on [0, 1] for the integration schemes Captum offers."""
    if method not in SCHEMES:
        raise ValueError(f"unknown integration method {method!r}; choose one of {', '.join(SCHEMES)}")
    if not isinstance(n_steps, (int, np.integer)) or isinstance(n_steps, bool) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    n = int(n_steps)
    if method == "gausslegendre":
        nodes, weights = _gauss_legendre(n)
        return nodes.copy(), weights.copy()
    if n < 2:
        raise ValueError(f"the Riemann schemes need n_steps >= 2, got {n}")
    weights = np.full(n, 1.0 / n)
    kind = method.split("_")[1]
    if kind == "trapezoid":   # Captum's trapezoid: equal steps, end points halved
        weights[0] /= 2
        weights[-1] /= 2
        return np.linspace(0.0, 1.0, n), weights
    start = {"left": 0.0, "right": 1.0 / n, "middle": 0.5 / n}[kind]
    return start + np.arange(n) / n, weights


@functools.lru_cache(maxsize=64)
def _gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights moved to [0, 1], computed once per ``n`` (an eigenvalue problem
    that took about half a millisecond, a fifth of a small model's whole call)."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return 0.5 * (nodes + 1.0), 0.5 * weights


class IntegratedGradients(Method):
    """Integrated gradients; ``multiply_by_inputs=False`` is Captum's "local" variant, the integral of the
    gradients alone (its ``delta`` is then, as Captum reports it, ``sum(attributions) - (f(x) - f(b))``)."""

    name = "integrated_gradients"
    captum = ("`IntegratedGradients` (same defaults; `multiply_by_inputs=False` is "
              "`IntegratedGradients(model, multiply_by_inputs=False)`)")
    deepexplain = "`intgrad` (`steps=100`, which is `riemann_right`)"
    aliases = ("intgrad", "ig")
    has_delta = True
    parameters = (Param("n_steps", 50, "int", "integration steps", own_check=True),
                  Param("method", "gausslegendre", "choice", "the integration scheme", choices=SCHEMES,
                        own_check=True, cli="--integration SCHEME", request="integration"),
                  BASELINES,
                  Param("internal_batch_size", None, "int", "most rows per run (Captum's cap; None: the memory "
                        "budget decides)", own_check=True, in_graph=False),
                  MULTIPLY_BY_INPUTS)
    row_axes = {"baselines": 0}

    def build(self, b, spec: Spec) -> None:
        inside, outputs = open_forward(b, spec)
        ftype = b.elem_type(spec.output) or TensorProto.FLOAT
        alphas_default, weights_default = quadrature(self.defaults["n_steps"], self.defaults["method"])
        alphas = declare_param(b, "alphas", ftype, 1, alphas_default)
        alpha_weights = declare_param(b, "alpha_weights", ftype, 1, weights_default)
        multiply = declare_param(b, "multiply_by_inputs", TensorProto.BOOL, 0,
                                 np.asarray(bool(self.defaults["multiply_by_inputs"])))
        tw = declare_target_weights(b, spec)
        steps = b.shape_of(alphas)
        n = batch_rows(b, spec.carriers[0])

        points = {}   # key -> (tensor the backward pass starts from, value on the inputs, value on the baselines)
        for c in spec.carriers:
            base = b.op("Expand", declare_baselines(b, spec, c, self.defaults["baselines"]), b.shape_of(c))
            point = spec.point_of(c)
            steps_rows = (interpolate_steps(b, alphas, c, base, b.rank(c)) if point
                          else tile_rows(b, c, steps, b.rank(c)))
            b.op("Concat", steps_rows, c, base, axis=0, outputs=[inside[c]])
            if point:
                points[point.key] = (inside[c], c, base)
        for p in spec.passthrough:
            b.op("Identity", tile_rows(b, p, b.add(steps, b.ints([2])), b.rank(p)), outputs=[inside[p]])
        for point in spec.points:
            if not point.is_input:   # a layer: interpolate between its values on the inputs and the baselines
                fed = redirect_layer(b, point.tensor)
                on_x = rows(b, point.tensor, b.mul(steps, n), n)
                on_base = rows(b, point.tensor, b.mul(b.add(steps, b.ints([1])), n), n)
                interpolated = interpolate_steps(b, alphas, on_x, on_base, b.rank(point.tensor))
                b.op("Concat", interpolated, on_x, on_base, axis=0, outputs=[fed])
                points[point.key] = (fed, on_x, on_base)
        forward_per_block(b, spec, inside, outputs, [b.mul(steps, n), n, n])

        out_rank = b.rank(spec.output)
        w_col = b.reshape(alpha_weights, b.ints([-1] + [1] * out_rank))
        step_seeds = flatten_steps(b, b.mul(w_col, b.unsqueeze(tw, [0])), tw)
        zeros = b.zeros_like(tw)
        seed = b.op("Concat", step_seeds, zeros, zeros, axis=0)

        out_rows = outputs[spec.output]
        picked = emit_outputs(b, spec, outputs, b.mul(steps, n), n)
        grads = backward(b, out_rows, seed, [fed for fed, _, _ in points.values()])

        totals = []
        for point in spec.points:
            fed, on_x, on_base = points[point.key]
            per_step = split_steps(b, grads[fed], steps, on_x)
            diff = b.sub(on_x, on_base)   # Captum's "local" IG (multiply_by_inputs=False) takes 1 instead
            factor = b.where(multiply, diff, b.cast_like(b.const(1.0), diff))
            attr = b.mul(b.reduce_sum(per_step, [0], keepdims=0), factor)
            totals.append(emit_attribution(b, spec, point, attr))
        f_x = per_row_sum(b, b.mul(tw, picked[spec.output]), out_rank)
        f_b = per_row_sum(b, b.mul(tw, _rows_after(b, out_rows, steps, n)), out_rank)
        b.op("Sub", b.sum(totals), b.sub(f_x, f_b), outputs=["delta"])
        b.add_output("delta", b.elem_type(spec.output), [b.shape(spec.output)[0]])

    def reference_rows(self, b, total, block):
        return block   # steps, inputs, then one block of baselines

    # --------------------------------------------------------------- per call
    def check_params(self, params):
        p = super().check_params(params)
        quadrature(p["n_steps"], p["method"])  # validates both
        ibs = p["internal_batch_size"]
        if ibs is not None and (not isinstance(ibs, (int, np.integer)) or ibs < 1):
            raise ValueError(f"internal_batch_size must be a positive int or None, got {ibs!r}")
        if not isinstance(p["multiply_by_inputs"], (bool, np.bool_)):
            raise ValueError(f"multiply_by_inputs must be True or False, got {p['multiply_by_inputs']!r}")
        return p

    def parts(self, params, spec, inputs, bytes_per_row, budget):
        """One part per chunk of integration steps; a chunk's steps fit the budget for one row."""
        alphas, weights = quadrature(params["n_steps"], params["method"])
        dtype = ex_float(spec)   # alphas are declared with the explained output's float type
        per_row = max(1, bytes_per_row)
        fit = max(1, budget // per_row - 2)
        if params["internal_batch_size"] is not None:   # Captum's cap on expanded rows per run
            fit = min(fit, max(1, params["internal_batch_size"] // max(1, _rows(inputs, spec))))
        if spec.batch_size is not None:   # the steps of one row form one block of the forward pass
            fit = min(fit, spec.batch_size)
        bases = baseline_feeds(spec, params["baselines"], inputs)
        parts = []
        for start in range(0, len(alphas), fit):
            parts.append({"alphas": alphas[start:start + fit].astype(dtype),
                          "alpha_weights": weights[start:start + fit].astype(dtype),
                          "multiply_by_inputs": np.asarray(bool(params["multiply_by_inputs"])), **bases})
        return parts

    def expansion(self, part):
        return len(part["alphas"]) + 2

    def block_rows(self, part):
        return len(part["alphas"])


def _rows(inputs, spec):
    return int(np.shape(inputs[spec.carriers[0]])[0])


def interpolate_steps(b, alphas: str, x: str, base: str, rank: int) -> str:
    """``(S*N, *row)``: the rows ``base + alpha_s * (x - base)`` for every step ``s``, step-major."""
    alpha_col = b.reshape(b.cast_like(alphas, x), b.ints([-1] + [1] * rank))
    scaled = b.add(b.unsqueeze(base, [0]), b.mul(alpha_col, b.unsqueeze(b.sub(x, base), [0])))
    return flatten_steps(b, scaled, x)


def _rows_after(b, out_rows, steps, n):
    """The last block of rows (the baselines') of the expanded output."""
    start = b.add(b.mul(steps, n), n)
    return b.op("Slice", out_rows, start, b.add(start, n), b.ints([0]))
