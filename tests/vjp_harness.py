"""Table-driven checks of backward rules.

A case is one ONNX node with its inputs.  For each case the backward graph that
onnxplain emits is checked against

* central finite differences in float64 (``<dy, J dx>`` against ``<J^T dy, dx>``),
  run in ``onnx.reference``;
* PyTorch autograd of an equivalent torch function, in float64 (``onnx.reference``)
  and float32 (onnxruntime).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops import op_grid_sample
from onnx.reference.ops._op import OpRunUnaryNum
from onnx.reference.ops.op_deform_conv import DeformConv as _ReferenceDeformConv
from onnx.reference.ops.op_grid_sample import GridSample as _ReferenceGridSample
from onnx.reference.ops.op_resize import Resize as _ReferenceResize

from onnxplain.backward import backward
from onnxplain.converters.normalize import normalize
from onnxplain.graph import GraphBuilder


@dataclass
class Case:
    """One node to check.

    ``inputs``: a list whose items are a shape tuple (an attributed float input),
    a numpy array (a constant; a float constant is a weight and gets no cotangent),
    or ``None`` (an omitted optional input).  ``torch_fn`` receives torch tensors
    for all non-None inputs, in order, and returns the output explained.
    """

    name: str
    op: str
    inputs: list
    torch_fn: Callable | None = None
    attrs: dict = field(default_factory=dict)
    n_outputs: int = 1
    output: int = 0
    opset: int = 17
    positive: bool = False        # draw attributed inputs from (0.5, 2) instead of N(0, 1)
    away_from: float | None = None  # keep inputs at least 0.05 from this kink (e.g. 0 for Relu)
    sampler: Callable | None = None  # custom draw: sampler(rng, shape) -> float64 array
    fd_rtol: float = 1e-5
    extra_nodes: list = field(default_factory=list)  # nodes that run after the op (consume "y0")
    dynamic: bool = False  # make the first dim of inputs and output symbolic ("batch") in the model
    unknown_shapes: tuple = ()  # tensors whose inferred shape (not type) is dropped, as when ranks get lost
    node_inputs: int | None = None  # the op reads the first this many inputs; extra_nodes may read the others


def build_case_model(case: Case, dtype=TensorProto.DOUBLE):
    np_t = np.float64 if dtype == TensorProto.DOUBLE else np.float32
    inputs, inits, names, wrt = [], [], [], []
    for i, spec in enumerate(case.inputs):
        if spec is None:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        if isinstance(spec, tuple):
            inputs.append(helper.make_tensor_value_info(name, dtype, list(spec)))
            wrt.append(name)
        else:
            arr = np.asarray(spec)
            if arr.dtype.kind == "f":
                arr = arr.astype(np_t)
            inits.append(numpy_helper.from_array(arr, name))
    outs = [f"y{k}" for k in range(case.n_outputs)]
    node = helper.make_node(case.op, names[:case.node_inputs], outs, **case.attrs)
    nodes = [node] + list(case.extra_nodes)
    final = nodes[-1].output[0] if case.extra_nodes else outs[case.output]
    def make(out_shape):
        graph = helper.make_graph(nodes, case.name, inputs,
                                  [helper.make_tensor_value_info(final, dtype, out_shape)], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])

    probe = {vi.name: np.zeros([d.dim_value for d in vi.type.tensor_type.shape.dim], np_t) for vi in inputs}
    out_shape = list(np.shape(ReferenceEvaluator(make([])).run([final], probe)[0]))
    model = normalize(make(out_shape), dynamic_batch=case.dynamic)
    for vi in model.graph.value_info:
        if vi.name in case.unknown_shapes:
            vi.type.tensor_type.ClearField("shape")
    return model, wrt, final


def vjp_model(model: onnx.ModelProto, wrt: list[str], output: str, overrides=None) -> onnx.ModelProto:
    """Forward + backward of ``output`` seeded with input ``dy``; outputs ``grad_<x>``."""
    b = GraphBuilder(model)
    for vi in model.graph.input:
        if vi.name not in {i.name for i in model.graph.initializer}:
            b.inputs.append(vi)
    et = b.elem_type(output)
    seed = b.add_input("dy", et, b.shape(output))
    grads = backward(b, output, seed, wrt, overrides=overrides)
    b.add_output(output)
    for x in wrt:
        g = b.op("Identity", grads[x], outputs=[f"grad_{x}"])
        b.set_type(g[0], et, b.shape(x))
        b.add_output(g[0], et, b.shape(x))
    return b.build()


def draw(case: Case, rng, shape):
    if case.sampler is not None:
        return np.asarray(case.sampler(rng, shape), np.float64)
    if case.positive:
        return rng.uniform(0.5, 2.0, shape)
    x = rng.standard_normal(shape)
    if case.away_from is not None:
        near = np.abs(x - case.away_from) < 0.05
        x[near] += 0.2 * np.sign(x[near] - case.away_from + 1e-12)
    return x


class _Erf(OpRunUnaryNum):
    """Erf in the input's precision (onnx.reference rounds it to float32, which spoils float64 checks)."""

    def _run(self, x):
        return (np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype),)


class _Gelu(OpRun):
    """Gelu in the input's precision (onnx.reference runs its function body, with the float32 Erf)."""

    def _run(self, x, approximate="none"):
        if approximate == "tanh":
            y = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
        else:
            y = 0.5 * x * (1 + np.vectorize(math.erf, otypes=[np.float64])(x / math.sqrt(2)))
        return (np.asarray(y).astype(x.dtype),)


_Erf.__name__, _Gelu.__name__ = "Erf", "Gelu"


# Finite differences in float64 need the forward pass in float64.  onnx.reference computes Resize's cubic
# coefficients in float32 (cubic_coeff_a is a float32 attribute and numpy keeps its type: ~1e-7 off) and
# GridSample's (and so DeformConv's) source coordinates in a float32 array (differences over a step of
# 1e-6 are then noise).  The same kernels with those values in float64:
class _Resize64(_ReferenceResize):
    def _run(self, X, roi, scales=None, sizes=None, cubic_coeff_a=None, **attrs):
        a = float(self.cubic_coeff_a if cubic_coeff_a is None else cubic_coeff_a)
        return super()._run(X, roi, scales, sizes, cubic_coeff_a=a, **attrs)


class _GridSample64(_ReferenceGridSample):
    def _gs_denormalize_coordinates(self, n, dims, align_corners: bool):
        return np.array([self._gs_denormalize(v, d, align_corners) for v, d in zip(n, dims)], np.float64)

    def _run(self, X, grid, mode=None, padding_mode=None, align_corners=None):
        mode = mode or self.mode
        mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)   # GridSample-16's names
        return super()._run(X, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)


class _DeformConv64(_ReferenceDeformConv):
    def _run(self, *args, **attrs):
        original, op_grid_sample.GridSample = op_grid_sample.GridSample, _GridSample64
        try:
            return super()._run(*args, **attrs)
        finally:
            op_grid_sample.GridSample = original


_Resize64.__name__, _GridSample64.__name__, _DeformConv64.__name__ = "Resize", "GridSample", "DeformConv"


class _AffineGrid64(OpRun):
    """AffineGrid in theta's precision (onnx.reference returns float32): the normalised pixel centres
    (or corners, with align_corners) in homogeneous form, times theta transposed."""

    def _run(self, theta, size, align_corners=0):
        spatial = [int(d) for d in size[2:]][::-1]  # x (width) first, as the grid's last axis orders them
        axes = [np.linspace(-1, 1, d) if align_corners else (np.arange(d) * 2 + 1) / d - 1 for d in spatial]
        mesh = np.meshgrid(*axes[::-1], indexing="ij")[::-1]
        base = np.stack([*mesh, np.ones_like(mesh[0])], axis=-1).reshape(-1, len(spatial) + 1)
        grid = np.einsum("sj,nij->nsi", base.astype(theta.dtype), theta)
        return (grid.reshape(theta.shape[0], *spatial[::-1], len(spatial)).astype(theta.dtype),)


_AffineGrid64.__name__ = "AffineGrid"
FLOAT64_KERNELS = [_Erf, _Gelu, _Resize64, _GridSample64, _DeformConv64, _AffineGrid64]


def run_reference(model, feeds):
    return ReferenceEvaluator(model, new_ops=FLOAT64_KERNELS).run(None, feeds)


def assert_matches_finite_differences(model, xs: dict, consts: dict, dy, grads: dict, rng, rtol: float = 1e-5,
                                      name: str = ""):
    """``<dy, J dx>`` by central finite differences in float64 (onnx.reference) against ``<grad, dx>``
    along a random direction ``dx`` of the attributed inputs ``xs`` (``consts``: the other feeds)."""
    dirs = {x: rng.standard_normal(np.shape(v)) for x, v in xs.items()}
    h = 1e-6
    plus = run_reference(model, {**consts, **{x: xs[x] + h * dirs[x] for x in xs}})[0]
    minus = run_reference(model, {**consts, **{x: xs[x] - h * dirs[x] for x in xs}})[0]
    jvp = float(np.sum(dy * (plus - minus) / (2 * h)))
    vjp = float(sum(np.sum(grads[x] * dirs[x]) for x in xs))
    scale = max(1.0, abs(jvp), float(sum(np.abs(g).sum() for g in grads.values())) * 1e-3)
    assert abs(jvp - vjp) <= rtol * scale, f"{name}: finite differences {jvp} vs VJP {vjp}"


def check_case(case: Case, seed: int = 0, torch_check: bool = True, ort_check: bool = True):
    rng = np.random.default_rng(seed)
    model, wrt, out = build_case_model(case)
    xs = {n: draw(case, rng, tuple(case.inputs[int(n[2:])])) for n in wrt}
    fwd = run_reference(model, xs)[0]
    dy = rng.standard_normal(np.shape(fwd))
    vm = vjp_model(model, wrt, out)
    onnx.checker.check_model(vm, full_check=True)
    res = run_reference(vm, {**xs, "dy": dy})
    grads = dict(zip([f"grad_{x}" for x in wrt], res[1:]))
    for x in wrt:
        assert grads[f"grad_{x}"].shape == xs[x].shape, (case.name, x, grads[f"grad_{x}"].shape, xs[x].shape)

    assert_matches_finite_differences(model, xs, {}, dy, {x: grads[f"grad_{x}"] for x in wrt}, rng,
                                      case.fd_rtol, case.name)

    if torch_check and case.torch_fn is not None:
        import torch
        targs = []
        for i, spec in enumerate(case.inputs):
            if spec is None:
                continue
            if isinstance(spec, tuple):
                targs.append(torch.tensor(xs[f"in{i}"], requires_grad=True))
            else:
                targs.append(torch.tensor(np.asarray(spec)))
        y = case.torch_fn(*targs)
        np.testing.assert_allclose(y.detach().numpy(), fwd, rtol=1e-6, atol=1e-8,
                                   err_msg=f"{case.name}: torch_fn does not compute the same forward")
        tw = [t for t in targs if t.requires_grad]
        tg = torch.autograd.grad(y, tw, torch.tensor(dy), allow_unused=True)
        for x, g in zip(wrt, tg):
            ref = np.zeros_like(xs[x]) if g is None else g.numpy()
            np.testing.assert_allclose(grads[f"grad_{x}"], ref, rtol=1e-6, atol=1e-8,
                                       err_msg=f"{case.name}: gradient of {x} against torch autograd")

    if ort_check:   # the same rule in float32 must run in onnxruntime
        m32, wrt32, out32 = build_case_model(case, TensorProto.FLOAT)
        vm32 = vjp_model(m32, wrt32, out32)
        sess = ort.InferenceSession(vm32.SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = {x: xs[x].astype(np.float32) for x in wrt32}
        feeds["dy"] = dy.astype(np.float32)
        r32 = sess.run(None, feeds)
        for x, g32 in zip(wrt32, r32[1:]):
            g64 = grads[f"grad_{x}"]
            np.testing.assert_allclose(g32, g64, rtol=2e-3, atol=2e-3 * max(1.0, float(np.abs(g64).max(initial=0.0))),
                                       err_msg=f"{case.name}: onnxruntime float32 against reference float64")
