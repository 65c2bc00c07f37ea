"""Explainer: a model and a method -> one explanation graph and one session, reused."""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading

import numpy as np
import onnx
from onnx import TensorProto

from .backward import gradient_cuts, with_bodies
from .converters.normalize import (batch_axes_of, batch_problems, digest, from_batch_first_perm, normalize, rows_mixed,
                                   to_batch_first)
from .errors import ModelError, NoGradientPathError
from .graph import FLOAT_TYPES, GraphBuilder, clean_graph, np_dtype, redirect_reads
from .methods import Spec, get_method
from .methods.base import Point
from .methods.base import TARGET_WEIGHTS
from .runtime import Cost, LRUCache, RowCost, Session, memory_budget as _memory_budget, rows_per_chunk, select_providers
from .targets import check_target_weights, target_weights

#: explanation graphs and their sessions, by (model digest, method, output, inputs, providers, threads)
_CACHE = LRUCache(max_items=16, max_bytes=2 << 30)
#: normalised models, by the path (with its size and modification time) or the bytes they were read from
_MODELS = LRUCache(max_items=8, max_bytes=1 << 30)
_CACHE_LOCK = threading.Lock()
#: one lock per explanation graph being built: Explainers of the same graph wait for one build, others do not wait
_BUILDING: dict = {}


def _cached_graph(key, build) -> tuple:
    """The cached (graph, session) of ``key``, built by ``build()`` once even when several threads ask at
    the same time; the cache's own lock is never held while a graph is built."""
    with _CACHE_LOCK:
        found = _CACHE.get(key)
        if found is not None:
            return found
        building = _BUILDING.setdefault(key, threading.Lock())
    with building:
        with _CACHE_LOCK:
            found = _CACHE.get(key)
        if found is None:
            try:
                found = build()
                with _CACHE_LOCK:     # the graph, and the session's copy of its weights
                    _CACHE.put(key, found, 2 * found[0].ByteSize())
            finally:
                with _CACHE_LOCK:
                    _BUILDING.pop(key, None)
    return found


def clear_cache() -> None:
    """Drop every cached explanation graph, session and normalised model (their memory is freed once no
    Explainer uses them any more)."""
    with _CACHE_LOCK:
        _CACHE.clear()
        _MODELS.clear()


class Explainer:
    """Explains one output of one model with one method.

    The explanation graph and its onnxruntime session are built here, once, and
    shared by every Explainer of the same (model, method, output, inputs,
    providers); :meth:`explain` only feeds them.

    Parameters
    ----------
    model: a path, bytes or ``onnx.ModelProto``.
    method: a name from :data:`onnxplain.METHODS` (or a DeepExplain alias).
    output: the model output to explain (default: the first floating-point one).
    inputs: the inputs to attribute (default: every floating-point input, for
        gradient methods every one a gradient path joins to the output; for a
        model without any, its token input: the gradient methods attribute it at
        the embedding it feeds, the perturbation methods as itself).  The
        perturbation methods attribute inputs of any dtype (token ids, bytes,
        booleans); the inputs not attributed (an attention mask) pass through.
    layer: attribute this intermediate tensor instead of the inputs (Captum's
        Layer* methods); baselines are still given for ``inputs``.
    providers: onnxruntime providers (default: CUDA when usable, else CPU).
    memory_budget: what one run may use for intermediate tensors: bytes, a
        share of the memory free now (``"80%"``) or a size (``"512MiB"``);
        default: a quarter of the memory free when the Explainer is built (the
        CUDA device's when running on CUDA, else the available RAM).  Calls are
        split into chunks of rows (and of integration steps, noisy samples and
        baselines) to stay within it.
    threads: onnxruntime's intra-op threads (default: onnxruntime's choice).
    noise_tunnel: ``"smoothgrad"``, ``"smoothgrad_sq"`` or ``"vargrad"`` over the
        attributions of ``method`` at noisy copies of the inputs (Captum's
        ``NoiseTunnel(method)``); ``explain`` then also takes ``nt_samples``,
        ``stdevs``, ``seed`` and ``noise``.
    batch_axes: the batch axis of inputs by name, ``None`` for inputs without one
        (a sample rate, a flag, a weight), e.g. ``{"state": 1, "sr": None}``.
        Inputs not named are detected (:func:`onnxplain.converters.normalize.batch_axes_of`):
        rank-0 inputs are unbatched, an input carrying the batch's symbolic
        dimension on axis ``k`` has batch axis ``k``, a fully static input of a
        model with a symbolic batch is unbatched, any other has axis 0.
        Unbatched inputs are fed unchanged to every run; inputs and attributions
        keep their own layout.  The model's outputs must be batch first.
    batch_size: the most rows the *model* may see in one forward pass (``1`` for
        models that run one row at a time); every method then runs each block of
        its expanded batch (integration steps, inputs, references, noisy
        samples, perturbations) through its own copy of the forward pass.  (The
        ``batch_size`` of :meth:`explain_dataset` is another thing: the rows of
        a dataset read, explained and written at a time.)
    """

    def __init__(self, model, method: str = "saliency", output: str | None = None, inputs=None, layer=None,
                 providers=None, memory_budget: int | str | None = None, threads: int | None = None,
                 batch_axes: dict | None = None, batch_size: int | None = None, noise_tunnel: str | None = None):
        self.method = get_method(method, noise_tunnel=noise_tunnel)
        self.model, self.batch_axes, self.digest = normalized(model, batch_axes, output)
        self.output = _choose_output(self.model, output)
        self._output_shape = _static_shape(self.model, self.output)     # read on every call
        self.spec = _spec(self.model, self.output, inputs, layer, self.method,
                          unbatched=_unbatched(self.batch_axes), moved=_moved(self.batch_axes))
        self.spec.batch_size = _check_batch_size(batch_size)
        _check_attributed_layouts(self.spec, self.method, self.batch_axes)
        if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
            raise ValueError(f"threads must be a positive int or None (onnxruntime's default), got {threads!r}")
        self.threads = threads
        self.providers = select_providers(providers)
        self.memory_budget = _memory_budget(memory_budget, self.providers)
        key = (self.digest, self.method.name, self.output, tuple(self.spec.wrt), tuple(self.spec.carriers),
               tuple(self.spec.unbatched), self.spec.batch_size, tuple(map(str, self.providers)), threads)
        self.cache_key = key
        self.graph, self.session = _cached_graph(key, self._build_graph)
        self.row_cost = RowCost(self.model, self.method.row_cost_factor)
        self._forward = None
        self._forward_lock = threading.Lock()
        self._output_shapes: dict = {}

    def _build_graph(self) -> tuple:
        graph = build_graph(self.model, self.method, self.spec)
        return graph, Session(graph, self.providers, self.threads)

    @property
    def method_name(self) -> str:
        return self.method.name

    @property
    def inputs(self) -> list[str]:
        """The attributed inputs."""
        return list(self.spec.wrt)

    @property
    def model_inputs(self) -> list[str]:
        """The model's input names (attributed or not)."""
        return [vi.name for vi in _graph_inputs(self.model)]

    def forward(self, inputs) -> dict[str, np.ndarray]:
        """The model's own outputs for ``inputs`` (a plain forward session, built on first use;
        runs of at most ``batch_size`` rows)."""
        feeds = self._check_inputs(inputs)
        n = self._rows(feeds)
        step = self.spec.batch_size or n
        chunks = [self._forward_session().run(self._row_slice(feeds, start, min(n, start + step)))
                  for start in range(0, n, step)]
        return {k: np.concatenate([c[k] for c in chunks], axis=0) for k in chunks[0]}

    def _forward_session(self) -> Session:
        with self._forward_lock:    # concurrent requests of a server build it once
            if self._forward is None:
                self._forward = Session(self.model, self.providers, self.threads)
        return self._forward

    def save(self, path) -> None:
        """Write the explanation graph (see :func:`convert`; inputs in their own layout)."""
        from .methods.noise_tunnel import NoiseTunnel
        _check_standalone(isinstance(self.method, NoiseTunnel), self.spec.batch_size)
        _write_atomically(own_layouts(self.graph, self.spec, self.batch_axes), path)

    def explain(self, inputs, target=None, *, target_weights=None, return_convergence_delta: bool = False,
                **params):
        """Attributions for ``inputs`` (an array, or a dict by input name).

        ``target``: Captum's forms (None, int, tuple, or one per row); or
        ``target_weights``: an array shaped like the output (DeepExplain's ys).
        Method parameters (``n_steps``, ``baselines``, ``nt_samples``, ...) vary
        per call without rebuilding anything.  Returns an array shaped like the
        input (a dict by input name when several inputs are attributed), and
        with ``return_convergence_delta=True`` a pair ``(attributions, delta)``.
        """
        if return_convergence_delta and not self.method.has_delta:
            raise ValueError(f"method {self.method.name!r} has no convergence delta")
        feeds, tw, params = self._call(inputs, target, target_weights, params)
        total, delta = self.method.run(self, feeds, tw, params)
        own = {x: _own_layout(total[self.spec.attribution_name(x)], self.batch_axes.get(x)) for x in self.spec.wrt}
        result = own[self.spec.wrt[0]] if self.spec.single else own
        return (result, delta) if return_convergence_delta else result

    def audit(self, inputs, target=None, *, target_weights=None, **params):
        """Where DeepLIFT's relevance leaks on this call: every node's local summation-to-delta residual
        (:class:`onnxplain.audit.Audit`; ``.report()`` lists the worst nodes).  For ``method="deeplift"``;
        the audited graph is built once, beside the Explainer's own."""
        from .audit import audit_call
        return audit_call(self, inputs, target, target_weights, **params)

    def explain_dataset(self, source, out, target=None, *, batch_size: int | None = None, **params):
        """Explain a whole dataset, streamed batch by batch, into ``out`` (a ``.npy`` path or a zarr store).

        ``source``: an array-like with ``shape`` and slicing (a numpy memmap, ``np.load(path,
        mmap_mode="r")``, zarr, h5py), a dict of them by input name, an iterable of batches, or a dask
        array.  Resumable: run again with the same arguments after a crash, it computes only what is not on
        disk.  ``batch_size``: the dataset's rows read, explained and written at a time (default: what the
        memory budget holds); the model's own rows per forward pass are the Explainer's ``batch_size``.
        See :func:`onnxplain.datasets.explain_dataset` for every option.
        """
        from .datasets import explain_dataset
        return explain_dataset(self, source, out, target, batch_size=batch_size, **params)

    def estimate(self, inputs, target=None, *, target_weights=None, **params) -> Cost:
        """What :meth:`explain` with the same arguments will run, without running it.

        Returns a :class:`~onnxplain.runtime.Cost`: the forward ``rows`` in
        total (integration steps, noisy samples, (input, reference) pairs and
        perturbations each count as rows), the session ``runs`` they are split
        into by the memory budget (and ``perturbations_per_eval`` or
        ``internal_batch_size``), and the most rows of one run.  The numbers
        come from the planning code the call itself uses.
        """
        feeds, tw, params = self._call(inputs, target, target_weights, params)
        return self.method.estimate(self, feeds, tw, params)

    # ------------------------------------------------------------------ helpers
    def _call(self, inputs, target, target_weights, params) -> tuple[dict, np.ndarray, dict]:
        """One call's checked feeds, target weights and parameters."""
        params = self.method.check_params(params)
        feeds = self._check_inputs(inputs)
        params = _params_batch_first(params, self.spec, self.batch_axes)
        n = self._rows(feeds)
        self._check_output_rows(feeds, n)
        return feeds, self._target_weights(target, target_weights, feeds, n), params

    def _check_output_rows(self, feeds: dict, n: int) -> None:
        """An explained output whose first axis has a fixed size other than the call's rows is not a batch
        axis: say why, by running the plain forward on the call's first rows, before anything else runs."""
        shape = self._output_shape
        if not shape or not isinstance(shape[0], int) or shape[0] == n or (shape[0] == 1 and self.spec.batch_size == 1):
            return
        try:
            got = tuple(self._forward_session().run(self._first_row_repeated(feeds, 2), [self.output])[self.output].shape)
        except Exception:
            got = None
        fixed = f"output {self.output!r} has a first axis of fixed size {shape[0]} (shape {shape}), not the call's {n} rows"
        if got is None:
            raise ModelError(f"{fixed}, and the model fails on 2 rows: it runs one row at a time; build the Explainer "
                             f"with batch_size=1")
        if not got or got[0] != 2:
            raise ModelError(f"{fixed}: on 2 rows the model gives shape {got}, so its forward mixes the rows (a mean "
                             f"or sum over the batch, a reshape that merges rows) and no row has an output of its own. "
                             f"Build the Explainer with batch_size=1 to explain each row run on its own, or explain an "
                             f"output computed per row")
        raise ModelError(f"{fixed}: build the Explainer with batch_size={shape[0]}")

    def row_chunks(self, part: dict, n: int, row_bytes: int) -> list[tuple[int, int]]:
        """The ``[start, stop)`` input rows of each run of ``part``: as many rows as fit the memory budget
        once each expands into the method's rows (``row_bytes``: this call's :attr:`row_cost`)."""
        step = rows_per_chunk(row_bytes, self.method.expansion(part), n, self.memory_budget)
        step = min(step, self.method.rows_per_run(part, self.spec.batch_size) or step)
        return [(start, min(n, start + step)) for start in range(0, n, step)]

    def run_rows(self, feeds, tw, part, wanted, row_bytes: int, session: Session | None = None):
        """Run the graph (or ``session``'s) with parameter feeds ``part`` over all rows, in the chunks of
        :meth:`row_chunks`."""
        chunks = []
        for start, stop in self.row_chunks(part, int(np.shape(tw)[0]), row_bytes):
            run = self._row_slice(feeds, start, stop)
            run[TARGET_WEIGHTS] = tw[start:stop]
            run.update(self.method.rows_split(part, start, stop))
            chunks.append(self.run_session(run, wanted, session))
        return {k: np.concatenate([c[k] for c in chunks], axis=0) for k in wanted}

    def run_session(self, feeds: dict, wanted, session: Session | None = None) -> dict:
        """One run of the explanation graph; a failure that only batches cause says to use ``batch_size``."""
        try:
            return (session or self.session).run(feeds, wanted)
        except Exception as e:
            hint = self._batching_hint(feeds)
            if hint is None:
                raise
            raise ModelError(hint) from e

    def _batching_hint(self, feeds: dict) -> str | None:
        """The advice to use ``batch_size=1`` when a run failed with several rows and one row runs."""
        if self.spec.batch_size == 1:
            return None
        forward = self._forward_session()
        try:
            forward.run(self._first_row_repeated(feeds, 1))
        except Exception:
            return None      # not even one row runs: not a matter of batching
        try:
            forward.run(self._first_row_repeated(feeds, 2))
            return None      # the model takes two rows: the failure is the explanation graph's own
        except Exception:
            pass
        return ("the model fails on a run of several rows but runs on one row: it cannot take batches "
                "(control flow on a single-element condition, a state sized for one row...). Build the "
                "Explainer with batch_size=1 so that the model never sees more than one row per run")

    def _first_row_repeated(self, feeds: dict, count: int) -> dict:
        """The model's inputs with the first row of each batched one repeated ``count`` times."""
        return {vi.name: (feeds[vi.name] if vi.name in self.spec.unbatched
                          else np.concatenate([feeds[vi.name][:1]] * count)) for vi in _graph_inputs(self.model)}

    def _rows(self, feeds: dict) -> int:
        """The number of rows of the call (the batched inputs' batch size)."""
        return int(np.shape(feeds[self.spec.carriers[0]])[0])

    def _row_slice(self, feeds: dict, start: int, stop: int) -> dict:
        """Rows ``[start, stop)`` of the batched inputs (batch first here), unbatched inputs as they are."""
        return {k: v if k in self.spec.unbatched else v[start:stop] for k, v in feeds.items()}

    def _check_inputs(self, inputs) -> dict:
        model_inputs = _graph_inputs(self.model)
        if not isinstance(inputs, dict):
            if len(model_inputs) != 1:
                raise ValueError(f"the model has {len(model_inputs)} inputs {[vi.name for vi in model_inputs]}; "
                                 f"pass a dict by input name")
            inputs = {model_inputs[0].name: inputs}
        names = [vi.name for vi in model_inputs]
        missing = [k for k in names if k not in inputs]
        extra = [k for k in inputs if k not in names]
        if missing or extra:
            raise ValueError(f"the model's inputs are {names}; missing {missing}, unexpected {extra}")
        feeds, rows = {}, None
        for vi in model_inputs:
            axis = self.batch_axes.get(vi.name, 0)
            value = inputs[vi.name]
            if axis:   # the graph takes it batch first
                value = _moved_to_batch_first(vi, value, axis)
            feeds[vi.name] = value = _check_array(vi, value)
            if axis is None:
                continue
            if rows is not None and value.shape[0] != rows:
                raise ValueError(f"all batched inputs need the same number of rows (on their batch axes); "
                                 f"{vi.name!r} has {value.shape[0]}, others {rows}")
            rows = value.shape[0]
        if rows == 0:
            raise ValueError("the inputs have no rows")
        return feeds

    def _target_weights(self, target, weights, feeds, n):
        et = _elem_type(self.model, self.output)
        dtype = np_dtype(et)
        out_shape = self._output_row_shape(feeds)
        if weights is not None:
            if target is not None:
                raise ValueError("give either target or target_weights, not both")
            return check_target_weights(weights, out_shape, n, dtype)
        return target_weights(target, out_shape, n, dtype)

    def _output_row_shape(self, feeds) -> tuple:
        shape = self._output_shape
        if shape is not None and all(isinstance(d, int) for d in shape[1:]):
            return tuple(shape[1:])
        key = tuple((k, v.shape[1:]) for k, v in feeds.items())   # symbolic dims (a sequence length):
        if key not in self._output_shapes:                         # ask the model, once per row shape
            one = self._row_slice(feeds, 0, 1)
            self._output_shapes[key] = tuple(self._forward_session().run(one, [self.output])[self.output].shape[1:])
        return self._output_shapes[key]


def normalized(model, batch_axes=None, output: str | None = None) -> tuple[onnx.ModelProto, dict, str]:
    """:func:`batch_first_model` of ``model``, and its digest; a path (same size and modification time) or
    bytes seen before with the same ``batch_axes`` and ``output`` are not normalised again.  The model
    returned is shared: do not modify it."""
    if isinstance(model, (str, os.PathLike)) and os.path.isfile(model):
        st = os.stat(model)
        source = ("path", os.path.abspath(os.fspath(model)), st.st_size, st.st_mtime_ns)
    elif isinstance(model, (bytes, bytearray, memoryview)):
        source = ("bytes", hashlib.sha256(model).hexdigest())
    else:
        source = None
    axes_key = _axes_key(batch_axes)
    if source is None or axes_key is False:
        m, axes = batch_first_model(model, batch_axes, output)
        return m, axes, digest(m)
    key = (source, axes_key, output)
    with _CACHE_LOCK:
        found = _MODELS.get(key)
    if found is None:
        m, axes = batch_first_model(model, batch_axes, output)
        found = (m, axes, digest(m))
        with _CACHE_LOCK:
            _MODELS.put(key, found, m.ByteSize())
    m, axes, d = found
    return m, dict(axes), d


def _check_rows_independent(model: onnx.ModelProto, spec: Spec) -> None:
    """Refuse a model in which one row's output depends on the other rows, unless every row runs on its own
    (``batch_size=1``)."""
    if spec.batch_size != 1:
        refusal = mixed_rows_refusal(model, spec.output, spec.unbatched)
        if refusal:
            raise ModelError(refusal)


def mixed_rows_refusal(model: onnx.ModelProto, output: str, unbatched=()) -> str | None:
    """Why a (batch-first) model cannot be explained on stacked batches, or None: a node on the way to
    ``output`` makes one row's result depend on the other rows (a normalisation over the batch), so the
    integration steps, references and perturbations a method stacks with the rows would change it."""
    axes = {vi.name: None if vi.name in unbatched else 0 for vi in _graph_inputs(model)}
    mixed = rows_mixed(model, axes, [output])
    if not mixed:
        return None
    listed = "; ".join(f"node {name!r}: {why}" for name, why in mixed.items())
    return (f"the model mixes the rows of a batch ({listed}), so one row's output depends on the other rows, and "
            f"on the integration steps, references or perturbations a method stacks with them. Build the "
            f"Explainer with batch_size=1 to explain each row run on its own")


def _axes_key(batch_axes):
    """``batch_axes`` as part of a cache key; False when it is not a dict (it is then refused, uncached)."""
    if batch_axes is None:
        return None
    if not isinstance(batch_axes, dict):
        return False
    try:
        return tuple(sorted((str(k), v) for k, v in batch_axes.items()))
    except TypeError:
        return False


def build_graph(model: onnx.ModelProto, method, spec: Spec, clean: bool = True) -> onnx.ModelProto:
    """The explanation graph of ``method`` over a normalised ``model``, cleaned (:func:`clean_graph`) unless
    ``clean`` is False (a diagnostic graph built once, where the optimizer's time would dominate)."""
    _check_rows_independent(model, spec)
    b = GraphBuilder(model if method.forward_only else with_bodies(model, method.overrides))
    method.build(b, spec)
    graph = b.build(f"onnxplain_{method.name}")
    graph = clean_graph(graph) if clean else graph
    if b.metadata:
        onnx.helper.set_model_props(graph, b.metadata)
    onnx.checker.check_model(graph)
    return graph


def _check_standalone(noise_tunnel: bool, batch_size) -> None:
    """A standalone graph cannot hold a noise tunnel under ``batch_size``: its samples run one after another."""
    if noise_tunnel and batch_size is not None:
        raise ValueError("a graph converted with batch_size cannot carry a noise tunnel: under batch_size the "
                         "noisy samples run one after another, fed by the Python API; convert without one of them")


def explain(model, inputs, method: str = "saliency", target=None, **kwargs):
    """One-shot :meth:`Explainer.explain` (the graph and session are cached all the same)."""
    ctor = {k: kwargs.pop(k) for k in ("output", "providers", "memory_budget", "layer", "threads", "batch_axes",
                                       "batch_size", "noise_tunnel") if k in kwargs}
    if "inputs_to_attribute" in kwargs:
        ctor["inputs"] = kwargs.pop("inputs_to_attribute")
    return Explainer(model, method, **ctor).explain(inputs, target, **kwargs)


def convert(model, path, method: str = "saliency", output: str | None = None, inputs=None, layer=None,
            noise_tunnel: str | None = None, defaults: dict | None = None, batch_axes: dict | None = None,
            batch_size: int | None = None, **more_defaults):
    """Write the standalone explanation graph of ``method`` to ``path``.

    Keyword arguments (e.g. ``n_steps=20``) set the graph's default parameters,
    stored as initializers that a client may override by feeding the input of
    the same name; ``defaults`` takes them as a dict too, which is how integrated
    gradients' quadrature (its parameter ``method``) is given:
    ``defaults={"method": "riemann_left"}``.  ``batch_axes`` and ``batch_size``
    are those of :class:`Explainer`; an input whose batch axis is not 0 is fed
    in its own layout, and so are its attributions and its ``baselines``.  The
    file is written atomically: nothing is left behind on error.
    """
    _check_standalone(noise_tunnel is not None, batch_size)
    m = get_method(method, noise_tunnel=noise_tunnel, **{**(defaults or {}), **more_defaults})
    model, axes = batch_first_model(model, batch_axes, output)
    spec = _spec(model, _choose_output(model, output), inputs, layer, m, unbatched=_unbatched(axes),
                 moved=_moved(axes))
    spec.batch_size = _check_batch_size(batch_size)
    _check_attributed_layouts(spec, m, axes)
    graph = own_layouts(build_graph(model, m, spec), spec, axes)
    _write_atomically(graph, path)
    return graph


# ---------------------------------------------------------------------- batch axes
def batch_first_model(model, batch_axes=None, output: str | None = None) -> tuple[onnx.ModelProto, dict]:
    """The normalised model with every batched input batch first, and each input's batch axis.

    Outputs that are not batch first are left out of it (see :func:`without_unbatched_outputs`).
    """
    m = normalize(model, batch_axes=batch_axes)
    axes = batch_axes_of(m, batch_axes)
    m = without_unbatched_outputs(m, batch_problems(m, axes), output)
    return to_batch_first(m, axes), axes


def without_unbatched_outputs(m: onnx.ModelProto, problems: dict, output: str | None) -> onnx.ModelProto:
    """``m`` without the outputs that have no batch axis first (``problems``: from batch_problems).

    An explanation graph runs the model on an expanded batch, so it cannot return such an output's
    value for the inputs (a mean over the batch, a sum over rows); the other outputs are explained as
    usual.  Raises :class:`ModelError` when ``output`` is one of them, or when no floating-point output
    is left to explain by default.
    """
    if not problems:
        return m
    floats = [o.name for o in m.graph.output if o.type.tensor_type.elem_type in FLOAT_TYPES]
    if output in problems:
        raise ModelError(batch_refusal({output: problems[output]}))
    if output is None and all(name in problems for name in floats):
        raise ModelError(batch_refusal(problems))
    kept = onnx.ModelProto()
    kept.CopyFrom(m)
    del kept.graph.output[:]
    kept.graph.output.extend(o for o in m.graph.output if o.name not in problems)
    return kept


def batch_refusal(problems: dict) -> str:
    """Why a model whose outputs are not batch first cannot be explained (``problems``: from batch_problems)."""
    listed = "; ".join(f"output {name!r} {why}" for name, why in problems.items())
    return (f"{listed}. onnxplain explains models whose outputs are batch first, one output row per input row "
            f"(batch_axes gives the inputs' batch axes; the outputs' is axis 0)")


def _moved(axes: dict) -> list[str]:
    """Inputs batched on another axis than 0."""
    return [name for name, axis in axes.items() if axis]


def _unbatched(axes: dict) -> list[str]:
    return [name for name, axis in axes.items() if axis is None]


def _check_batch_size(batch_size):
    if batch_size is None:
        return None
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (the most rows the model may see per run) or None, "
                         f"got {batch_size!r}")
    return int(batch_size)


def _check_attributed_layouts(spec: Spec, method, axes: dict) -> None:
    """Perturbation methods take windows and masks in the layout of one row: batch-first inputs only."""
    moved = [x for x in spec.wrt if axes.get(x)]
    if moved and method.forward_only:
        raise ValueError(f"method {method.name!r} cannot attribute {moved}, whose batch axis is not 0 (its windows, "
                         f"masks and baselines are given per row); attribute them with a gradient method, or "
                         f"attribute the batch-first inputs only")


def _params_batch_first(params: dict, spec: Spec, axes: dict) -> dict:
    """Per-input arrays given in the layout of inputs whose batch axis ``k`` is not 0 -> batch first:
    ``baselines`` (batch axis ``k``) and SmoothGrad's ``noise`` (``(samples, *input)``: axis ``k + 1``)."""
    if not any(axes.get(x) for x in spec.carriers):
        return params
    out = dict(params)
    for key, lead in (("baselines", 0), ("noise", 1)):
        value = params.get(key)
        if value is None:
            continue

        def move(x, v):
            k = axes.get(x)
            return v if not k or np.ndim(v) <= k + lead else np.moveaxis(np.asarray(v), k + lead, lead)

        if isinstance(value, dict):
            out[key] = {x: move(x, v) for x, v in value.items()}
        elif isinstance(value, (tuple, list)) and len(spec.carriers) > 1:
            out[key] = type(value)(move(x, v) for x, v in zip(spec.carriers, value))
        elif len(spec.carriers) == 1:
            out[key] = move(spec.carriers[0], value)
    return out


def _own_layout(value: np.ndarray, axis) -> np.ndarray:
    return np.moveaxis(value, 0, axis) if axis else value


def _inverse(perm: list) -> list:
    return [perm.index(i) for i in range(len(perm))]


def own_layouts(graph: onnx.ModelProto, spec: Spec, axes: dict) -> onnx.ModelProto:
    """A copy of the explanation graph of a batch-first model that takes and gives inputs with batch
    axis ``k > 0`` (and their baselines and attributions) in their own layout: Transposes at its boundary."""
    if not any(axes.values()):
        return graph
    copy = onnx.ModelProto()
    copy.CopyFrom(graph)
    graph = copy
    g = graph.graph
    front, back = [], []
    for x, k in axes.items():
        if not k:
            continue
        # the input and its baselines (batch axis k), SmoothGrad's noise (samples first: axis k + 1)
        lead = {x: 0}
        if x in spec.carriers:
            lead.update({spec.param("baselines", x): 0, spec.param("noise", x): 1})
        for vi in g.input:
            if vi.name not in lead:
                continue
            inner = f"{vi.name}__batch_first"
            redirect_reads(g.node, vi.name, inner)
            j = lead[vi.name]
            rank = len(vi.type.tensor_type.shape.dim)
            own = list(range(j)) + [j + p for p in from_batch_first_perm(rank - j, k)]
            front.append(onnx.helper.make_node("Transpose", [vi.name], [inner], perm=_inverse(own)))
            _permute_dims(vi, own)
        for init in g.initializer:   # a default stored for a transposed input follows its layout
            if init.name in lead and len(init.dims) > k + lead[init.name]:
                j = lead[init.name]
                init.CopyFrom(onnx.numpy_helper.from_array(
                    np.moveaxis(onnx.numpy_helper.to_array(init), j, j + k), init.name))
        if x in spec.wrt:
            name = spec.attribution_name(x)
            inner = f"{name}__batch_first"
            for node in g.node:
                node.output[:] = [inner if o == name else o for o in node.output]
            # nodes that read the attributions (the delta's sums: the cleaned graph reads the output
            # itself once the builder's Identity is gone) take them batch first too
            redirect_reads(g.node, name, inner)
            vi = next(v for v in g.output if v.name == name)
            back.append(onnx.helper.make_node("Transpose", [inner], [name],
                                              perm=from_batch_first_perm(len(vi.type.tensor_type.shape.dim), k)))
            _permute_dims(vi, from_batch_first_perm(len(vi.type.tensor_type.shape.dim), k))
    if front or back:
        nodes = front + list(g.node) + back
        del g.node[:]
        g.node.extend(nodes)
        onnx.checker.check_model(graph)
    return graph


def _permute_dims(vi, perm: list[int]) -> None:
    dims = list(vi.type.tensor_type.shape.dim)
    copies = [onnx.TensorShapeProto.Dimension() for _ in dims]
    for c, j in zip(copies, perm):
        c.CopyFrom(dims[j])
    del vi.type.tensor_type.shape.dim[:]
    vi.type.tensor_type.shape.dim.extend(copies)


# ---------------------------------------------------------------------- model facts
def _graph_inputs(model):
    inits = {i.name for i in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def _elem_type(model, name):
    for vi in list(model.graph.output) + list(model.graph.value_info) + list(model.graph.input):
        if vi.name == name:
            return vi.type.tensor_type.elem_type
    return TensorProto.FLOAT


def _static_shape(model, name):
    for vi in list(model.graph.output) + list(model.graph.value_info):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                         for d in vi.type.tensor_type.shape.dim)
    return None


def _choose_output(model, output):
    names = [o.name for o in model.graph.output]
    if output is not None:
        if output not in names:
            raise ValueError(f"output {output!r} is not an output of the model; its outputs are {names}")
        tt = model.graph.output[names.index(output)].type.tensor_type
        if tt.elem_type not in FLOAT_TYPES:
            raise ValueError(f"output {output!r} is not floating point; only float outputs can be explained")
        if tt.HasField("shape") and len(tt.shape.dim) == 0:
            raise ValueError(f"output {output!r} is a scalar without a batch dimension; onnxplain explains outputs "
                             f"with one row per input row")
        return output
    for o in model.graph.output:
        tt = o.type.tensor_type
        if tt.elem_type in FLOAT_TYPES and not (tt.HasField("shape") and len(tt.shape.dim) == 0):
            return o.name
    hint = ""
    if any(not o.type.HasField("tensor_type") for o in model.graph.output):
        hint = ("; its outputs include sequences or maps (a scikit-learn classifier converted with ZipMap): "
                "convert it with options={'zipmap': False}, or use onnxplain.converters.from_sklearn")
    raise ValueError(f"the model has no floating-point output to explain (outputs: {names}){hint}")


def _spec(model, output, inputs, layer=None, method=None, unbatched=(), moved=()) -> Spec:
    """Which tensors get attributions (points), which inputs take baselines (carriers), which pass through.

    By default every batched floating-point input is attributed (for gradient
    and modified-rule methods: every one that a gradient path joins to the
    output, as long as one does); a model with none has its first token input
    (integers feeding an embedding Gather) attributed: at that Gather's output
    by the gradient methods, as itself by the perturbation methods
    (``forward_only``), which take inputs of any dtype and, for a model with
    neither float nor token inputs, attribute every batched input.  ``inputs``
    names them explicitly; ``layer`` attributes an intermediate tensor instead,
    with baselines for ``inputs``.  ``unbatched`` inputs are passed through
    unchanged and cannot be attributed.  A named input or layer that reaches
    the output only through steps with no gradient (a Cast to an integer type,
    Floor, ArgMax, a comparison, a Shape) is refused with
    :class:`~onnxplain.errors.NoGradientPathError` by those methods.
    """
    graph_inputs = _graph_inputs(model)
    names = [vi.name for vi in graph_inputs]
    if inputs is not None:
        refused = [x for x in ([inputs] if isinstance(inputs, str) else list(inputs)) if x in unbatched]
        if refused:
            raise ValueError(f"cannot attribute {refused}: they have no batch axis (batch_axes None), so no row has "
                             f"a value of its own; attribute batched inputs")
    floats = [vi.name for vi in graph_inputs
              if vi.type.tensor_type.elem_type in FLOAT_TYPES and vi.name not in unbatched]
    tokens = {x: t for x, t in token_embeddings(model).items() if x not in unbatched}
    batched = [x for x in names if x not in unbatched]
    as_themselves = method is not None and method.forward_only   # perturbations feed the values themselves
    cut = (lambda tensor: None) if method is None or method.forward_only else \
        gradient_cuts(model, output, method.overrides)
    if inputs is None:
        if as_themselves:   # windows and masks are per row: inputs batched on another axis pass through
            floats, batched = [x for x in floats if x not in moved], [x for x in batched if x not in moved]
            tokens = {x: t for x, t in tokens.items() if x not in moved}
        chosen = floats or list(tokens)[:1] or (batched if as_themselves else [])
        if len(chosen) > 1 and any(cut(x) is None for x in chosen):
            chosen = [x for x in chosen if cut(x) is None]    # attribute the inputs a gradient reaches
        if not chosen:
            raise ValueError(f"the model has no floating-point input and no token input feeding an embedding "
                             f"to attribute (inputs: {names}); the perturbation methods attribute inputs of any "
                             f"dtype")
    else:
        chosen = [inputs] if isinstance(inputs, str) else list(inputs)
        bad = [x for x in chosen if x not in (names if as_themselves else floats + list(tokens))]
        if bad and as_themselves:
            raise ValueError(f"cannot attribute {bad}: not inputs of the model, whose inputs are {names}")
        if bad:
            raise ValueError(f"cannot attribute {bad}: attributable inputs are the floating-point inputs {floats} "
                             f"and the token inputs feeding an embedding {list(tokens)} (the perturbation "
                             f"methods attribute inputs of any dtype)")
    for vi in graph_inputs:
        if vi.name in chosen and len(vi.type.tensor_type.shape.dim) == 0:
            raise ValueError(f"input {vi.name!r} has no batch dimension; onnxplain needs batch-first inputs")
    if layer is not None:
        points = [Point(layer, _check_layer(model, layer))]
    else:
        points = [Point(x, x, x) if x in floats or as_themselves else Point(x, tokens[x]) for x in chosen]
    for p in points:
        node = cut(p.tensor)
        if node is not None:
            raise NoGradientPathError(p.key, output, node, "layer" if layer is not None else "input")
    if method is not None and not method.supports_layers and not all(p.is_input for p in points):
        what = "the model's inputs (of any dtype)" if as_themselves else "floating-point inputs"
        raise ValueError(f"method {method.name!r} attributes {what} only; "
                         f"{'layer=' if layer else 'token inputs'} needs another method")
    return Spec(model, output, points, chosen, [x for x in names if x not in chosen and x not in unbatched],
                [x for x in names if x in unbatched])


_SHAPE_ONLY = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast")


def token_embeddings(model) -> dict[str, str]:
    """Integer inputs that feed exactly one Gather on a float table: input name -> that Gather's output.

    The ids may pass through shape-only ops first (GPT-2 reshapes them to (-1, seq)).
    """
    inits = {i.name: i.data_type for i in model.graph.initializer}
    floats = {vi.name for vi in model.graph.value_info if vi.type.tensor_type.elem_type in FLOAT_TYPES}
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for k, name in enumerate(n.input):
            readers.setdefault(name, []).append((n, k))
    found = {}
    for vi in _graph_inputs(model):
        if vi.type.tensor_type.elem_type not in (TensorProto.INT64, TensorProto.INT32):
            continue
        ids, gathers = [vi.name], []
        while ids:
            for node, k in readers.get(ids.pop(), []):
                if node.op_type == "Gather" and k == 1 and (inits.get(node.input[0]) in FLOAT_TYPES
                                                            or node.input[0] in floats):
                    gathers.append(node)
                elif node.op_type in _SHAPE_ONLY and k == 0 and node.output[0] not in floats:
                    ids.append(node.output[0])
        if len(gathers) == 1:
            found[vi.name] = gathers[0].output[0]
    return found


def _check_layer(model, layer: str) -> str:
    produced = {o for n in model.graph.node for o in n.output}
    if layer not in produced:
        raise ValueError(f"layer {layer!r} is not a tensor computed by the model; onnxplain.inspect(model) lists "
                         f"the model's tensors")
    info = {vi.name: vi for vi in model.graph.value_info}
    vi = info.get(layer)
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        raise ValueError(f"the shape of layer {layer!r} is unknown after shape inference; onnxplain needs its rank")
    if vi.type.tensor_type.elem_type not in FLOAT_TYPES:
        raise ValueError(f"layer {layer!r} is not floating point")
    return layer


def _check_array(vi, value) -> np.ndarray:
    tt = vi.type.tensor_type
    expected = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim)
    want = np_dtype(tt.elem_type)
    try:
        arr = np.asarray(value)
    except Exception as e:
        raise ValueError(f"input {vi.name!r}: expected an array of {want} with shape {expected}: {e}") from e
    if want.kind == "f" and arr.dtype.kind not in "f":
        raise ValueError(f"input {vi.name!r} must be a floating-point array ({want}), got dtype {arr.dtype}")
    if want.kind in "iu" and arr.dtype.kind not in "iu":
        raise ValueError(f"input {vi.name!r} must be an integer array ({want}), got dtype {arr.dtype}")
    if want.kind == "b" and arr.dtype.kind != "b":
        raise ValueError(f"input {vi.name!r} must be a boolean array, got dtype {arr.dtype}")
    if arr.ndim != len(expected) or any(isinstance(e, int) and e != g for e, g in zip(expected[1:], arr.shape[1:])):
        raise ValueError(f"input {vi.name!r} must have shape {expected} (batch first), got {arr.shape}")
    return np.require(arr.astype(want, copy=False), requirements="C")     # a scalar stays 0-d


def _moved_to_batch_first(vi, value, axis: int) -> np.ndarray:
    """An input given in its own layout (batch on ``axis``), checked against that layout, batch first."""
    value = np.asarray(value)
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]
    own = tuple(dims[1:axis + 1] + dims[:1] + dims[axis + 1:])
    if value.ndim != len(own) or any(isinstance(e, int) and e != g for e, g in zip(own, value.shape)):
        raise ValueError(f"input {vi.name!r} must have shape {own} (batch on axis {axis}), got {value.shape}")
    return np.moveaxis(value, axis, 0)


def _write_atomically(model: onnx.ModelProto, path) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {path!r}: folder {folder!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".onnxplain-", suffix=".onnx")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
