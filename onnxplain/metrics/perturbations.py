"""Perturbation functions: infidelity's Gaussian noise, max-sensitivity's uniform noise (both seeded), and
the decorator that turns perturbed inputs into infidelity's (perturbations, perturbed inputs)."""
from __future__ import annotations

import numpy as np


def gaussian_perturbation(stdev: float = 0.003, seed=0):
    """Infidelity's perturbation ``I ~ N(0, stdev^2)`` of every element of float inputs, returned as
    ``(I, x - I)`` (Captum's documented example); seeded: the same seed draws the same sequence, ``I`` being
    ``Generator.standard_normal(shape, dtype=x.dtype) * stdev`` (float32 draws for other float types)."""
    rng = np.random.default_rng(seed)

    def perturb(inputs):
        def one(x):
            x = np.asarray(x)
            if x.dtype.kind != "f":
                return np.zeros(x.shape, dtype=np.float32), x
            noise = _drawn(rng.standard_normal, x.shape, x.dtype) * x.dtype.type(stdev)
            return noise, x - noise
        if isinstance(inputs, dict):
            pairs = {k: one(v) for k, v in inputs.items()}
            return {k: p[0] for k, p in pairs.items()}, {k: p[1] for k, p in pairs.items()}
        return one(inputs)
    return perturb


def uniform_perturbation(seed=0):
    """Max-sensitivity's perturbation: float inputs plus noise uniform in ``[-radius, radius]`` (Captum's
    ``default_perturb_func``, drawn from a seeded numpy generator instead of torch's global one:
    ``Generator.random(shape, dtype=x.dtype) * 2 radius - radius``)."""
    rng = np.random.default_rng(seed)

    def perturb(inputs, radius: float = 0.02):
        def one(x):
            x = np.asarray(x)
            if x.dtype.kind != "f":
                return x
            u = _drawn(rng.random, x.shape, x.dtype)    # [0, 1) -> [-radius, radius)
            return x + (u * x.dtype.type(2 * radius) - x.dtype.type(radius))
        if isinstance(inputs, dict):
            return {k: one(v) for k, v in inputs.items()}
        if isinstance(inputs, tuple):
            return tuple(one(v) for v in inputs)
        return one(inputs)
    return perturb


def _drawn(draw, shape, dtype: np.dtype) -> np.ndarray:
    """``draw(shape)`` in the input's precision: float32 and float64 drawn as they are (numpy's float32
    generators are about twice as fast as drawing float64 and casting), other floats drawn as float32."""
    native = dtype if dtype in (np.float32, np.float64) else np.dtype(np.float32)
    return draw(shape, dtype=native).astype(dtype, copy=False)


def infidelity_perturb_func_decorator(multiply_by_inputs: bool = True):
    """For a perturbation function returning only the perturbed inputs: the perturbations are computed as
    ``x - x_perturbed`` or, with ``multiply_by_inputs``, ``(x - x_perturbed) / (x - baselines)`` (``x`` when
    no baselines are given; a zero denominator counts as 1), Captum's decorator of the same name."""
    def decorate(perturb_func):
        def perturb(inputs, baselines=None):
            perturbed = perturb_func(inputs) if baselines is None else perturb_func(inputs, baselines)

            def one(x, xp, b):
                x, xp = np.asarray(x), np.asarray(xp)
                if not multiply_by_inputs:
                    return x - xp
                denom = x - (0 if b is None else np.asarray(b))
                return (x - xp) / np.where(denom != 0, denom, 1)
            if isinstance(inputs, dict):
                xp = perturbed if isinstance(perturbed, dict) else dict(zip(inputs, perturbed))
                bs = baselines if isinstance(baselines, dict) else {k: baselines for k in inputs}
                return {k: one(v, xp[k], bs.get(k)) for k, v in inputs.items()}, xp
            return one(inputs, perturbed, baselines), perturbed
        return perturb
    return decorate
