"""The forms of a convolution's input cotangent, timed side by side in onnxruntime.

    python benchmarks/conv_backward_forms.py [--rows 64] [--repeats 7] [--threads N] [--json out.json]

For each layer shape (input channels C, output channels M, spatial size, kernel,
stride, groups) the same cotangent ``dX`` of ``Y = Conv(X, W)`` is computed by
the graphs onnxplain can emit:

- ``conv_transpose``: one ``ConvTranspose(dY, W)`` (:func:`onnxplain.vjp._common.spread`);
- ``phases``: one ``Conv`` over a weight rearranged when the graph is built
  (flipped, channels swapped, split into stride phases), then ``DepthToSpace``
  (:func:`onnxplain.vjp._common.spread_by_phases`).

Runs are interleaved (form A, form B, A, B, ...) and each figure is a median, so
that a loaded machine slows both alike.  The rule in
:func:`onnxplain.vjp.linalg.conv_input_grad_form` is read off this table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from onnxplain.graph import GraphBuilder
from onnxplain.runtime import session_options
from onnxplain.vjp._common import Window, spread, spread_by_phases

#: (C, M, size, kernel, stride, groups): the layers of the issue's CNN and of a ResNet-18 on 64x64 inputs
LAYERS = [(3, 32, 32, 3, 1, 1), (32, 64, 16, 3, 1, 1), (64, 32, 16, 3, 1, 1), (64, 128, 8, 3, 1, 1),
          (3, 64, 64, 7, 2, 1), (64, 128, 16, 3, 2, 1), (64, 128, 16, 1, 2, 1), (128, 256, 8, 3, 2, 1),
          (16, 16, 16, 3, 1, 16), (32, 32, 16, 3, 2, 32), (8, 16, 31, 3, 3, 1)]


def form_graphs(C: int, M: int, size: int, k: int, s: int, group: int, rng) -> dict[str, onnx.ModelProto]:
    """The graphs dY -> dX of each form for one layer (padding k // 2, as the usual 'same' layers)."""
    pad = k // 2
    out = (size + 2 * pad - k) // s + 1
    win = Window((k, k), (s, s), (1, 1), (pad, pad), (pad, pad), (out, out))
    weight = rng.standard_normal((M, C // group, k, k)).astype(np.float32)
    graphs = {}
    for form in ("conv_transpose", "phases"):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, size, size])
        dy = helper.make_tensor_value_info("dy", TensorProto.FLOAT, ["N", M, out, out])
        base = helper.make_model(helper.make_graph([], "layer", [x, dy], []),
                                 opset_imports=[helper.make_opsetid("", 17)])
        b = GraphBuilder(base)
        b.inputs = [dy]
        if form == "conv_transpose":
            w = b.const(weight, np.float32, hint="w")
            dx = spread(b, "dy", w, win, "x", (size, size), group, weight.shape)
        else:
            dx = spread_by_phases(b, "dy", weight, win, (size, size), group)
        b.add_output(dx, TensorProto.FLOAT, ["N", C, size, size])
        graphs[form] = b.build(form)
    return graphs


def time_forms(graphs: dict, feeds: dict, repeats: int, threads: int | None) -> dict[str, float]:
    """Median seconds per run of each graph, runs interleaved; also checks that they agree."""
    so = session_options(threads)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")   # idle sessions must not spin
    sessions = {k: ort.InferenceSession(g.SerializeToString(), so, providers=["CPUExecutionProvider"])
                for k, g in graphs.items()}
    results = {k: s.run(None, feeds)[0] for k, s in sessions.items()}
    first = next(iter(results.values()))
    for k, r in results.items():
        np.testing.assert_allclose(r, first, rtol=1e-3, atol=1e-3 * float(np.abs(first).max()), err_msg=k)
    return interleaved_medians(sessions, feeds, repeats)


def interleaved_medians(sessions: dict, feeds: dict, repeats: int) -> dict[str, float]:
    """Median seconds per run of each session, their runs interleaved (A, B, A, B, ...) so that a loaded
    machine slows them alike."""
    times = {k: [] for k in sessions}
    for _ in range(repeats):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feeds)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=64, help="batch rows of dY (default: 64)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int)
    p.add_argument("--json", help="write the table as JSON")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    print(f"load average {os.getloadavg()[0]:.1f}; {args.rows} rows; medians of {args.repeats}")
    print(f"{'C':>4} {'M':>4} {'size':>4} {'k':>2} {'s':>2} {'G':>3} {'ConvTranspose ms':>17} {'phases ms':>10} "
          f"{'ratio':>6}")
    for C, M, size, k, s, group in LAYERS:
        graphs = form_graphs(C, M, size, k, s, group, rng)
        out = (size + 2 * (k // 2) - k) // s + 1
        feeds = {"dy": rng.standard_normal((args.rows, M, out, out)).astype(np.float32)}
        t = time_forms(graphs, feeds, args.repeats, args.threads)
        rows.append(dict(C=C, M=M, size=size, kernel=k, stride=s, groups=group, **{f"{f}_s": v for f, v in t.items()}))
        print(f"{C:>4} {M:>4} {size:>4} {k:>2} {s:>2} {group:>3} {t['conv_transpose'] * 1e3:>17.2f} "
              f"{t['phases'] * 1e3:>10.2f} {t['conv_transpose'] / t['phases']:>6.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
