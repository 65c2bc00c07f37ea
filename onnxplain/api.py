"""The public surface: :class:`Explainer` (a model and a method -> one explanation graph and one session,
reused), the one-shot :func:`explain`, :func:`convert` to a standalone graph, and :func:`audit`."""
from __future__ import annotations

import os
import tempfile
import threading

import numpy as np
import onnx

from .audit import Audit, audit_call
from .cache import cached_graph, clear_cache
from .errors import ModelError
from .graph import np_dtype
from .methods import get_method
from .methods.base import called_baselines
from .methods.noise_tunnel import NoiseTunnel
from .options import ExplainOptions
from .prepare import (attribution_spec, build_graph, elem_type, graph_inputs, made_up_inputs, own_layouts, prepare,
                      static_shape)
from .spec import Spec
from .runner import Runner
from .runtime import Cost, RowCost, Session, memory_budget as _memory_budget, select_providers
from .targets import check_target_weights, predicted_target, target_weights

__all__ = ["ExplainOptions", "Explainer", "audit", "clear_cache", "convert", "explain"]


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
        ``NoiseTunnel(method)``, over gradient, modified-rule and perturbation
        methods); ``explain`` then also takes ``nt_samples``, ``stdevs``,
        ``seed``, ``noise`` and ``nt_samples_batch_size``.
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
        self.prepared = prepared = prepare(model, batch_axes, output)
        self.model, self.batch_axes, self.digest, self.output = (prepared.model, prepared.batch_axes,
                                                                 prepared.digest, prepared.output)
        self._output_shape = static_shape(self.model, self.output)     # read on every call
        self.spec = attribution_spec(prepared, self.method, inputs, layer, batch_size)
        if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
            raise ValueError(f"threads must be a positive int or None (onnxruntime's default), got {threads!r}")
        self.threads = threads
        self.providers = select_providers(providers)
        self.memory_budget = _memory_budget(memory_budget, self.providers)
        key = (self.digest, self.method.name, self.output, tuple(self.spec.wrt), tuple(self.spec.carriers),
               tuple(self.spec.unbatched), self.spec.batch_size, self.spec.layer, tuple(map(str, self.providers)),
               threads)
        self.cache_key = key
        self.graph, self.session = cached_graph(key, self._build_graph)
        self.row_cost = RowCost(self.model, self.method.row_cost_factor)
        self._forward = None
        self._forward_lock = threading.Lock()
        self._output_shapes: dict = {}
        #: what the method runs on (:class:`onnxplain.runner.Runner`)
        self.runner = Runner(self.method, self.spec, self.session, self.memory_budget, self.row_cost,
                             self.forward_session)

    @classmethod
    def from_options(cls, model, options: ExplainOptions) -> "Explainer":
        """The Explainer of ``model`` that ``options`` describe (its ``params`` are the calls' business)."""
        return cls(model, **options.explainer_keywords())

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
        return [vi.name for vi in graph_inputs(self.model)]

    def forward(self, inputs) -> dict[str, np.ndarray]:
        """The model's own outputs for ``inputs`` (a plain forward session, built on first use;
        runs of at most ``batch_size`` rows)."""
        feeds = self.check_inputs(inputs)
        n = self.rows(feeds)
        step = self.spec.batch_size or n
        chunks = [self.forward_session().run(self.runner.row_slice(feeds, start, min(n, start + step)))
                  for start in range(0, n, step)]
        return {k: np.concatenate([c[k] for c in chunks], axis=0) for k in chunks[0]}

    def forward_session(self) -> Session:
        """The model's plain forward session (built on first use, shared by the threads of a server)."""
        with self._forward_lock:    # concurrent requests of a server build it once
            if self._forward is None:
                self._forward = Session(self.model, self.providers, self.threads)
        return self._forward

    def save(self, path) -> None:
        """Write the explanation graph (see :func:`convert`; inputs in their own layout)."""
        _check_standalone(self.method, self.spec.batch_size)
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
        feeds, tw, params = self.checked_call(inputs, target, target_weights, params)
        total, delta = self.method.run(self.runner, feeds, tw, params, delta=return_convergence_delta)
        own = {x: _own_layout(total[self.spec.attribution_name(x)], self.batch_axes.get(x)) for x in self.spec.wrt}
        result = own[self.spec.wrt[0]] if self.spec.single else own
        return (result, delta) if return_convergence_delta else result

    def audit(self, inputs, target=None, *, target_weights=None, **params):
        """Where DeepLIFT's relevance leaks on this call: every node's local summation-to-delta residual
        (:class:`onnxplain.audit.Audit`; ``.report()`` lists the worst nodes).  For ``method="deeplift"``;
        the audited graph is built once, beside the Explainer's own."""
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

    def estimate(self, inputs, target=None, *, target_weights=None, return_convergence_delta: bool = False,
                 **params) -> Cost:
        """What :meth:`explain` with the same arguments will run, without running it.

        Returns a :class:`~onnxplain.runtime.Cost`: the forward ``rows`` in
        total (integration steps, noisy samples, (input, reference) pairs and
        perturbations each count as rows), the session ``runs`` they are split
        into by the memory budget (and ``perturbations_per_eval`` or
        ``internal_batch_size``), and the most rows of one run.  The numbers
        come from the planning code the call itself uses (a call without
        ``return_convergence_delta`` skips the rows only the delta needs).
        """
        feeds, tw, params = self.checked_call(inputs, target, target_weights, params)
        return self.method.estimate(self.runner, feeds, tw, params, delta=return_convergence_delta)

    # ------------------------------------------------------------------ helpers
    def checked_call(self, inputs, target, target_weights, params) -> tuple[dict, np.ndarray, dict]:
        """One call's checked feeds, target weights and parameters."""
        params = self.method.check_params(called_baselines(params, inputs))
        feeds = self.check_inputs(inputs)
        params = _params_batch_first(params, self.spec, self.batch_axes)
        n = self.rows(feeds)
        self._check_output_rows(feeds, n)
        return feeds, self._target_weights(target, target_weights, feeds, n), params

    def _check_output_rows(self, feeds: dict, n: int) -> None:
        """An explained output whose first axis has a fixed size other than the call's rows is not a batch
        axis: say why, by running the plain forward on the call's first rows, before anything else runs."""
        shape = self._output_shape
        if not shape or not isinstance(shape[0], int) or shape[0] == n or (shape[0] == 1 and self.spec.batch_size == 1):
            return
        try:
            got = tuple(self.forward_session().run(self.runner.first_row_repeated(feeds, 2), [self.output])[self.output].shape)
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

    def rows(self, feeds: dict) -> int:
        """The number of rows of the call (the batched inputs' batch size)."""
        return int(np.shape(feeds[self.spec.carriers[0]])[0])

    def check_inputs(self, inputs) -> dict:
        """``inputs`` (an array, or a dict by input name) checked against the model's inputs (names, dtypes,
        shapes, rows), each batched one batch first: the feeds of a run."""
        model_inputs = graph_inputs(self.model)
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
        et = elem_type(self.model, self.output)
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
            one = self.runner.row_slice(feeds, 0, 1)
            self._output_shapes[key] = tuple(self.forward_session().run(one, [self.output])[self.output].shape[1:])
        return self._output_shapes[key]


def _check_standalone(method, batch_size) -> None:
    """A standalone graph cannot hold a noise tunnel under ``batch_size`` (its samples run one after another),
    nor one over a perturbation method (its noisy rows are made in Python, around the forward-only graph)."""
    noise_tunnel = isinstance(method, NoiseTunnel)
    if noise_tunnel and method.forward_only:
        raise ValueError(f"a noise tunnel over {method.inner.name!r} adds its noise in Python, around the "
                         f"method's forward-only graph, so a standalone graph cannot carry it; convert "
                         f"{method.inner.name!r} without noise_tunnel (the same graph) and add the noise per row")
    if noise_tunnel and batch_size is not None:
        raise ValueError("a graph converted with batch_size cannot carry a noise tunnel: under batch_size the "
                         "noisy samples run one after another, fed by the Python API; convert without one of them")


def explain(model, inputs, method: str = "saliency", target=None, **kwargs):
    """One-shot :meth:`Explainer.explain` (the graph and session are cached all the same): ``kwargs`` are
    the Explainer's keywords and the method's parameters together (:meth:`ExplainOptions.split`)."""
    options = ExplainOptions.split(method, **kwargs)
    return Explainer.from_options(model, options).explain(inputs, target, **options.params)


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
    m = get_method(method, noise_tunnel=noise_tunnel, **{**(defaults or {}), **more_defaults})
    _check_standalone(m, batch_size)
    prepared = prepare(model, batch_axes, output)
    spec = attribution_spec(prepared, m, inputs, layer, batch_size)
    graph = own_layouts(build_graph(prepared.model, m, spec), spec, prepared.batch_axes)
    _write_atomically(graph, path)
    return graph


def audit(model, inputs=None, target=None, *, target_weights=None, batch: int = 4, output: str | None = None,
          attribute=None, layer: str | None = None, batch_axes: dict | None = None, providers=None,
          **params) -> Audit:
    """Audit DeepLIFT on ``model`` (``onnxplain audit``): ``inputs`` an array or a dict by input name, default
    ``batch`` made-up rows (:func:`onnxplain.prepare.made_up_inputs`); ``target`` default: each row's largest
    output; ``params``: DeepLIFT's (``baselines``, ``eps``)."""
    ex = Explainer(model, "deeplift", output=output, inputs=attribute, layer=layer, batch_axes=batch_axes,
                   providers=providers)
    x = made_up_inputs(ex.model, batch, batch_axes=ex.batch_axes) if inputs is None else inputs
    if target is None and target_weights is None:
        out = ex.forward(x)[ex.output]
        if out.size // max(len(out), 1) > 1:
            target = predicted_target(out)
    return ex.audit(x, target, target_weights=target_weights, **params)


# ---------------------------------------------------------------------- per-call layouts and checks
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
