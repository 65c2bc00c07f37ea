"""Perturbation methods on byte and token models: integer inputs perturbed as themselves.

A byte-level CNN (int32 bytes, 256 the padding byte) exported with both
exporters is held against Captum's Occlusion, FeatureAblation and
ShapleyValueSampling, which take integer inputs with integer baselines, and
against brute-force Shapley values over words written in the tests; a token
model (int64 ids and an attention mask that passes through) is explained word
by word.  Small hand-written graphs cover the other dtypes (uint8, int16,
bool) against a numpy reference.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from captum.attr import FeatureAblation, Occlusion, ShapleyValueSampling
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn

import onnxplain
from checks import assert_close, brute_force_shapley
from onnxplain.kernels.shapley import sample_permutations

PAD_BYTE = 256
SEQ = 13
TEXTS = ["the cat sat", "a dog ran off", "hi there"]
RTOL = 1e-5


class ByteCNN(nn.Module):
    """Bytes -> embedding (257 entries, 256 the padding byte) -> conv -> max pool -> mean -> linear."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(257, 8, padding_idx=PAD_BYTE)
        self.conv = nn.Conv1d(8, 6, 3, padding=1)
        self.pool = nn.MaxPool1d(2)
        self.head = nn.Linear(6, 3)

    def forward(self, data):
        h = self.pool(torch.relu(self.conv(self.embed(data).transpose(1, 2))))
        return self.head(h.mean(dim=2))


def encode(texts) -> tuple[np.ndarray, np.ndarray]:
    """Byte ids ``(n, SEQ)`` int32 padded with 256, and word ids per byte (spaces and padding apart)."""
    data = np.full((len(texts), SEQ), PAD_BYTE, np.int32)
    words = np.zeros((len(texts), SEQ), np.int64)
    for r, text in enumerate(texts):
        raw = text.encode()
        data[r, :len(raw)] = list(raw)
        word = 0
        for i, ch in enumerate(raw):
            word += ch == ord(" ")
            words[r, i] = 10 + word if ch == ord(" ") else word   # each space a group of its own
        words[r, len(raw):] = 99                                  # the padding: one group
    return data, words


@pytest.fixture(scope="module", params=[False, True], ids=["torchscript", "dynamo"])
def byte_model(request):
    torch.manual_seed(11)
    net = ByteCNN().eval()
    data, _ = encode(TEXTS)
    return net, onnxplain.from_torch(net, torch.from_numpy(data), input_names=["data"], dynamo=request.param)


def test_byte_model_takes_its_int32_input_as_the_attributed_input(byte_model):
    _, model = byte_model
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.INT32]
    assert onnxplain.Explainer(model, "occlusion").inputs == ["data"]


def test_byte_occlusion_equals_captum(byte_model):
    net, model = byte_model
    data, _ = encode(TEXTS)
    kw = dict(sliding_window_shapes=(4,), strides=(3,))     # 13 - 4 = 9: windows at 0, 3, 6, 9
    ref = Occlusion(net).attribute(torch.from_numpy(data), target=[0, 2, 1], baselines=PAD_BYTE, **kw)
    a = onnxplain.Explainer(model, "occlusion").explain(data, target=[0, 2, 1], baselines=PAD_BYTE, **kw)
    assert a.shape == data.shape and a.dtype == np.float32
    assert_close(a, ref, RTOL)


def test_byte_feature_ablation_over_words_equals_captum(byte_model):
    net, model = byte_model
    data, words = encode(TEXTS)
    base = np.full(SEQ, PAD_BYTE, np.int32)             # shaped like one row
    ref = FeatureAblation(net).attribute(torch.from_numpy(data), target=1, baselines=torch.from_numpy(base)[None],
                                         feature_mask=torch.from_numpy(words))
    a = onnxplain.Explainer(model, "feature_ablation").explain(data, target=1, baselines=base, feature_mask=words,
                                                               perturbations_per_eval=2)
    assert_close(a, ref, RTOL)
    for r in range(len(TEXTS)):                          # one value per word, as Captum gives it
        for w in np.unique(words[r]):
            assert np.ptp(a[r][words[r] == w]) == 0


def test_byte_shapley_sampling_equals_captum_on_the_same_permutations(byte_model):
    net, model = byte_model
    data, words = encode(TEXTS)
    mask = words[:1]                                     # the first text's words, shared by every row
    ids = np.unique(mask)
    perms = sample_permutations(len(ids), 6, np.random.default_rng(3))
    algo = ShapleyValueSampling(net)
    algo.permutation_generator = lambda n_groups, n_samples: iter(perms.tolist())
    ref = algo.attribute(torch.from_numpy(data), target=2, n_samples=6, baselines=PAD_BYTE,
                         feature_mask=torch.from_numpy(np.searchsorted(ids, mask)))
    a = onnxplain.Explainer(model, "shapley_sampling").explain(data, target=2, n_samples=6, seed=3,
                                                               baselines=PAD_BYTE, feature_mask=mask)
    assert_close(a, ref, RTOL)


def byte_scores(net, target):
    def f(v):
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(v, dtype=np.int32))).double()[:, target].numpy()
    return f


def test_byte_shapley_values_over_words_equal_brute_force(byte_model):
    net, model = byte_model
    data, words = encode(TEXTS)
    ids, labels = np.unique(words, return_inverse=True)
    labels = labels.reshape(words.shape)
    ref = brute_force_shapley(byte_scores(net, 0), data, PAD_BYTE, labels, len(ids))
    a = onnxplain.Explainer(model, "shapley_values").explain(data, target=0, baselines=PAD_BYTE, feature_mask=words)
    assert_close(a, np.take_along_axis(ref, labels, axis=1), RTOL)
    # efficiency: the words share f(x) - f(all padding) exactly
    gap = byte_scores(net, 0)(data) - byte_scores(net, 0)(np.full_like(data, PAD_BYTE))
    per_group = np.stack([a[r][np.unique(labels[r], return_index=True)[1]].sum() for r in range(len(TEXTS))])
    np.testing.assert_allclose(per_group, gap, rtol=1e-4, atol=1e-5 * np.abs(gap).max())


def test_byte_perturbation_graph_agrees_in_onnx_reference(byte_model, tmp_path):
    _, model = byte_model
    path = tmp_path / "occlusion.onnx"
    graph = onnxplain.convert(model, path, method="occlusion")
    assert all(n.domain in ("", "ai.onnx") for n in graph.graph.node)
    data, _ = encode(TEXTS)
    tw = np.eye(3, dtype=np.float32)[[1, 0, 2]]
    feeds = {"data": data, "target_weights": tw}
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["target_output"], feeds)[0]
    ref = ReferenceEvaluator(str(path)).run(["target_output"], feeds)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_integer_baselines_are_checked_against_the_input(byte_model):
    _, model = byte_model
    data, _ = encode(TEXTS)
    ex = onnxplain.Explainer(model, "feature_ablation")
    with pytest.raises(ValueError, match="must be integer ids"):
        ex.explain(data, target=0, baselines=0.5)
    with pytest.raises(ValueError, match="must be integer ids"):
        ex.explain(data, target=0, baselines=np.zeros(SEQ, np.float32))
    with pytest.raises(ValueError, match=r"must lie in \[-2147483648"):
        ex.explain(data, target=0, baselines=np.int64(2**40))


# ---------------------------------------------------------------------- a token model with an attention mask
VOCAB, PAD_ID = 30, 0
IDS = np.array([[5, 9, 12, 3, 7, 21, 2, 0, 0], [4, 4, 8, 1, 17, 0, 0, 0, 0], [2, 3, 11, 19, 7, 6, 5, 28, 1]],
               np.int64)
MASK = (IDS != PAD_ID).astype(np.int64)
WORDS = np.array([[0, 0, 1, 2, 2, 2, 3, 9, 9], [0, 1, 1, 2, 3, 9, 9, 9, 9], [0, 0, 1, 1, 2, 3, 3, 4, 4]], np.int64)


class MaskedAttention(nn.Module):
    """Embedding -> one self-attention layer with a key padding mask -> masked mean -> linear."""

    def __init__(self, d=8):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d, padding_idx=PAD_ID)
        self.qkv = nn.Linear(d, 3 * d)
        self.head = nn.Linear(d, 3)
        self.d = d

    def forward(self, ids, mask):
        h = self.embed(ids)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        keep = mask[:, None, :].to(h.dtype)
        scores = q @ k.transpose(1, 2) / self.d ** 0.5 + (1.0 - keep) * -1e4
        h = h + torch.softmax(scores, dim=-1) @ v
        weights = mask.to(h.dtype)[..., None]
        return self.head(torch.tanh((h * weights).sum(1) / weights.sum(1)))


@pytest.fixture(scope="module", params=[False, True], ids=["torchscript", "dynamo"])
def token_model(request):
    torch.manual_seed(5)
    net = MaskedAttention().eval()
    args = {"ids": torch.from_numpy(IDS), "mask": torch.from_numpy(MASK)}
    return net, onnxplain.from_torch(net, args, dynamo=request.param)


def token_scores(net, target):
    def f(ids):
        with torch.no_grad():
            out = net(torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)), torch.from_numpy(MASK))
        return out.double()[:, target].numpy()
    return f


def test_token_ids_are_attributed_and_the_mask_passes_through(token_model):
    net, model = token_model
    ex = onnxplain.Explainer(model, "feature_ablation")
    assert ex.inputs == ["ids"]
    a = ex.explain({"ids": IDS, "mask": MASK}, target=1, baselines=PAD_ID, feature_mask=WORDS)
    ref = FeatureAblation(net).attribute(torch.from_numpy(IDS), additional_forward_args=(torch.from_numpy(MASK),),
                                         target=1, baselines=PAD_ID, feature_mask=torch.from_numpy(WORDS))
    assert a.shape == IDS.shape and a.dtype == np.float32
    assert_close(a, ref, RTOL)


def test_token_shapley_values_over_words_equal_brute_force(token_model):
    net, model = token_model
    ids, labels = np.unique(WORDS, return_inverse=True)
    labels = labels.reshape(WORDS.shape)
    ref = brute_force_shapley(token_scores(net, 2), IDS, PAD_ID, labels, len(ids))
    ex = onnxplain.Explainer(model, "shapley_values", memory_budget=1 << 16)   # several runs
    a = ex.explain({"ids": IDS, "mask": MASK}, target=2, baselines=PAD_ID, feature_mask=WORDS)
    assert_close(a, np.take_along_axis(ref, labels, axis=1), RTOL)


def test_gradient_methods_still_attribute_token_ids_at_their_embedding(token_model):
    _, model = token_model
    ex = onnxplain.Explainer(model, "integrated_gradients")
    a = ex.explain({"ids": IDS, "mask": MASK}, target=0, baselines=PAD_ID, n_steps=4)
    assert a.shape == IDS.shape + (8,)
    with pytest.raises(ValueError, match="any dtype"):
        onnxplain.Explainer(model, "saliency", inputs=["mask"])
    assert onnxplain.Explainer(model, "occlusion", inputs=["ids", "mask"]).inputs == ["ids", "mask"]


# ---------------------------------------------------------------------- other dtypes, hand-written graphs
def cast_mlp(elem_type, d=5, seed=0):
    """``tanh(float(x) @ W)``: a model whose input of ``elem_type`` is cast to float at once."""
    w = np.random.default_rng(seed).standard_normal((d, 3)).astype(np.float32)
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["xf", "W"], ["h"]), helper.make_node("Tanh", ["h"], ["y"])]
    graph = helper.make_graph(nodes, "cast_mlp", [helper.make_tensor_value_info("x", elem_type, ["n", d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model, lambda v: np.tanh(v.astype(np.float64) @ w)


@pytest.mark.parametrize("dtype,values,baseline", [
    (np.uint8, lambda rng: rng.integers(0, 256, (4, 5)), 255),
    (np.int16, lambda rng: rng.integers(-300, 300, (4, 5)), -7),
    (np.int64, lambda rng: rng.integers(-5, 5, (4, 5)), 3),
    (np.bool_, lambda rng: rng.integers(0, 2, (4, 5)).astype(bool), False),
], ids=["uint8", "int16", "int64", "bool"])
def test_any_dtype_is_ablated_and_occluded_as_itself(dtype, values, baseline):
    model, f = cast_mlp(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    x = np.asarray(values(np.random.default_rng(1)), dtype=dtype)
    base = np.asarray(baseline, dtype=dtype)

    def ablated(i):
        v = x.copy()
        v[:, i] = base
        return v

    ablation = np.stack([f(x)[:, 1] - f(ablated(i))[:, 1] for i in range(5)], axis=1)
    a = onnxplain.Explainer(model, "feature_ablation").explain(x, target=1, baselines=baseline)
    assert a.dtype == np.float32
    np.testing.assert_allclose(a, ablation, rtol=1e-5, atol=1e-6)
    # windows of 2 with stride 1 start at 0..3; each element gets the mean over the windows covering it
    window = [f(x)[:, 1] - f(np.where(np.isin(np.arange(5), [s, s + 1]), base, x))[:, 1] for s in range(4)]
    occlusion = np.stack([np.mean([window[s] for s in range(4) if s <= i <= s + 1], axis=0) for i in range(5)],
                         axis=1)
    b = onnxplain.Explainer(model, "occlusion").explain(x, target=1, baselines=baseline, sliding_window_shapes=(2,))
    np.testing.assert_allclose(b, occlusion, rtol=1e-5, atol=1e-6)


def test_out_of_range_and_non_boolean_baselines_are_refused():
    model, _ = cast_mlp(TensorProto.UINT8)
    x = np.arange(10, dtype=np.uint8).reshape(2, 5)
    with pytest.raises(ValueError, match=r"must lie in \[0, 255\]"):
        onnxplain.Explainer(model, "feature_ablation").explain(x, target=0, baselines=PAD_BYTE)
    model, _ = cast_mlp(TensorProto.BOOL)
    with pytest.raises(ValueError, match="must be booleans"):
        onnxplain.Explainer(model, "occlusion").explain(x > 4, target=0, baselines=2, sliding_window_shapes=(1,))
