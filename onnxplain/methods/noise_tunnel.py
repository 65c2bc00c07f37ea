"""A noise tunnel over any gradient, modified-rule or perturbation method.

Captum's ``NoiseTunnel(method).attribute(x, nt_type=..., nt_samples=S, stdevs=s)``
runs ``method`` on ``S`` noisy copies ``x + s * z`` of every row and reduces the
``S`` attributions of each row to their mean (``smoothgrad``), the mean of their
squares (``smoothgrad_sq``) or their variance ``E[a^2] - E[a]^2`` (``vargrad``).
Captum applies no ``abs`` of its own: a method that takes the absolute value
(``saliency``, Captum's ``Saliency`` default ``abs=True``) does so per sample,
before the statistic.  Targets, per-row baselines and passed-through inputs
follow their rows; a distribution of baselines (``deeplift_shap``) is shared by
every sample.  A method with a convergence delta reports one per noisy sample,
shaped ``(N, S)`` here (Captum returns the same values flattened to ``N*S``).

``nt_samples_batch_size=B`` (Captum's) runs the samples ``B`` at a time (the
last batch takes the rest): each batch's statistic is turned back into its
additive parts (the sum and the sum of squares of its samples' attributions),
those are added over the batches and the statistic is taken once at the end,
so the result is the unbatched one (up to rounding) and the draws are the same
whatever ``B``.  A vargrad graph therefore also returns the batch's mean
(``attributions__mean``).  Captum draws new noise per batch; here sample ``s``
of row ``n`` is the same draw however the samples and the rows are batched.
The delta stays ``(N, S)``, sample ``s`` in column ``s`` (Captum concatenates the
batches' ``N*B`` deltas).  Memory chunks of rows come on top: the rows of each
sample batch are still split to fit the memory budget.  Under ``batch_size``
the samples already run one at a time and ``nt_samples_batch_size`` changes nothing.

The graph is the wrapped method's graph, fed with an expanded batch: ``S``
blocks of noisy rows (sample-major) and a last block with the inputs themselves
(for the model's outputs; its target weights are zero).  The noise is added
where a row is a float tensor: to a floating-point input itself, and for a
token input to the output of the embedding Gather it feeds, on the rows of the
method's run that hold inputs (never on its baseline rows).  ``noise`` is a
graph input of standard-normal draws shaped ``(S, N, *row)`` (``(S, 1, *row)``
shares them between rows), ``stdevs`` a scalar input: nothing is rebuilt when
they change.

Over a perturbation method (occlusion, feature_ablation, feature_permutation,
shapley_sampling, shapley_values, kernel_shap, lime) the graph is the method's
forward-only graph and the noise is added in Python: the ``B * N`` noisy copies
of a sample batch (sample-major) become the rows the method's perturbation
plan explains, with their targets, per-row baselines and per-row feature masks
repeated (Captum's ``NoiseTunnel(FeatureAblation(...))`` expands them the
same way).  The noise comes from ``seed`` per row, as above.  A method that
draws its own perturbations (permutations, coalitions) draws them from the
same ``seed`` for every sample batch, shared by all noisy rows as by the rows
of one call; ``feature_permutation`` shuffles features between the noisy rows
of one sample batch (as Captum's does), so its result depends on
``nt_samples_batch_size``.  Only floating-point inputs take noise: a
perturbation method attributing token ids or booleans is refused.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..graph import FLOAT_TYPES, np_dtype
from ..prepare import token_embeddings
from ..runtime import Cost
from .base import (TARGET_WEIGHTS, Method, RowDraws, Spec, baseline_feeds, batch_rows, declare_param, row_shape,
                   rows, tile_rows)
from .gradient import Gradient
from .params import Param, check_values, defaults_of, merged
from .perturbation import per_input

NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")
DEFAULT_SAMPLES = 5
DEFAULT_NOISE_SEED = 0
#: the noise tunnel's own parameters, after those of the method it wraps
NT_PARAMETERS = (
    Param("nt_samples", DEFAULT_SAMPLES, "int", "noisy samples", own_check=True),
    Param("stdevs", 1.0, "float", "noise standard deviation (or one per input)", own_check=True),
    Param("seed", None, "int", "seed of the noise"),
    Param("nt_samples_batch_size", None, "int", "noisy samples run together (None: all of them); the rest "
          "in a last, smaller batch", own_check=True, in_graph=False),
    Param("noise", None, "array", "your own standard-normal draws, shaped (nt_samples, N, *row)", per_input=True,
          leading=2, in_graph=False),
)
NT_DEFAULTS = defaults_of(NT_PARAMETERS)


class NoiseTunnel(Method):
    """``kind`` (smoothgrad, smoothgrad_sq or vargrad) over the attributions of ``inner`` at noisy inputs."""

    def __init__(self, inner: Method, kind: str):
        if kind not in NT_TYPES:
            raise ValueError(f"unknown noise tunnel {kind!r}; choose one of {', '.join(NT_TYPES)}")
        if isinstance(inner, NoiseTunnel):
            raise ValueError(f"a noise tunnel runs over an attribution method, not over another noise tunnel "
                             f"({inner.name!r})")
        if inner.noise_tunnel_refusal:
            raise ValueError(f"{inner.name!r} cannot run inside a noise tunnel: {inner.noise_tunnel_refusal}")
        self.inner, self.kind = inner, kind
        self.name = kind if type(inner) is Gradient else f"{inner.name}+{kind}"
        self.has_delta = inner.has_delta
        self.forward_only = inner.forward_only
        self.supports_layers = inner.supports_layers
        self.overrides = inner.overrides
        self.row_cost_factor = inner.row_cost_factor
        self.row_axes = {**inner.row_axes, "noise": 1}
        self._nt_defaults = dict(NT_DEFAULTS)

    @property
    def parameters(self) -> tuple:
        return merged(self.inner.parameters, NT_PARAMETERS)

    @property
    def defaults(self) -> dict:
        return {**self.inner.defaults, **self._nt_defaults}

    @defaults.setter
    def defaults(self, values: dict) -> None:
        shared = {k: self.inner.defaults[k] for k in NT_DEFAULTS if k in self.inner.defaults}
        self.inner.defaults = {**shared, **{k: v for k, v in values.items() if k not in NT_DEFAULTS}}
        self._nt_defaults = {k: values[k] for k in NT_DEFAULTS}

    # --------------------------------------------------------------- the graph
    def build(self, b, spec: Spec) -> None:
        if self.forward_only:
            self._build_over_perturbations(b, spec)
            return
        if spec.batch_size is not None:
            self._build_per_sample(b, spec)
            return
        self.inner.build(b, spec)
        declared = {vi.name for vi in b.inputs}
        # the inner graph now reads its feeds from tensors this prelude defines
        fed = {x: b.redirect_reads(x, b.fresh(f"{x}__noisy")) for x in spec.carriers + spec.passthrough
               if x in declared}
        fed_tw = b.redirect_reads(TARGET_WEIGHTS, b.fresh("target_weights__noisy"))
        fed_params = {p: (c, b.redirect_reads(p, b.fresh(f"{p}__noisy")))
                      for p, c in self._row_params(spec, declared).items()}

        n = batch_rows(b, spec.carriers[0])
        noise = self._declare_noise(b, spec)
        samples = b.op("Slice", b.shape_of(noise[spec.carriers[0]]), b.ints([0]), b.ints([1]))
        for c in spec.carriers:
            self._add_noise(b, spec, c, noise[c], samples, n, fed)
        blocks = b.add(samples, b.ints([1]))
        for x, name in fed.items():   # token carriers and passed-through inputs: the same rows in every block
            b.op("Identity", tile_rows(b, x, blocks, b.rank(x)), outputs=[name])
        for p, (carrier, name) in fed_params.items():   # per-row parameters (baselines): follow their rows
            full = b.op("Expand", p, b.shape_of(carrier))
            b.op("Identity", tile_rows(b, full, blocks, b.rank(carrier)), outputs=[name])
        tw_noisy = tile_rows(b, TARGET_WEIGHTS, samples, b.rank(spec.output))
        b.op("Concat", tw_noisy, b.zeros_like(TARGET_WEIGHTS), axis=0, outputs=[fed_tw])
        self._reduce_outputs(b, spec, samples, n)

    def _build_per_sample(self, b, spec: Spec) -> None:
        """With ``batch_size`` the noisy samples cannot share the model's rows: the graph is the inner
        method's own, and :meth:`run` feeds it one noisy copy of the inputs per sample."""
        tokens = [c for c in spec.carriers if c not in _float_inputs(spec)]
        if tokens:
            raise ValueError(f"with batch_size, a noise tunnel feeds noisy copies of the inputs one sample at a "
                             f"time, so its noise cannot go to the embedding of token inputs {tokens}; drop "
                             f"batch_size or explain without noise_tunnel")
        self.inner.build(b, spec)

    def _build_over_perturbations(self, b, spec: Spec) -> None:
        """A perturbation method's own forward-only graph: the noisy rows are fed to it as rows to explain."""
        others = [x for x in spec.carriers if x not in _float_inputs(spec)]
        if others:
            raise ValueError(f"a noise tunnel over {self.inner.name!r} adds its noise to the attributed inputs "
                             f"themselves, which must be floating-point; {others} are not. Attribute the float "
                             f"inputs only (inputs=...), or use a gradient method, whose noise goes to a token "
                             f"input's embedding")
        self.inner.build(b, spec)

    def _declare_noise(self, b, spec: Spec) -> dict[str, str]:
        """The ``noise`` input of each carrier: ``(S, N or 1, *row)`` of the tensor that takes it."""
        noise = {}
        for c in spec.carriers:
            tensor = c if c in _float_inputs(spec) else _embedding_of(spec, c)
            noise[c] = declare_param(b, spec.param("noise", c), b.elem_type(tensor), b.rank(tensor) + 1,
                                     self._default_noise(b, tensor))
        return noise

    def _add_noise(self, b, spec: Spec, carrier: str, noise: str, samples: str, n: str, fed: dict) -> None:
        """``stdevs * noise`` on the ``S`` noisy blocks of ``carrier``: a float input's rows (fed with its clean
        rows last), or a token input's embedding (its ids are then fed to every block, like passed inputs)."""
        floating = carrier in _float_inputs(spec)
        tensor = carrier if floating else self._detach_embedding(b, spec, carrier)   # the embedding before noise
        stdev = declare_param(b, spec.param("stdevs", carrier), b.elem_type(tensor), 0,
                              np.asarray(self._stdev(spec, carrier)))
        row = row_shape(b, tensor)
        draws = b.op("Expand", noise, b.op("Concat", samples, n, row, axis=0))
        scaled = b.reshape(b.mul(stdev, draws), b.op("Concat", b.ints([-1]), row, axis=0))   # (S*N, *row)
        if floating:
            noisy = b.add(tile_rows(b, carrier, samples, b.rank(carrier)), scaled)
            b.op("Concat", noisy, carrier, axis=0, outputs=[fed.pop(carrier)])
        else:
            self._add_noise_at_embedding(b, _embedding_of(spec, carrier), tensor, scaled, n)

    def _row_params(self, spec: Spec, declared: set) -> dict[str, str]:
        """The inner method's per-row parameters (its ``row_axes`` on axis 0) in the graph -> their carrier."""
        return {spec.param(prefix, c): c for prefix, axis in self.inner.row_axes.items() if axis == 0
                for c in spec.carriers if spec.param(prefix, c) in declared}

    def _detach_embedding(self, b, spec: Spec, carrier: str) -> str:
        """Make the embedding Gather of token input ``carrier`` write a new tensor, which is returned; its
        readers go on reading the embedding's name, now to be defined with the noise added."""
        tensor = _embedding_of(spec, carrier)
        clean = b.fresh(f"{tensor}__clean")
        b.rename(tensor, clean)           # the Gather (and its readers) now use ``clean``...
        b.redirect_reads(clean, tensor)   # ...and every reader reads ``tensor`` again
        return clean

    def _add_noise_at_embedding(self, b, embedding: str, clean: str, scaled: str, n: str) -> None:
        """``E = E_clean + noise`` on the rows of the inner run that hold inputs; its reference rows stay clean.

        The embedding ``E`` has one row per row of the inner method's expanded
        batch: copies of the ``(S+1)*N`` rows the noise tunnel feeds (each gets
        the same noise), then the inner method's reference rows (none for
        one-run methods, the baselines' block for integrated gradients).
        """
        total = batch_rows(b, clean)
        rank = b.rank(clean)
        block = b.op("Concat", scaled, _zero_rows(b, n, clean), axis=0)   # noise of the (S+1)*N fed rows
        per_block = batch_rows(b, block)
        refs = self.inner.reference_rows(b, total, per_block)
        if refs is None:
            raise ValueError(f"a noise tunnel over {self.inner.name!r} cannot add its noise at the embedding of "
                             f"{embedding!r}; it can over floating-point inputs, or over the one-run "
                             f"gradient methods and integrated_gradients")
        copies = b.op("Div", b.sub(total, refs), per_block)
        noise_rows = b.op("Concat", tile_rows(b, block, copies, rank), _zero_rows(b, refs, clean), axis=0)
        b.op("Add", clean, noise_rows, outputs=[embedding])

    def _reduce_outputs(self, b, spec: Spec, samples: str, n: str) -> None:
        """Attributions -> their statistic over the noisy samples; model outputs -> the clean block's rows."""
        noisy_rows = b.mul(samples, n)
        model_outputs = {o.name for o in spec.model.graph.output}
        for i, vi in enumerate(list(b.outputs)):   # (a vargrad graph adds outputs)
            internal = b.rename(vi.name, b.fresh(f"{vi.name}__noisy"))
            if vi.name in model_outputs:
                value = rows(b, internal, noisy_rows, n)
            elif vi.name == "delta":   # (S*N,) sample-major -> (N, S)
                value = b.op("Transpose", b.reshape(rows(b, internal, b.ints([0]), noisy_rows),
                                                    b.op("Concat", samples, n, axis=0)), perm=[1, 0])
                b.outputs[i] = helper.make_tensor_value_info("delta", vi.type.tensor_type.elem_type,
                                                             [_dim(vi, 0), "nt_samples"])
            else:
                head = rows(b, internal, b.ints([0]), noisy_rows)
                per_sample = b.reshape(head, b.op("Concat", samples, n, row_shape(b, internal), axis=0))
                value, mean = self.statistic(b, per_sample)
                if self.kind == "vargrad":   # what batches of samples need to add up their variances
                    b.op("Identity", mean, outputs=[b.reserve(mean_output(vi.name))])
                    b.add_output(mean_output(vi.name), vi.type.tensor_type.elem_type,
                                 [_dim(vi, a) for a in range(len(vi.type.tensor_type.shape.dim))])
            b.op("Identity", value, outputs=[vi.name])

    def statistic(self, b, per_sample: str) -> tuple[str, str]:
        """Captum's smoothing of ``(S, N, *row)`` attributions over the samples, and their mean."""
        mean = b.reduce("ReduceMean", per_sample, [0], keepdims=0)
        if self.kind == "smoothgrad":
            return mean, mean
        mean_sq = b.reduce("ReduceMean", b.mul(per_sample, per_sample), [0], keepdims=0)
        return (mean_sq if self.kind == "smoothgrad_sq" else b.sub(mean_sq, b.mul(mean, mean))), mean

    def _default_noise(self, b, tensor: str):
        """Standard-normal draws shared by all rows, when the row shape is static (else clients feed ``noise``)."""
        row = (b.shape(tensor) or (None,))[1:]
        if not all(isinstance(d, int) and d > 0 for d in row):
            return None
        seed = self._nt_defaults["seed"]
        rng = np.random.default_rng(DEFAULT_NOISE_SEED if seed is None else seed)
        return rng.standard_normal((self._nt_defaults["nt_samples"], 1) + tuple(row))

    def _stdev(self, spec: Spec, carrier: str) -> float:
        s = self._nt_defaults["stdevs"]
        return float(s[spec.carriers.index(carrier)] if isinstance(s, (tuple, list)) else s)

    # --------------------------------------------------------------- per call
    def check_params(self, params):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise TypeError(f"method {self.name!r} got unexpected parameter(s) {unknown}; it accepts: "
                            f"{', '.join(sorted(self.defaults))}")
        inner = self.inner.check_params(self._inner_params(params))
        if inner.get("internal_batch_size") is not None:
            raise ValueError("internal_batch_size splits the integration steps, which a noise tunnel's statistics "
                             "cannot add up; memory_budget splits the rows instead")
        given = {k: v for k, v in params.items() if k in NT_DEFAULTS}
        check_values(NT_PARAMETERS, given, self.name)
        p = {**self._nt_defaults, **given}
        s = p["nt_samples"]
        if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 1:
            raise ValueError(f"nt_samples must be a positive int, got {s!r}")
        per_batch = p["nt_samples_batch_size"]
        if per_batch is not None and (not isinstance(per_batch, (int, np.integer)) or isinstance(per_batch, bool)
                                      or per_batch < 1):
            raise ValueError(f"nt_samples_batch_size must be a positive int (noisy samples run together) or None "
                             f"(all of them), got {per_batch!r}")
        stdevs = p["stdevs"]
        for v in stdevs if isinstance(stdevs, (tuple, list)) else [stdevs]:
            if not np.isscalar(v) or not np.isfinite(v) or v < 0:
                raise ValueError(f"stdevs must be a non-negative float (or one per input), got {stdevs!r}")
        return {**inner, **p}

    def parts(self, params, spec, inputs, bytes_per_row, budget):
        """One part per batch of samples (:func:`sample_batches`): the inner method's parameters (all its
        steps) and the noise of those samples for every carrier."""
        inner_parts = self.inner.parts(self._inner_params(params), spec, inputs, 0, budget)
        if len(inner_parts) != 1:   # pragma: no cover - guarded by check_params
            raise ValueError(f"{self.inner.name!r} split its call into parts, which a noise tunnel cannot add up")
        draws = self._draws(params, spec, inputs)
        out = []
        for start, stop in sample_batches(params):
            part = dict(inner_parts[0])
            for c, (draw, stdev) in draws.items():
                part[spec.param("noise", c)] = _samples(draw, start, stop)
                part[spec.param("stdevs", c)] = stdev
            out.append(part)
        return out

    def _inner_params(self, params: dict) -> dict:
        """The inner method's parameters.  One the inner method shares with the noise tunnel (DeepLiftShap's
        ``seed``, which draws its ``n_baselines``) goes to both when given; None leaves the inner its default."""
        own = {k: v for k, v in params.items() if k not in NT_DEFAULTS}
        shared = {k: self.inner.defaults[k] if params.get(k) is None else params[k]
                  for k in NT_DEFAULTS if k in self.inner.defaults}
        return {**own, **shared}

    def _draws(self, params, spec: Spec, inputs: dict) -> dict:
        """Per carrier: the standard-normal draws ``(S, N, *row)`` (from ``seed``, or ``noise`` as given) and
        the standard deviation, both of the dtype of the tensor that takes the noise."""
        stdevs = params["stdevs"]
        if isinstance(stdevs, (tuple, list)):
            if len(stdevs) != len(spec.carriers):
                raise ValueError(f"stdevs has {len(stdevs)} values but the noise goes to {len(spec.carriers)} "
                                 f"inputs {spec.carriers}")
        else:
            stdevs = [stdevs] * len(spec.carriers)
        rng = np.random.default_rng(params["seed"])
        given = params["noise"]
        draws = {}
        for c, s in zip(spec.carriers, stdevs):
            shape, dtype = _noisy_row(spec, c, inputs)
            expected = (params["nt_samples"], len(inputs[c])) + shape
            if given is None:   # drawn per chunk of rows when the rows run: memory follows the budget
                draw = RowDraws(params["nt_samples"], len(inputs[c]), shape, dtype, rng.integers(2 ** 63))
            else:
                draw = np.asarray(given[c] if isinstance(given, dict) else given, dtype=dtype)
                if draw.shape != expected:
                    where = "input" if c in _float_inputs(spec) else f"embedding {_embedding_of(spec, c)!r}"
                    raise ValueError(f"noise for input {c!r} must have shape (nt_samples, N, *row of its {where}) = "
                                     f"{expected}, got {draw.shape}")
            draws[c] = (draw, np.asarray(s, dtype=dtype))
        return draws

    def expansion(self, part):
        noise = [v for k, v in part.items() if k == "noise" or k.startswith("noise_")]
        if not noise:   # a run of the per-sample graph (batch_size): one noisy copy of the rows
            return self.inner.expansion(part)
        return (noise[0].shape[0] + 1) * self.inner.expansion(part)

    def block_rows(self, part):
        return self.inner.block_rows(part)   # only the per-sample graph runs under batch_size

    def limit_hint(self) -> str:
        return self.inner.limit_hint()

    def run(self, runner, feeds: dict, tw, params: dict, delta: bool = True):
        """One part per batch of samples over all rows, their statistics added up through their sums; the
        delta (one per noisy sample) comes straight from the graph."""
        if self.forward_only:
            return self._run_over_perturbations(runner, feeds, tw, params)
        if runner.spec.batch_size is not None:
            return self._run_per_sample(runner, feeds, tw, params)
        names = [runner.spec.attribution_name(x) for x in runner.spec.wrt]
        wanted = names + (["delta"] if self.has_delta else [])
        row_bytes = runner.row_cost(feeds)
        parts = self.parts(params, runner.spec, feeds, row_bytes, runner.memory_budget)
        if len(parts) == 1:
            out = runner.run_rows(feeds, tw, parts[0], wanted, row_bytes)
            return {k: out[k] for k in names}, (out["delta"] if self.has_delta else None)
        if self.kind == "vargrad":
            wanted += [mean_output(k) for k in names]
        moments = {k: Moments() for k in names}
        deltas = []
        for part, (start, stop) in zip(parts, sample_batches(params)):
            out = runner.run_rows(feeds, tw, part, wanted, row_bytes)
            for k in names:
                self._add_batch(moments[k], out[k], out.get(mean_output(k)), stop - start)
            if self.has_delta:
                deltas.append(out["delta"])
        result = {k: moments[k].statistic(self.kind).astype(out[k].dtype) for k in names}
        return result, (np.concatenate(deltas, axis=1) if self.has_delta else None)

    def _add_batch(self, moments: "Moments", stat: np.ndarray, mean, count: int) -> None:
        """One batch's statistic over ``count`` samples (and, for vargrad, their mean) as additive parts."""
        if self.kind == "smoothgrad":
            moments.add(count, total=count * stat.astype(np.float64))
        elif self.kind == "smoothgrad_sq":
            moments.add(count, total_sq=count * stat.astype(np.float64))
        else:
            m = mean.astype(np.float64)
            moments.add(count, total=count * m, total_sq=count * (stat.astype(np.float64) + m * m))

    # --------------------------------------------------------------- over a perturbation method
    def _run_over_perturbations(self, runner, feeds: dict, tw, params: dict):
        """The perturbation method over the ``B * N`` noisy rows of each batch of samples; the sums and sums of
        squares of their attributions added over the batches, then the statistic."""
        spec, n = runner.spec, int(np.shape(tw)[0])
        inner_params = self._inner_params(params)
        draws = self._draws(params, spec, feeds)
        moments = None
        for start, stop, noisy, noisy_tw, noisy_params in self._noisy_batches(spec, feeds, tw, inner_params,
                                                                              draws, params):
            attrs, _ = self.inner.run(runner, noisy, noisy_tw, noisy_params)
            moments = moments or {k: Moments() for k in attrs}
            for k, a in attrs.items():
                per_sample = a.reshape((stop - start, n) + a.shape[1:]).astype(np.float64)
                moments[k].add(stop - start, total=per_sample.sum(axis=0),
                               total_sq=(per_sample * per_sample).sum(axis=0))
        dtypes = {k: a.dtype for k, a in attrs.items()}
        return {k: m.statistic(self.kind).astype(dtypes[k]) for k, m in moments.items()}, None

    def _noisy_batches(self, spec: Spec, feeds: dict, tw, inner_params: dict, draws: dict, params: dict):
        """Per batch of samples ``[start, stop)``: ``(start, stop, feeds, target weights, parameters)`` of its
        ``(stop - start) * N`` noisy rows, sample-major (row ``s * N + j`` is sample ``start + s`` of row ``j``)."""
        n = int(np.shape(tw)[0])
        for start, stop in sample_batches(params):
            count = stop - start
            noisy = {x: v if x in spec.unbatched else _repeat_rows(v, count) for x, v in feeds.items()}
            for c, (draw, stdev) in draws.items():
                z = _samples(draw, start, stop)
                z = z.rows(0, n) if isinstance(z, RowDraws) else z
                x = feeds[c]
                noisy[c] = (x[None] + stdev * z).astype(x.dtype).reshape((count * n,) + x.shape[1:])
            yield start, stop, noisy, _repeat_rows(tw, count), _repeated_row_params(spec, feeds, inner_params,
                                                                                    n, count)

    def _run_per_sample(self, runner, feeds: dict, tw, params: dict):
        """``batch_size``: the inner method on ``x + stdevs * noise_s`` for each sample ``s`` in turn, then
        the statistic over the samples (the same numbers as the one-run graph, in more runs)."""
        per_sample, deltas = [], []
        for noisy in self._noisy_feeds(runner.spec, feeds, params):
            total, delta = self.inner.run(runner, noisy, tw, self._inner_params(params))
            per_sample.append(total)
            deltas.append(delta)
        result = {k: self.numpy_statistic(np.stack([t[k] for t in per_sample])) for k in per_sample[0]}
        return result, (np.stack(deltas, axis=1) if self.has_delta else None)

    def _noisy_feeds(self, spec: Spec, feeds: dict, params: dict):
        """The call's feeds with each carrier replaced by its noisy copy, one sample after another."""
        draws = self._draws(params, spec, feeds)
        for s in range(params["nt_samples"]):
            yield {**feeds, **{c: (feeds[c] + stdev * _sample(draw, s)).astype(feeds[c].dtype)
                               for c, (draw, stdev) in draws.items()}}

    def _estimate_over_perturbations(self, runner, feeds: dict, tw, params: dict) -> Cost:
        """The perturbation method's own estimates for the noisy rows of each batch of samples, added up."""
        spec, n = runner.spec, int(np.shape(tw)[0])
        inner_params = self._inner_params(params)
        rows_, runs, most = 0, 0, 0
        for start, stop in sample_batches(params):
            count = stop - start
            tiled = {x: v if x in spec.unbatched else _repeat_rows(v, count) for x, v in feeds.items()}
            one = self.inner.estimate(runner, tiled, _repeat_rows(tw, count),
                                      _repeated_row_params(spec, feeds, inner_params, n, count))
            rows_, runs, most = rows_ + one.rows, runs + one.runs, max(most, one.rows_per_run)
        return Cost(rows_, runs, most)

    def numpy_statistic(self, per_sample: np.ndarray) -> np.ndarray:
        """:meth:`statistic` over ``(S, N, *row)`` attributions already computed."""
        mean = per_sample.mean(axis=0)
        if self.kind == "smoothgrad":
            return mean
        mean_sq = (per_sample * per_sample).mean(axis=0)
        return mean_sq if self.kind == "smoothgrad_sq" else mean_sq - mean * mean

    def estimate(self, runner, feeds: dict, tw, params: dict, delta: bool = True):
        if self.forward_only:
            return self._estimate_over_perturbations(runner, feeds, tw, params)
        if runner.spec.batch_size is None:
            return super().estimate(runner, feeds, tw, params)
        one = self.inner.estimate(runner, feeds, tw, self._inner_params(params))
        samples = params["nt_samples"]
        return type(one)(one.rows * samples, one.runs * samples, one.rows_per_run)


class SmoothGrad(NoiseTunnel):
    """Mean gradient over noisy copies of the input (Smilkov et al., 2017)."""

    name = "smoothgrad"
    captum = '`NoiseTunnel(Saliency).attribute(nt_type="smoothgrad", abs=False)`'
    deepexplain = "–"

    def __init__(self):
        super().__init__(Gradient(), "smoothgrad")


class SmoothGradSquared(NoiseTunnel):
    """Mean squared gradient over noisy copies of the input."""

    name = "smoothgrad_sq"
    captum = '`NoiseTunnel(Saliency).attribute(nt_type="smoothgrad_sq", abs=False)`'
    deepexplain = "–"

    def __init__(self):
        super().__init__(Gradient(), "smoothgrad_sq")


class VarGrad(NoiseTunnel):
    """Variance of the gradient over noisy copies of the input (Adebayo et al., 2018)."""

    name = "vargrad"
    captum = '`NoiseTunnel(Saliency).attribute(nt_type="vargrad", abs=False)`'
    deepexplain = "–"

    def __init__(self):
        super().__init__(Gradient(), "vargrad")


def _float_inputs(spec: Spec) -> set[str]:
    return {vi.name for vi in spec.model.graph.input if vi.type.tensor_type.elem_type in FLOAT_TYPES}


def _embedding_of(spec: Spec, carrier: str) -> str:
    """The output of the embedding Gather that token input ``carrier`` feeds."""
    return token_embeddings(spec.model)[carrier]


def _zero_rows(b, count: str, like: str) -> str:
    """``count`` (1-D int64) rows of zeros shaped like the rows of ``like``."""
    return b.op("ConstantOfShape", b.op("Concat", count, row_shape(b, like), axis=0),
                value=helper.make_tensor("zero", b.elem_type(like), [1], [0]))


def _noisy_row(spec: Spec, carrier: str, inputs: dict) -> tuple[tuple, np.dtype]:
    """Row shape and dtype of the tensor that takes the noise of ``carrier``, for this call's inputs.

    A float input's own rows; a token input's embedding rows, whose symbolic
    dimensions (a sequence length) are read off the inputs that share them.
    """
    if carrier in _float_inputs(spec):
        value = np.asarray(inputs[carrier])
        return value.shape[1:], value.dtype
    tensor = _embedding_of(spec, carrier)
    known = {}
    for vi in spec.model.graph.input:
        if vi.name in inputs:
            for d, size in zip(vi.type.tensor_type.shape.dim, np.shape(inputs[vi.name])):
                if d.dim_param:
                    known[d.dim_param] = size
    vi = next(v for v in list(spec.model.graph.value_info) + list(spec.model.graph.output) if v.name == tensor)
    row = []
    for d in list(vi.type.tensor_type.shape.dim)[1:]:
        size = d.dim_value if d.HasField("dim_value") else known.get(d.dim_param)
        if not size:
            raise ValueError(f"the row shape of embedding {tensor!r} is not known from the inputs; pass noise= "
                             f"explicitly, shaped (nt_samples, N, *row of the embedding)")
        row.append(int(size))
    return tuple(row), np_dtype(vi.type.tensor_type.elem_type)


def _dim(vi: onnx.ValueInfoProto, axis: int):
    d = vi.type.tensor_type.shape.dim[axis]
    return d.dim_value if d.HasField("dim_value") else (d.dim_param or None)


def _sample(draw, s: int) -> np.ndarray:
    """The draws of noisy sample ``s`` for every row: ``(N, *row)``."""
    return draw.sample(s) if isinstance(draw, RowDraws) else draw[s]


def sample_batches(params: dict) -> list[tuple[int, int]]:
    """``[start, stop)`` of each batch of noisy samples: ``nt_samples_batch_size`` at a time (Captum's: at most
    ``nt_samples``), the rest in a last, smaller batch; one batch of all samples when it is None."""
    total = int(params["nt_samples"])
    step = min(total, int(params.get("nt_samples_batch_size") or total))
    return [(start, min(total, start + step)) for start in range(0, total, step)]


def mean_output(name: str) -> str:
    """The graph output with the mean over the samples of attribution output ``name`` (vargrad graphs)."""
    return f"{name}__mean"


class Moments:
    """The additive parts of a statistic over noisy samples: their count, sum and sum of squares (float64)."""

    def __init__(self):
        self.count, self.total, self.total_sq = 0, 0.0, 0.0

    def add(self, count: int, total=None, total_sq=None) -> None:
        self.count += count
        if total is not None:
            self.total = self.total + total
        if total_sq is not None:
            self.total_sq = self.total_sq + total_sq

    def statistic(self, kind: str) -> np.ndarray:
        """smoothgrad: the mean; smoothgrad_sq: the mean of squares; vargrad: ``E[a^2] - E[a]^2``."""
        mean, mean_sq = self.total / self.count, self.total_sq / self.count
        if kind == "smoothgrad":
            return mean
        return mean_sq if kind == "smoothgrad_sq" else mean_sq - mean * mean


class _SampleRange(RowDraws):
    """Samples ``[start, stop)`` of seeded per-row draws: the same values as those samples of the whole draw."""

    def __init__(self, draws: RowDraws, start: int, stop: int):
        super().__init__(stop - start, draws.shape[1], draws.shape[2:], draws.dtype, draws.entropy)
        self.start = start

    def _row(self, r: int, samples: int) -> np.ndarray:
        return super()._row(r, self.start + samples)[self.start:]


def _samples(draw, start: int, stop: int):
    """Samples ``[start, stop)`` of a carrier's draws (seeded per row, or an array given as ``noise``)."""
    if start == 0 and stop == draw.shape[0]:
        return draw
    return _SampleRange(draw, start, stop) if isinstance(draw, RowDraws) else draw[start:stop]


def _repeat_rows(value: np.ndarray, count: int) -> np.ndarray:
    """``count`` copies of the rows of ``value`` stacked along axis 0 (copy-major)."""
    value = np.asarray(value)
    return value if count == 1 else np.tile(value, (count,) + (1,) * (value.ndim - 1))


def _repeated_row_params(spec: Spec, feeds: dict, params: dict, n: int, count: int) -> dict:
    """A perturbation method's parameters for ``count`` copies of the call's ``n`` rows: per-row baselines and
    per-row feature masks (first dimension ``n > 1``) repeated as the rows are; the rest as given (a background
    set drawn by ``n_baselines`` is no per-row value)."""
    out = dict(params)
    if n == 1 or count == 1:
        return out
    if "baselines" in params and params.get("n_baselines") is None and params["baselines"] is not None:
        bases = baseline_feeds(spec, params["baselines"], feeds)
        out["baselines"] = {x: _repeat_rows(v, count) if v.shape[0] == n else v
                            for x, v in ((x, bases[spec.param("baselines", x)]) for x in spec.carriers)}
    if params.get("feature_mask") is not None:
        masks = per_input(params["feature_mask"], spec, "feature_mask", lambda v: np.ndim(v[0]) == 0)
        out["feature_mask"] = {x: _repeat_rows(m, count) if np.ndim(m) == np.ndim(feeds[x]) and np.shape(m)[0] == n
                               else m for x, m in masks.items()}
    return out
