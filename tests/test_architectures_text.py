"""BERT, DistilBERT, RoBERTa and GPT-2 from both PyTorch exporters, explained at their word embeddings.

The models are ``transformers`` sequence classifiers built from tiny configs with random weights
(nothing is downloaded), exported with the TorchScript exporter (``dynamo=False``, opset 17) and
with the default ``dynamo=True`` exporter, batch and sequence axes dynamic (exported with 2 rows of
6 tokens, explained with 3 rows of 7).  Their inputs are integer token ids and masks: onnxplain
attributes ``input_ids`` at the output of the Gather it feeds (the word embedding) and passes the
masks through; the references are Captum's LayerIntegratedGradients and LayerGradientXActivation on
the model's word-embedding module, with the same token-id baselines and the masks as additional
forward arguments.
"""
from __future__ import annotations

import contextlib
import functools
import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from captum.attr import LayerGradientXActivation, LayerIntegratedGradients
from onnx import numpy_helper
from torch import nn

import onnxplain
from onnxplain.prepare import token_embeddings
from onnxplain.converters.normalize import normalize

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.filterwarnings("ignore")

KINDS = ["bert", "distilbert", "roberta", "gpt2"]
EXPORTERS = ["torchscript", "dynamo"]
N_ROWS, SEQ = 3, 7
TARGET = 1
# Measured on this zoo (both exporters, float32 in onnxruntime and in PyTorch): every method agrees
# with Captum to <= 1.5e-6 of the largest attribution, so 1e-4 leaves room for other BLAS builds
# and still catches a wrong rule (a mistake in a rule puts whole rows off by far more).
RTOL = 1e-4

TINY = dict(vocab_size=100, num_labels=3, initializer_range=0.2)   # 0.2: attention far from uniform
SIZES = {
    "bert": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=32, type_vocab_size=2),
    "distilbert": dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=32),
    "roberta": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    max_position_embeddings=32, pad_token_id=1),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=2, n_inner=64, n_positions=32, pad_token_id=0, bos_token_id=2,
                 eos_token_id=2),
}


# ---------------------------------------------------------------------- models
class Logits(nn.Module):
    """The classifier's logits from positional token inputs (the transformers models return an output object)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.net(input_ids=input_ids, attention_mask=attention_mask, **extra).logits


@functools.lru_cache(maxsize=None)
def classifier(kind: str) -> Logits:
    config_cls, model_cls = {
        "bert": (transformers.BertConfig, transformers.BertForSequenceClassification),
        "distilbert": (transformers.DistilBertConfig, transformers.DistilBertForSequenceClassification),
        "roberta": (transformers.RobertaConfig, transformers.RobertaForSequenceClassification),
        "gpt2": (transformers.GPT2Config, transformers.GPT2ForSequenceClassification),
    }[kind]
    torch.manual_seed(KINDS.index(kind))
    return Logits(model_cls(config_cls(**TINY, **SIZES[kind]))).eval()


def word_embeddings(wrapper: Logits) -> nn.Module:
    """The module that maps token ids to word vectors (Captum's layer)."""
    return wrapper.net.get_input_embeddings()


def input_names(kind: str) -> list[str]:
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if kind == "bert" else [])


def example(kind: str, rows: int, seq: int, seed: int) -> dict:
    """Token ids in [3, 100), the tail of some rows padded (pad id, mask 0); BERT also gets token types."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (rows, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1, seq - 2:] = 0
    if rows > 2:
        mask[2, seq - 1:] = 0
    ids[mask == 0] = classifier(kind).net.config.pad_token_id
    out = {"input_ids": ids, "attention_mask": mask}
    if kind == "bert":
        out["token_type_ids"] = (torch.arange(seq) >= seq // 2).long().expand(rows, seq).contiguous()
    return out


@functools.lru_cache(maxsize=None)
def exported(kind: str, exporter: str) -> onnx.ModelProto:
    """The ONNX export, batch and sequence axes dynamic, as the exporter wrote it."""
    wrapper, names = classifier(kind), input_names(kind)
    args = tuple(example(kind, 2, 6, seed=0).values())
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=32)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):   # it prints its progress
            warnings.simplefilter("ignore")
            program = torch.onnx.export(wrapper, args, dynamo=True, input_names=names, output_names=["logits"],
                                        dynamic_shapes={n: {0: batch, 1: seq} for n in names}, verbose=False)
        return program.model_proto
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, args, buf, dynamo=False, opset_version=17, input_names=names,
                          output_names=["logits"],
                          dynamic_axes={**{n: {0: "batch", 1: "seq"} for n in names}, "logits": {0: "batch"}})
    return onnx.load_from_string(buf.getvalue())


class Case:
    """One (model, exporter): the PyTorch wrapper, the ONNX model explained, inputs and Captum's arguments."""

    def __init__(self, kind: str, exporter: str):
        self.kind, self.exporter = kind, exporter
        self.wrapper = classifier(kind)
        self.layer = word_embeddings(self.wrapper)
        self.onnx = exported(kind, exporter)
        self.inputs = example(kind, N_ROWS, SEQ, seed=1)
        self.ids = self.inputs["input_ids"]
        self.extra = tuple(v for k, v in self.inputs.items() if k != "input_ids")   # Captum's forward args
        self.feeds = {k: v.numpy() for k, v in self.inputs.items()}
        self.pad = self.wrapper.net.config.pad_token_id
        self._explainers = {}

    def explainer(self, method: str) -> onnxplain.Explainer:
        if method not in self._explainers:
            self._explainers[method] = onnxplain.Explainer(self.onnx, method)
        return self._explainers[method]


@functools.lru_cache(maxsize=None)
def case(kind: str, exporter: str) -> Case:
    return Case(kind, exporter)


PAIRS = [(k, e) for k in KINDS for e in EXPORTERS]
IDS = [f"{k}-{e}" for k, e in PAIRS]


def close(ours, ref, rtol=RTOL):
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else ref
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * max(1e-6, float(np.abs(ref).max())))


# ---------------------------------------------------------------------- the embedding onnxplain picks
@pytest.mark.parametrize("kind,exporter", PAIRS, ids=IDS)
def test_the_token_input_is_attributed_at_the_word_embedding_gather(kind, exporter):
    c = case(kind, exporter)
    model = normalize(c.onnx)
    ex = c.explainer("integrated_gradients")
    assert ex.inputs == ["input_ids"]          # masks and token types are passed through
    found = token_embeddings(model)["input_ids"]
    gather = next(n for n in model.graph.node if found in n.output)
    producer = {o: n for n in model.graph.node for o in n.output}
    ids = gather.input[1]
    while ids != "input_ids":   # GPT-2 reshapes the ids to (-1, seq) first
        assert producer[ids].op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast")
        ids = producer[ids].input[0]
    assert gather.op_type == "Gather"
    table = next(i for i in model.graph.initializer if i.name == gather.input[0])
    np.testing.assert_array_equal(numpy_helper.to_array(table), c.layer.weight.detach().numpy())


# ---------------------------------------------------------------------- against Captum
@pytest.mark.parametrize("kind,exporter", PAIRS, ids=IDS)
def test_integrated_gradients_match_layer_integrated_gradients(kind, exporter):
    c = case(kind, exporter)
    ours, delta = c.explainer("integrated_gradients").explain(c.feeds, target=TARGET, baselines=c.pad,
                                                              return_convergence_delta=True)
    ref, ref_delta = LayerIntegratedGradients(c.wrapper, c.layer).attribute(
        c.ids, baselines=torch.full_like(c.ids, c.pad), additional_forward_args=c.extra, target=TARGET,
        return_convergence_delta=True)
    assert ours.shape == (N_ROWS, SEQ, 32)
    close(ours, ref)
    np.testing.assert_allclose(delta, ref_delta.detach().numpy(), atol=RTOL * np.abs(ours).sum((1, 2)).max())


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient"])
@pytest.mark.parametrize("kind,exporter", PAIRS, ids=IDS)
def test_gradients_at_the_embedding_match_layer_gradient_x_activation(kind, exporter, method):
    c = case(kind, exporter)
    targets = [2, 0, 1]
    ours = c.explainer(method).explain(c.feeds, target=targets)
    ref = LayerGradientXActivation(c.wrapper, c.layer, multiply_by_inputs=method == "input_x_gradient").attribute(
        c.ids, additional_forward_args=c.extra, target=targets)
    close(ours, ref.abs() if method == "saliency" else ref)


@pytest.mark.parametrize("kind,exporter", PAIRS, ids=IDS)
def test_deeplift_runs_at_the_embedding_and_reports_its_completeness_residual(kind, exporter):
    """Captum's hooks do not reach the functional attention ops to compare with; what must hold is that
    the attributions are finite and that ``delta`` is exactly their gap to f(x) - f(baseline), measured
    here with PyTorch's forward (that the gap is rounding error: tests/test_deeplift_conservation.py)."""
    c = case(kind, exporter)
    ours, delta = c.explainer("deeplift").explain(c.feeds, target=TARGET, baselines=c.pad,
                                                  return_convergence_delta=True)
    assert ours.shape == (N_ROWS, SEQ, 32) and np.all(np.isfinite(ours)) and np.abs(ours).max() > 0
    with torch.no_grad():
        fx = c.wrapper(c.ids, *c.extra)[:, TARGET].numpy()
        fb = c.wrapper(torch.full_like(c.ids, c.pad), *c.extra)[:, TARGET].numpy()
    expected = ours.sum((1, 2)) - (fx - fb)
    np.testing.assert_allclose(delta, expected, atol=RTOL * max(1.0, np.abs(ours).sum((1, 2)).max()))


# ---------------------------------------------------------------------- BERT's three inputs
def test_bert_with_three_inputs_is_explained_at_its_word_embeddings():
    c = case("bert", "torchscript")
    ex = onnxplain.Explainer(c.onnx, "integrated_gradients", inputs=["input_ids"])
    ids, mask, types = (c.inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids"))
    lig = LayerIntegratedGradients(c.wrapper, c.layer)
    targets = [0, 2, 1]
    results = []
    for tt in (types, 1 - types):   # the passed-through inputs are used as given: other types, other attributions
        ours = ex.explain({"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": tt.numpy()},
                          target=targets, baselines={"input_ids": 0}, n_steps=20)
        ref = lig.attribute(ids, baselines=torch.zeros_like(ids), additional_forward_args=(mask, tt), target=targets,
                            n_steps=20)
        close(ours, ref)
        tokens = ours.sum(-1)       # one score per token
        assert tokens.shape == (N_ROWS, SEQ)
        close(tokens, ref.sum(-1))
        results.append(ours)
    assert not np.allclose(results[0], results[1], atol=1e-3 * np.abs(results[0]).max())


def test_bert_word_and_token_type_embeddings_together_give_a_dict():
    c = case("bert", "dynamo")
    ex = onnxplain.Explainer(c.onnx, "integrated_gradients", inputs=["input_ids", "token_type_ids"])
    ids, mask, types = (c.inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids"))
    ours = ex.explain(c.feeds, target=TARGET, baselines={"input_ids": 0, "token_type_ids": 0}, n_steps=20)
    emb = c.wrapper.net.bert.embeddings
    ref = LayerIntegratedGradients(c.wrapper, [emb.word_embeddings, emb.token_type_embeddings]).attribute(
        (ids, mask, types), baselines=(torch.zeros_like(ids), mask, torch.zeros_like(types)), target=TARGET,
        n_steps=20)
    assert set(ours) == {"input_ids", "token_type_ids"}
    close(ours["input_ids"], ref[0])
    close(ours["token_type_ids"], ref[1])
