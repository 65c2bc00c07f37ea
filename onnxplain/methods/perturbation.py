"""What the perturbation methods share: a forward-only graph, the chunk loop, masks and baselines.

The explanation graph of a perturbation method is the model's forward pass and
a *target reduction*: inputs are the model's inputs and ``target_weights``
(shaped like the explained output, batch first); outputs are the model's own
outputs and ``target_output``, one scalar per row,
``sum(target_weights[r] * output[r])`` over the non-batch axes.  No backward
pass is built, so any ONNX model works, ``ai.onnx.ml`` tree ensembles included.

Per call, a method makes a *plan*: the perturbations of one row as ``U``
*units*.  The loop below splits the input rows into blocks and the units into
chunks (sizes from the memory budget, capped by Captum's
``perturbations_per_eval``); for each chunk the plan's Numba kernels write the
perturbed rows straight into preallocated batches (perturbation-major: row
``u * n + j`` is unit ``u`` of input row ``j``, fed with ``target_weights[j]``),
one session run writes one scalar per row into a buffer the call owns (an IO
binding kept per chunk shape), and the kernels fold those back into sums and
counts.  No Python loop runs per perturbation, only per chunk, and nothing in a
chunk's Python work grows with the number of features.  The few runs of whole
rows a plan needs besides (``f(x)``, ``f(baselines)``) head the first chunk of
each block unless ``perturbations_per_eval`` caps the chunks (then they run
alone, as Captum runs them): a small model's call is one session run.
"""
from __future__ import annotations

import math
import numbers
import sys
import threading
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from onnxplain.kernels.common import Labels

from ..runtime import Cost
from .base import (TARGET_WEIGHTS, Method, Spec, baseline_feeds, check_n_baselines, declare_target_weights, draw_rows,
                   emit_outputs, ex_float, open_forward)
from .params import PERTURBATION_BASELINES, PERTURBATIONS_PER_EVAL, PROGRESS

TARGET_OUTPUT = "target_output"
#: bytes per row of a forward-only run, as a multiple of the sum of the model's per-row tensors
#: (onnxruntime reuses buffers across a forward pass; the extra half covers our own batches)
FORWARD_FACTOR = 1.5
#: rows of one session run at most, whatever the budget (larger runs gain nothing on a CPU)
MAX_ROWS_PER_RUN = 8192
#: seconds a call runs before its progress bar appears (shorter calls stay quiet)
PROGRESS_DELAY = 2.0


# ---------------------------------------------------------------------- per-input facts
@dataclass
class Attributed:
    """One attributed input, flattened to rows: ``x`` (N, D), ``base`` (1 or N, D), both of the input's
    ``dtype`` (any: float, integer ids, bytes, booleans); attributions are ``attr_dtype`` (the input's own
    float type, or the explained output's for an integer or boolean input)."""

    name: str
    row: tuple
    dtype: np.dtype
    x: np.ndarray
    base: np.ndarray
    attr_dtype: np.dtype

    @property
    def size(self) -> int:
        return int(self.x.shape[1])

    def base_rows(self, r0: int, r1: int) -> np.ndarray:
        return self.base if self.base.shape[0] == 1 else self.base[r0:r1]


def attributed_inputs(spec: Spec, feeds: dict, baselines) -> list[Attributed]:
    """The attributed inputs with their baselines (the forms of :func:`baseline_feeds`)."""
    bases = baseline_feeds(spec, baselines, feeds)
    scores = ex_float(spec)
    out = []
    for x in spec.wrt:
        value = np.ascontiguousarray(feeds[x])
        row = tuple(value.shape[1:])
        d = math.prod(row)
        base = bases[spec.param("baselines", x)]
        base = np.broadcast_to(base, (base.shape[0],) + row).reshape(base.shape[0], d)
        out.append(Attributed(x, row, value.dtype, value.reshape(value.shape[0], d),
                              np.ascontiguousarray(base, dtype=value.dtype),
                              value.dtype if value.dtype.kind == "f" else scores))
    return out


def per_input(value, spec: Spec, what: str, is_one) -> dict:
    """Captum's per-input forms: one value (single input), a tuple with one per input, or a dict by name."""
    if isinstance(value, dict):
        missing = [x for x in spec.wrt if x not in value]
        unknown = sorted(set(value) - set(spec.wrt))
        if missing or unknown:
            raise ValueError(f"{what} given by name must cover the attributed inputs {spec.wrt}; "
                             f"missing {missing}, unknown {unknown}")
        return {x: value[x] for x in spec.wrt}
    if spec.single:
        if isinstance(value, tuple) and len(value) == 1 and not is_one(value):
            value = value[0]
        return {spec.wrt[0]: value}
    if not isinstance(value, (tuple, list)) or len(value) != len(spec.wrt):
        raise ValueError(f"with several attributed inputs {spec.wrt}, give {what} as a tuple with one entry per "
                         f"input (in that order) or a dict by input name; got {value!r}")
    return dict(zip(spec.wrt, value))


def group_labels(spec: Spec, inputs: list[Attributed], feature_mask, n_rows: int) -> tuple[dict, int]:
    """Captum's feature masks -> group labels ``(1 or N, D)`` per input, and the number of groups.

    A mask is an integer array broadcastable to the input (its first dimension 1
    or the number of rows, or no batch dimension at all); equal ids are one
    group, across inputs too (Captum's cross-tensor groups).  Ids may be any
    integers: they are numbered 0..G-1 in increasing order.  ``None``: every
    element is its own group, numbered across the inputs in order.
    """
    if feature_mask is None:
        labels, offset = {}, 0
        for a in inputs:
            labels[a.name] = Labels(np.arange(offset, offset + a.size, dtype=np.int64)[None, :], offset + a.size)
            offset += a.size
        return labels, offset
    masks = per_input(feature_mask, spec, "feature_mask", lambda v: np.ndim(v[0]) == 0)
    raw = {}
    for a in inputs:
        raw[a.name] = _check_mask(masks[a.name], a, n_rows)
    number, n_groups = _numbering(list(raw.values()))
    labels = {}
    for a in inputs:
        m = raw[a.name]
        full = np.broadcast_to(m, (m.shape[0],) + a.row).reshape(m.shape[0], a.size)
        labels[a.name] = Labels(number(full), n_groups)
    return labels, n_groups


def _numbering(masks: list) -> tuple:
    """``(number, G)``: ``number(ids)`` gives the int32 rank of each id among the ``G`` distinct ids of
    ``masks``; ids in a small non-negative range are ranked through a table (no sort), others by
    :func:`numpy.unique`."""
    sizes = [m for m in masks if m.size]
    lo = min((int(m.min()) for m in sizes), default=0)
    hi = max((int(m.max()) for m in sizes), default=-1)
    if lo >= 0 and hi < 4 * sum(m.size for m in sizes) + 1024:
        present = np.zeros(hi + 1, dtype=np.bool_)
        for m in sizes:
            present[m] = True
        table = np.cumsum(present, dtype=np.int32) - 1
        return (lambda ids: table[ids]), int(table[-1]) + 1 if hi >= 0 else 0
    ids = np.unique(np.concatenate([m.ravel() for m in masks]))
    return (lambda m: np.searchsorted(ids, m).astype(np.int32)), len(ids)


def _check_mask(mask, a: Attributed, n_rows: int) -> np.ndarray:
    shape = (n_rows,) + a.row
    try:
        m = np.asarray(mask)
    except Exception as e:
        raise ValueError(f"feature_mask for input {a.name!r} must be an integer array broadcastable to {shape}: "
                         f"{e}") from e
    if m.dtype.kind not in "iu":
        raise ValueError(f"feature_mask for input {a.name!r} must hold integer group ids, got dtype {m.dtype}")
    if m.ndim > len(shape) or any(md not in (1, d) for md, d in zip(m.shape[::-1], shape[::-1])):
        raise ValueError(f"feature_mask for input {a.name!r} must be broadcastable to the input's shape {shape} "
                         f"(each dimension 1 or equal, the first 1 or {n_rows}), got shape {m.shape}")
    return m.reshape((1,) * (len(shape) - m.ndim) + m.shape)


def check_positive_int(value, what: str, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        expected = "a positive int or None" if allow_none else "a positive int"
        raise ValueError(f"{what} must be {expected}, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------- the method
class Plan:
    """One call's perturbations: ``units`` per input row, filled and folded chunk by chunk.

    A block may need a few runs of whole rows besides its units (the inputs, the baselines: its
    ``evaluations``).  The plan gives their inputs (:meth:`evaluation_values`) and takes their outputs
    (:meth:`evaluated`); the loop runs them as the first rows of the block's first chunk (one run fewer per
    block) when no ``perturbations_per_eval`` caps the chunks, or alone before the chunks otherwise
    (:meth:`begin`)."""

    inputs: list[Attributed]
    units: int
    #: runs of whole rows per block of rows: the length of :meth:`evaluation_values`
    evaluations: int = 0

    def begin(self, r0: int, r1: int, evaluate) -> None:
        """Start input rows ``[r0, r1)``; ``evaluate({name: rows})`` runs the model (other inputs unchanged).
        By default :meth:`start`, then the :meth:`evaluation_values` run one by one into :meth:`evaluated`."""
        self.start(r0, r1)
        n = r1 - r0
        byname = {a.name: a for a in self.inputs}
        self.evaluated([evaluate({k: broadcast_rows(byname[k], v, n) for k, v in values.items()})
                        for values in self.evaluation_values(r0, r1)])

    def start(self, r0: int, r1: int) -> None:
        """Start input rows ``[r0, r1)`` (no run)."""

    def evaluation_values(self, r0: int, r1: int) -> list[dict]:
        """The inputs of each of the block's ``evaluations``: ``{name: (1 or n, D) rows}`` replacing the
        inputs named (``{}``: the inputs as they are)."""
        return []

    def evaluated(self, outputs: list) -> None:
        """The outputs of :meth:`evaluation_values`, one ``(n,)`` array each, in order (arrays the plan may keep)."""

    def fill(self, u0: int, u1: int, batches: dict) -> None:
        raise NotImplementedError

    def fold(self, u0: int, u1: int, f: np.ndarray) -> None:
        raise NotImplementedError

    def end(self) -> None:
        """Finish the current block of rows."""

    def result(self) -> dict:
        """Attributions by input name, shaped and typed like the inputs."""
        raise NotImplementedError


class Perturbation(Method):
    """A forward-only method: the graph returns ``target_output``, Numba kernels do the rest."""

    forward_only = True
    supports_layers = False     # inputs only (of any dtype): the kernels perturb the values fed to the model
    row_cost_factor = FORWARD_FACTOR
    parameters = (PERTURBATION_BASELINES, PERTURBATIONS_PER_EVAL, PROGRESS)
    _pool = None     # batch buffers reused across calls (made on the first call)

    def build(self, b, spec: Spec) -> None:
        inside, outputs = open_forward(b, spec)
        for name, internal in inside.items():
            b.op("Identity", name, outputs=[internal])
        tw = declare_target_weights(b, spec)
        emit_outputs(b, spec, outputs, None, None)
        out = outputs[spec.output]
        weighted = b.op("Flatten", b.mul(tw, out), axis=1)
        b.op("ReduceSum", weighted, b.ints([1]), keepdims=0, outputs=[b.reserve(TARGET_OUTPUT)])
        shape = b.shape(spec.output)
        b.add_output(TARGET_OUTPUT, b.elem_type(out), [shape[0] if shape else "batch"])

    def check_params(self, params: dict) -> dict:
        p = super().check_params(params)
        check_positive_int(p["perturbations_per_eval"], "perturbations_per_eval", allow_none=True)
        if "n_baselines" in p:
            check_n_baselines(p)
        seed = p.get("seed")
        if isinstance(seed, bool) or (seed is not None
                                      and not isinstance(seed, (int, np.integer, np.random.Generator))):
            raise ValueError(f"seed must be None, an int or a numpy Generator, got {seed!r}")
        if p["progress"] is not None and not isinstance(p["progress"], (bool, np.bool_)):
            raise ValueError(f"progress must be True, False or None (a bar when stderr is a terminal), "
                             f"got {p['progress']!r}")
        return p

    def plan(self, spec: Spec, feeds: dict, n_rows: int, params: dict) -> Plan:
        raise NotImplementedError

    def run(self, runner, feeds: dict, tw, params: dict, delta: bool = True):
        n_rows = int(np.shape(tw)[0])
        draws = background_draws(runner.spec, feeds, params)
        plans = [self.plan(runner.spec, feeds, n_rows, p) for p in draws]   # every check happens here, before any run
        if self._pool is None:
            self._pool = BufferPool()
        total = None
        for plan in plans:
            drive(runner, feeds, np.ascontiguousarray(tw), plan, params["perturbations_per_eval"], self._pool,
                  params["progress"])
            result = plan.result()
            total = result if total is None else {x: total[x] + a for x, a in result.items()}
        if len(plans) > 1:   # the mean over the baselines drawn from the background set
            total = {x: (a / len(plans)).astype(a.dtype) for x, a in total.items()}
        return {runner.spec.attribution_name(x): a for x, a in total.items()}, None

    def estimate(self, runner, feeds: dict, tw, params: dict, delta: bool = True) -> Cost:
        """The rows and session runs :meth:`run` will take: the same plans, cut by the same :class:`Schedule`."""
        n_rows = int(np.shape(tw)[0])
        runs = []
        for p in background_draws(runner.spec, feeds, params):
            plan = self.plan(runner.spec, feeds, n_rows, p)
            runs += Schedule.of(runner, feeds, n_rows, plan, params["perturbations_per_eval"]).run_rows()
        return Cost.of(runs)


def background_draws(spec: Spec, feeds: dict, params: dict) -> list[dict]:
    """The call's parameters once per baseline: as given, or with ``n_baselines=K``, once for each of ``K``
    rows drawn (by ``seed``) from the background set ``baselines`` ((B, *row) arrays, or a dict of them by
    input name).  Attributions are linear in the value function, so the mean over the drawn baselines is the
    attribution against the background distribution (SHAP's interventional values), estimated from ``K``
    rows; the estimate's error shrinks as ``1/sqrt(K)``."""
    if params.get("n_baselines") is None:
        return [params]
    given = params["baselines"]
    sets = per_input(given, spec, "baselines", lambda v: False) if given is not None else None
    if sets is None:
        raise ValueError("n_baselines draws from a background set: give baselines as an array of B rows "
                         "shaped (B, *row) (or a dict of them by input name)")
    count = None
    for x, v in sets.items():
        row = np.shape(feeds[x])[1:]
        if np.ndim(v) != 1 + len(row) or np.shape(v)[1:] != row or np.shape(v)[0] < 1:
            raise ValueError(f"with n_baselines, baselines for input {x!r} must be a background set shaped "
                             f"(B, *{row}) with B >= 1, got shape {np.shape(v)}")
        if count is not None and np.shape(v)[0] != count:
            raise ValueError("with n_baselines, every input's background set needs the same number of rows")
        count = np.shape(v)[0]
    picked = draw_rows(count, params["n_baselines"], params["seed"])
    return [{**params, "baselines": {x: np.asarray(v)[i:i + 1] for x, v in sets.items()}} for i in picked]


class BufferPool:
    """Batch buffers kept between calls: a fresh buffer costs a page fault per 4 KiB on its first fill,
    as much as the fill itself.  A buffer is taken for one call and given back after it, so concurrent
    calls never share one; at most ``keep`` buffers (the largest) are retained."""

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, shape: tuple, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        with self._lock:
            fits = [i for i, b in enumerate(self._free) if b.nbytes >= nbytes]
            raw = self._free.pop(min(fits, key=lambda i: self._free[i].nbytes)) if fits else None
        if raw is None:
            raw = np.empty(max(nbytes, 1), dtype=np.uint8)
        return raw[:nbytes].view(dtype).reshape(shape)

    def give(self, arrays) -> None:
        """Return arrays from :meth:`take` (their memory, whatever view of it is given)."""
        with self._lock:
            self._free.extend(_root(a) for a in arrays)
            self._free.sort(key=lambda b: b.nbytes)
            del self._free[:max(0, len(self._free) - self.keep)]


def _root(a: np.ndarray) -> np.ndarray:
    while a.base is not None and isinstance(a.base, np.ndarray):
        a = a.base
    return a


def chunking(n_rows: int, units: int, per_row: int, budget: int, cap: int | None,
             batch_size: int | None = None) -> tuple[int, int]:
    """``(rows per block, units per chunk)``: one run holds at most ``budget // per_row`` rows (and
    :data:`MAX_ROWS_PER_RUN`, and the model's ``batch_size``), and at most ``cap`` units (Captum's
    ``perturbations_per_eval``)."""
    fit = int(max(1, min(budget // max(1, per_row), MAX_ROWS_PER_RUN, batch_size or MAX_ROWS_PER_RUN)))
    block = min(n_rows, fit)
    per_chunk = max(1, min(units, fit // block))
    if cap is not None:
        per_chunk = min(per_chunk, cap)
    return block, per_chunk


@dataclass
class Schedule:
    """How one call's perturbations are cut into session runs: blocks of input rows, and per block the
    plan's ``evaluations`` runs of whole rows, then chunks of units (:func:`drive` walks exactly these).

    With ``lead`` > 0 the evaluations are no runs of their own but the first ``lead`` *slots* of the block's
    first chunk (a slot is ``n`` rows, as a unit): chunks then cut the ``lead + units`` slots."""

    n_rows: int
    units: int
    evaluations: int
    block: int
    per_chunk: int
    lead: int = 0

    @classmethod
    def of(cls, runner, feeds: dict, n_rows: int, plan: Plan, cap: int | None) -> "Schedule":
        per_row, budget, batch_size = runner.row_cost(feeds), runner.memory_budget, runner.spec.batch_size
        if cap is None and plan.units and plan.evaluations:
            lead = plan.evaluations
            block, per_chunk = chunking(n_rows, plan.units + lead, per_row, budget, None, batch_size)
            if per_chunk > lead:      # room for the evaluations and at least one unit in the first chunk
                return cls(n_rows, plan.units, plan.evaluations, block, per_chunk, lead)
        block, per_chunk = chunking(n_rows, plan.units, per_row, budget, cap, batch_size)
        return cls(n_rows, plan.units, plan.evaluations, block, per_chunk)

    def blocks(self):
        """``(r0, r1)`` of each block of input rows."""
        for r0 in range(0, self.n_rows, self.block):
            yield r0, min(self.n_rows, r0 + self.block)

    def chunks(self):
        """``(s0, s1)`` of each chunk of slots (the same for every block): units ``[s0 - lead, s1 - lead)``,
        and the evaluations in the slots below ``lead``."""
        slots = self.units + self.lead
        for s0 in range(0, slots, self.per_chunk):
            yield s0, min(slots, s0 + self.per_chunk)

    def run_rows(self) -> list[int]:
        """The rows of every session run, in order."""
        out = []
        alone = 0 if self.lead else self.evaluations
        for r0, r1 in self.blocks():
            out += [r1 - r0] * alone + [(s1 - s0) * (r1 - r0) for s0, s1 in self.chunks()]
        return out


def progress_bar(total_rows: int, progress: bool | None):
    """A tqdm bar over the rows of a call on stderr, shown only once the call has run for
    :data:`PROGRESS_DELAY` seconds; ``progress=None`` shows it only when stderr is a terminal."""
    show = bool(progress) if progress is not None else sys.stderr.isatty()
    if not show:
        return _NoBar()     # a disabled tqdm still costs a tenth of a millisecond to make
    return tqdm(total=total_rows, unit="row", unit_scale=True, delay=PROGRESS_DELAY, leave=False,
                desc="perturbations")


class _NoBar:
    """The progress bar of a call that shows none."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int = 1) -> None:
        pass


def drive(runner, feeds: dict, tw: np.ndarray, plan: Plan, cap: int | None, pool: BufferPool | None = None,
          progress: bool | None = None) -> None:
    """Blocks of rows x chunks of units (a :class:`Schedule`): fill, run, fold, under a
    :func:`progress_bar`.  Runs go through ``runner.run`` (one reused session)."""
    pool = pool or BufferPool(keep=0)
    schedule = Schedule.of(runner, feeds, tw.shape[0], plan, cap)
    with progress_bar(sum(schedule.run_rows()), progress) as bar:
        _walk(runner, feeds, tw, plan, schedule, pool, _counted(runner.run, bar))


def _counted(run, bar):
    """``run`` (the Explainer's :meth:`run_session`) that moves the progress bar by the rows of each run."""
    def counted(feeds, outputs):
        result = run(feeds, outputs)
        bar.update(len(feeds[TARGET_WEIGHTS]))
        return result
    return counted


def _walk(runner, feeds: dict, tw: np.ndarray, plan: Plan, schedule: Schedule, pool: BufferPool, run) -> None:
    """The runs of ``schedule``: per block, the plan's own evaluations, then fill, ``run``, fold per chunk.

    A block's batches and its output buffer are taken from ``pool`` once, and the feeds of each chunk
    shape (a full chunk, a shorter last one) are made once as views of them: the session writes each
    chunk's outputs into that buffer (IO binding), the plan folds them from there, and no chunk
    allocates or copies anything in Python.  With ``schedule.lead``, the evaluations' rows head the first
    chunk (written by :func:`_fill_evaluations`) and their outputs are copied out before the fold."""
    spec = runner.spec
    shared = {u: feeds[u] for u in spec.unbatched}   # fed as they are to every run
    per_chunk, lead = schedule.per_chunk, schedule.lead
    out_dtype = runner.session.output_dtypes.get(TARGET_OUTPUT)
    for r0, r1 in schedule.blocks():
        n = r1 - r0
        tw_rows = tw[r0:r1]
        fixed = {p: feeds[p][r0:r1] for p in spec.passthrough}
        if lead:
            plan.start(r0, r1)
        else:
            originals = {a.name: feeds[a.name][r0:r1] for a in plan.inputs}

            def evaluate(values: dict) -> np.ndarray:
                one = {**originals, **fixed, **shared, **values, TARGET_WEIGHTS: tw_rows}
                return run(one, [TARGET_OUTPUT])[TARGET_OUTPUT].reshape(-1)

            plan.begin(r0, r1, evaluate)
        if plan.units:
            most = per_chunk * n
            batches = {a.name: pool.take((most, a.size), a.dtype) for a in plan.inputs}
            outputs = pool.take((most,), out_dtype) if out_dtype is not None else None
            tiled = {p: np.tile(v, (per_chunk,) + (1,) * (v.ndim - 1)) for p, v in fixed.items()}
            tiled[TARGET_WEIGHTS] = np.tile(tw_rows, (per_chunk,) + (1,) * (tw.ndim - 1))
            shapes = {}
            for s0, s1 in schedule.chunks():
                rows = (s1 - s0) * n
                chunk = shapes.get(rows)
                if chunk is None:
                    chunk = shapes[rows] = _chunk_feeds(plan, batches, tiled, shared, outputs, rows)
                views, one, wanted = chunk
                u0, u1 = max(0, s0 - lead), s1 - lead
                if s0 < lead:      # the first chunk: the evaluations' rows, then units from 0
                    head = lead * n
                    _fill_evaluations(plan, r0, r1, views)
                    plan.fill(u0, u1, {k: v[head:] for k, v in views.items()})
                    f = run(one, wanted)[TARGET_OUTPUT].reshape(-1)
                    plan.evaluated([f[k * n:(k + 1) * n].copy() for k in range(lead)])
                    plan.fold(u0, u1, f[head:])
                    continue
                plan.fill(u0, u1, views)
                plan.fold(u0, u1, run(one, wanted)[TARGET_OUTPUT].reshape(-1))
            pool.give(list(batches.values()) + ([] if outputs is None else [outputs]))
        plan.end()


def _fill_evaluations(plan: Plan, r0: int, r1: int, views: dict) -> None:
    """Slot ``k`` (rows ``k * n`` to ``(k + 1) * n``) of the batch views: evaluation ``k`` of the block."""
    n = r1 - r0
    for k, values in enumerate(plan.evaluation_values(r0, r1)):
        for a in plan.inputs:
            views[a.name][k * n:(k + 1) * n] = values.get(a.name, a.x[r0:r1])


def _chunk_feeds(plan: Plan, batches: dict, tiled: dict, shared: dict, outputs, rows: int) -> tuple:
    """``(batch views the plan fills, the run's feeds, the outputs asked for)`` of a chunk of ``rows`` rows,
    all views of the block's buffers; the outputs are written into ``outputs[:rows]`` when given."""
    views = {k: v[:rows] for k, v in batches.items()}
    one = {a.name: views[a.name].reshape((rows,) + a.row) for a in plan.inputs}
    one.update({k: v[:rows] for k, v in tiled.items()}, **shared)
    wanted = {TARGET_OUTPUT: outputs[:rows]} if outputs is not None else [TARGET_OUTPUT]
    return views, one, wanted


def broadcast_rows(a: Attributed, base: np.ndarray, n: int) -> np.ndarray:
    """The baselines of ``n`` rows, shaped like the input."""
    return np.ascontiguousarray(np.broadcast_to(base, (n, a.size))).reshape((n,) + a.row)
