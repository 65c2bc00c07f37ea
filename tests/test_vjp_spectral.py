"""Backward rules of DFT (opsets 17 and 20) and STFT against finite differences, PyTorch and onnxruntime,
with lengths known only at run time, and DeepLIFT's summation-to-delta through them.

PyTorch's conventions that match ONNX: ``torch.fft.fft/ifft/rfft/irfft`` with ``n=dft_length`` (the input
cut or zero-padded to ``n``; irfft reads the first ``n // 2 + 1`` bins, the default ``n`` is
``2 * (bins - 1)``); the packed ``[..., 2]`` tensors are ``view_as_real``.  ONNX's STFT is
``torch.stft(center=False, win_length=n_fft)`` (no padding, frames ``1 + (S - T) // step``), its
``[batch, bins, frames]`` complex result ``view_as_real`` and transposed to ``[batch, frames, bins, 2]``.

onnxruntime refuses two variants onnx.reference computes (a one-sided forward DFT of a complex signal,
an inverse one-sided DFT of a real one): those cases skip the onnxruntime check only, the rules never emit
them.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import onnxplain
from onnxplain.converters.normalize import normalize
from onnxplain.rules.deeplift import RESCALE
from vjp_harness import (Case, assert_matches_finite_differences, build_case_model, check_case, run_reference,
                         vjp_model)

RNG = np.random.default_rng(17)


def arr(*shape):
    return RNG.standard_normal(shape)


def i64(v):
    return np.array(v, np.int64)


def _complex(x):
    return torch.complex(x[..., 0], x[..., 1]) if x.shape[-1] == 2 else x[..., 0]


def _packed(y):
    return torch.view_as_real(y.resolve_conj()) if y.is_complex() else y[..., None]


# ------------------------------------------------------------------------------------------------ DFT
def torch_dft(x, axis: int, inverse: int, onesided: int, n: int | None):
    z = _complex(x)
    dim = axis if axis >= 0 else axis + 1      # the packed axis -1 is gone in z
    if inverse and onesided:
        return _packed(torch.fft.irfft(z, n=n, dim=dim))
    if inverse:
        return _packed(torch.fft.ifft(z, n=n, dim=dim))
    if onesided and not z.is_complex():
        return _packed(torch.fft.rfft(z, n=n, dim=dim))
    y = torch.fft.fft(z, n=n, dim=dim)
    if onesided:
        y = y.narrow(dim, 0, y.shape[dim] // 2 + 1)
    return _packed(y)


def dft_case(shape, axis=1, inverse=0, onesided=0, n=None, opset=17, dynamic=False, axis_input=True):
    c = shape[-1]
    attrs = dict(inverse=inverse, onesided=onesided)
    inputs = [shape, None if n is None else i64(n)]
    if opset >= 20:
        if axis_input:
            inputs.append(i64(axis))
        else:
            axis = -2
    else:
        attrs["axis"] = axis
    while inputs[-1] is None:
        inputs.pop()
    kind = ("irfft" if onesided else "ifft") if inverse else ("rfft" if onesided else "fft")
    name = (f"dft{opset}_{kind}_{'real' if c == 1 else 'complex'}_{'x'.join(map(str, shape))}_axis{axis}"
            f"_n{n}" + ("_dyn" if dynamic else ""))
    # onnxruntime refuses these two variants (onnx.reference and the spec's formulas compute them)
    ort_ok = not ((onesided and not inverse and c == 2) or (onesided and inverse and c == 1))

    def fn(x, *_):
        return torch_dft(x, axis, inverse, onesided, n)
    return Case(name, "DFT", inputs, fn, attrs=attrs, opset=opset, dynamic=dynamic), ort_ok


DFT_VARIANTS = []
for _opset in (17, 20):
    DFT_VARIANTS += [
        # forward, real and complex, every axis form
        dft_case((2, 6, 3, 1), axis=1, opset=_opset),
        dft_case((2, 3, 5, 2), axis=2, opset=_opset),
        dft_case((2, 3, 5, 2), axis=-2, opset=_opset),
        dft_case((2, 4, 3, 2), axis=-3, opset=_opset),
        dft_case((7, 2), axis=0, opset=_opset),
        dft_case((2, 2, 3, 4, 2), axis=3, opset=_opset),
        # one-sided forward (RFFT), even and odd lengths
        dft_case((2, 6, 3, 1), axis=1, onesided=1, opset=_opset),
        dft_case((2, 3, 5, 1), axis=-2, onesided=1, opset=_opset),
        # inverse, complex and real input
        dft_case((2, 5, 3, 2), axis=1, inverse=1, opset=_opset),
        dft_case((2, 3, 6, 1), axis=2, inverse=1, opset=_opset),
        # inverse one-sided (IRFFT): default length, odd length, bins cut, bins zero-padded
        dft_case((2, 4, 3, 2), axis=1, inverse=1, onesided=1, opset=_opset),
        dft_case((2, 3, 4, 2), axis=-2, inverse=1, onesided=1, n=7, opset=_opset),
        dft_case((2, 4, 3, 2), axis=1, inverse=1, onesided=1, n=5, opset=_opset),
        dft_case((2, 6, 3, 2), axis=1, inverse=1, onesided=1, n=4, opset=_opset),
        dft_case((2, 4, 3, 2), axis=1, inverse=1, onesided=1, n=12, opset=_opset),
        dft_case((2, 4, 3, 2), axis=1, inverse=1, onesided=1, n=9, opset=_opset),
        # dft_length: zero-padding (n > N) and truncation (n < N)
        dft_case((2, 6, 3, 1), axis=1, n=9, opset=_opset),
        dft_case((2, 6, 3, 1), axis=1, n=4, opset=_opset),
        dft_case((2, 3, 6, 2), axis=2, n=10, opset=_opset),
        dft_case((2, 3, 6, 2), axis=-2, n=3, opset=_opset),
        dft_case((2, 6, 3, 1), axis=1, onesided=1, n=9, opset=_opset),
        dft_case((2, 6, 3, 1), axis=1, onesided=1, n=4, opset=_opset),
        dft_case((2, 5, 3, 2), axis=1, inverse=1, n=8, opset=_opset),
        dft_case((2, 5, 3, 2), axis=1, inverse=1, n=3, opset=_opset),
        dft_case((2, 3, 6, 1), axis=2, inverse=1, n=4, opset=_opset),
        # symbolic batch
        dft_case((2, 6, 3, 1), axis=1, onesided=1, opset=_opset, dynamic=True),
        dft_case((2, 4, 3, 2), axis=1, inverse=1, onesided=1, n=7, opset=_opset, dynamic=True),
    ]
DFT_VARIANTS += [   # DFT-20 without its axis input: the default axis -2
    dft_case((2, 3, 6, 2), opset=20, axis_input=False),
    dft_case((2, 3, 6, 1), onesided=1, opset=20, axis_input=False),
    dft_case((2, 3, 4, 2), inverse=1, onesided=1, opset=20, axis_input=False),
]


@pytest.mark.parametrize("case,ort_ok", DFT_VARIANTS, ids=[c.name for c, _ in DFT_VARIANTS])
def test_dft(case, ort_ok):
    check_case(case, ort_check=ort_ok)



# ------------------------------------------------------------------------------------------------ STFT
def torch_stft(x, window, T: int, step: int, onesided: int):
    z = _complex(x)
    w = torch.ones(T, dtype=x.dtype) if window is None else window
    if z.is_complex() and onesided:   # torch refuses it; the reference keeps the first bins of the full one
        y = torch.stft(z, T, step, win_length=T, window=w, center=False, onesided=False, return_complex=True)
        y = y[:, :T // 2 + 1]
    else:
        y = torch.stft(z, T, step, win_length=T, window=w, center=False, onesided=bool(onesided),
                       return_complex=True)
    return torch.view_as_real(y).transpose(1, 2)


def stft_case(signal, step, *, window=None, length=None, onesided=1, opset=17, dynamic=False):
    """``signal``/``window``: a shape (attributed), an array (constant) or None (omitted, window only)."""
    inputs = [signal, i64(step), window, None if length is None else i64(length)]
    while inputs[-1] is None:
        inputs.pop()
    S = (signal if isinstance(signal, tuple) else signal.shape)[1]
    w_shape = None if window is None else (window if isinstance(window, tuple) else window.shape)
    T = length if length is not None else (w_shape[0] if w_shape is not None else S)
    c = (signal if isinstance(signal, tuple) else signal.shape)[-1]

    def fn(x, _step, *rest):
        w = rest[0] if window is not None else None
        return torch_stft(x, w, T, step, onesided)
    win = "none" if window is None else ("attributed" if isinstance(window, tuple) else "constant")
    sig = "attributed" if isinstance(signal, tuple) else "constant"
    name = (f"stft{opset}_{'real' if c == 1 else 'complex'}_S{S}_T{T}_step{step}_onesided{onesided}_signal_{sig}"
            f"_window_{win}_length_{'given' if length is not None else 'inferred'}{'_dyn' if dynamic else ''}")
    ort_ok = window is not None or length is not None   # onnxruntime's STFT needs one of them
    return Case(name, "STFT", inputs, fn, attrs=dict(onesided=onesided), opset=opset, dynamic=dynamic), ort_ok


STFT_VARIANTS = []
for _opset in (17, 20):
    STFT_VARIANTS += [
        stft_case((2, 20, 1), 3, length=6, opset=_opset),                               # rectangular window
        stft_case((2, 20, 1), 3, window=arr(6), length=6, opset=_opset),                # a constant window
        stft_case((2, 20, 1), 3, window=(6,), opset=_opset),                            # bilinear: both attributed
        stft_case(arr(2, 20, 1), 3, window=(6,), opset=_opset),                         # the window alone
        stft_case((2, 20, 1), 3, window=(6,), length=6, onesided=0, opset=_opset),
        stft_case((2, 19, 1), 2, window=(5,), opset=_opset),                            # odd frame length
        stft_case((2, 23, 1), 6, window=(4,), opset=_opset),                            # gaps between frames
        stft_case((1, 9, 1), 1, window=(4,), onesided=0, opset=_opset),                 # step 1
        stft_case((2, 8, 1), 2, opset=_opset),                                          # one frame of the whole signal
        stft_case((2, 16, 2), 4, window=(8,), onesided=0, opset=_opset),                # complex signal
        stft_case((2, 20, 1), 3, window=(6,), opset=_opset, dynamic=True),
    ]


@pytest.mark.parametrize("case,ort_ok", STFT_VARIANTS, ids=[c.name for c, _ in STFT_VARIANTS])
def test_stft(case, ort_ok):
    check_case(case, ort_check=ort_ok)


def check_outside_the_spec(case: Case, seed: int = 0):
    """The checks of :func:`check_case` in onnx.reference only (finite differences and torch), for variants
    the spec rules out but onnx.reference computes; the ONNX checker and onnxruntime refuse the model."""
    rng = np.random.default_rng(seed)
    model, wrt, out = build_case_model(case)
    xs = {w: rng.standard_normal(tuple(case.inputs[int(w[2:])])) for w in wrt}
    dy = rng.standard_normal(np.shape(run_reference(model, xs)[0]))
    vm = vjp_model(model, wrt, out)
    res = run_reference(vm, {**xs, "dy": dy})
    grads = dict(zip(wrt, res[1:]))
    assert_matches_finite_differences(model, xs, {}, dy, grads, rng, case.fd_rtol, case.name)
    targs = [torch.tensor(xs[f"in{i}"], requires_grad=True) if isinstance(spec, tuple) else torch.tensor(spec)
             for i, spec in enumerate(case.inputs) if spec is not None]
    expected = torch.autograd.grad(case.torch_fn(*targs), [t for t in targs if t.requires_grad], torch.tensor(dy))
    for w, e in zip(wrt, expected):
        np.testing.assert_allclose(grads[w], e.numpy(), rtol=1e-6, atol=1e-8, err_msg=f"{case.name}: {w}")


OUTSIDE_THE_SPEC = [   # complex input to a one-sided transform, real input to an inverse one-sided one
    dft_case((2, 6, 3, 2), axis=1, onesided=1)[0],
    dft_case((2, 3, 5, 2), axis=-2, onesided=1, n=8, opset=20)[0],
    dft_case((2, 4, 3, 1), axis=1, inverse=1, onesided=1)[0],
    dft_case((2, 4, 3, 1), axis=1, inverse=1, onesided=1, n=5, opset=20)[0],
    stft_case((2, 16, 2), 4, window=(8,), onesided=1)[0],
]


@pytest.mark.parametrize("case", OUTSIDE_THE_SPEC, ids=lambda c: c.name)
def test_variants_only_onnx_reference_computes(case):
    check_outside_the_spec(case)


# ------------------------------------------------------------------------- lengths and axis fed at run time
def _run_time_model(node, x_shape, ints: dict, opset: int, dtype, out_rank: int, extra_float=None):
    """x (float, every dimension but the last symbolic) and integer scalars as graph inputs (their values
    unknown when the graph is built)."""
    inputs = [helper.make_tensor_value_info("x", dtype, [f"d{i}" for i in range(len(x_shape) - 1)] + [x_shape[-1]])]
    if extra_float is not None:
        inputs.append(helper.make_tensor_value_info(extra_float[0], dtype, list(extra_float[1])))
    inputs += [helper.make_tensor_value_info(k, TensorProto.INT64, []) for k in ints]
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", dtype, [None] * out_rank)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return normalize(model, dynamic_batch=False, batch_axes={i.name: None for i in inputs})


def _check_run_time(node, x_shape, ints, opset, torch_fn, window_shape=None):
    """The VJP graph built without the integers' values, run in onnx.reference (float64) against torch
    autograd, and in onnxruntime (float32) against that."""
    rng = np.random.default_rng(5)
    extra = None if window_shape is None else ("w", window_shape)
    wrt = ["x"] + ([] if window_shape is None else ["w"])
    feeds = {"x": rng.standard_normal(x_shape)}
    if window_shape is not None:
        feeds["w"] = rng.standard_normal(window_shape)
    feeds.update({k: i64(v) for k, v in ints.items()})
    out_rank = 4 if node.op_type == "STFT" else len(x_shape)
    m64 = _run_time_model(node, x_shape, ints, opset, TensorProto.DOUBLE, out_rank, extra)
    y = ReferenceEvaluator(m64).run(None, feeds)[0]
    dy = rng.standard_normal(y.shape)
    vm = vjp_model(m64, wrt, "y")
    onnx.checker.check_model(vm, full_check=True)
    got = ReferenceEvaluator(vm).run(None, {**feeds, "dy": dy})
    grads = dict(zip([o.name for o in vm.graph.output], got))
    targs = [torch.tensor(feeds[k], requires_grad=True) for k in wrt]
    ty = torch_fn(*targs)
    np.testing.assert_allclose(ty.detach().numpy(), y, rtol=1e-6, atol=1e-8)
    expected = torch.autograd.grad(ty, targs, torch.tensor(dy))
    for k, e in zip(wrt, expected):
        np.testing.assert_allclose(grads[f"grad_{k}"], e.numpy(), rtol=1e-6, atol=1e-8, err_msg=k)
    vm32 = vjp_model(_run_time_model(node, x_shape, ints, opset, TensorProto.FLOAT, out_rank, extra), wrt, "y")
    sess = ort.InferenceSession(vm32.SerializeToString(), providers=["CPUExecutionProvider"])
    f32 = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in {**feeds, "dy": dy}.items()}
    out32 = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, f32)))
    for k in wrt:
        g = grads[f"grad_{k}"]
        np.testing.assert_allclose(out32[f"grad_{k}"], g, rtol=2e-3, atol=2e-3 * max(1.0, float(np.abs(g).max())))


RUN_TIME_DFT = [   # (opset, inverse, onesided, n, axis, x shape)
    (17, 0, 0, 9, 1, (2, 6, 3, 1)), (17, 0, 1, 4, 1, (2, 6, 3, 1)), (17, 1, 0, 3, -2, (2, 3, 5, 2)),
    (17, 1, 1, 7, 1, (2, 4, 3, 2)), (17, 1, 1, 12, 1, (2, 4, 3, 2)),
    (20, 0, 0, 9, 1, (2, 6, 3, 2)), (20, 0, 1, 5, -2, (2, 3, 6, 1)), (20, 1, 0, 8, 2, (2, 3, 5, 2)),
    (20, 1, 1, 5, 1, (2, 4, 3, 2)), (20, 1, 1, 9, -3, (2, 4, 3, 2)), (20, 1, 1, None, 1, (2, 4, 3, 2)),
    (20, 0, 1, None, 2, (2, 3, 6, 1)),
]


@pytest.mark.parametrize("opset,inverse,onesided,n,axis,shape", RUN_TIME_DFT, ids=lambda v: str(v))
def test_dft_lengths_and_axis_fed_at_run_time(opset, inverse, onesided, n, axis, shape):
    """dft_length (and DFT-20's axis) graph inputs and symbolic sizes: every length is read with Shape/Gather
    at run time, pads and slices take run-time amounts (a Pad without an axes input at opset 17)."""
    ints = {} if n is None else {"n": n}
    attrs = dict(inverse=inverse, onesided=onesided)
    if opset >= 20:
        ints["axis"] = axis
        node = helper.make_node("DFT", ["x", "n" if n is not None else "", "axis"], ["y"], **attrs)
    else:
        node = helper.make_node("DFT", ["x", "n"], ["y"], axis=axis, **attrs)
    _check_run_time(node, shape, ints, opset, lambda x: torch_dft(x, axis, inverse, onesided, n))


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("with_length", [False, True])
def test_stft_step_and_length_fed_at_run_time(opset, with_length):
    """frame_step (and frame_length) graph inputs, a signal of symbolic length: the number of frames and the
    frames' positions are computed at run time."""
    T, step = 6, 3
    ints = {"step": step, **({"T": T} if with_length else {})}
    node = helper.make_node("STFT", ["x", "step", "w"] + (["T"] if with_length else []), ["y"], onesided=1)
    _check_run_time(node, (2, 20, 1), ints, opset, lambda x, w: torch_stft(x, w, T, step, 1), window_shape=(T,))


# ------------------------------------------------------------------------------------------ DeepLIFT
def _spectral_model(window_from_input: bool) -> onnx.ModelProto:
    """x (N, 20) -> tanh -> STFT (window 6, step 3) -> |.|-free linear head -> (N, 3).  The window is a
    constant, or computed from the input row (``sigmoid(x[:, :6])``, one row per forward pass)."""
    rng = np.random.default_rng(8)
    T, S, step = 6, 20, 3
    frames, bins = 1 + (S - T) // step, T // 2 + 1
    nodes = [helper.make_node("Tanh", ["x"], ["t"]),
             helper.make_node("Unsqueeze", ["t", "last"], ["s"]),
             helper.make_node("STFT", ["s", "step", "win"], ["spec"], onesided=1),
             helper.make_node("Mul", ["spec", "spec"], ["power"]),     # squared: the head is nonlinear too
             helper.make_node("Flatten", ["power"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "W"], ["y"])]
    inits = [numpy_helper.from_array(np.array([2], np.int64), "last"),
             numpy_helper.from_array(np.array(step, np.int64), "step"),
             numpy_helper.from_array(rng.standard_normal((frames * bins * 2, 3)).astype(np.float32), "W")]
    if window_from_input:
        nodes = [helper.make_node("Slice", ["x", "zero", "taps", "one"], ["head"]),
                 helper.make_node("Reshape", ["head", "taps"], ["head1"]),
                 helper.make_node("Sigmoid", ["head1"], ["win"])] + nodes
        inits += [numpy_helper.from_array(np.array([0], np.int64), "zero"),
                  numpy_helper.from_array(np.array([T], np.int64), "taps"),
                  numpy_helper.from_array(np.array([1], np.int64), "one")]
    else:
        inits.append(numpy_helper.from_array(np.hanning(T + 2)[1:-1].astype(np.float32), "win"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", S])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _gap(model, x, base, target):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    one = lambda r: sess.run(None, {"x": r[None]})[0][0, target]  # noqa: E731  (one row per run)
    return np.array([one(a) - one(b) for a, b in zip(x, base)])


@pytest.mark.parametrize("window_from_input", [False, True], ids=["constant_window", "bilinear"])
def test_deeplift_summation_to_delta_through_stft(window_from_input):
    """Linear in the signal (a constant window) the plain gradient conserves the difference; with the window
    computed from the input row as well STFT is bilinear, and its rule takes the gradient at the midpoints."""
    assert "STFT" in RESCALE
    model = _spectral_model(window_from_input)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 20)).astype(np.float32)
    base = (0.5 * rng.standard_normal((3, 20))).astype(np.float32)
    base[0, 1] = x[0, 1]
    ex = onnxplain.Explainer(model, "deeplift", batch_size=1 if window_from_input else None)
    attr, delta = ex.explain(x, target=1, baselines=base, return_convergence_delta=True)
    scale = max(1.0, float(np.abs(attr).sum(1).max()))
    np.testing.assert_allclose(attr.sum(1), _gap(model, x, base, 1), rtol=0, atol=2e-5 * scale)
    np.testing.assert_allclose(delta, 0, atol=2e-5 * scale)


def test_bilinear_stft_rule_is_the_midpoint_gradient():
    """Without the midpoints (the plain gradient at the input) the bilinear STFT would not conserve: the
    rule is what makes the difference add up."""
    model = _spectral_model(True)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 20)).astype(np.float32)
    base = (0.5 * rng.standard_normal((2, 20))).astype(np.float32)
    rule = RESCALE.pop("STFT")
    onnxplain.clear_cache()   # explanation graphs are cached per model and method
    try:
        _, delta_plain = onnxplain.Explainer(model, "deeplift", batch_size=1).explain(
            x, target=0, baselines=base, return_convergence_delta=True)
    finally:
        RESCALE["STFT"] = rule
        onnxplain.clear_cache()
    _, delta = onnxplain.Explainer(model, "deeplift", batch_size=1).explain(
        x, target=0, baselines=base, return_convergence_delta=True)
    assert np.abs(delta).max() < 1e-4 < np.abs(delta_plain).max()
