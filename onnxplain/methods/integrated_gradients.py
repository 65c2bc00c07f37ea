"""Integrated gradients (Sundararajan et al., 2017), every step of a chunk in one run.

The expanded batch is ``S`` blocks of interpolated rows ``b + alpha_s (x - b)``,
then the inputs ``x`` and the baselines ``b`` (for the model's outputs and the
convergence delta).  The seed of step ``s`` is ``alpha_weight_s * target_weights``,
so summing the step cotangents performs the quadrature; the baseline and input
blocks are seeded with zeros.

``n_steps="auto"`` integrates to a tolerance instead (:func:`integrate_to_tolerance`): the same graph
is fed Gauss-Legendre rules of 8, 16, 32... nodes, and only the rows whose estimated error is still
above ``target_delta`` run again with twice the nodes.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
from onnx import TensorProto

from ..backward import backward
from ..runtime import Cost
from .base import (Method, Spec, baseline_feeds, batch_rows, declare_baselines, declare_param, declare_target_weights,
                   emit_attribution, emit_outputs, ex_float, flatten_steps, forward_per_block, open_forward,
                   per_row_sum, redirect_layer, row_sums, rows, split_steps, tile_rows)
from .params import BASELINES, MULTIPLY_BY_INPUTS, Param

#: ``n_steps="auto"``: integrate each row to ``target_delta``, from :data:`START_STEPS` nodes doubling
AUTO = "auto"
START_STEPS = 8
SCHEMES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def quadrature(n_steps: int, method: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """``(alphas, weights)`` on [0, 1] for the integration schemes Captum offers."""
    if method not in SCHEMES:
        raise ValueError(f"unknown integration method {method!r}; choose one of {', '.join(SCHEMES)}")
    if not isinstance(n_steps, (int, np.integer)) or isinstance(n_steps, bool) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    n = int(n_steps)
    if method == "gausslegendre":
        nodes, weights = _gauss_legendre(n)
        return nodes.copy(), weights.copy()
    if n < 2:
        raise ValueError(f"the Riemann schemes need n_steps >= 2, got {n}")
    weights = np.full(n, 1.0 / n)
    kind = method.split("_")[1]
    if kind == "trapezoid":   # Captum's trapezoid: equal steps, end points halved
        weights[0] /= 2
        weights[-1] /= 2
        return np.linspace(0.0, 1.0, n), weights
    start = {"left": 0.0, "right": 1.0 / n, "middle": 0.5 / n}[kind]
    return start + np.arange(n) / n, weights


@functools.lru_cache(maxsize=64)
def _gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights moved to [0, 1], computed once per ``n`` (an eigenvalue problem
    that took about half a millisecond, a fifth of a small model's whole call)."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return 0.5 * (nodes + 1.0), 0.5 * weights


class IntegratedGradients(Method):
    """Integrated gradients; ``multiply_by_inputs=False`` is Captum's "local" variant, the integral of the
    gradients alone (its ``delta`` is then, as Captum reports it, ``sum(attributions) - (f(x) - f(b))``).

    ``n_steps`` an int is Captum's fixed quadrature.  ``n_steps="auto"`` (no Captum counterpart) refines each
    row until its estimated relative error is at most ``target_delta`` or it has ``max_steps`` nodes
    (:func:`integrate_to_tolerance`: the estimate is a difference of two quadratures, not a bound); its
    ``delta`` is a :class:`ConvergenceDelta` whose ``steps`` and ``error`` say, per row, the nodes used and
    the estimate reached.
    """

    name = "integrated_gradients"
    captum = ("`IntegratedGradients` (same defaults; `multiply_by_inputs=False` is "
              "`IntegratedGradients(model, multiply_by_inputs=False)`)")
    deepexplain = "`intgrad` (`steps=100`, which is `riemann_right`)"
    aliases = ("intgrad", "ig")
    has_delta = True
    parameters = (Param("n_steps", 50, "int", "integration steps, or \"auto\": per row, as many Gauss-Legendre "
                        "nodes as target_delta needs", words=(AUTO,), own_check=True),
                  Param("method", "gausslegendre", "choice", "the integration scheme", choices=SCHEMES,
                        own_check=True, cli="--integration SCHEME", request="integration"),
                  BASELINES,
                  Param("internal_batch_size", None, "int", "most rows per run (Captum's cap; None: the memory "
                        "budget decides)", own_check=True, in_graph=False),
                  MULTIPLY_BY_INPUTS,
                  Param("target_delta", 1e-3, "float", "with n_steps=\"auto\": the estimated relative error each "
                        "row is integrated to (the change between n and 2n nodes and the convergence delta; an "
                        "estimate, not a bound)", own_check=True, in_graph=False),
                  Param("max_steps", 512, "int", "with n_steps=\"auto\": the most nodes a row gets (8, 16, 32... "
                        "up to this); rows short of target_delta then warn", own_check=True, in_graph=False))
    row_axes = {"baselines": 0}

    def build(self, b, spec: Spec) -> None:
        if is_auto(self.defaults["n_steps"]):
            raise ValueError('n_steps="auto" is chosen per call (explain(..., n_steps="auto")); the n_steps a '
                             'graph stores as its default is an int')
        inside, outputs = open_forward(b, spec)
        ftype = b.elem_type(spec.output) or TensorProto.FLOAT
        alphas_default, weights_default = quadrature(self.defaults["n_steps"], self.defaults["method"])
        alphas = declare_param(b, "alphas", ftype, 1, alphas_default)
        alpha_weights = declare_param(b, "alpha_weights", ftype, 1, weights_default)
        multiply = declare_param(b, "multiply_by_inputs", TensorProto.BOOL, 0,
                                 np.asarray(bool(self.defaults["multiply_by_inputs"])))
        tw = declare_target_weights(b, spec)
        steps = b.shape_of(alphas)
        n = batch_rows(b, spec.carriers[0])

        points = {}   # key -> (tensor the backward pass starts from, value on the inputs, value on the baselines)
        for c in spec.carriers:
            base = b.op("Expand", declare_baselines(b, spec, c, self.defaults["baselines"]), b.shape_of(c))
            point = spec.point_of(c)
            steps_rows = (interpolate_steps(b, alphas, c, base, b.rank(c)) if point
                          else tile_rows(b, c, steps, b.rank(c)))
            b.op("Concat", steps_rows, c, base, axis=0, outputs=[inside[c]])
            if point:
                points[point.key] = (inside[c], c, base)
        for p in spec.passthrough:
            b.op("Identity", tile_rows(b, p, b.add(steps, b.ints([2])), b.rank(p)), outputs=[inside[p]])
        for point in spec.points:
            if not point.is_input:   # a layer: interpolate between its values on the inputs and the baselines
                fed = redirect_layer(b, point.tensor)
                on_x = rows(b, point.tensor, b.mul(steps, n), n)
                on_base = rows(b, point.tensor, b.mul(b.add(steps, b.ints([1])), n), n)
                interpolated = interpolate_steps(b, alphas, on_x, on_base, b.rank(point.tensor))
                b.op("Concat", interpolated, on_x, on_base, axis=0, outputs=[fed])
                points[point.key] = (fed, on_x, on_base)
        forward_per_block(b, spec, inside, outputs, [b.mul(steps, n), n, n])

        out_rank = b.rank(spec.output)
        w_col = b.reshape(alpha_weights, b.ints([-1] + [1] * out_rank))
        step_seeds = flatten_steps(b, b.mul(w_col, b.unsqueeze(tw, [0])), tw)
        zeros = b.zeros_like(tw)
        seed = b.op("Concat", step_seeds, zeros, zeros, axis=0)

        out_rows = outputs[spec.output]
        picked = emit_outputs(b, spec, outputs, b.mul(steps, n), n)
        grads = backward(b, out_rows, seed, [fed for fed, _, _ in points.values()])

        totals = []
        for point in spec.points:
            fed, on_x, on_base = points[point.key]
            per_step = split_steps(b, grads[fed], steps, on_x)
            diff = b.sub(on_x, on_base)   # Captum's "local" IG (multiply_by_inputs=False) takes 1 instead
            factor = b.where(multiply, diff, b.cast_like(b.const(1.0), diff))
            attr = b.mul(b.reduce_sum(per_step, [0], keepdims=0), factor)
            totals.append(emit_attribution(b, spec, point, attr))
        f_x = per_row_sum(b, b.mul(tw, picked[spec.output]), out_rank)
        f_b = per_row_sum(b, b.mul(tw, _rows_after(b, out_rows, steps, n)), out_rank)
        b.op("Sub", b.sum(totals), b.sub(f_x, f_b), outputs=["delta"])
        b.add_output("delta", b.elem_type(spec.output), [b.shape(spec.output)[0]])

    def reference_rows(self, b, total, block):
        return block   # steps, inputs, then one block of baselines

    # --------------------------------------------------------------- per call
    def check_params(self, params):
        p = super().check_params(params)
        check_tolerance(p["target_delta"], p["max_steps"])
        if is_auto(p["n_steps"]):
            quadrature(START_STEPS, p["method"])   # validates the scheme
        elif isinstance(p["n_steps"], str):
            raise ValueError(f'n_steps must be a positive int or "auto", got {p["n_steps"]!r}')
        else:
            quadrature(p["n_steps"], p["method"])  # validates both
        ibs = p["internal_batch_size"]
        if ibs is not None and (not isinstance(ibs, (int, np.integer)) or ibs < 1):
            raise ValueError(f"internal_batch_size must be a positive int or None, got {ibs!r}")
        if not isinstance(p["multiply_by_inputs"], (bool, np.bool_)):
            raise ValueError(f"multiply_by_inputs must be True or False, got {p['multiply_by_inputs']!r}")
        return p

    def run(self, runner, feeds, tw, params, delta: bool = True):
        """A fixed ``n_steps``: :meth:`Method.run` over the parts; ``"auto"``: :func:`integrate_to_tolerance`."""
        if is_auto(params["n_steps"]):
            return integrate_to_tolerance(self, runner, feeds, tw, params)
        return super().run(runner, feeds, tw, params, delta)

    def estimate(self, runner, feeds, tw, params, delta: bool = True):
        """A fixed ``n_steps``: the rows the call runs; ``"auto"``: the most it may run (every row refined up
        to ``max_steps``, each node count's runs over every row)."""
        if not is_auto(params["n_steps"]):
            return super().estimate(runner, feeds, tw, params, delta)
        n, row_bytes = int(np.shape(tw)[0]), runner.row_cost(feeds)
        bases = baseline_feeds(runner.spec, params["baselines"], feeds)
        return Cost.of((stop - start) * self.expansion(part)
                       for steps in node_counts(params["max_steps"])
                       for part in self.step_parts(steps, params, runner.spec, feeds, bases, row_bytes,
                                                   runner.memory_budget)
                       for start, stop in runner.row_chunks(part, n, row_bytes))

    def parts(self, params, spec, inputs, bytes_per_row, budget):
        """One part per chunk of integration steps; a chunk's steps fit the budget for one row."""
        if is_auto(params["n_steps"]):
            raise ValueError('n_steps="auto" chooses the steps per row, which one run of a wrapping method (a '
                             'noise tunnel) cannot take; give n_steps an int there')
        bases = baseline_feeds(spec, params["baselines"], inputs)
        return self.step_parts(params["n_steps"], params, spec, inputs, bases, bytes_per_row, budget)

    def step_parts(self, n_steps: int, params, spec, inputs, bases: dict, bytes_per_row, budget) -> list[dict]:
        """The parts of one ``n_steps``-node quadrature over the rows of ``inputs`` (``bases``: their baseline
        feeds), in chunks of steps that fit the budget for one row."""
        alphas, weights = quadrature(n_steps, params["method"])
        dtype = ex_float(spec)   # alphas are declared with the explained output's float type
        per_row = max(1, bytes_per_row)
        fit = max(1, budget // per_row - 2)
        if params["internal_batch_size"] is not None:   # Captum's cap on expanded rows per run
            fit = min(fit, max(1, params["internal_batch_size"] // max(1, _rows(inputs, spec))))
        if spec.batch_size is not None:   # the steps of one row form one block of the forward pass
            fit = min(fit, spec.batch_size)
        parts = []
        for start in range(0, len(alphas), fit):
            parts.append({"alphas": alphas[start:start + fit].astype(dtype),
                          "alpha_weights": weights[start:start + fit].astype(dtype),
                          "multiply_by_inputs": np.asarray(bool(params["multiply_by_inputs"])), **bases})
        return parts

    def expansion(self, part):
        return len(part["alphas"]) + 2

    def block_rows(self, part):
        return len(part["alphas"])


def _rows(inputs, spec):
    return int(np.shape(inputs[spec.carriers[0]])[0])


# ---------------------------------------------------------------------- n_steps="auto"
class IntegrationWarning(RuntimeWarning):
    """Some rows of an ``n_steps="auto"`` call did not reach ``target_delta`` within ``max_steps`` nodes."""


class ConvergenceDelta(np.ndarray):
    """The convergence delta of an ``n_steps="auto"`` call (``sum(attributions) - (f(x) - f(b))`` per row, as
    with a fixed ``n_steps``), carrying what the integration did per row: ``steps``, the nodes of the rule whose
    attributions were returned, and ``error``, the error estimate that stopped the refinement (see
    :func:`integrate_to_tolerance`).  Any other array made from it (a slice, a sum) carries None."""

    def __new__(cls, delta, steps, error):
        out = np.asarray(delta).view(cls)
        out.steps, out.error = np.asarray(steps), np.asarray(error)
        return out

    def __array_finalize__(self, obj):
        self.steps, self.error = None, None


def is_auto(n_steps) -> bool:
    """Whether ``n_steps`` asks to integrate to ``target_delta`` (the word ``"auto"``)."""
    return isinstance(n_steps, str) and n_steps == AUTO


def check_tolerance(target_delta, max_steps) -> None:
    """``target_delta`` a positive finite number, ``max_steps`` an int allowing at least one comparison."""
    if (isinstance(target_delta, (bool, np.bool_)) or not isinstance(target_delta, (int, float, np.integer, np.floating))
            or not np.isfinite(target_delta) or target_delta <= 0):
        raise ValueError(f'target_delta must be a positive number (the relative error n_steps="auto" integrates '
                         f'each row to, e.g. 1e-3), got {target_delta!r}')
    if (isinstance(max_steps, (bool, np.bool_)) or not isinstance(max_steps, (int, np.integer))
            or max_steps < 2 * START_STEPS):
        raise ValueError(f'max_steps must be an int of at least {2 * START_STEPS} (n_steps="auto" first compares '
                         f'{START_STEPS} nodes with {2 * START_STEPS}), got {max_steps!r}')


def node_counts(max_steps: int) -> list[int]:
    """The node counts of an ``n_steps="auto"`` call: 8, 16, 32... while at most ``max_steps``."""
    counts = [START_STEPS]
    while 2 * counts[-1] <= max_steps:
        counts.append(2 * counts[-1])
    return counts


def integrate_to_tolerance(method, runner, feeds: dict, tw, params: dict):
    """Integrated gradients with, per row, as many nodes as its estimated error needs (``n_steps="auto"``).

    Every row runs with 8 and 16 nodes of the scheme (Gauss-Legendre by default); a row's error estimate at
    ``2n`` nodes is the largest of the relative change ``c_2n = ||A_2n - A_n|| / ||A_2n||`` (L2 over every
    attributed element of the row), half the previous comparison's ``c_n`` (an error that halves per doubling,
    as across ReLU kinks, is then not taken for converged when two rules agree by chance) and the relative
    convergence delta ``|sum(A_2n) - (f(x) - f(b))| / |f(x) - f(b)|``.
    Rows whose estimate exceeds ``target_delta`` run again with twice the nodes (32, 64... up to ``max_steps``),
    the others keep ``A_2n`` and never run again.  The graph is the one of a fixed ``n_steps`` (nodes and
    weights are feeds); each run holds the rows still refined, chunked by the memory budget as usual.

    What is guaranteed: each returned row has an estimate at most ``target_delta``, or is named in one
    :class:`IntegrationWarning` per call with the estimate it reached at ``max_steps``.  The estimate is a
    difference of two quadratures (and the completeness residual), not a bound on the error against the
    exact integral: a smooth integrand converges fast and the estimate overstates the error of ``A_2n``; an
    integrand with kinks (ReLU boundaries crossed along the path) converges like ``1/n`` and the estimate is
    of the order of the error.  A row with ``f(x) = f(b)`` and a non-zero delta cannot reach any tolerance.
    Captum has no counterpart (its ``n_steps`` is fixed).
    """
    spec = runner.spec
    names = [spec.attribution_name(x) for x in spec.wrt]
    n = int(np.shape(tw)[0])
    row_bytes = runner.row_cost(feeds)
    bases = baseline_feeds(spec, params["baselines"], feeds)
    target, counts = float(params["target_delta"]), node_counts(params["max_steps"])

    def integrate(rows_taken: np.ndarray, steps: int):
        sub_feeds = {k: v if k in spec.unbatched else v[rows_taken] for k, v in feeds.items()}
        sub_bases = {k: v[rows_taken] if np.ndim(v) and np.shape(v)[0] > 1 else v for k, v in bases.items()}
        parts = method.step_parts(steps, params, spec, sub_feeds, sub_bases, row_bytes, runner.memory_budget)
        return _additive_parts(runner, sub_feeds, tw[rows_taken], parts, names, row_bytes)

    active = np.arange(n)
    previous, _, _ = integrate(active, counts[0])
    total = {k: np.empty_like(v) for k, v in previous.items()}
    delta, error = np.zeros(n), np.full(n, np.inf)
    steps_used = np.full(n, counts[0], dtype=np.int64)
    last_change = np.zeros(n)   # the previous comparison's change, per row (none before the first)
    for steps in counts[1:]:
        attrs, row_delta, gap = integrate(active, steps)
        change, residual = row_errors(previous, attrs, row_delta, gap)
        row_error = np.maximum(np.maximum(change, last_change[active] / 2), residual)
        last_change[active] = change
        for k in names:
            total[k][active] = attrs[k]
        delta[active], error[active], steps_used[active] = row_delta, row_error, steps
        open_rows = row_error > target
        active = active[open_rows]
        if not active.size:
            break
        previous = {k: v[open_rows] for k, v in attrs.items()}
    if active.size:
        warn_unconverged(active, error[active], target, params["max_steps"], counts[-1])
    return total, ConvergenceDelta(delta, steps_used, error)


def _additive_parts(runner, feeds: dict, tw, parts: list[dict], names: list[str], row_bytes: int):
    """Attributions, delta and ``f(x) - f(b)`` per row of one quadrature split into parts (chunks of nodes)."""
    total, gap = None, None
    for part in parts:
        out = runner.run_rows(feeds, tw, part, names + ["delta"], row_bytes)
        if gap is None:   # f(x) - f(b) of each row, from the first part
            gap = sum(row_sums(out[k]) for k in names) - out["delta"]
        total = {k: out[k] for k in names} if total is None else {k: total[k] + out[k] for k in names}
    return total, sum(row_sums(total[k]) for k in names) - gap, gap


def row_errors(before: dict, after: dict, delta: np.ndarray, gap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the relative change ``||after - before|| / ||after||`` (L2 over every attribution of the row)
    and the relative residual ``|delta| / |gap|``; 0/0 is 0 and a non-zero value over 0 infinite."""
    change = np.sqrt(sum(row_sums(np.square(after[k].astype(np.float64) - before[k])) for k in after))
    norm = np.sqrt(sum(row_sums(np.square(after[k].astype(np.float64))) for k in after))
    return _relative(change, norm), _relative(np.abs(delta), np.abs(gap))


def _relative(value: np.ndarray, scale: np.ndarray) -> np.ndarray:
    safe = np.where(scale > 0, scale, 1.0)
    return np.where(value == 0, 0.0, np.where(scale > 0, value / safe, np.inf))


def warn_unconverged(rows_left: np.ndarray, errors: np.ndarray, target: float, max_steps: int, last: int) -> None:
    """One warning naming the rows short of ``target`` and the error estimate each reached."""
    shown = ", ".join(f"{r} ({e:.2g})" for r, e in zip(rows_left[:10], errors[:10]))
    more = f" and {len(rows_left) - 10} more" if len(rows_left) > 10 else ""
    warnings.warn(f'integrated gradients, n_steps="auto": {len(rows_left)} row(s) did not reach target_delta='
                  f'{target:g} within max_steps={max_steps}; row (estimated error): {shown}{more}. They hold their '
                  f'{last}-node attributions; raise max_steps or target_delta', IntegrationWarning, stacklevel=4)


def interpolate_steps(b, alphas: str, x: str, base: str, rank: int) -> str:
    """``(S*N, *row)``: the rows ``base + alpha_s * (x - base)`` for every step ``s``, step-major."""
    alpha_col = b.reshape(b.cast_like(alphas, x), b.ints([-1] + [1] * rank))
    scaled = b.add(b.unsqueeze(base, [0]), b.mul(alpha_col, b.unsqueeze(b.sub(x, base), [0])))
    return flatten_steps(b, scaled, x)


def _rows_after(b, out_rows, steps, n):
    """The last block of rows (the baselines') of the expanded output."""
    start = b.add(b.mul(steps, n), n)
    return b.op("Slice", out_rows, start, b.add(start, n), b.ints([0]))
