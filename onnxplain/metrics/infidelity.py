"""Explanation infidelity (Captum's ``captum.metrics.infidelity``)."""
from __future__ import annotations

import numpy as np

from ..methods.perturbation import check_positive_int
from .forward import Forward, sample_chunks, samples_per_call
from .perturbations import gaussian_perturbation


def infidelity(model, perturb_func, inputs, attributions, *, baselines=None, target=None, target_weights=None,
               n_perturb_samples: int = 10, max_examples_per_batch: int | None = None, normalize: bool = False,
               output: str | None = None) -> np.ndarray:
    """Explanation infidelity (Yeh et al., 2019) per row: ``E_I[(I . attr - (f(x) - f(x - I)))^2]``.

    Captum's ``captum.metrics.infidelity``, same definitions and defaults: each row is repeated
    ``n_perturb_samples`` times (its copies next to each other) and ``perturb_func(copies)`` (or
    ``perturb_func(copies, baselines)`` when ``baselines`` are given; full-batch baselines are repeated
    the same way) returns ``(perturbations, perturbed_inputs)``; wrap a function returning only perturbed
    inputs with :func:`infidelity_perturb_func_decorator`.  ``perturb_func=None`` is
    :func:`gaussian_perturbation` (seed 0).  ``normalize``: the attributions are first scaled by Captum's
    ``beta = E[(I . attr)(f(x) - f(x - I))] / E[(I . attr)^2]``.  ``max_examples_per_batch`` sets the copies
    per call of ``perturb_func`` as Captum does; None: all of them, unless their size passes the memory
    budget.  ``f`` is the explained scalar ``sum(target_weights * output)``; returns float64 ``(N,)``.
    """
    check_positive_int(n_perturb_samples, "n_perturb_samples")
    perturb_func = gaussian_perturbation() if perturb_func is None else perturb_func
    if not callable(perturb_func):
        raise ValueError(f"perturb_func must be callable (or None for Gaussian noise), got {perturb_func!r}")
    m = Forward(model, output)
    feeds, tw = m.call(inputs, target, target_weights)
    attr = m.attributions(attributions, feeds)
    n = tw.shape[0]
    row_bytes = sum(feeds[x][0].nbytes for x in m.spec.wrt)
    per_call = samples_per_call(n, n_perturb_samples, max_examples_per_batch, row_bytes, m.runner.memory_budget)
    f_x = None
    sums = np.zeros((3 if normalize else 1, n), dtype=np.float64)
    for k in sample_chunks(n_perturb_samples, per_call):
        expanded = m.repeated(feeds, k)
        originals = m.packed({x: expanded[x] for x in m.spec.wrt})
        if baselines is None:
            got = perturb_func(originals)
        else:
            got = perturb_func(originals, _repeated_baselines(m, baselines, feeds, k))
        if not isinstance(got, tuple) or len(got) != 2:
            raise ValueError("perturb_func must return (perturbations, perturbed_inputs); wrap a function that "
                             "returns only perturbed inputs with infidelity_perturb_func_decorator")
        perturbation = m.unpacked(got[0], "perturbations")
        perturbed = m.unpacked(got[1], "perturbed inputs")
        for x in m.spec.wrt:
            want = expanded[x].shape
            for what, v in (("perturbed input", perturbed[x]), ("perturbation", perturbation[x])):
                if v.shape != want:
                    raise ValueError(f"perturb_func's {what} for input {x!r} must have the shape of the repeated "
                                     f"input {want}, got {v.shape}")
        run = {**expanded, **{x: perturbed[x].astype(feeds[x].dtype, copy=False) for x in m.spec.wrt}}
        if f_x is None:     # f(x) rides in the first chunk's run
            both = m.outputs(m.stacked(feeds, run), np.concatenate([tw, np.repeat(tw, k, axis=0)]))
            f_x, f_perturbed = both[:n], both[n:]
        else:
            f_perturbed = m.outputs(run, np.repeat(tw, k, axis=0))
        diff = (np.repeat(f_x, k) - f_perturbed).reshape(n, k)
        dot = sum(np.einsum("nkd,nd->nk", perturbation[x].reshape(n, k, -1).astype(np.float64),
                            attr[x].reshape(n, -1)) for x in m.spec.wrt)
        if normalize:
            sums += np.stack([(dot * dot).sum(1), (dot * diff).sum(1), (diff * diff).sum(1)])
        else:
            sums[0] += ((dot - diff) ** 2).sum(1)
    if normalize:
        beta = sums[1] / np.where(sums[0] != 0, sums[0], 1.0)
        total = beta * beta * sums[0] - 2 * beta * sums[1] + sums[2]
    else:
        total = sums[0]
    return total / n_perturb_samples


def _repeated_baselines(m: Forward, baselines, feeds: dict, k: int):
    """Captum's expansion of infidelity's baselines: a full-batch array (more than one row) is repeated
    like the inputs, a scalar or one-row array is passed as it is."""
    given = m.unpacked(baselines, "baselines")
    out = {}
    for x, b in given.items():
        full = b.ndim == feeds[x].ndim and b.shape[0] == feeds[x].shape[0] > 1
        out[x] = np.repeat(b, k, axis=0) if full else b
    return m.packed(out)
