"""SmoothGrad, SmoothGrad-squared and VarGrad over the gradient, all samples in one run.

The expanded batch is ``S`` blocks of noisy rows ``x + stdevs * noise_s`` and a
last block with the inputs themselves (for the model's outputs).  ``noise`` is a
graph input of standard-normal draws shaped ``(S, N, *row)`` (or ``(S, 1, *row)``
to share the noise between rows); the Python API draws it from ``seed``.  The
statistics are those of Captum's ``NoiseTunnel`` over the signed gradient
(``NoiseTunnel(Saliency(model)).attribute(..., abs=False)``): the mean, the mean
of squares, and the variance ``E[g^2] - E[g]^2``.
"""
from __future__ import annotations

import numpy as np

from ..backward import backward
from .base import (Method, Spec, batch_rows, declare_param, declare_target_weights, emit_outputs,
                   flatten_steps, forward_per_block, open_forward, split_steps, tile_rows)

DEFAULT_SAMPLES = 5
DEFAULT_NOISE_SEED = 0


class _NoiseTunnel(Method):
    supports_layers = False   # the noise is added to float inputs
    defaults = {"nt_samples": DEFAULT_SAMPLES, "stdevs": 1.0, "seed": None, "noise": None}
    row_axes = {"noise": 1}

    def build(self, b, spec: Spec) -> None:
        inside, outputs = open_forward(b, spec)
        first = spec.wrt[0]
        tw = declare_target_weights(b, spec)
        n = batch_rows(b, first)
        samples = None
        for x in spec.wrt:
            rank = b.rank(x)
            noise = declare_param(b, spec.param("noise", x), b.elem_type(x), rank + 1, self._default_noise(b, x))
            stdev = declare_param(b, spec.param("stdevs", x), b.elem_type(x), 0, np.asarray(self._stdev(x, spec)))
            if samples is None:
                samples = b.op("Slice", b.shape_of(noise), b.ints([0]), b.ints([1]))
            full = b.op("Expand", noise, b.op("Concat", samples, b.shape_of(x), axis=0))
            noisy = b.add(b.unsqueeze(x, [0]), b.mul(stdev, full))
            b.op("Concat", flatten_steps(b, noisy, x), x, axis=0, outputs=[inside[x]])
        blocks = b.add(samples, b.ints([1]))
        for p in spec.passthrough:
            b.op("Identity", tile_rows(b, p, blocks, b.rank(p)), outputs=[inside[p]])
        forward_per_block(b, spec, inside, outputs, [b.mul(samples, n), n])

        seed = b.op("Concat", tile_rows(b, tw, samples, b.rank(spec.output)), b.zeros_like(tw), axis=0)
        emit_outputs(b, spec, outputs, b.mul(samples, n), n)
        grads = backward(b, outputs[spec.output], seed, [inside[x] for x in spec.wrt])
        for x in spec.wrt:
            per_sample = split_steps(b, grads[inside[x]], samples, x)
            name = spec.attribution_name(x)
            b.op("Identity", self.statistic(b, per_sample), outputs=[name])
            b.add_output(name, b.elem_type(x), b.shape(x))

    def statistic(self, b, per_sample: str) -> str:
        raise NotImplementedError

    def _default_noise(self, b, x):
        """Standard-normal draws shared by all rows, when the row shape is static."""
        row = b.shape(x)[1:]
        if not all(isinstance(d, int) and d > 0 for d in row):
            return None   # no default: clients feed ``noise``
        rng = np.random.default_rng(DEFAULT_NOISE_SEED if self.defaults["seed"] is None else self.defaults["seed"])
        return rng.standard_normal((self.defaults["nt_samples"], 1) + tuple(row))

    def _stdev(self, x, spec):
        s = self.defaults["stdevs"]
        return float(s[spec.wrt.index(x)] if isinstance(s, (tuple, list)) else s)

    # --------------------------------------------------------------- per call
    def check_params(self, params):
        p = super().check_params(params)
        s = p["nt_samples"]
        if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 1:
            raise ValueError(f"nt_samples must be a positive int, got {s!r}")
        stdevs = p["stdevs"]
        values = stdevs if isinstance(stdevs, (tuple, list)) else [stdevs]
        for v in values:
            if not np.isscalar(v) or not np.isfinite(v) or v < 0:
                raise ValueError(f"stdevs must be a non-negative float (or one per input), got {stdevs!r}")
        return p

    def parts(self, params, spec, inputs, bytes_per_row, budget):
        stdevs = params["stdevs"]
        if isinstance(stdevs, (tuple, list)):
            if len(stdevs) != len(spec.wrt):
                raise ValueError(f"stdevs has {len(stdevs)} values but {len(spec.wrt)} inputs are attributed")
        else:
            stdevs = [stdevs] * len(spec.wrt)
        rng = np.random.default_rng(params["seed"])
        noise = params["noise"]
        part = {}
        for i, (x, s) in enumerate(zip(spec.wrt, stdevs)):
            value = np.asarray(inputs[x])
            expected = (params["nt_samples"],) + value.shape
            if noise is None:
                draw = rng.standard_normal(expected).astype(value.dtype)
            else:
                draw = np.asarray(noise[x] if isinstance(noise, dict) else noise, dtype=value.dtype)
                if draw.shape != expected:
                    raise ValueError(f"noise for input {x!r} must have shape (nt_samples, *input.shape) = "
                                     f"{expected}, got {draw.shape}")
            part[spec.param("noise", x)] = draw
            part[spec.param("stdevs", x)] = np.asarray(s, dtype=value.dtype)
        return [part]

    def expansion(self, part):
        return next(v.shape[0] for k, v in part.items() if k.startswith("noise")) + 1

    def block_rows(self, part):
        return self.expansion(part) - 1   # the noisy samples of a row are one block

    def limit_hint(self):
        return "use nt_samples <= batch_size"


class SmoothGrad(_NoiseTunnel):
    """Mean gradient over noisy copies of the input (Smilkov et al., 2017)."""

    name = "smoothgrad"

    def statistic(self, b, g):
        return b.reduce("ReduceMean", g, [0], keepdims=0)


class SmoothGradSquared(_NoiseTunnel):
    """Mean squared gradient over noisy copies of the input."""

    name = "smoothgrad_sq"

    def statistic(self, b, g):
        return b.reduce("ReduceMean", b.mul(g, g), [0], keepdims=0)


class VarGrad(_NoiseTunnel):
    """Variance of the gradient over noisy copies of the input (Adebayo et al., 2018)."""

    name = "vargrad"

    def statistic(self, b, g):
        mean = b.reduce("ReduceMean", g, [0], keepdims=0)
        return b.sub(b.reduce("ReduceMean", b.mul(g, g), [0], keepdims=0), b.mul(mean, mean))
