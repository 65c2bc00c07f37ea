"""DeepLIFT (Rescale) and DeepLiftShap, the reference pass inside the same run.

The expanded batch is ``[inputs; references]``: ``K`` copies of the inputs
stacked on ``K*N`` reference rows (``K = 1`` for DeepLIFT, whose baselines are
per row or shared; ``K = B`` for DeepLiftShap, whose ``B`` baselines are a
distribution shared by every row).  Each row meets its reference row through
:class:`onnxplain.rules.Partner`, so the rules of :mod:`onnxplain.rules.rescale`
see both values of every tensor; the references are seeded with zeros.  The
attribution of a (row, baseline) pair is ``(x - b) * multiplier`` (Captum's
"global" attribution), or the multiplier alone with ``multiply_by_inputs=False``
(Captum's "local" one, a feed: no rebuild); DeepLiftShap averages it over the
baselines.  ``delta`` is always the completeness residual of ``(x - b) * multiplier``.

The graph also returns the multipliers themselves, per (row, baseline) pair: ``multipliers`` (or
``multipliers_<input>``), shaped ``(N, K, *row)``.  They are what Captum's ``custom_attribution_func``
reads: given one, :meth:`DeepLift.run` applies it to them after the run (see :func:`apply_custom`).
"""
from __future__ import annotations

import inspect
import json

import numpy as np
from onnx import TensorProto

from ..backward import backward
from ..errors import UnsupportedOperatorError
from ..graph import subgraphs
from ..rules import COMPOUND, PairedPartner, Partner
from ..rules.deeplift import RESCALE
from .base import (Method, Spec, baseline_feeds, batch_rows, check_n_baselines, declare_baselines, declare_param,
                   declare_target_weights, draw_rows, emit_attribution, emit_outputs, ex_float, flatten_steps,
                   forward_per_block, open_forward, per_row_sum, row_sums, rows, split_steps, tile_rows)
from .params import BASELINES, CUSTOM_ATTRIBUTION_FUNC, DRAW_SEED, MULTIPLY_BY_INPUTS, N_BASELINES, Param

DEFAULT_EPS = 1e-10   # Captum's threshold below which the Rescale rule falls back to the gradient


class DeepLift(Method):
    name = "deeplift"
    captum = "`DeepLift` (Rescale; same `multiply_by_inputs`)"
    deepexplain = "`deeplift`"
    aliases = ("rescale", "deeplift_rescale")
    has_delta = True
    parameters = (BASELINES,
                  Param("eps", DEFAULT_EPS, "float", "the Rescale rule's threshold: where |z - z_ref| is below it, "
                        "the multiplier is the gradient"),
                  MULTIPLY_BY_INPUTS.but(doc="multiply the multipliers by x - baseline (False: the multipliers "
                                             "alone)"),
                  CUSTOM_ATTRIBUTION_FUNC)
    row_axes = {"baselines": 0}
    overrides = RESCALE
    #: whether the graph also reports every node's relevance in and out (:func:`emit_audit`)
    audited = False

    def build(self, b, spec: Spec) -> None:
        if self.defaults["custom_attribution_func"] is not None:
            raise ValueError(f"custom_attribution_func is a Python callable, applied to the multipliers after a run; "
                             f"a standalone graph cannot hold it. Convert {self.name!r} without it: the graph "
                             f"returns the multipliers (output {multipliers_name(spec, spec.wrt[0])!r}, shaped "
                             f"(N, K, *row)) for a client to apply its own function to")
        inside, outputs = open_forward(b, spec)
        tw = declare_target_weights(b, spec)
        eps = declare_param(b, "eps", b.elem_type(spec.output) or TensorProto.FLOAT, 0,
                            np.asarray(self.defaults["eps"]))
        global_form = declare_param(b, "multiply_by_inputs", TensorProto.BOOL, 0,
                                    np.asarray(bool(self.defaults["multiply_by_inputs"])))
        n = batch_rows(b, spec.carriers[0])
        k = None
        for c in spec.carriers:
            k, refs = self.references(b, spec, c)
            b.op("Concat", tile_rows(b, c, k, b.rank(c)), refs, axis=0, outputs=[inside[c]])
        half = b.mul(k, n)
        for p in spec.passthrough:
            b.op("Identity", tile_rows(b, p, b.add(k, k), b.rank(p)), outputs=[inside[p]])
        fed = {p.key: inside[p.carrier] if p.is_input else p.tensor for p in spec.points}
        copies = forward_per_block(b, spec, inside, outputs, [half, half], always=not self.stacks_references(spec))
        out_rank = b.rank(spec.output)
        tw_pairs = tile_rows(b, tw, k, out_rank)
        out_rows = outputs[spec.output]
        if copies is None:   # one batch [inputs; references], walked back whole with the references seeded 0
            partner = Partner(b)
            walked, start, seed = fed, out_rows, b.op("Concat", tw_pairs, b.zeros_like(tw_pairs), axis=0)
        else:                # the inputs' copy of the forward pass alone is walked back: half the backward's rows
            partner = PairedPartner(b, copies.pairs(0, 1), [i.name for i in b.initializers] + spec.unbatched)
            inputs_copy = copies.names[0]
            walked, start, seed = {key: inputs_copy[t] for key, t in fed.items()}, inputs_copy[out_rows], tw_pairs
        picked = emit_outputs(b, spec, outputs, b.ints([0]), n)
        steps = [] if self.audited else None
        grads = backward(b, start, seed, list(walked.values()), overrides=self.overrides,
                         ref=partner, params={"eps": eps, "varying": frozenset(inside[c] for c in spec.carriers)},
                         record=steps)
        if steps is not None:
            emit_audit(b, steps, partner, half)

        totals = []
        for point in spec.points:
            t = fed[point.key]
            on_x = rows(b, t, b.ints([0]), n)
            # (K, N, *row): multipliers of each (baseline, row) pair and the pair's difference
            multipliers = split_steps(b, grads[walked[point.key]], k, on_x)
            emit_multipliers(b, spec, point, multipliers)
            diff = b.reshape(b.sub(rows(b, t, b.ints([0]), half), rows(b, t, half, half)), b.shape_of(multipliers))
            contributions = b.mul(multipliers, diff)
            totals.append(per_row_sum(b, b.reduce("ReduceMean", contributions, [0], keepdims=0), b.rank(t)))
            local_or_global = b.where(global_form, contributions, multipliers)
            emit_attribution(b, spec, point, b.reduce("ReduceMean", local_or_global, [0], keepdims=0))
        f_x = per_row_sum(b, b.mul(tw, picked[spec.output]), out_rank)
        ref_out = split_steps(b, rows(b, out_rows, half, half), k, tw)            # (K, N, *out)
        f_b = b.reduce("ReduceMean", _per_pair_sum(b, b.mul(b.unsqueeze(tw, [0]), ref_out), out_rank + 1), [0],
                       keepdims=0)
        b.op("Sub", b.sum(totals), b.sub(f_x, f_b), outputs=["delta"])
        b.add_output("delta", b.elem_type(spec.output), [b.shape(spec.output)[0]])

    def stacks_references(self, spec: Spec) -> bool:
        """Whether the inputs and their references run as one stacked batch ``[inputs; references]`` (every
        row's reference half of the backward pass seeded with zeros) rather than through two copies of the
        forward pass, of which only the inputs' is walked back.  The copies halve the backward's rows; the
        stacked batch is kept where a tensor inside the model is attributed (a layer, a token embedding), where
        the audit reads every tensor's halves, and where a node holds a graph or a cell (loops, branches,
        recurrent layers), whose rules pair each row with its reference within one batch."""
        nodes = spec.model.graph.node
        return (self.audited or any(not p.is_input for p in spec.points)
                or any(n.op_type in COMPOUND or subgraphs(n) for n in nodes))

    def references(self, b, spec: Spec, carrier: str) -> tuple[str, str]:
        """``(K, reference rows)``: one reference row per input row, per row or shared."""
        base = declare_baselines(b, spec, carrier, self.defaults["baselines"])
        return b.ints([1]), b.op("Expand", base, b.shape_of(carrier))

    def check_params(self, params):
        p = super().check_params(params)
        check_custom(p["custom_attribution_func"])
        if not np.isscalar(p["eps"]) or not p["eps"] >= 0:
            raise ValueError(f"eps must be a non-negative float, got {p['eps']!r}")
        if not isinstance(p["multiply_by_inputs"], (bool, np.bool_)):
            raise ValueError(f"multiply_by_inputs must be True (attributions (x - baseline) * multiplier) or False "
                             f"(the multipliers alone), got {p['multiply_by_inputs']!r}")
        return p

    def parts(self, params, spec, inputs, bytes_per_row, budget):
        refuse_custom_here(self.name, params)
        return [{**self.scalar_feeds(params, spec), **self.baselines(params, spec, inputs)}]

    def run(self, runner, feeds, tw, params, delta: bool = True):
        """Captum's attributions, or with ``custom_attribution_func`` the function applied to the multipliers of
        each (row, baseline) pair, averaged over the baselines (weighted over parts of baselines); ``delta`` is
        then ``sum(attributions) - (f(x) - f(baselines))`` of those attributions, as Captum computes it."""
        func = params["custom_attribution_func"]
        plain = {**params, "custom_attribution_func": None}
        if func is None:
            return super().run(runner, feeds, tw, plain, delta=delta)
        spec = runner.spec
        layers = [p.key for p in spec.points if not p.is_input]
        if layers:
            raise ValueError(f"custom_attribution_func takes the multipliers, inputs and baselines of the model's "
                             f"floating-point inputs; {layers} (a layer or a token embedding) have no baselines of "
                             f"their own to give it: attribute the inputs, or drop the function")
        names = [spec.attribution_name(p.key) for p in spec.points]
        mult = [multipliers_name(spec, p.key) for p in spec.points]
        row_bytes = runner.row_cost(feeds)
        parts = self.call_parts(plain, runner, feeds, row_bytes, delta)
        total, gap = None, 0.0
        for part, weight in zip(parts, self.part_weights(parts)):
            out = runner.run_rows(feeds, tw, part, mult + (["delta"] if delta else []), row_bytes)
            multipliers = [out[w] for w in mult]
            x = [np.asarray(feeds[p.carrier]) for p in spec.points]
            refs = [np.broadcast_to(_pair_baselines(part[spec.param("baselines", p.carrier)], self.shared_baselines),
                                    m.shape) for p, m in zip(spec.points, multipliers)]
            attrs = apply_custom(func, multipliers, x, refs)
            # f(x) - f(b), from the graph's delta of the standard attributions (x - b) * multiplier
            if delta:
                standard = sum(row_sums(np.mean((xi[:, None] - r) * m, axis=1))
                               for xi, r, m in zip(x, refs, multipliers))
                gap = gap + weight * (standard - out["delta"].astype(np.float64))
            weighted = [a * weight for a in attrs]
            total = weighted if total is None else [t + a for t, a in zip(total, weighted)]
        result = {k: a.astype(xi.dtype) for k, a, xi in zip(names, total, x)}
        return result, (sum(row_sums(a) for a in total) - gap if delta else None)

    def estimate(self, runner, feeds, tw, params, delta: bool = True):
        return super().estimate(runner, feeds, tw, {**params, "custom_attribution_func": None}, delta=delta)

    #: whether the baselines are a set shared by every row (DeepLiftShap's) rather than one per row
    shared_baselines = False

    @staticmethod
    def scalar_feeds(params, spec) -> dict:
        """The feeds every part shares: the Rescale threshold and the attributions' form."""
        return {"eps": np.asarray(params["eps"], dtype=ex_float(spec)),
                "multiply_by_inputs": np.asarray(bool(params["multiply_by_inputs"]))}

    def baselines(self, params, spec, inputs) -> dict:
        return baseline_feeds(spec, params["baselines"], inputs)

    def expansion(self, part):
        return 2

    def block_rows(self, part):
        return self.expansion(part) // 2   # the inputs and their references are two blocks


class DeepLiftShap(DeepLift):
    """DeepLIFT averaged over a distribution of ``B`` baselines.

    The (row, baseline) pairs of as many baselines as the memory budget holds
    run together; larger sets are split into parts of baselines whose means
    are weighted by their share.  ``n_baselines=K`` draws ``K`` of a large
    background set (seeded by ``seed``, without replacement), as SHAP users
    do to keep DeepExplainer affordable: the result is the mean over the
    drawn baselines, an unbiased estimate of the mean over the whole set whose
    error shrinks as ``1/sqrt(K)``.
    """

    name = "deeplift_shap"
    captum = "`DeepLiftShap`"
    deepexplain = "–"
    aliases = ("deepliftshap", "deep_shap")
    parameters = (BASELINES.but(doc="a distribution of reference rows, shaped (B, *row)", required=True,
                                in_graph=False),
                  *DeepLift.parameters[1:], N_BASELINES, DRAW_SEED.but(default=0))
    row_axes = {}
    mixes_parts = True
    shapley_like = True
    shared_baselines = True

    def references(self, b, spec, x):
        base = declare_baselines(b, spec, x, None)
        k = b.op("Slice", b.shape_of(base), b.ints([0]), b.ints([1]))
        # reference (k, n) = baseline k, for every row n: rows ordered k-major like the tiled inputs
        per_pair = b.op("Expand", b.unsqueeze(base, [1]), b.op("Concat", k, b.shape_of(x), axis=0))
        return k, flatten_steps(b, per_pair, x)

    def baselines(self, params, spec, inputs):
        given = params["baselines"]
        if given is None:
            raise ValueError("deeplift_shap needs baselines: an array of B reference rows shaped (B, *row) "
                             "(or a dict of them by input name)")
        names = spec.carriers
        per = given if isinstance(given, dict) else ({names[0]: given} if len(names) == 1 else None)
        if per is None:
            if not isinstance(given, (tuple, list)) or len(given) != len(names):
                raise ValueError(f"give deeplift_shap one baseline set per attributed input {names} "
                                 f"(a tuple or a dict by name)")
            per = dict(zip(names, given))
        feeds, count = {}, None
        for x in names:
            xv = np.asarray(inputs[x])
            if x not in per:
                raise ValueError(f"deeplift_shap needs baselines for input {x!r}")
            v = np.asarray(per[x], dtype=xv.dtype)
            if v.ndim != xv.ndim or v.shape[1:] != xv.shape[1:] or v.shape[0] < 1:
                raise ValueError(f"baselines for input {x!r} must have shape (B, *{xv.shape[1:]}) with B >= 1, "
                                 f"got {v.shape}")
            if count is not None and v.shape[0] != count:
                raise ValueError("every input needs the same number B of baselines")
            count = v.shape[0]
            feeds[spec.param("baselines", x)] = v
        picked = draw_rows(count, params["n_baselines"], params["seed"])   # the same rows of every input
        return {k: np.ascontiguousarray(v[picked]) for k, v in feeds.items()}

    def check_params(self, params):
        p = super().check_params(params)
        check_n_baselines(p)
        if isinstance(p["seed"], bool) or (p["seed"] is not None and not isinstance(p["seed"], (int, np.integer))):
            raise ValueError(f"seed must be an int or None, got {p['seed']!r}")
        return p

    def parts(self, params, spec, inputs, bytes_per_row, budget):
        """The baselines in parts whose (row, baseline) pairs fit the budget for one input row."""
        refuse_custom_here(self.name, params)
        shared = self.scalar_feeds(params, spec)
        bases = self.baselines(params, spec, inputs)
        count = next(iter(bases.values())).shape[0]
        fit = max(1, budget // (2 * max(1, bytes_per_row)))
        n_parts = -(-count // fit)
        bounds = np.linspace(0, count, n_parts + 1).round().astype(int)
        return [{**shared, **{k: v[a:b] for k, v in bases.items()}} for a, b in zip(bounds[:-1], bounds[1:])]

    def part_weights(self, parts):
        counts = [self._count(part) for part in parts]
        return [c / sum(counts) for c in counts]

    def expansion(self, part):
        return 2 * self._count(part)

    @staticmethod
    def _count(part) -> int:
        return next(v.shape[0] for k, v in part.items() if k.startswith("baselines"))

    def limit_hint(self):
        return "give at most batch_size baselines"


def multipliers_name(spec: Spec, key: str) -> str:
    """The graph output with the multipliers of attributed tensor ``key``: ``multipliers`` (or
    ``multipliers_<key>`` when several tensors are attributed)."""
    return "multipliers" if spec.single else f"multipliers_{key}"


def emit_multipliers(b, spec: Spec, point, per_pair: str) -> None:
    """The ``(K, N, *row)`` multipliers of ``point`` as a batch-first graph output ``(N, K, *row)``."""
    name = b.reserve(multipliers_name(spec, point.key))
    rank = b.rank(point.tensor)
    b.op("Transpose", per_pair, perm=[1, 0] + list(range(2, rank + 1)), outputs=[name])
    shape = b.shape(point.tensor)
    b.add_output(name, b.elem_type(point.tensor), None if shape is None else [shape[0], "baselines", *shape[1:]])


def check_custom(func) -> None:
    """``custom_attribution_func`` is None or a callable of 1 to 3 positional arguments, as Captum calls it:
    ``(multipliers)``, ``(multipliers, inputs)`` or ``(multipliers, inputs, baselines)``."""
    if func is None:
        return
    if not callable(func):
        raise ValueError(f"custom_attribution_func must be a Python callable (multipliers, inputs, baselines) -> "
                         f"attributions, got {func!r}; the command line and server requests cannot carry a "
                         f"function: apply one through the Python API (onnxplain.Explainer(...).explain)")
    _arity(func)


def _arity(func) -> int:
    try:
        count = len(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        raise ValueError(f"custom_attribution_func {func!r} has no signature to read; give a Python function of "
                         f"(multipliers), (multipliers, inputs) or (multipliers, inputs, baselines)") from None
    if not 1 <= count <= 3:
        raise ValueError(f"custom_attribution_func must take 1 to 3 arguments ((multipliers), (multipliers, inputs) "
                         f"or (multipliers, inputs, baselines)), as Captum calls it; {func!r} takes {count}")
    return count


def refuse_custom_here(method: str, params: dict) -> None:
    """The parts of a call are made without the function (the method's own run applies it): a caller that
    reduces the runs itself (a noise tunnel over the method) cannot apply it."""
    if params.get("custom_attribution_func") is not None:
        raise ValueError(f"custom_attribution_func is applied by {method!r} itself after its run; a noise tunnel "
                         f"reduces the graph's attributions in its own run and cannot apply it. Drop the noise "
                         f"tunnel, or the function")


def apply_custom(func, multipliers: list, inputs: list, baselines: list) -> list:
    """Captum's ``custom_attribution_func`` over the (row, baseline) pairs, averaged over the baselines.

    ``multipliers`` and ``baselines`` are ``(N, K, *row)`` per attributed input, ``inputs`` ``(N, *row)``.
    The function gets tuples of arrays of ``N*K`` pair rows, row-major (pair ``n*K + k`` is row ``n`` with
    baseline ``k``: Captum's DeepLiftShap order; ``K = 1`` for DeepLift), as many arguments as it takes, and
    returns one array of the same shape per input (a bare array for one input).  Returns ``(N, *row)`` float64
    per input: the mean over the ``K`` baselines.
    """
    n, k = multipliers[0].shape[:2]
    flat = lambda a: np.ascontiguousarray(a).reshape((n * k,) + a.shape[2:])   # noqa: E731
    m = tuple(flat(a) for a in multipliers)
    x = tuple(flat(np.broadcast_to(xi[:, None], a.shape)) for xi, a in zip(inputs, multipliers))
    b = tuple(flat(r) for r in baselines)
    got = func(*(m, x, b)[:_arity(func)])
    got = (got,) if isinstance(got, np.ndarray) and len(m) == 1 else got
    if not isinstance(got, (tuple, list)) or len(got) != len(m):
        raise ValueError(f"custom_attribution_func must return a tuple of {len(m)} array(s), one per attributed "
                         f"input, got {type(got).__name__}")
    out = []
    for a, want in zip(got, m):
        a = np.asarray(a)
        if a.shape != want.shape:
            raise ValueError(f"custom_attribution_func must return arrays shaped like the multipliers it was "
                             f"given {want.shape} (one row per (row, baseline) pair), got {a.shape}")
        out.append(a.astype(np.float64).reshape((n, k) + a.shape[1:]).mean(axis=1))
    return out


def _pair_baselines(fed: np.ndarray, shared: bool) -> np.ndarray:
    """A part's baselines feed as ``(rows or 1, K, *row)``: a set shared by every row ``(K, *row)``, or one
    baseline per row ``(rows or 1, *row)``."""
    return fed[None] if shared else fed[:, None]


def _per_pair_sum(b, t: str, rank: int) -> str:
    """Sum over every axis but the first two: shape ``(K, N)``."""
    return t if rank == 2 else b.reduce_sum(t, list(range(2, rank)), keepdims=0)


# ---------------------------------------------------------------------- the audit of the rules
#: outputs of an audited graph, (pair rows, nodes): the relevance that reaches each node's outputs
#: (``sum(dy * (y - y_ref))``) and the relevance its rule passes to its inputs (``sum(m * (x - x_ref))``)
AUDIT_ARRIVING, AUDIT_LEAVING = "audit_arriving", "audit_leaving"
#: metadata key of an audited graph: the JSON list of ``[node, op]`` of its columns
AUDIT_NODES = "onnxplain.audit_nodes"


def emit_audit(b, steps, partner, half: str) -> None:
    """Per node of the backward pass and per (row, reference) pair, the relevance arriving at its outputs and
    the relevance its rule hands to its inputs: equal for a rule that conserves, so their difference is the
    node's local summation-to-delta residual.  Summed over nodes the residuals give the call's ``delta``."""
    if not partner.stacked:
        raise UnsupportedOperatorError([], "the audit reads every tensor's reference from the stacked batch "
                                           "[inputs; references]; audit without batch_size")
    labels, arriving, leaving = [], [], []
    for step in steps:
        into = [_pair_relevance(b, d, y, partner, half) for y, d in zip(step.node.output, step.dy) if d]
        out_of = [_pair_relevance(b, g, x, partner, half) for x, g in step.given]
        into, out_of = [r for r in into if r], [r for r in out_of if r]
        if not into:
            continue
        labels.append([step.node.name or step.node.output[0], step.node.op_type])
        arriving.append(b.sum(into))
        leaving.append(b.sum(out_of) if out_of else b.zeros_like(into[0]))
    if not labels:
        raise UnsupportedOperatorError([], "no node of the backward pass carries relevance to audit")
    for name, columns in ((AUDIT_ARRIVING, arriving), (AUDIT_LEAVING, leaving)):
        b.op("Concat", *[b.unsqueeze(c, [1]) for c in columns], axis=1, outputs=[name])
        b.add_output(name, TensorProto.DOUBLE, [None, len(labels)])
    b.metadata[AUDIT_NODES] = json.dumps(labels)


def _pair_relevance(b, cotangent: str, t: str, partner, half: str) -> str | None:
    """``sum(cotangent * (t - t_ref))`` per (row, reference) pair (``half`` of them), in float64 (None for a
    tensor without the stacked batch on axis 0); a zero cotangent carries nothing, even where ``t - t_ref`` is NaN (``-inf``
    masked scores)."""
    shape = b.shape(t)
    if shape is not None and (not shape or isinstance(shape[0], int)):
        return None
    product = b.mul(cotangent, b.sub(t, partner(t)))
    carried = b.where(b.op("Equal", cotangent, b.like(0.0, cotangent)), b.like(0.0, product), product)
    # the input half of the tensor's own axis 0 (which may fold more than the rows, heads say, row-major)
    first = b.op("Slice", b.op("Cast", carried, to=TensorProto.DOUBLE), b.ints([0]), partner.half(t), b.ints([0]))
    flat = b.reshape(first, b.op("Concat", half, b.ints([-1]), axis=0))
    return b.op("ReduceSum", flat, b.ints([1]), keepdims=0)
