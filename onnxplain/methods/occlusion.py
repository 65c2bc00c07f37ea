"""Occlusion (Zeiler & Fergus, 2014), with Captum's arguments and normalisation.

Each window position is one perturbation: the hyperrectangle is replaced by the
baselines, and ``f(x) - f(occluded)`` goes to every element it covers; each
element's attribution is the sum over the windows covering it divided by their
number.  Windows slide with ``strides`` from the first element; when the last
step does not land on the border the last window is cut there (Captum's
``ceil((dim - w) / s) + 1`` positions).  With several inputs, each window
occludes one input (Captum's tuple forms, or a dict by input name).
"""
from __future__ import annotations

import numpy as np

from onnxplain.kernels.occlusion import fill_occlusion, fold_occlusion, occlusion_counts, window_starts

from .params import PERTURBATION_BASELINES, PERTURBATIONS_PER_EVAL, PROGRESS, Param
from .perturbation import Perturbation, Plan, attributed_inputs, per_input


class Occlusion(Perturbation):
    name = "occlusion"
    captum = "`Occlusion`"
    deepexplain = "`occlusion` (`window_shape`, `step`)"
    parameters = (Param("sliding_window_shapes", None, "ints", "the window: its extent along each dimension of a "
                        "row (e.g. 3,8,8 for 3xHxW images), or one window per input", required=True,
                        in_graph=False, cli="--sliding-window-shapes EXTENTS"),
                  Param("strides", None, "ints", "the window's step along each dimension of a row, or one int for "
                        "all of them (None: 1)", in_graph=False),
                  PERTURBATION_BASELINES, PERTURBATIONS_PER_EVAL, PROGRESS)

    def plan(self, spec, feeds, n_rows, params):
        if params["sliding_window_shapes"] is None:
            raise ValueError("occlusion needs sliding_window_shapes: a tuple with one extent per dimension of a "
                             "row (e.g. (3, 8, 8) for (3, H, W) images), or one such tuple per input")
        inputs = attributed_inputs(spec, feeds, params["baselines"])
        windows = per_input(params["sliding_window_shapes"], spec, "sliding_window_shapes",
                            lambda v: np.ndim(v[0]) == 0)
        strides = params["strides"]
        if strides is None:
            strides = {x: 1 for x in spec.wrt}
        elif isinstance(strides, (int, np.integer)) and not isinstance(strides, bool):
            strides = {x: int(strides) for x in spec.wrt}
        else:   # single input: a tuple is per dimension; several inputs: one int or tuple per input
            strides = per_input(strides, spec, "strides", lambda v: not spec.single)
        return _OcclusionPlan(inputs, {a.name: window_starts(a.row, windows[a.name], strides[a.name],
                                                             f"input {a.name!r}") for a in inputs},
                              {a.name: windows[a.name] for a in inputs})


class _OcclusionPlan(Plan):
    def __init__(self, inputs, starts, windows):
        self.inputs = inputs
        self.units = sum(len(s) for s in starts.values())
        self.windows = {k: np.asarray(w, dtype=np.int64).reshape(-1) for k, w in windows.items()}
        self.starts, self.active, self.counts = {}, {}, {}
        offset = 0
        for a in inputs:
            own = starts[a.name]
            full = np.zeros((self.units, len(a.row)), dtype=np.int64)
            full[offset:offset + len(own)] = own
            active = np.zeros(self.units, dtype=np.bool_)
            active[offset:offset + len(own)] = True
            offset += len(own)
            self.starts[a.name], self.active[a.name] = full, active
            self.counts[a.name] = occlusion_counts(a.row, self.windows[a.name], own)
        self.sums = {a.name: np.zeros(a.x.shape, dtype=np.float64) for a in inputs}

    evaluations = 1     # f(x) of the block

    def start(self, r0, r1):
        self.r0, self.r1 = r0, r1
        self.block = {a.name: np.zeros((r1 - r0, a.size), dtype=np.float64) for a in self.inputs}

    def evaluation_values(self, r0, r1):
        return [{}]

    def evaluated(self, outputs):
        self.f0 = outputs[0]

    def fill(self, u0, u1, batches):
        for a in self.inputs:
            fill_occlusion(a.x[self.r0:self.r1], a.base_rows(self.r0, self.r1), a.row, self.windows[a.name],
                           self.starts[a.name][u0:u1], self.active[a.name][u0:u1], out=batches[a.name])

    def fold(self, u0, u1, f):
        for a in self.inputs:
            fold_occlusion(self.f0, f, a.row, self.windows[a.name], self.starts[a.name][u0:u1],
                           self.block[a.name], self.active[a.name][u0:u1])

    def end(self):
        for a in self.inputs:
            self.sums[a.name][self.r0:self.r1] = self.block[a.name]

    def result(self):
        return {a.name: (self.sums[a.name] / self.counts[a.name]).astype(a.attr_dtype).reshape((-1,) + a.row)
                for a in self.inputs}
