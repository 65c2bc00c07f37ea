"""Neuron conductance: how each input feature's path integral flows through one unit of a hidden layer.

For the unit ``u`` of ``layer=`` (``neuron_selector``, an index into one row of the layer) and the explained
output ``F`` (``target=``), along the straight path ``x_s = b + alpha_s (x - b)``::

    attr = (x - b) * sum_s w_s * dF/du(x_s) * du/dx(x_s)

with the quadrature nodes and weights ``(alpha_s, w_s)`` of the scheme (Dhamdhere et al., 2018), as Captum's
``NeuronConductance`` computes it; ``multiply_by_inputs=False`` drops the factor ``x - b`` (Captum's
``NeuronConductance(..., multiply_by_inputs=False)``).  Captum's default scheme for this method is
``riemann_trapezoid`` (the default of its ``attribute``; its docstring says gausslegendre): the default here too.

One graph holds both backward passes.  The expanded batch is ``S`` blocks of interpolated inputs, then the
inputs (for the model's outputs).  The first pass runs from the output, seeded with ``w_s * target_weights``,
down to the layer; the unit's entry of that gradient, ``w_s dF/du``, times the unit's one-hot mask seeds the
second pass, from the layer down to the inputs, which therefore gives ``w_s dF/du du/dx`` for every step at
once.  Parts of a call are chunks of steps that the memory budget holds, added up, as integrated gradients'.

Where it differs from Captum: the selector is an index tuple (no slices, no callable), and one may be given per
row (Captum takes one unit for every row).
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..backward import backward
from ..prepare import static_shape
from .base import (Method, Spec, baseline_feeds, batch_rows, declare_baselines, declare_param, declare_target_weights,
                   emit_attribution, emit_outputs, ex_float, flatten_steps, open_forward, row_shape, split_steps,
                   tile_rows)
from .integrated_gradients import SCHEMES, interpolate_steps, quadrature
from .params import BASELINES, MULTIPLY_BY_INPUTS, NEURON_SELECTOR, Param

SELECTOR = "neuron_selector"


class NeuronConductance(Method):
    """Captum's ``NeuronConductance``: the conductance of each input feature through one unit of ``layer=``."""

    name = "neuron_conductance"
    captum = "`NeuronConductance` (same defaults: `riemann_trapezoid`, 50 steps)"
    deepexplain = "–"
    table_note = "needs `layer=`; attributes the inputs through the unit `neuron_selector` of that layer"
    parameters = (NEURON_SELECTOR,
                  Param("n_steps", 50, "int", "integration steps", own_check=True),
                  Param("method", "riemann_trapezoid", "choice", "the integration scheme", choices=SCHEMES,
                        own_check=True, cli="--integration SCHEME", request="integration"),
                  BASELINES,
                  MULTIPLY_BY_INPUTS)
    row_axes = {"baselines": 0, SELECTOR: 0}
    needs_layer = True
    layer_guides = True       # the layer selects the unit; the inputs are attributed
    supports_layers = False   # floating-point inputs only (the path interpolates them)
    row_cost_factor = 4.0     # two backward passes
    noise_tunnel_refusal = "its unit lies in the layer= it is given, and a noise tunnel's graph carries no layer"

    def build(self, b, spec: Spec) -> None:
        layer = spec.layer
        if spec.batch_size is not None:
            raise ValueError(f"method {self.name!r} reads the unit of layer {layer!r} on the whole expanded batch, "
                             f"which batch_size would split into copies of the forward pass; drop batch_size "
                             f"(memory_budget chunks the steps)")
        inside, outputs = open_forward(b, spec)
        ftype = b.elem_type(spec.output) or TensorProto.FLOAT
        alphas_default, weights_default = quadrature(self.defaults["n_steps"], self.defaults["method"])
        alphas = declare_param(b, "alphas", ftype, 1, alphas_default)
        step_weights = declare_param(b, "step_weights", ftype, 1, weights_default)
        multiply = declare_param(b, "multiply_by_inputs", TensorProto.BOOL, 0,
                                 np.asarray(bool(self.defaults["multiply_by_inputs"])))
        given = self.defaults[SELECTOR]
        # a standalone graph's default unit: the one given to convert, else the first (a call feeds its own)
        unit = np.zeros((1, b.rank(layer) - 1), np.int64) if given is None else _selector_rows(given, b.rank(layer) - 1,
                                                                                                None)
        selector = declare_param(b, SELECTOR, TensorProto.INT64, 2, unit)
        tw = declare_target_weights(b, spec)
        steps = b.shape_of(alphas)
        n = batch_rows(b, spec.carriers[0])
        bases = {}
        for c in spec.carriers:
            bases[c] = b.op("Expand", declare_baselines(b, spec, c, self.defaults["baselines"]), b.shape_of(c))
            b.op("Concat", interpolate_steps(b, alphas, c, bases[c], b.rank(c)), c, axis=0, outputs=[inside[c]])
        for p in spec.passthrough:
            b.op("Identity", tile_rows(b, p, b.add(steps, b.ints([1])), b.rank(p)), outputs=[inside[p]])

        out_rank = b.rank(spec.output)
        w_col = b.reshape(step_weights, b.ints([-1] + [1] * out_rank))
        seed = b.op("Concat", flatten_steps(b, b.mul(w_col, b.unsqueeze(tw, [0])), tw), b.zeros_like(tw), axis=0)
        out_rows = outputs[spec.output]
        emit_outputs(b, spec, outputs, b.mul(steps, n), n)
        to_layer = backward(b, out_rows, seed, [layer])[layer]              # w_s dF/dlayer, ((S+1)N, *layer)
        mask = unit_mask(b, selector, layer, n, steps, ftype)
        rank = b.rank(layer)
        through_unit = b.reduce_sum(b.mul(to_layer, mask), list(range(1, rank)), keepdims=1)   # w_s dF/du
        fed = [inside[p.carrier] for p in spec.points]
        grads = backward(b, layer, b.mul(mask, through_unit), fed)         # w_s dF/du du/dx
        for point in spec.points:
            c = point.carrier
            summed = b.reduce_sum(split_steps(b, grads[inside[c]], steps, c), [0], keepdims=0)
            factor = b.where(multiply, b.sub(c, bases[c]), b.cast_like(b.const(1.0), c))
            emit_attribution(b, spec, point, b.mul(summed, factor))

    # --------------------------------------------------------------- per call
    def check_params(self, params):
        p = super().check_params(params)
        quadrature(p["n_steps"], p["method"])   # validates both
        if not isinstance(p["multiply_by_inputs"], (bool, np.bool_)):
            raise ValueError(f"multiply_by_inputs must be True or False, got {p['multiply_by_inputs']!r}")
        if p[SELECTOR] is not None:
            _selector_rows(p[SELECTOR], None, None)     # its form; the layer's rank and sizes when a call runs
        return p

    def parts(self, params, spec, inputs, bytes_per_row, budget):
        """One part per chunk of integration steps; a chunk's steps fit the budget for one row."""
        shape = static_shape(spec.model, spec.layer)
        n = int(np.shape(inputs[spec.carriers[0]])[0])
        if params[SELECTOR] is None:
            raise ValueError(f"method {self.name!r} needs neuron_selector: the index of the unit in one row of "
                             f"layer {spec.layer!r} (of shape {tuple(shape[1:])})")
        selector = _selector_rows(params[SELECTOR], len(shape) - 1, n, shape[1:], spec.layer)
        alphas, weights = quadrature(params["n_steps"], params["method"])
        dtype = ex_float(spec)
        fit = max(1, budget // max(1, bytes_per_row) - 1)
        bases = baseline_feeds(spec, params["baselines"], inputs)
        return [{"alphas": alphas[start:start + fit].astype(dtype),
                 "step_weights": weights[start:start + fit].astype(dtype),
                 "multiply_by_inputs": np.asarray(bool(params["multiply_by_inputs"])), SELECTOR: selector, **bases}
                for start in range(0, len(alphas), fit)]

    def expansion(self, part):
        return len(part["alphas"]) + 1

    def block_rows(self, part):
        return len(part["alphas"])


def unit_mask(b, selector: str, layer: str, n: str, steps: str, ftype: int) -> str:
    """``((S+1)*N, *row)``: 1 at each row's unit of ``layer`` on the ``S`` blocks of steps, 0 elsewhere and on
    the last block (the inputs').  ``selector`` is ``(1 or N, k)`` int64, one index per axis of a row, and the
    mask is the product of one one-hot vector per axis."""
    rank = b.rank(layer)
    dims = b.shape_of(layer)
    mask = None
    for j in range(1, rank):
        size = b.op("Squeeze", b.op("Slice", dims, b.ints([j]), b.ints([j + 1])), b.ints([0]))
        positions = b.op("Range", b.const(0, np.int64), size, b.const(1, np.int64))
        index = b.op("Slice", selector, b.ints([j - 1]), b.ints([j]), b.ints([1]))                    # (R, 1)
        hot = b.op("Cast", b.op("Equal", b.unsqueeze(positions, [0]), index), to=ftype)              # (R, d_j)
        shaped = b.reshape(hot, b.op("Concat", b.ints([0]), b.ints([1] * (j - 1)), b.ints([-1]),
                                     b.ints([1] * (rank - 1 - j)), axis=0))
        mask = shaped if mask is None else b.mul(mask, shaped)
    per_row = b.op("Expand", mask, b.op("Concat", n, row_shape(b, layer), axis=0))                   # (N, *row)
    return b.op("Concat", tile_rows(b, per_row, steps, rank), b.zeros_like(per_row), axis=0)


SELECTOR_FORM = ("neuron_selector must be an int or a tuple of ints (the index of one unit in a row of the layer, "
                 "for every row), or a list of them or an (N, k) int array (one unit per row)")


def _selector_rows(given, k: int | None, n: int | None, sizes=None, layer: str | None = None) -> np.ndarray:
    """``neuron_selector`` as an int64 array ``(1 or N, k)``: an int or a tuple (or 1-D array) of ints is one
    unit for every row; a list of them, or a 2-D array, one unit per row.  ``k``: the rank of one row of the
    layer, ``n`` the call's rows, ``sizes`` the row's dimensions (negative indices count from their end; a
    dimension without a fixed size takes non-negative indices only); None: not checked."""
    if isinstance(given, list):
        units = [_one_unit(u) for u in given]
        if not units or len({len(u) for u in units}) != 1:
            raise ValueError(f"{SELECTOR_FORM}; got {given!r}")
        a = np.stack(units)
    elif isinstance(given, np.ndarray) and given.ndim == 2 and given.dtype.kind in "iu":
        a = given.astype(np.int64)
    else:
        a = _one_unit(given)[None]
    if k is not None and a.shape[1] != k:
        of = f" of layer {layer!r}" if layer else ""
        shown = f" (shape {tuple(sizes)})" if sizes is not None else ""
        raise ValueError(f"neuron_selector has {a.shape[1]} indices, but one row{of} has {k} axes{shown}: give one "
                         f"index per axis")
    if n is not None and a.shape[0] not in (1, n):
        raise ValueError(f"neuron_selector gives {a.shape[0]} units, one per row, but the call has {n} rows")
    for j, d in enumerate(sizes or ()):
        col = a[:, j]
        if isinstance(d, int):
            if (col < -d).any() or (col >= d).any():
                raise ValueError(f"neuron_selector indices {col.tolist()} on axis {j + 1} of layer {layer!r} are out "
                                 f"of range for its size {d}")
            a[:, j] = np.where(col < 0, col + d, col)
        elif (col < 0).any():
            raise ValueError(f"axis {j + 1} of layer {layer!r} has no fixed size, so neuron_selector takes "
                             f"non-negative indices there")
    return a


def _one_unit(u) -> np.ndarray:
    """One unit's index: an int, or a tuple or 1-D array of ints (no slices: a slice selects several units)."""
    if isinstance(u, slice) or (isinstance(u, tuple) and any(isinstance(v, slice) for v in u)):
        raise ValueError(f"{SELECTOR_FORM}; got {u!r}: a slice selects several units, whose conductance is not "
                         f"one unit's")
    if isinstance(u, (bool, np.bool_)):
        raise ValueError(f"{SELECTOR_FORM}; got {u!r}")
    if isinstance(u, (int, np.integer)):
        return np.asarray([u], dtype=np.int64)
    if isinstance(u, tuple) and u and all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                                          for v in u):
        return np.asarray(u, dtype=np.int64)
    if isinstance(u, np.ndarray) and u.ndim == 1 and u.size and u.dtype.kind in "iu":
        return u.astype(np.int64)
    raise ValueError(f"{SELECTOR_FORM}; got {u!r}")
