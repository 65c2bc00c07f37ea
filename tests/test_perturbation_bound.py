"""Perturbation runs through IO bindings, over chunks of several shapes: results against Captum and brute force.

Each chunk's outputs are written into a buffer the call owns (a binding kept per chunk shape); a small
memory budget or ``perturbations_per_eval`` cuts a call into blocks of rows and chunks of two or three
shapes, so bindings are made, reused and re-bound within one call.  References are independent of
onnxplain: Captum, PyTorch evaluations of every coalition, and exact Shapley values from their definition.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from captum.attr import FeatureAblation, Occlusion, ShapleyValueSampling
from onnx.reference import ReferenceEvaluator
from torch import nn

import models as zoo
from checks import assert_close, brute_force_shapley, fake_cuda_onnxruntime
import onnxplain
from onnxplain import runtime
from onnxplain.kernels.ablation import fill_ablation
from onnxplain.kernels.shapley import fill_coalitions, fill_permutation, permutation_ranks, sample_permutations

N_ROWS = 5
D_IN = 7
RTOL = 1e-5


class OddMLP(nn.Module):
    """7 features -> 9 -> 3, tanh: odd sizes everywhere."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(D_IN, 9)
        self.fc2 = nn.Linear(9, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


@pytest.fixture(scope="module", params=[False, True], ids=["torchscript", "dynamo"])
def odd_mlp(request):
    torch.manual_seed(11)
    module = OddMLP().eval()
    x = torch.randn(N_ROWS, D_IN, generator=torch.Generator().manual_seed(3))
    onx = onnxplain.from_torch(module, x[:2], dynamo=request.param)
    return module, onx, x.numpy()


@pytest.fixture(scope="module")
def torchscript_mlp():
    torch.manual_seed(11)
    module = OddMLP().eval()
    x = torch.randn(N_ROWS, D_IN, generator=torch.Generator().manual_seed(3))
    return module, onnxplain.from_torch(module, x[:2], dynamo=False), x.numpy()


def target_of(module, target):
    def f(v):
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))).double()[:, target].numpy()
    return f


def chunked(onx, method, x, rows_per_run):
    """An Explainer whose memory budget fits ``rows_per_run`` rows of a run, its session's runs recorded as
    (rows, whether the outputs were written into the call's own arrays)."""
    probe = onnxplain.Explainer(onx, method)
    per_row = probe.row_cost({probe.spec.wrt[0]: x})
    ex = onnxplain.Explainer(onx, method, memory_budget=per_row * rows_per_run)
    runs = []
    inner = ex.session.run

    def run(feeds, outputs=None):
        runs.append((len(feeds["target_weights"]), isinstance(outputs, dict)))
        return inner(feeds, outputs)

    ex.session.run = run
    return ex, runs


def several_bound_shapes(runs) -> bool:
    return len({rows for rows, bound in runs if bound}) >= 2


# ---------------------------------------------------------------------- Shapley values
@pytest.mark.parametrize("per_row", [False, True], ids=["shared-mask", "mask-per-row"])
@pytest.mark.parametrize("rows_per_run,cap", [(4, None), (64, 3)], ids=["blocks-of-rows", "capped-chunks"])
def test_exact_shapley_values_equal_brute_force_over_chunks(odd_mlp, per_row, rows_per_run, cap):
    module, onx, x = odd_mlp
    rng = np.random.default_rng(1)
    labels = np.array([0, 3, 1, 1, 4, 2, 3])                          # 5 groups of unequal sizes
    mask = np.stack([rng.permutation(labels) for _ in range(N_ROWS)]) if per_row else labels[None]
    base = np.linspace(-0.5, 0.4, D_IN, dtype=np.float32)
    f = target_of(module, 2)
    ref = np.stack([brute_force_shapley(f, x[j:j + 1], base, mask[j if per_row else 0], 5)[0] for j in range(N_ROWS)])
    ex, runs = chunked(onx, "shapley_values", x, rows_per_run)
    a = ex.explain(x, target=2, feature_mask=mask, baselines=base, perturbations_per_eval=cap)
    expected = np.take_along_axis(ref, mask if per_row else np.broadcast_to(labels, x.shape), axis=1)
    assert_close(a, expected, RTOL)
    assert several_bound_shapes(runs), runs


# ---------------------------------------------------------------------- Shapley sampling
def permutation_walk(f, x, base, labels, perms):
    """Shapley sampling from its definition: for each permutation, the groups join the baselines one by one
    and each gets the change of ``f``; the mean over the permutations."""
    phi = np.zeros((x.shape[0], perms.shape[1]))
    for perm in perms:
        present, prev = [], f(np.broadcast_to(base, x.shape))
        for g in perm:
            present.append(g)
            now = f(np.where(np.isin(labels, present), x, base))
            phi[:, g] += now - prev
            prev = now
    return phi / len(perms)


@pytest.mark.parametrize("labels", [np.array([0, 3, 1, 1, 4, 2, 3]), np.zeros(D_IN, np.int64)],
                         ids=["5-groups", "one-group"])
@pytest.mark.parametrize("rows_per_run,cap", [(4, None), (64, 5)], ids=["blocks-of-rows", "capped-chunks"])
def test_shapley_sampling_equals_the_walk_of_its_permutations(odd_mlp, labels, rows_per_run, cap):
    module, onx, x = odd_mlp
    n_samples, seed, g = 6, 4, int(labels.max()) + 1
    base = np.full(D_IN, 0.2, np.float32)
    perms = sample_permutations(g, n_samples, np.random.default_rng(seed))     # the call's own draw
    f = target_of(module, 1)
    ref = permutation_walk(f, x, base, labels, perms)[:, labels]
    ex, runs = chunked(onx, "shapley_sampling", x, rows_per_run)
    kw = dict(target=1, n_samples=n_samples, seed=seed, feature_mask=labels[None], baselines=base,
              perturbations_per_eval=cap)
    a = ex.explain(x, **kw)
    assert_close(a, ref, RTOL)
    gap = f(x) - f(np.broadcast_to(base, x.shape))                  # efficiency, per permutation and so per call
    per_group = a[:, [int(np.flatnonzero(labels == k)[0]) for k in range(g)]]
    np.testing.assert_allclose(per_group.sum(1), gap, rtol=1e-5, atol=1e-6)
    # the baselines and the inputs are run once per row, every permutation's other g - 1 coalitions once
    assert sum(rows for rows, _ in runs) == ex.estimate(x, **kw).rows == N_ROWS * (2 + n_samples * (g - 1))
    if g > 2:
        assert several_bound_shapes(runs), runs


@pytest.fixture(scope="module")
def two_input_model():
    module, example = zoo.two_inputs()
    return module, onnxplain.from_torch(module, example)


def test_shapley_sampling_over_two_inputs_equals_captum(two_input_model):
    module, onx = two_input_model
    rng = np.random.default_rng(2)
    a_in = rng.standard_normal((N_ROWS, 5)).astype(np.float32)
    b_in = rng.standard_normal((N_ROWS, 3)).astype(np.float32)
    masks = (np.array([[0, 1, 1, 2, 3]]), np.array([[3, 4, 0]]))       # group 0 and 3 span both inputs
    perms = sample_permutations(5, 4, np.random.default_rng(9))
    algo = ShapleyValueSampling(module)
    algo.permutation_generator = lambda n_groups, n_samples: iter(perms.tolist())
    ref = algo.attribute((torch.from_numpy(a_in), torch.from_numpy(b_in)), target=1, n_samples=4,
                         feature_mask=tuple(torch.from_numpy(m) for m in masks), perturbations_per_eval=2)
    ex = onnxplain.Explainer(onx, "shapley_sampling", memory_budget=2000)
    got = ex.explain({"a": a_in, "b": b_in}, target=1, n_samples=4, seed=9, feature_mask=masks,
                     perturbations_per_eval=3)
    for ours, theirs in zip(got.values() if isinstance(got, dict) else got, ref):
        assert_close(ours, theirs.numpy(), RTOL, scale=float(np.abs(ref[0].numpy()).max()))


# ---------------------------------------------------------------------- occlusion, feature ablation
@pytest.fixture(scope="module")
def pool_cnn():
    module, row = zoo.pool_cnn()                                    # 3x10x9 images
    x = torch.randn((N_ROWS,) + row, generator=torch.Generator().manual_seed(5))
    return module, zoo.export(module, row), x


def test_occlusion_over_chunks_equals_captum(pool_cnn):
    module, onx, x = pool_cnn
    kw = dict(sliding_window_shapes=(3, 4, 3), strides=(3, 3, 2))      # cut windows at both borders
    ref = Occlusion(module).attribute(x, target=2, baselines=0.1, **kw).numpy()
    ex, runs = chunked(onx, "occlusion", x.numpy(), 3)
    a = ex.explain(x.numpy(), target=2, baselines=0.1, perturbations_per_eval=4, **kw)
    assert_close(a, ref, RTOL)
    assert several_bound_shapes(runs), runs


def test_feature_ablation_over_chunks_equals_captum(torchscript_mlp):
    module, onx, x = torchscript_mlp
    mask = np.array([[2, 0, 1, 1, 2, 3, 0]])
    ref = FeatureAblation(module).attribute(torch.from_numpy(x), target=0, feature_mask=torch.from_numpy(mask),
                                            baselines=-0.25).numpy()
    ex, runs = chunked(onx, "feature_ablation", x, 4)
    a = ex.explain(x, target=0, feature_mask=mask, baselines=-0.25, perturbations_per_eval=3)
    assert_close(a, ref, RTOL)
    assert several_bound_shapes(runs), runs


# ---------------------------------------------------------------------- the batches, bit for bit
@pytest.mark.parametrize("n", [2, 5], ids=["element_by_element", "masks"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int64, np.bool_])
def test_shared_mask_batches_copy_every_bit(dtype, n):
    """The shared-mask fills (a bitwise select from 4 rows on, element by element below) copy every bit:
    NaN payloads, signed zeros and every integer come through exactly."""
    d = 7
    rng = np.random.default_rng(0)
    if dtype == np.bool_:
        x, base = rng.integers(0, 2, (n, d)).astype(bool), np.ones((1, d), bool)
    elif np.dtype(dtype).kind == "f":
        x = rng.standard_normal((n, d)).astype(dtype)
        x[0, :3] = [np.nan, -0.0, np.inf]
        payload = {2: 0x7E01, 4: 0x7FC00001, 8: 0x7FF8000000000001}[x.itemsize]
        x.view(np.dtype(f"u{x.itemsize}"))[1, 0] = payload        # a quiet NaN with a payload of its own
        base = np.full((1, d), -0.0, dtype)
    else:
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, (n, d), dtype=dtype, endpoint=True)
        base = np.full((1, d), info.min, dtype)
    labels = np.array([[0, 2, 1, 1, 2, 0, 1]])

    def expected(from_x):   # (U, d) bool -> the (U * n, d) batch, built with numpy
        return np.stack([np.where(keep, x[j], base[0]) for keep in from_x for j in range(n)])

    def same_bits(a, b):
        u = np.dtype(f"u{np.dtype(dtype).itemsize}")
        np.testing.assert_array_equal(a.view(u), b.view(u))

    same_bits(fill_ablation(x, base, labels, np.array([2, 0, 1]), 3), expected(labels != np.array([[2], [0], [1]])))
    codes = np.arange(8)
    same_bits(fill_coalitions(x, base, labels, codes), expected(((codes[:, None] >> labels) & 1).astype(bool)))
    perms = np.array([[1, 2, 0], [0, 1, 2]], np.int32)
    ranks = permutation_ranks(perms)
    ids, steps = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 2])
    same_bits(fill_permutation(x, base, labels, ranks, ids, steps),
              expected(ranks[ids][:, labels[0]] <= steps[:, None]))


# ---------------------------------------------------------------------- the session
def relu_sum_model() -> onnx.ModelProto:
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]),
                           helper.make_node("ReduceSum", ["r", "axes"], ["y"], keepdims=0)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"]),
                           helper.make_tensor_value_info("r", TensorProto.FLOAT, ["n", 3])],
                          [onnx.numpy_helper.from_array(np.array([1], np.int64), "axes")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_session_writes_outputs_into_the_callers_arrays():
    model = relu_sum_model()
    sess = runtime.Session(model, providers=["CPUExecutionProvider"])
    ref = ReferenceEvaluator(model)
    rng = np.random.default_rng(0)
    first, second = np.empty(4, np.float32), np.empty(4, np.float32)
    x1 = rng.standard_normal((4, 3)).astype(np.float32)
    out = sess.run({"x": x1}, {"y": first})
    assert out["y"] is first
    np.testing.assert_allclose(first, ref.run(["y"], {"x": x1})[0], rtol=1e-6)
    x2 = rng.standard_normal((4, 3)).astype(np.float32)
    sess.run({"x": x2}, {"y": second})                       # same shape, another buffer: re-bound
    np.testing.assert_allclose(second, ref.run(["y"], {"x": x2})[0], rtol=1e-6)
    np.testing.assert_allclose(first, ref.run(["y"], {"x": x1})[0], rtol=1e-6)   # the first left alone
    x3 = rng.standard_normal((2, 3)).astype(np.float32)       # another shape, both outputs
    y3, r3 = np.empty(2, np.float32), np.empty((2, 3), np.float32)
    sess.run({"x": x3}, {"r": r3, "y": y3})
    np.testing.assert_allclose(r3, np.maximum(x3, 0), rtol=0)
    np.testing.assert_allclose(y3, ref.run(["y"], {"x": x3})[0], rtol=1e-6)
    with pytest.raises(ValueError, match="float32"):
        sess.run({"x": x3}, {"y": np.empty(2, np.float64)})
    with pytest.raises(ValueError, match="not an output"):
        sess.run({"x": x3}, {"z": np.empty(2, np.float32)})


def test_a_kept_binding_holds_no_input_alive_after_its_run():
    """The bindings a session keeps per shape bind inputs by address: once a run returns, the caller's
    input (a batch buffer of a perturbation call) is freed when the caller lets it go."""
    import gc
    import weakref

    sess = runtime.Session(relu_sum_model(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    alive = weakref.ref(x)
    out = np.empty(4, np.float32)
    sess.run({"x": x}, {"y": out})
    np.testing.assert_allclose(out, np.maximum(x, 0).sum(1), rtol=1e-6)
    del x
    gc.collect()
    assert alive() is None
    again = sess.run({"x": np.ones((4, 3), np.float32)}, {"y": out})      # the same binding, new input
    np.testing.assert_allclose(again["y"], 3.0)


def test_on_cuda_a_binding_is_kept_per_chunk_shape(monkeypatch):
    """CUDA (faked: no GPU here): inputs bound by address for each run and let go after it, outputs left on
    the device by each run, copied into the caller's arrays once and freed; a binding is made per shape,
    not per run."""
    calls, made = fake_cuda_onnxruntime(monkeypatch, lambda x: x.sum(1))
    sess = runtime.Session(relu_sum_model(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    out = np.empty(4, np.float32)
    for k in range(3):
        x = np.full((4, 3), k, np.float32)
        sess.run({"x": x}, {"y": out})
        np.testing.assert_array_equal(out, x.sum(1))
    sess.run({"x": np.ones((2, 3), np.float32)}, {"y": np.empty(2, np.float32)})
    assert len(made) == 2, "one binding per chunk shape"
    run = [("bind_output", "y", "cuda"), ("run",), ("clear_inputs",), ("clear_outputs",)]   # nothing held after
    assert calls == run * 4
