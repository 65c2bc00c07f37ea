"""Gradient SHAP (expected gradients), every sample of a chunk in one run.

For each input row ``x`` and each of ``S`` samples ``s`` the method draws a
baseline ``b_s`` uniformly, with replacement, from a background set of ``B``
rows, a noisy copy ``x_s = x + stdevs * z_s`` (``z_s`` standard normal) and
``alpha_s ~ U[0, 1]``; the attribution is the mean over the samples of
``grad f(b_s + alpha_s (x_s - b_s)) * (x_s - b_s)`` (``multiply_by_inputs=False``:
of the gradient alone).  These are Captum's ``GradientShap`` semantics (SHAP's
``GradientExplainer`` without its local smoothing); one deliberate difference:
a multi-input model draws one background row per sample, the same for every
input (the rows of a background set are joint samples, as SHAP and
``deeplift_shap`` here take them), where Captum draws an index per input.

The expanded batch holds, per chunk of samples, ``S`` blocks of interpolated
rows (seeded with ``target_weights``), then the inputs themselves (for the
model's outputs), sample-major; the ``S`` blocks of noisy inputs and of drawn
baselines that the convergence delta needs run through two copies of the
forward pass outside the backward pass (a forward each, no backward).  The draws are graph
feeds: ``alphas`` ``(S, N)``, ``baselines`` (the drawn rows, ``(S, N, *row)``),
``noise`` (``(S, N, *row)``, standard normal), ``stdevs`` and ``with_delta`` (False: the call wants no
delta, and its forward copies run one sample instead of ``S``), made in numpy from
``seed`` row by row (each row's draws come from its own generator, so results
do not depend on how rows or samples are chunked).  A call whose samples do not
fit the memory budget is split into parts of samples, weighted by their share.

``delta`` (one per row) is ``sum(attributions) - mean_s (f(x_s) - f(b_s))``: the
mean over the samples of Captum's per-sample delta (Captum returns the ``N*S``
per-sample values).  With ``multiply_by_inputs=False`` it is, as Captum reports
it, computed from the gradients alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from ..backward import backward
from .base import (Method, RowDraws, Spec, batch_rows, declare_param, declare_target_weights, emit_attribution,
                   emit_outputs, ex_float, flatten_steps, forward_copy, forward_per_block, open_forward,
                   split_steps, tile_rows)
from .params import BASELINES, MULTIPLY_BY_INPUTS, Param

DEFAULT_SAMPLES = 5
DEFAULT_SEED = 0


# ---------------------------------------------------------------------- the draws
@dataclass
class Draws:
    """The random draws of one call: ``indices`` ``(N, S)`` of the background rows, ``alphas`` ``(N, S)``
    (float64) and ``noise`` (standard normal, ``(N, S, *row)``, one array per attributed input, in the form
    the inputs were given: an array, a tuple or a dict).  Captum's expanded row ``i * S + s`` is ``[i, s]``
    of these (``reshape(N * S, ...)``); the noise added to the input is ``stdevs * noise``."""

    indices: np.ndarray
    alphas: np.ndarray
    noise: object


def gradient_shap_draws(inputs, n_baselines: int, n_samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED) -> Draws:
    """The draws ``explain(inputs, method="gradient_shap", n_samples=..., seed=...)`` makes with a background
    set of ``n_baselines`` rows: ``inputs`` an array, or a tuple or dict of arrays in the order of the
    attributed inputs (only their shapes and dtypes are read).  ``seed`` must be an int here (None draws
    fresh entropy on every call, which no later call can reproduce)."""
    _check_seed(seed, allow_none=False)
    _check_samples(n_samples)
    named = inputs if isinstance(inputs, dict) else (dict(enumerate(inputs)) if isinstance(inputs, (tuple, list))
                                                     else {0: inputs})
    arrays = {k: np.asarray(v) for k, v in named.items()}
    n = len(next(iter(arrays.values())))
    source = _RowSource(int(seed), n_samples, int(n_baselines),
                        [(a.shape[1:], _noise_dtype(a.dtype)) for a in arrays.values()])
    per_row = [source.row(r) for r in range(n)]
    noise = {k: np.stack([source.noise(r, i, 0, n_samples) for r in range(n)]) for i, k in enumerate(arrays)}
    if not isinstance(inputs, dict):
        noise = tuple(noise.values()) if isinstance(inputs, (tuple, list)) else noise[0]
    return Draws(np.stack([p[0] for p in per_row]), np.stack([p[1] for p in per_row]), noise)


class _RowSource:
    """Each row's draws from generators seeded by ``(entropy, row, stream)``: stream 0 the background indices
    then the alphas of all ``samples``, stream ``1 + k`` the noise of input ``k`` (sample-major, so the
    first ``s`` samples of a row are the same whatever ``s``)."""

    def __init__(self, entropy: int, samples: int, n_baselines: int, rows: list[tuple]):
        self.entropy, self.samples, self.n_baselines, self.shapes = entropy, samples, n_baselines, rows

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, alphas)`` of row ``r``, each ``(samples,)``."""
        rng = np.random.default_rng([self.entropy, r, 0])
        indices = rng.integers(self.n_baselines, size=self.samples)
        return indices, rng.uniform(0.0, 1.0, size=self.samples)

    def noise(self, r: int, k: int, start: int, stop: int) -> np.ndarray:
        """Samples ``[start, stop)`` of the standard-normal noise of input ``k`` at row ``r``."""
        shape, dtype = self.shapes[k]
        rng = np.random.default_rng([self.entropy, r, 1 + k])
        return rng.standard_normal((stop,) + tuple(shape), dtype=dtype)[start:]


class _SampleFeed(RowDraws):
    """One feed of a part (samples ``[start, stop)``), ``(samples, rows, ...)``, made only for the rows a run
    asks for (see :class:`RowDraws`): ``kind`` is ``"alphas"``, ``"baselines"`` (the drawn rows of
    ``background``) or ``"noise"`` (of input ``k``)."""

    def __init__(self, source: _RowSource, kind: str, start: int, stop: int, rows: int, row: tuple, dtype,
                 k: int = 0, background: np.ndarray | None = None):
        super().__init__(stop - start, rows, row, dtype, source.entropy)
        self.source, self.kind, self.start, self.stop, self.k, self.background = source, kind, start, stop, k, background

    def rows(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((self.shape[0], stop - start) + self.shape[2:], dtype=self.dtype)
        for i, r in enumerate(range(start, stop)):
            if self.kind == "noise":
                out[:, i] = self.source.noise(r, self.k, self.start, self.stop)
                continue
            indices, alphas = self.source.row(r)
            if self.kind == "alphas":
                out[:, i] = alphas[self.start:self.stop]
            else:
                out[:, i] = self.background[indices[self.start:self.stop] if len(self.background) > 1 else 0]
        return out

    def sample(self, s: int) -> np.ndarray:   # pragma: no cover - a noise tunnel's accessor, unused here
        return self.rows(0, self.shape[1])[s]


# ---------------------------------------------------------------------- the method
class GradientShap(Method):
    """Expected gradients over a background set, with optional input noise (Captum's ``GradientShap``)."""

    name = "gradient_shap"
    captum = "`GradientShap` (same defaults; draws shared by the inputs of a multi-input model)"
    deepexplain = "–"
    aliases = ("gradientshap", "expected_gradients")
    has_delta = True
    supports_layers = False
    #: it is a noise tunnel of its own (``stdevs``): a noise tunnel over it is refused
    noise_tunnel_refusal = "it draws its own noisy samples (give it stdevs instead)"
    shapley_like = True
    mixes_parts = True
    parameters = (
        BASELINES.but(doc="the background set the baselines are drawn from, shaped (B, *row) (one row or a number: "
                          "B = 1)", required=True, in_graph=False),
        Param("n_samples", DEFAULT_SAMPLES, "int", "samples per row: a drawn baseline, a noisy input and an alpha "
              "each", own_check=True),
        Param("stdevs", 0.0, "float", "noise standard deviation (or one per input)", own_check=True),
        Param("seed", DEFAULT_SEED, "int", "seed of the baseline, alpha and noise draws (None: fresh each call)",
              own_check=True, in_graph=False),
        MULTIPLY_BY_INPUTS,
    )
    row_axes = {"alphas": 1, "baselines": 1, "noise": 1}
    table_note = "`delta` is the mean over the samples of Captum's per-sample delta"

    # --------------------------------------------------------------- the graph
    def build(self, b, spec: Spec) -> None:
        inside, outputs = open_forward(b, spec)
        ftype = b.elem_type(spec.output) or TensorProto.FLOAT
        rng = np.random.default_rng(DEFAULT_SEED if self.defaults["seed"] is None else self.defaults["seed"])
        alphas = declare_param(b, "alphas", ftype, 2, rng.uniform(size=(self.defaults["n_samples"], 1)))
        multiply = declare_param(b, "multiply_by_inputs", TensorProto.BOOL, 0,
                                 np.asarray(bool(self.defaults["multiply_by_inputs"])))
        tw = declare_target_weights(b, spec)
        with_delta = declare_param(b, "with_delta", TensorProto.BOOL, 0, np.asarray(True))
        samples = b.op("Slice", b.shape_of(alphas), b.ints([0]), b.ints([1]))
        delta_samples = b.op("Where", with_delta, samples, b.ints([1]))   # the samples delta's forwards see
        n = batch_rows(b, spec.carriers[0])
        block = b.mul(samples, n)

        paths, noisy_rows, base_rows = {}, {}, {}   # paths: carrier -> (noisy inputs, drawn baselines), (S, N, *row)
        for c in spec.carriers:
            interpolated, noisy, bases = self._sample_rows(b, spec, c, alphas, samples)
            b.op("Concat", flatten_steps(b, interpolated, c), c, axis=0, outputs=[inside[c]])
            paths[c] = (noisy, bases)
            noisy_rows[c] = flatten_steps(b, b.op("Slice", noisy, b.ints([0]), delta_samples, b.ints([0])), c)
            base_rows[c] = flatten_steps(b, b.op("Slice", bases, b.ints([0]), delta_samples, b.ints([0])), c)
        for p in spec.passthrough:
            b.op("Identity", tile_rows(b, p, b.add(samples, b.ints([1])), b.rank(p)), outputs=[inside[p]])
            noisy_rows[p] = base_rows[p] = tile_rows(b, p, delta_samples, b.rank(p))
        # the noisy inputs and the drawn baselines are needed for delta's outputs only: forward copies that
        # the backward pass never enters, over one sample instead of S when the call wants no delta
        on_noisy = forward_copy(b, spec, inside, noisy_rows, "__noisy")[outputs[spec.output]]
        on_bases = forward_copy(b, spec, inside, base_rows, "__drawn")[outputs[spec.output]]
        forward_per_block(b, spec, inside, outputs, [block, n])

        out_rank = b.rank(spec.output)
        seeded = tile_rows(b, tw, samples, out_rank)
        out_rows = outputs[spec.output]
        emit_outputs(b, spec, outputs, block, n)
        grads = backward(b, out_rows, b.op("Concat", seeded, b.zeros_like(tw), axis=0),
                         [inside[c] for c in spec.carriers])

        totals = []
        for point in spec.points:
            noisy, bases = paths[point.carrier]
            per_sample = split_steps(b, grads[inside[point.carrier]], samples, point.carrier)
            global_form = b.mul(per_sample, b.sub(noisy, bases))
            attr = b.reduce("ReduceMean", b.where(multiply, global_form, per_sample), [0], keepdims=0)
            totals.append(emit_attribution(b, spec, point, attr))
        f_noisy = self._mean_target(b, on_noisy, tw, delta_samples, out_rank)
        f_base = self._mean_target(b, on_bases, tw, delta_samples, out_rank)
        b.op("Sub", b.sum(totals), b.sub(f_noisy, f_base), outputs=["delta"])
        b.add_output("delta", b.elem_type(spec.output), [b.shape(spec.output)[0]])

    def _sample_rows(self, b, spec: Spec, c: str, alphas: str, samples: str) -> tuple[str, str, str]:
        """``(S, N, *row)`` each: the interpolated rows ``b_s + alpha_s (x_s - b_s)``, the noisy inputs ``x_s``
        and the drawn baselines ``b_s`` of carrier ``c``."""
        rank, et = b.rank(c), b.elem_type(c)
        full = b.op("Concat", samples, b.shape_of(c), axis=0)
        drawn = declare_param(b, spec.param("baselines", c), et, rank + 1, np.zeros((1,) * (rank + 1)))
        noise = declare_param(b, spec.param("noise", c), et, rank + 1, np.zeros((1,) * (rank + 1)))
        stdev = declare_param(b, spec.param("stdevs", c), et, 0, np.asarray(self._default_stdev(spec, c)))
        bases = b.op("Expand", b.cast_like(drawn, c), full)
        noisy = b.add(b.unsqueeze(c, [0]), b.mul(stdev, b.op("Expand", noise, full)))
        alpha = b.reshape(b.cast_like(alphas, c), b.op("Concat", b.shape_of(alphas), b.ints([1] * (rank - 1)), axis=0)
                          ) if rank > 1 else b.cast_like(alphas, c)
        interpolated = b.add(bases, b.mul(alpha, b.sub(noisy, bases)))
        return interpolated, noisy, bases

    @staticmethod
    def _mean_target(b, out: str, tw: str, samples: str, out_rank: int) -> str:
        """``(N,)``: the mean over the ``S`` samples of ``sum(target_weights * out)`` for ``(S*N, *out)`` rows."""
        per_sample = b.mul(split_steps(b, out, samples, tw), b.unsqueeze(tw, [0]))
        summed = per_sample if out_rank == 1 else b.reduce_sum(per_sample, list(range(2, out_rank + 1)), keepdims=0)
        return b.reduce("ReduceMean", summed, [0], keepdims=0)

    def _default_stdev(self, spec: Spec, c: str) -> float:
        s = self.defaults["stdevs"]
        return float(s[spec.carriers.index(c)] if isinstance(s, (tuple, list)) else s)

    # --------------------------------------------------------------- per call
    def check_params(self, params):
        p = super().check_params(params)
        _check_samples(p["n_samples"])
        stdevs = p["stdevs"]
        for v in stdevs if isinstance(stdevs, (tuple, list)) else [stdevs]:
            if isinstance(v, (bool, np.bool_)) or not np.isscalar(v) or not np.isfinite(v) or v < 0:
                raise ValueError(f"stdevs must be a non-negative float (or a tuple, one per input), got {stdevs!r}")
        _check_seed(p["seed"], allow_none=True)
        if not isinstance(p["multiply_by_inputs"], (bool, np.bool_)):
            raise ValueError(f"multiply_by_inputs must be True (gradients times x - baseline) or False (the "
                             f"gradients alone), got {p['multiply_by_inputs']!r}")
        return p

    def parts(self, params, spec, inputs, bytes_per_row, budget):
        """The samples in parts whose ``3 S + 1`` expanded rows fit the budget for one input row."""
        background = background_sets(spec, params["baselines"], inputs)
        stdevs = self._stdevs(params, spec)
        count = max(len(v) for v in background.values())
        samples = params["n_samples"]
        seed = params["seed"]
        entropy = int(np.random.default_rng().integers(2 ** 63)) if seed is None else int(seed)
        n = int(np.shape(inputs[spec.carriers[0]])[0])
        source = _RowSource(entropy, samples, count,
                            [(np.shape(inputs[c])[1:], _noise_dtype(np.asarray(inputs[c]).dtype)) for c in spec.carriers])
        fit = max(1, (budget // max(1, bytes_per_row) - 1) // 3)
        if spec.batch_size is not None:   # the samples of one row form one block of the forward pass
            fit = min(fit, spec.batch_size)
        dtype = ex_float(spec)
        parts = []
        for start in range(0, samples, fit):
            stop = min(samples, start + fit)
            part = {"alphas": _SampleFeed(source, "alphas", start, stop, n, (), dtype),
                    "multiply_by_inputs": np.asarray(bool(params["multiply_by_inputs"]))}
            for k, c in enumerate(spec.carriers):
                x = np.asarray(inputs[c])
                rank = x.ndim
                part[spec.param("baselines", c)] = (
                    _SampleFeed(source, "baselines", start, stop, n, x.shape[1:], x.dtype, background=background[c])
                    if len(background[c]) > 1 else background[c][None])
                part[spec.param("noise", c)] = (
                    _SampleFeed(source, "noise", start, stop, n, x.shape[1:], x.dtype, k=k)
                    if stdevs[c] > 0 else np.zeros((1,) * (rank + 1), dtype=x.dtype))
                part[spec.param("stdevs", c)] = np.asarray(stdevs[c], dtype=x.dtype)
            parts.append(part)
        return parts

    def _stdevs(self, params, spec: Spec) -> dict:
        s = params["stdevs"]
        if isinstance(s, (tuple, list)):
            if len(s) != len(spec.carriers):
                raise ValueError(f"stdevs has {len(s)} values but the noise goes to {len(spec.carriers)} inputs "
                                 f"{spec.carriers}")
            return {c: float(v) for c, v in zip(spec.carriers, s)}
        return {c: float(s) for c in spec.carriers}

    def part_weights(self, parts):
        counts = [self._samples(part) for part in parts]
        return [c / sum(counts) for c in counts]

    def expansion(self, part):
        samples = self._samples(part)
        return 1 + samples + 2 * (samples if bool(part.get("with_delta", True)) else 1)

    def without_delta(self, part):
        """The delta's forward copies over one sample instead of all: ``1 + S + 2`` rows per input row, not
        ``3 S + 1``."""
        return {**part, "with_delta": np.asarray(False)}

    def block_rows(self, part):
        return self._samples(part)

    @staticmethod
    def _samples(part) -> int:
        return int(np.shape(part["alphas"])[0]) if not isinstance(part["alphas"], RowDraws) else part["alphas"].shape[0]

    def limit_hint(self):
        return "raise batch_size (each row's samples of a part run through one forward pass)"


def background_sets(spec: Spec, baselines, inputs: dict) -> dict:
    """Per attributed input, its background rows ``(B, *row)`` (of the input's dtype), from the forms
    ``gradient_shap`` takes: an array ``(B, *row)``, one row or a number (``B = 1``); with several inputs,
    a tuple (one per input, in their order) or a dict by name.  Every input's ``B`` is the same, or 1
    (that row is the baseline of every sample)."""
    names = spec.carriers
    if baselines is None:
        raise ValueError("gradient_shap needs baselines: a background set of B rows shaped (B, *row) to draw the "
                         "baselines from (one row or a number for B = 1; a tuple or a dict by input name for "
                         "several inputs)")
    if isinstance(baselines, dict):
        unknown = sorted(set(baselines) - set(names))
        missing = [x for x in names if baselines.get(x) is None]
        if unknown or missing:
            raise ValueError(f"gradient_shap needs a background set for each attributed input {names}; got "
                             f"{sorted(baselines)}")
        given = dict(baselines)
    elif isinstance(baselines, (tuple, list)) and len(names) > 1:
        if len(baselines) != len(names):
            raise ValueError(f"{len(baselines)} background sets given for {len(names)} attributed inputs {names}")
        given = dict(zip(names, baselines))
    elif len(names) > 1 and np.ndim(baselines) > 0:
        raise ValueError(f"with several attributed inputs {names}, give gradient_shap's background sets as a tuple "
                         f"(one per input) or a dict by input name")
    else:
        given = {x: baselines for x in names}
    sets = {}
    for x in names:
        xv = np.asarray(inputs[x])
        v = np.asarray(given[x])
        if v.dtype.kind not in "biuf":
            raise ValueError(f"baselines for input {x!r} must be numbers, got dtype {v.dtype}")
        v = v.astype(xv.dtype)
        if v.ndim == 0:
            v = np.full((1,) + xv.shape[1:], v, dtype=xv.dtype)
        elif v.shape == xv.shape[1:] and v.ndim < xv.ndim:
            v = v[None]
        if v.ndim != xv.ndim or v.shape[1:] != xv.shape[1:] or len(v) < 1:
            raise ValueError(f"baselines for input {x!r} must be a background set shaped (B, *{xv.shape[1:]}) with "
                             f"B >= 1 (or one row {xv.shape[1:]}, or a number), got shape {v.shape}")
        sets[x] = np.ascontiguousarray(v)
    counts = {len(v) for v in sets.values()} - {1}
    if len(counts) > 1:
        raise ValueError(f"every input's background set must have the same number B of rows (or one row): got "
                         f"{ {x: len(v) for x, v in sets.items()} }")
    return sets


def _check_samples(n) -> None:
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n_samples must be a positive int (samples per row), got {n!r}")


def _check_seed(seed, allow_none: bool) -> None:
    if seed is None and allow_none:
        return
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int{' or None' if allow_none else ''}, got {seed!r}")


def _noise_dtype(dtype) -> np.dtype:
    """The dtype numpy draws standard normals in for an input of ``dtype`` (float32 for anything but float64)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)
