"""What every method shares: the graph's interface and the row blocks of a run.

An explanation graph runs the model once on an *expanded batch*: a stack of
blocks of ``N`` rows each (integration steps, noisy copies, the inputs
themselves, the baselines).  The model's inputs are renamed inside the graph so
that a method's prelude can build those blocks from the graph inputs of the
same names; the model's outputs are renamed so that the graph can return the
rows that belong to the unmodified inputs under the original names.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from ..graph import GraphBuilder, np_dtype
from ..runtime import Cost
from ..spec import Point, Spec  # noqa: F401  (the names methods build from)
from .params import Param, check_values, defaults_of

TARGET_WEIGHTS = "target_weights"


class Method:
    """A method: how its graph is built and what it is fed per call.

    The contract with the runtime: a method declares its explanation graph (:meth:`build`, from a
    :class:`Spec`), the parameter feeds of a call (:meth:`parts`, cut per chunk of rows by
    :meth:`rows_split`) and its reduction (:meth:`run`: the runs' outputs -> attributions and delta).
    :meth:`run` and :meth:`estimate` are given a :class:`onnxplain.runner.Runner`, which runs feeds
    through the session in budgeted chunks; a method never reaches the Explainer that holds it.
    """

    name: str = ""
    aliases: tuple[str, ...] = ()
    has_delta: bool = False
    forward_only: bool = False
    #: whether layers and token embeddings can be attributed (not only float inputs)
    supports_layers: bool = True
    #: modified rules overriding the standard table (None: plain gradients)
    overrides: dict | None = None
    #: bytes of intermediate tensors per row, in units of the forward pass's tensors (see runtime.RowCost)
    row_cost_factor: float = 3.0
    #: the parameters ``explain`` accepts, declared (see :mod:`onnxplain.methods.params`)
    parameters: tuple[Param, ...] = ()
    #: parameters ``explain`` accepts, with their defaults (derived from :attr:`parameters`)
    defaults: dict = {}
    #: per-row parameter feeds (by name prefix) and the axis that indexes rows
    row_axes: dict = {}
    #: the method in Captum and in DeepExplain, and what else the README's method table says of it (Markdown;
    #: each method class declares its own counterparts, "–" for none)
    captum: str = "–"
    deepexplain: str = "–"
    table_note: str = ""
    #: whether the values are Shapley-like (split the output around an expected value: :mod:`onnxplain.shap`)
    shapley_like: bool = False
    #: ``default_layer(model, output, inputs) -> tensor``: the layer a method explains when none is given (None:
    #: the inputs); ``layer_guides``: the layer weighs the inputs' attributions rather than being attributed
    default_layer = None
    layer_guides: bool = False
    #: whether the method attributes a layer only (``layer=`` required)
    needs_layer: bool = False
    #: why a noise tunnel cannot run over the method (None: it can)
    noise_tunnel_refusal: str | None = None
    #: whether the parts of a call are a weighted mixture (see :meth:`part_weights`) rather than a sum
    mixes_parts: bool = False

    def __init_subclass__(cls, **kwargs):
        """A class that declares :attr:`parameters` gets its ``defaults`` from them (never both by hand)."""
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("parameters")
        if isinstance(declared, tuple):
            if "defaults" in cls.__dict__:
                raise TypeError(f"{cls.__name__} declares both parameters and defaults; its defaults are "
                                f"those of its parameters")
            cls.defaults = defaults_of(declared)

    def build(self, b: GraphBuilder, spec: Spec) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def reference_rows(self, b: GraphBuilder, total: str, block: str) -> str | None:
        """How many rows at the end of the expanded batch are references (baselines), not inputs.

        ``total`` is the expanded batch's row count and ``block`` the rows fed per
        copy of the inputs (both 1-D int64); the rows before the references are
        copies of the fed rows.  None when the method does not say (a noise tunnel
        then cannot add noise inside the graph, at a token embedding).
        """
        return None

    def check_params(self, params: dict) -> dict:
        """Validate call parameters (before anything runs); return them normalised."""
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "none"
            raise TypeError(f"method {self.name!r} got unexpected parameter(s) {unknown}; it accepts: {valid}")
        check_values(self.parameters, params, self.name)   # each value of its declared kind
        return {**self.defaults, **params}

    def parts(self, params: dict, spec: Spec, inputs: dict, bytes_per_row: int, budget: int) -> list[dict]:
        """Graph parameter feeds for one call; several when the call is split into additive parts."""
        return [{}]

    def expansion(self, part: dict) -> int:
        """Rows of the expanded batch per input row for this part."""
        return 1

    def block_rows(self, part: dict) -> int:
        """Rows per input row of the largest block one forward pass sees (with ``batch_size``, every block
        of the expanded batch runs through its own copy of the forward pass: see :func:`forward_per_block`)."""
        return self.expansion(part)

    def rows_per_run(self, part: dict, batch_size: int | None) -> int | None:
        """Input rows one run may take so that the model never sees more than ``batch_size`` rows."""
        if batch_size is None:
            return None
        per_row = self.block_rows(part)
        if per_row > batch_size:
            raise ValueError(f"method {self.name!r} runs {per_row} rows of each input row through one forward "
                             f"pass in this call, more than batch_size={batch_size}; {self.limit_hint()}")
        return batch_size // per_row

    def limit_hint(self) -> str:
        """How to fit a call under ``batch_size`` (for the error above)."""
        return "raise batch_size"

    def run(self, runner, feeds: dict, tw, params: dict, delta: bool = True):
        """Attributions (by output name) and the convergence delta (or None) for one call, run by ``runner``.

        The call is split into additive parts (e.g. chunks of integration steps);
        each part runs over all rows in memory-budgeted chunks.  ``delta=False``: the caller does not want
        the delta, so the parts skip the rows only it needs (:meth:`without_delta`) and None is returned.
        """
        names = [runner.spec.attribution_name(x) for x in runner.spec.wrt]
        delta = delta and self.has_delta
        wanted = names + (["delta"] if delta else [])
        total, gap = None, None
        row_bytes = runner.row_cost(feeds)
        parts = self.call_parts(params, runner, feeds, row_bytes, delta)
        for part, weight in zip(parts, self.part_weights(parts)):
            out = runner.run_rows(feeds, tw, part, wanted, row_bytes)
            attrs = {k: out[k] if weight == 1 else (out[k] * weight).astype(out[k].dtype) for k in names}
            if delta and (gap is None or self.mixes_parts):
                # f(x) - f(b) of each row: from the first of additive parts, weighted over a mixture's
                part_gap = (sum(row_sums(out[k]) for k in names) - out["delta"]) * weight
                gap = part_gap if gap is None else gap + part_gap
            total = attrs if total is None else {k: total[k] + attrs[k] for k in names}
        return total, (sum(row_sums(total[k]) for k in names) - gap if delta else None)

    def call_parts(self, params: dict, runner, feeds: dict, row_bytes: int, delta: bool = True) -> list[dict]:
        """The parts of one call (:meth:`parts` within the runner's budget), without the delta's rows when
        ``delta`` is False."""
        parts = self.parts(params, runner.spec, feeds, row_bytes, runner.memory_budget)
        return parts if delta else [self.without_delta(part) for part in parts]

    def without_delta(self, part: dict) -> dict:
        """``part`` set to skip the work only the convergence delta needs (its ``delta`` output is then not
        the delta); the part itself for a method whose delta costs nothing extra."""
        return part

    def part_weights(self, parts: list[dict]) -> list[float]:
        """The weight of each part's attributions in the result: 1 for additive parts (chunks of integration
        steps); a mixture's (:attr:`mixes_parts`: chunks of a baseline distribution) sum to 1."""
        return [1.0] * len(parts)

    def estimate(self, runner, feeds: dict, tw, params: dict, delta: bool = True) -> Cost:
        """The rows and session runs :meth:`run` will take: the same parts, cut into the same chunks."""
        n = int(np.shape(tw)[0])
        row_bytes = runner.row_cost(feeds)
        return Cost.of((stop - start) * self.expansion(part)
                       for part in self.call_parts(params, runner, feeds, row_bytes, delta)
                       for start, stop in runner.row_chunks(part, n, row_bytes))

    def rows_split(self, part: dict, start: int, stop: int) -> dict:
        """The feeds of ``part`` for input rows ``[start, stop)``."""
        out = {}
        for key, value in part.items():
            if isinstance(value, RowDraws):
                out[key] = value.rows(start, stop)
                continue
            axis = next((a for p, a in self.row_axes.items() if key == p or key.startswith(p + "_")), None)
            if axis is not None and np.ndim(value) > axis and np.shape(value)[axis] > 1:
                value = np.take(value, np.arange(start, stop), axis=axis)
            out[key] = value
        return out


class RowDraws:
    """Standard-normal draws shaped ``(samples, rows, *row)``, made only for the rows a run asks for.

    A call's noise would otherwise take ``samples x rows`` rows of memory at once, whatever the budget.
    Each row's draws come from a generator seeded by ``(entropy, row)``, so the values do not depend on
    how the rows are chunked.
    """

    def __init__(self, samples: int, rows: int, row: tuple, dtype, entropy: int):
        self.shape = (int(samples), int(rows)) + tuple(row)
        self.dtype = np.dtype(dtype)
        self.entropy = int(entropy)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """The draws of rows ``[start, stop)``: ``(samples, stop - start, *row)``."""
        out = np.empty((self.shape[0], stop - start) + self.shape[2:], dtype=self.dtype)
        for i, r in enumerate(range(start, stop)):
            out[:, i] = self._row(r, self.shape[0])
        return out

    def sample(self, s: int) -> np.ndarray:
        """The draws of sample ``s`` for every row: ``(rows, *row)``, the same values as ``rows(...)[s]``."""
        out = np.empty(self.shape[1:], dtype=self.dtype)
        for r in range(self.shape[1]):
            out[r] = self._row(r, s + 1)[s]   # a row's draws are sample-major: its first s + 1 samples suffice
        return out

    def _row(self, r: int, samples: int) -> np.ndarray:
        """The first ``samples`` draws of row ``r``: ``(samples, *row)``."""
        kind = self.dtype if self.dtype in (np.float32, np.float64) else np.dtype(np.float32)
        rng = np.random.default_rng([self.entropy, r])
        return rng.standard_normal((samples,) + self.shape[2:], dtype=kind)


def baseline_feeds(spec: Spec, baselines, inputs: dict) -> dict:
    """Per-input baseline arrays for the carriers, of the input's rank, broadcasting against it.

    Forms (Captum's): ``None`` (zeros), a scalar, an array shaped like one row of
    the input, an array of the input's rank whose dimensions are each 1 or the
    input's (the input's shape, ``(1, *row)``, ``(N, 1)`` for ``(N, F)`` inputs,
    ``(1, F)``...), one of these per input (tuple/list, in the order of the
    attributed inputs), or a dict by input name (missing names get zeros).  Integer
    inputs take integers of their range (a padding id, a byte value), booleans booleans.
    """
    names = spec.carriers
    if isinstance(baselines, dict):
        unknown = sorted(set(baselines) - set(names))
        if unknown:
            raise ValueError(f"baselines given for {unknown}, which are not attributed inputs {names}")
        given = {x: baselines.get(x) for x in names}
    elif isinstance(baselines, (tuple, list)) and len(names) > 1:
        if len(baselines) != len(names):
            raise ValueError(f"{len(baselines)} baselines given for {len(names)} attributed inputs {names}")
        given = dict(zip(names, baselines))
    elif len(names) > 1 and baselines is not None and np.ndim(baselines) > 0:
        raise ValueError(f"with several attributed inputs {names}, give baselines as a scalar, a tuple "
                         f"(one per input) or a dict by input name")
    else:
        given = {x: baselines for x in names}
    feeds = {}
    for x, value in given.items():
        xv = np.asarray(inputs[x])
        v = exact_cast(np.asarray(0 if value is None else value), xv.dtype, f"baselines for input {x!r}")
        if v.ndim == 0:
            v = v.reshape((1,) * xv.ndim)
        elif v.shape == xv.shape[1:]:
            v = v[None]
        elif not (v.ndim == xv.ndim and all(b in (1, d) for b, d in zip(v.shape, xv.shape))):
            raise ValueError(f"baselines for input {x!r} must be a scalar, shaped like one row of the input "
                             f"{xv.shape[1:]}, or of the input's rank with each dimension 1 or the input's "
                             f"{xv.shape} (e.g. {(1,) + xv.shape[1:]} or {xv.shape[:1] + (1,) * (xv.ndim - 1)}), "
                             f"got shape {v.shape}")
        feeds[spec.param("baselines", x)] = np.ascontiguousarray(v)
    return feeds


def called_baselines(params: dict, inputs) -> dict:
    """``params`` with callable ``baselines`` replaced by what they return, as Captum takes them: a function of
    no arguments is called as it is, any other with the call's inputs (an array, or a dict by input name, as
    given to ``explain``).  What it returns takes every form :func:`baseline_feeds` takes."""
    given = params.get("baselines")
    if not callable(given):
        return params
    try:
        takes_inputs = len(inspect.signature(given).parameters) > 0
    except (TypeError, ValueError):   # a builtin without a signature: give it the inputs
        takes_inputs = True
    return {**params, "baselines": given(inputs) if takes_inputs else given()}


def draw_rows(count: int, k: int | None, seed) -> np.ndarray:
    """Indices of ``k`` of ``count`` rows drawn without replacement, in increasing order (seeded: the same int
    ``seed`` draws the same rows); all of them when ``k`` is None or at least ``count``."""
    if k is None or k >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=k, replace=False))


def check_n_baselines(params: dict) -> None:
    """``n_baselines`` is None or a positive int."""
    k = params["n_baselines"]
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise ValueError(f"n_baselines must be a positive int (baselines drawn from the set given) or None "
                         f"(all of them), got {k!r}")


def exact_cast(v: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    """``v`` as ``dtype``; for an integer or boolean ``dtype``, only values it holds exactly.

    Token and byte inputs take ids (a padding id, byte 256 of an int32 byte
    model); a float there, or an id outside the dtype's range, is an error
    rather than a silent rounding or wrap-around.
    """
    if dtype.kind in "iu":
        if v.dtype.kind not in "iub":
            raise ValueError(f"{what} must be integer ids (e.g. a padding id) like the {dtype} input, "
                             f"got dtype {v.dtype}")
        info = np.iinfo(dtype)
        if v.size and (v.min() < info.min or v.max() > info.max):
            raise ValueError(f"{what} must lie in [{info.min}, {info.max}] (the range of the {dtype} input), "
                             f"got values in [{v.min()}, {v.max()}]")
    elif dtype.kind == "b" and v.dtype.kind != "b" and not (v.dtype.kind in "iu" and np.isin(v, (0, 1)).all()):
        raise ValueError(f"{what} must be booleans (or 0 and 1) like the bool input, got {v.dtype}")
    return v.astype(dtype, copy=False)


# ---------------------------------------------------------------------- graph pieces
def open_forward(b: GraphBuilder, spec: Spec) -> tuple[dict, dict]:
    """Declare the model's inputs and rename the forward graph's inputs and outputs.

    Returns ``(inside, outputs)``: the internal names the forward pass reads its
    inputs from (to be produced by the method's prelude), and the internal
    names of the model's outputs.
    """
    inside = {}
    for vi in spec.model.graph.input:
        if vi.name in {i.name for i in spec.model.graph.initializer}:
            continue
        b.inputs.append(vi)
        if vi.name not in spec.unbatched:   # unbatched inputs are read as they are by every row
            inside[vi.name] = b.rename(vi.name, b.fresh(f"{vi.name}__rows"))
    outputs = {}
    for vi in spec.model.graph.output:
        outputs[vi.name] = b.rename(vi.name, b.fresh(f"{vi.name}__rows"))
    return inside, outputs


@dataclass
class ForwardCopies:
    """The forward pass run once per block of the expanded batch (see :func:`forward_per_block`).

    ``names[i]`` maps a tensor of the model (and each batched input's internal
    name) to its name in copy ``i``.
    """

    names: list[dict]

    def pairs(self, first: int, second: int) -> dict:
        """Each tensor of copy ``first`` -> the same tensor in copy ``second``, and back."""
        a, b = self.names[first], self.names[second]
        return {**{a[t]: b[t] for t in a}, **{b[t]: a[t] for t in b}}


def forward_per_block(b: GraphBuilder, spec: Spec, inside: dict, outputs: dict, blocks: list[str],
                      always: bool = False):
    """With ``spec.batch_size``: run the model's forward pass once per block of the expanded batch.

    ``blocks`` are the row counts (1-D int64) of the consecutive blocks a
    method stacks (integration steps, inputs, baselines...).  Each block's rows
    of every batched input go through their own copy of the forward pass, and
    the model's outputs are the copies' outputs stacked again, so the rest of
    the graph (and its backward pass) reads the expanded batch as before while
    the model never sees more rows than one block: the method's chunking keeps
    every block within ``batch_size``.  Without ``batch_size`` nothing changes
    and None is returned, unless ``always``: a method whose blocks need
    backward passes of their own (DeepLIFT walks back through its inputs' copy
    only) asks for the copies whatever the batch size.
    """
    if spec.batch_size is None and not always:
        return None
    internal = [p.tensor for p in spec.points if not p.is_input]
    if internal:
        raise ValueError(f"with batch_size, the model's forward pass is copied per block of rows, so the "
                         f"internal tensors {internal} (a layer or a token embedding) have no single value to "
                         f"attribute; attribute the model's inputs, or drop batch_size")
    count = len(spec.model.graph.node)
    forward, rest = b.nodes[:count], b.nodes[count:]
    produced = [o for node in forward for o in node.output if o]
    start, names, copies = b.ints([0]), [], []
    for i, rows_in_block in enumerate(blocks):
        stop = b.add(start, rows_in_block)
        mapping = {t: b.fresh(f"{t}__block{i}") for t in produced}
        for x, t in inside.items():
            mapping[t] = b.op("Slice", t, start, stop, b.ints([0]), hint=f"{x}__block{i}")
            b.set_type(mapping[t], b.elem_type(x), b.shape(x))
        for t in produced:
            if b.elem_type(t) is not None:   # an unknown type stays unknown (never guessed as float)
                b.set_type(mapping[t], b.elem_type(t), b.shape(t))
        copies.extend(copy_nodes(forward, mapping, f"__block{i}"))
        names.append(mapping)
        start = stop
    b.nodes[:] = rest + b.nodes[len(forward) + len(rest):] + copies   # the walk reads nodes in this order
    for t in outputs.values():
        b.op("Concat", *[m[t] for m in names], axis=0, outputs=[t])
    return ForwardCopies(names)


def forward_copy(b: GraphBuilder, spec: Spec, inside: dict, feeds: dict, suffix: str) -> dict:
    """Another copy of the model's forward pass, reading ``feeds[x]`` for the batched input ``x``; returns
    each tensor of the forward pass -> its name in the copy.

    The copy is outside the backward pass (nothing seeds it), so rows that only need the model's outputs (a
    convergence delta's ``f(x)`` and ``f(baseline)``) cost a forward pass and no backward.  Call it before
    :func:`forward_per_block`, which moves the forward nodes.
    """
    forward = b.nodes[:len(spec.model.graph.node)]
    produced = [o for node in forward for o in node.output if o]
    mapping = {t: b.fresh(f"{t}{suffix}") for t in produced}
    for t in produced:
        if b.elem_type(t) is not None:
            b.set_type(mapping[t], b.elem_type(t), b.shape(t))
    mapping.update({inside[x]: v for x, v in feeds.items()})
    b.nodes.extend(copy_nodes(forward, mapping, suffix))
    return mapping


def copy_nodes(nodes, mapping: dict, suffix: str) -> list:
    """Copies of ``nodes`` reading and writing ``mapping[name]`` instead of ``name`` (subgraphs too)."""
    out = []
    for node in nodes:
        c = onnx.NodeProto()
        c.CopyFrom(node)
        if c.name:
            c.name += suffix
        _rename_all(c, mapping)
        out.append(c)
    return out


def _rename_all(node, mapping: dict) -> None:
    for i, name in enumerate(node.input):
        node.input[i] = mapping.get(name, name)
    for i, name in enumerate(node.output):
        node.output[i] = mapping.get(name, name)
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            for inner in g.node:
                _rename_all(inner, mapping)


def declare_target_weights(b: GraphBuilder, spec: Spec) -> str:
    et = b.elem_type(spec.output) or TensorProto.FLOAT
    return b.add_input(TARGET_WEIGHTS, et, b.shape(spec.output))


def declare_baselines(b: GraphBuilder, spec: Spec, carrier: str, default) -> str:
    """The ``baselines`` input of one carrier: rank-matched, broadcast over rows, default ``default`` or 0."""
    rank = b.rank(carrier)
    value = np.full((1,) * rank, default or 0, dtype=np_dtype(b.elem_type(carrier)))
    return declare_param(b, spec.param("baselines", carrier), b.elem_type(carrier), rank, value)


def emit_attribution(b: GraphBuilder, spec: Spec, point: Point, attr: str) -> str:
    """Name ``attr`` as the point's attribution output; return its per-row sum (for deltas)."""
    name = spec.attribution_name(point.key)
    b.op("Identity", attr, outputs=[name])
    b.add_output(name, b.elem_type(point.tensor), b.shape(point.tensor))
    return per_row_sum(b, attr, b.rank(point.tensor))


def declare_param(b: GraphBuilder, name: str, elem_type: int, rank: int, default) -> str:
    """A method parameter: a graph input with a default initializer of the same name."""
    shape = [f"{name}_d{i}" for i in range(rank)]
    return b.add_input(name, elem_type, shape, default=None if default is None else np.asarray(default))


def batch_rows(b: GraphBuilder, x: str) -> str:
    """``[N]``: the number of rows of ``x`` as a 1-D int64 tensor."""
    return b.op("Slice", b.shape_of(x), b.ints([0]), b.ints([1]))


def row_shape(b: GraphBuilder, x: str) -> str:
    """The shape of one row of ``x`` (1-D int64)."""
    return b.op("Slice", b.shape_of(x), b.ints([1]), b.ints([np.iinfo(np.int64).max]))


def tile_rows(b: GraphBuilder, t: str, times: str, rank: int) -> str:
    """Repeat the rows block of ``t`` ``times`` (1-D int64 [K]) times along axis 0."""
    reps = b.op("Concat", times, b.ints([1] * (rank - 1)), axis=0) if rank > 1 else times
    return b.op("Tile", t, reps)


def rows(b: GraphBuilder, t: str, start: str, count: str) -> str:
    """Rows ``[start, start + count)`` of ``t`` (start and count 1-D int64)."""
    return b.op("Slice", t, start, b.add(start, count), b.ints([0]))


def split_steps(b: GraphBuilder, g: str, steps: str, x: str) -> str:
    """Reshape the first ``S*N`` rows of ``g`` into ``(S, N, *row)``."""
    n = batch_rows(b, x)
    head = rows(b, g, b.ints([0]), b.mul(steps, n))
    return b.reshape_exact(head, b.op("Concat", steps, b.shape_of(x), axis=0))


def flatten_steps(b: GraphBuilder, t: str, x: str) -> str:
    """``(S, N, *row)`` -> ``(S*N, *row)``."""
    dims = b.shape_of(t)
    steps_rows = b.mul(b.op("Slice", dims, b.ints([0]), b.ints([1])), b.op("Slice", dims, b.ints([1]), b.ints([2])))
    return b.reshape_exact(t, b.op("Concat", steps_rows, row_shape(b, x), axis=0))


def per_row_sum(b: GraphBuilder, t: str, rank: int) -> str:
    """Sum over every axis but the first: shape ``(N,)``."""
    if rank == 1:
        return t
    return b.reduce_sum(t, list(range(1, rank)), keepdims=0)


def redirect_layer(b: GraphBuilder, layer: str) -> str:
    """Make every node that reads ``layer`` read a new tensor instead; return the new name.

    The method then defines the new tensor from ``layer`` (e.g. integration steps
    between the layer's values on the inputs and on the baselines).
    """
    return b.redirect_reads(layer, b.fresh(f"{layer}__attributed"))


def emit_outputs(b: GraphBuilder, spec: Spec, outputs: dict, start: str | None, n: str | None) -> dict:
    """The model's own outputs under their names: rows ``[start, start+n)`` of the expanded run.

    Outputs without a batch dimension (a 0-d scalar such as a mean over the
    batch) are left out: the expanded run computes them over rows that are not
    the inputs, so the graph cannot return their value for the inputs.
    """
    picked = {}
    for name, internal in outputs.items():
        if b.rank(internal) == 0:
            continue
        value = internal if start is None else rows(b, internal, start, n)
        b.op("Identity", value, outputs=[name])
        b.add_output(name, b.elem_type(internal), b.shape(internal))
        picked[name] = internal if start is None else value
    return picked


def ex_float(spec: Spec) -> np.dtype:
    """The float dtype of the explained output (for scalar parameter feeds)."""
    for vi in list(spec.model.graph.output) + list(spec.model.graph.value_info):
        if vi.name == spec.output:
            return np_dtype(vi.type.tensor_type.elem_type)
    return np.dtype(np.float32)


def row_sums(a: np.ndarray) -> np.ndarray:
    """``(N,)`` float64: the sum of each row of ``a`` (all axes but the first)."""
    return a.reshape(a.shape[0], -1).sum(axis=1, dtype=np.float64)
