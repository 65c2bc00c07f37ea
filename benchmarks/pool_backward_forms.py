"""The forms of a 2x2 MaxPool's input cotangent, timed side by side in onnxruntime.

    python benchmarks/pool_backward_forms.py [--rows 256] [--repeats 5] [--threads N] [--json out.json]

Each graph computes ``X = Relu(Conv(Z))`` (so that X arrives from a fused, blocked
convolution, as in a CNN), ``Y = MaxPool(X)`` with 2x2 windows and stride 2, and
``dX``, the gradient of ``sum(Y * dY)``:

- ``indices``: the forward pool also returns ``Indices``; ``dX = MaxUnpool(dY, Indices)``
  (what onnxplain emits: :func:`onnxplain.vjp.pool.vjp_max_pool`);
- ``tap_slices``: the pool keeps its fast form without ``Indices``; each of the 4 window
  taps is a strided ``Slice`` of X compared with Y, the first equal tap in raster order
  gives the flat index, then ``MaxUnpool``;
- ``space_to_depth``: the taps laid out as an axis by ``SpaceToDepth``, ``ArgMax`` picks
  the first maximum, a one-hot product with dY and ``DepthToSpace`` put it back;
- ``code_pool``: Y upsampled (``Resize``, nearest) and compared with X, each maximum
  replaced by a code that decreases in raster order, a second ``MaxPool`` of the codes
  gives the first maximum's flat index, then ``MaxUnpool``.

Inputs and weights are small integers, so the convolution is exact and windows hold ties
(zeros from the ReLU and equal positive values); every form is checked against PyTorch's
gradient (a tie goes to the first maximum of the window) before it is timed.  Runs are
interleaved and each figure is a median.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from conv_backward_forms import interleaved_medians
from onnxplain.runtime import session_options

#: (channels, size): the pooled layers of the benchmark CNN (benchmarks/run.py)
LAYERS = [(32, 32), (64, 16), (128, 8)]
FORMS = ("indices", "tap_slices", "space_to_depth", "code_pool")


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _flat_base(C: int, H: int) -> tuple[list, list]:
    """Nodes and constants for each window's flat index of its top-left tap: ``(n*C + c)*H*W + 2*ho*W + 2*wo``."""
    h = H // 2
    corner = (2 * np.arange(h)[:, None] * H + 2 * np.arange(h)[None, :]).astype(np.int64)
    inits = [_const("corner", corner[None, None]), _const("plane", (np.arange(C, dtype=np.int64) * H * H).reshape(1, C, 1, 1)),
             _const("row_stride", np.int64(C * H * H)), _const("i0", np.int64(0)), _const("i1", np.int64(1)),
             _const("col", np.array([-1, 1, 1, 1], np.int64))]
    nodes = [helper.make_node("Shape", ["X"], ["n1"], end=1), helper.make_node("Squeeze", ["n1"], ["n"]),
             helper.make_node("Range", ["i0", "n", "i1"], ["rows"]), helper.make_node("Mul", ["rows", "row_stride"], ["r"]),
             helper.make_node("Reshape", ["r", "col"], ["rc"]), helper.make_node("Add", ["rc", "plane"], ["rp"]),
             helper.make_node("Add", ["rp", "corner"], ["base"])]
    return nodes, inits


def _backward(form: str, C: int, H: int) -> tuple[list, list]:
    """The nodes after ``X``: ``Y`` and ``dX`` in one form."""
    pool = dict(kernel_shape=[2, 2], strides=[2, 2])
    unpool = [helper.make_node("Shape", ["X"], ["xs"]), helper.make_node("MaxUnpool", ["dY", "I", "xs"], ["dX"], **pool)]
    if form == "indices":
        return [helper.make_node("MaxPool", ["X"], ["Y", "I"], **pool)] + unpool, []
    nodes = [helper.make_node("MaxPool", ["X"], ["Y"], **pool)]
    h = H // 2
    if form == "space_to_depth":
        inits = [_const("s5", np.array([0, 4, C, h, h], np.int64)), _const("s5y", np.array([0, 1, C, h, h], np.int64)),
                 _const("taps", np.arange(4, dtype=np.int64).reshape(1, 4, 1, 1, 1)),
                 _const("s4", np.array([0, 4 * C, h, h], np.int64))]
        nodes += [helper.make_node("SpaceToDepth", ["X"], ["sd"], blocksize=2),
                  helper.make_node("Reshape", ["sd", "s5"], ["sd5"]),
                  helper.make_node("ArgMax", ["sd5"], ["am"], axis=1, keepdims=1),
                  helper.make_node("Equal", ["am", "taps"], ["hot"]),
                  helper.make_node("Cast", ["hot"], ["hotf"], to=TensorProto.FLOAT),
                  helper.make_node("Reshape", ["dY", "s5y"], ["dY5"]),
                  helper.make_node("Mul", ["hotf", "dY5"], ["g5"]),
                  helper.make_node("Reshape", ["g5", "s4"], ["g4"]),
                  helper.make_node("DepthToSpace", ["g4"], ["dX"], blocksize=2, mode="DCR")]
        return nodes, inits
    base_nodes, inits = _flat_base(C, H)
    nodes += base_nodes
    if form == "tap_slices":
        inits += [_const("axes", np.array([2, 3], np.int64)), _const("steps", np.array([2, 2], np.int64)),
                  _const("ends", np.array([H, H], np.int64))]
        for k, start in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            inits += [_const(f"start{k}", np.array(start, np.int64)), _const(f"off{k}", np.int64(start[0] * H + start[1]))]
            nodes += [helper.make_node("Slice", ["X", f"start{k}", "ends", "axes", "steps"], [f"x{k}"]),
                      helper.make_node("Equal", [f"x{k}", "Y"], [f"e{k}"])]
        nodes += [helper.make_node("Where", ["e2", "off2", "off3"], ["w2"]),
                  helper.make_node("Where", ["e1", "off1", "w2"], ["w1"]),
                  helper.make_node("Where", ["e0", "off0", "w1"], ["off"]),
                  helper.make_node("Add", ["base", "off"], ["I"])]
        return nodes + unpool, inits
    # code_pool: code = H*W - (h*W + w) where X equals its window's maximum, 0 elsewhere
    code = (H * H - np.arange(H * H, dtype=np.float32)).reshape(1, 1, H, H)
    inits += [_const("code", code), _const("scales", np.array([1, 1, 2, 2], np.float32)),
              _const("hw", np.float32(H * H))]
    nodes += [helper.make_node("Resize", ["Y", "", "scales"], ["up"], mode="nearest"),
              helper.make_node("Equal", ["X", "up"], ["eq"]),
              helper.make_node("Cast", ["eq"], ["eqf"], to=TensorProto.FLOAT),
              helper.make_node("Mul", ["eqf", "code"], ["codes"]),
              helper.make_node("MaxPool", ["codes"], ["best"], **pool),
              helper.make_node("Sub", ["hw", "best"], ["flat_f"]),
              helper.make_node("Cast", ["flat_f"], ["flat"], to=TensorProto.INT64),
              helper.make_node("Add", ["rp", "flat"], ["I"])]
    return nodes + unpool, inits


def form_graph(form: str, weight: np.ndarray, H: int) -> onnx.ModelProto:
    C = weight.shape[0]
    nodes, inits = _backward(form, C, H)
    nodes = [helper.make_node("Conv", ["Z", "W"], ["pre"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["pre"], ["X"])] + nodes
    graph = helper.make_graph(
        nodes, form,
        [helper.make_tensor_value_info("Z", TensorProto.FLOAT, ["N", C, H, H]),
         helper.make_tensor_value_info("dY", TensorProto.FLOAT, ["N", C, H // 2, H // 2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", C, H // 2, H // 2]),
         helper.make_tensor_value_info("dX", TensorProto.FLOAT, ["N", C, H, H])],
        [_const("W", weight)] + inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def torch_gradient(Z: np.ndarray, weight: np.ndarray, dY: np.ndarray) -> np.ndarray:
    """PyTorch's dX of ``sum(max_pool2d(X, 2) * dY)`` with ``X = relu(conv(Z))``."""
    import torch
    X = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(Z), torch.from_numpy(weight), padding=1))
    X.requires_grad_(True)
    torch.nn.functional.max_pool2d(X, 2).backward(torch.from_numpy(dY))
    return X.grad.numpy()


def time_layer(C: int, H: int, rows: int, repeats: int, threads: int | None, rng) -> dict[str, float]:
    weight = rng.integers(-1, 2, (C, C, 3, 3)).astype(np.float32)
    feeds = {"Z": rng.integers(0, 3, (rows, C, H, H)).astype(np.float32),
             "dY": rng.standard_normal((rows, C, H // 2, H // 2)).astype(np.float32)}
    expected = torch_gradient(feeds["Z"], weight, feeds["dY"])
    so = session_options(threads)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")   # idle sessions must not spin
    sessions = {f: ort.InferenceSession(form_graph(f, weight, H).SerializeToString(), so,
                                        providers=["CPUExecutionProvider"]) for f in FORMS}
    for f, s in sessions.items():
        np.testing.assert_array_equal(s.run(["dX"], feeds)[0], expected, err_msg=f"{f} differs from PyTorch")
    return interleaved_medians(sessions, feeds, repeats)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=256, help="batch rows (default: 256)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int)
    p.add_argument("--json", help="write the table as JSON")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"load average {os.getloadavg()[0]:.1f}; {args.rows} rows; Conv+Relu+MaxPool and dX, ms (medians of "
          f"{args.repeats}); every form equals PyTorch's gradient, ties included")
    print(f"{'C':>4} {'size':>4} " + " ".join(f"{f:>15}" for f in FORMS))
    table = []
    for C, H in LAYERS:
        t = time_layer(C, H, args.rows, args.repeats, args.threads, rng)
        table.append(dict(channels=C, size=H, **{f"{f}_s": v for f, v in t.items()}))
        print(f"{C:>4} {H:>4} " + " ".join(f"{t[f] * 1e3:>15.1f}" for f in FORMS))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
