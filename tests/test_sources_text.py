"""Texts in: a tokenizer.json trained here with ``tokenizers``, a small PyTorch text classifier exported to
ONNX, and the text path (``onnxplain.sources.text``, ``explain_file(text=...)``, ``explain --text``).

The feeds are held against the tokenizer's own ``encode_batch`` padded in the test, the attributions
against ``Explainer.explain`` of those feeds, the pictures against the tokens and scores they must show.
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

import onnxplain
from onnxplain import viz
from onnxplain.cli import main
from onnxplain.files import explain_file
from onnxplain.sources.text import load_tokenizer, read_text_file, read_texts

tokenizers = pytest.importorskip("tokenizers")

CORPUS = ["the film was a fine and moving story", "a dull plot and weak acting", "fine acting, moving music",
          "the story was dull", "what a wonderful film", "weak and boring, but the music was fine"] * 3
TEXTS = ["a fine film", "wonderfully dull acting and a weak plot", "moving music"]
FIXED = 24
LONG = " ".join(CORPUS[:4])      # more tokens than FIXED
VOCAB = 80


# ---------------------------------------------------------------------- a tokenizer and models, made here
@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    """A WordPiece tokenizer trained on CORPUS, BERT-like: [CLS] text [SEP], type ids, [PAD] at id 0."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=VOCAB,
                                                              special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return str(path)


class TextClassifier(nn.Module):
    """Embedding (plus a token-type embedding), mean over the unmasked tokens, a linear head."""

    def __init__(self, types: bool = False, extra: bool = False):
        super().__init__()
        torch.manual_seed(3)
        self.emb = nn.Embedding(VOCAB, 7)
        self.types = nn.Embedding(2, 7) if types else None
        self.extra = extra
        self.head = nn.Sequential(nn.Tanh(), nn.Linear(7, 3))

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        h = self.emb(input_ids)
        if self.types is not None:
            h = h + self.types(token_type_ids)
        if self.extra:                                 # a third input text cannot fill
            h = h * token_type_ids.unsqueeze(-1).to(h.dtype)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))


def export_text(model: nn.Module, names: list[str], fixed: int | None = None) -> bytes:
    """ONNX bytes of a text model (TorchScript exporter, as tests/models.py ``export``), int64 inputs
    ``names``, the batch dynamic and the sequence too unless ``fixed``."""
    model.eval()
    seq = fixed or 6
    example = tuple(torch.ones((2, seq), dtype=torch.int64) for _ in names)
    axes = {k: ({0: "batch"} if fixed else {0: "batch", 1: "seq"}) for k in names}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, buf, dynamo=False, opset_version=17, input_names=names,
                          output_names=["logits"], dynamic_axes={**axes, "logits": {0: "batch"}})
    return buf.getvalue()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text_models")
    made = {"mask": (TextClassifier(), ["input_ids", "attention_mask"], None),
            "types": (TextClassifier(types=True), ["input_ids", "attention_mask", "token_type_ids"], None),
            "fixed": (TextClassifier(), ["input_ids", "attention_mask"], FIXED),
            "unknown": (TextClassifier(extra=True), ["input_ids", "attention_mask", "position_ids"], None)}
    paths = {}
    for name, (model, names, fixed) in made.items():
        paths[name] = str(folder / f"{name}.onnx")
        with open(paths[name], "wb") as f:
            f.write(export_text(model, names, fixed))
    return paths


def infos(path) -> dict:
    return {vi.name: vi for vi in onnx.load(path).graph.input}


def reference_feeds(tokenizer_path, texts, length=None, truncate=None) -> dict:
    """The tokenizer's own encodings (a fresh copy read from the file), right-padded with [PAD] in numpy."""
    tok = tokenizers.Tokenizer.from_file(tokenizer_path)
    if truncate:
        tok.enable_truncation(truncate)
    enc = tok.encode_batch(texts)
    length = length or max(len(e.ids) for e in enc)
    pad = tok.token_to_id("[PAD]")
    feeds = {"input_ids": np.full((len(texts), length), pad, np.int64),
             "attention_mask": np.zeros((len(texts), length), np.int64),
             "token_type_ids": np.zeros((len(texts), length), np.int64)}
    for r, e in enumerate(enc):
        feeds["input_ids"][r, :len(e.ids)] = e.ids
        feeds["attention_mask"][r, :len(e.ids)] = e.attention_mask
        feeds["token_type_ids"][r, :len(e.ids)] = e.type_ids
    return feeds, [e.tokens for e in enc]


# ---------------------------------------------------------------------- feeds
def test_feeds_are_the_tokenizers_own_encodings_padded_with_its_pad_id(tokenizer_path, models):
    rows = read_texts(TEXTS, tokenizer_path, infos(models["types"]))
    feeds, tokens = reference_feeds(tokenizer_path, TEXTS)
    assert set(rows.inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    for k in feeds:
        np.testing.assert_array_equal(rows.inputs[k], feeds[k])
        assert rows.inputs[k].dtype == np.int64
    assert rows.tokens == tokens and rows.names == TEXTS
    np.testing.assert_array_equal(rows.extra["mask"], feeds["attention_mask"] == 1)
    assert feeds["input_ids"][0, -1] == rows.extra["pad_id"] == load_tokenizer(tokenizer_path).token_to_id("[PAD]")
    # only the inputs the model has; dtypes from the model (int32 here), int64 for a plain shape
    int32 = {"input_ids": helper.make_tensor_value_info("input_ids", TensorProto.INT32, ["b", "s"]),
             "attention_mask": (None, None)}
    rows = read_texts(TEXTS[0], load_tokenizer(tokenizer_path), int32)
    assert set(rows.inputs) == {"input_ids", "attention_mask"}
    assert rows.inputs["input_ids"].dtype == np.int32 and rows.inputs["attention_mask"].dtype == np.int64
    np.testing.assert_array_equal(rows.inputs["input_ids"], feeds["input_ids"][:1, :5])


def test_a_fixed_sequence_length_is_padded_to_and_max_length_truncates(tokenizer_path, models):
    rows = read_texts(TEXTS, tokenizer_path, infos(models["fixed"]))
    feeds, _ = reference_feeds(tokenizer_path, TEXTS, length=FIXED)
    assert rows.inputs["input_ids"].shape == (3, FIXED)
    for k in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(rows.inputs[k], feeds[k])
    long = TEXTS + [LONG]
    rows = read_texts(long, tokenizer_path, infos(models["fixed"]), max_length=8)
    feeds, tokens = reference_feeds(tokenizer_path, long, length=FIXED, truncate=8)
    np.testing.assert_array_equal(rows.inputs["input_ids"], feeds["input_ids"])
    assert rows.tokens == tokens and rows.tokens[-1][-1] == "[SEP]" and len(rows.tokens[-1]) == 8
    # the tokenizer object passed in keeps its own settings
    tok = load_tokenizer(tokenizer_path)
    read_texts(long, tok, infos(models["mask"]), max_length=6)
    assert tok.truncation is None and tok.padding is None


# ---------------------------------------------------------------------- attributions and pictures
@pytest.mark.parametrize("name", ["mask", "types"])
def test_text_path_attributions_equal_the_explainers_on_the_same_feeds(tokenizer_path, models, name, tmp_path):
    page, picture = tmp_path / "t.html", tmp_path / "t.png"
    result = explain_file(models[name], None, "ig", text=TEXTS, tokenizer=tokenizer_path, target=1,
                          params={"n_steps": 16}, plot=page, out=tmp_path / "a.npz")
    feeds, tokens = reference_feeds(tokenizer_path, TEXTS)
    feeds = {k: v for k, v in feeds.items() if k in infos(models[name])}
    ex = onnxplain.Explainer(models[name], "ig", inputs=["input_ids"])
    expected, delta = ex.explain(feeds, 1, n_steps=16, return_convergence_delta=True)
    assert list(result.attributions) == ["input_ids"]
    np.testing.assert_allclose(result.attributions["input_ids"], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.delta, delta, atol=1e-6)
    assert expected.shape == (3, feeds["input_ids"].shape[1], 7)
    # the page shows each row's tokens, padding left out, with its scores (summed over the embedding)
    text = page.read_text(encoding="utf-8")
    assert text.count('class="tok"') == sum(len(t) for t in tokens) < feeds["input_ids"].size
    assert "[PAD]" not in text and "##" in text
    scores = expected.sum(-1)
    for r, toks in enumerate(tokens):
        for k, t in enumerate(toks):
            assert f'title="{t}: {scores[r, k]:+.4g}"' in text
    # the same as a picture
    explain_file(models[name], None, "ig", text=TEXTS, tokenizer=tokenizer_path, target=1,
                 params={"n_steps": 16}, plot=picture)
    from PIL import Image
    with Image.open(picture) as im:
        assert im.format == "PNG" and im.size[0] == 1000


def test_token_picture_colours_boxes_by_score_and_leaves_padding_out(tokenizer_path, models):
    """The boxes' colours are the HTML's: full red at the largest |score|, full blue at its negative, white at 0."""
    tokens = [["[CLS]", "good", "##ness", "[SEP]"], ["[CLS]", "bad", "[SEP]"]]
    scores = [np.array([0.0, 2.0, 1.0, 0.0]), np.array([0.0, -2.0, 0.0])]
    fig = viz.token_picture(tokens, scores, row_labels=["#0", "#1"], title="t", path="/tmp/text_unit.png")
    faces = [p.get_facecolor()[:3] for p in fig.axes[0].patches]
    assert len(faces) == 7
    red, blue = np.array(viz._POSITIVE_RGB) / 255, np.array(viz._NEGATIVE_RGB) / 255
    np.testing.assert_allclose(faces[1], red)
    np.testing.assert_allclose(faces[2], 1 - 0.5 * (1 - red))
    np.testing.assert_allclose(faces[5], blue)
    np.testing.assert_allclose(faces[0], 1.0)
    shown = [t.get_text() for t in fig.axes[0].texts]
    assert [w for row in tokens for w in row] == [t for t in shown if t not in ("t", "#0", "#1")]
    # many tokens wrap onto more lines: a taller picture, no box past the right edge
    many = viz.token_picture([["word"] * 80], [np.linspace(-1, 1, 80)])
    assert many.get_figheight() > fig.get_figheight() - 0.5
    ends = [p.get_x() + p.get_width() for p in many.axes[0].patches]
    assert max(ends) <= many.get_figwidth()
    # a demonstration picture, explained through the text path (looked at by eye)
    explain_file(models["mask"], None, "ig", text=TEXTS + [" ".join(CORPUS[3:6])], tokenizer=tokenizer_path, target=1,
                 params={"n_steps": 16}, plot="/tmp/text_demo.png")


# ---------------------------------------------------------------------- mistakes, before anything runs
def test_bad_text_inputs_fail_clearly_before_anything_is_written(tokenizer_path, models, tmp_path):
    out = tmp_path / "a.npz"
    cases = [({"tokenizer": str(tmp_path / "nope.json")}, models["mask"], "no such file"),
             ({}, models["mask"], "needs a tokenizer"),
             ({"tokenizer": tokenizer_path}, models["unknown"], "'position_ids'"),
             ({"tokenizer": tokenizer_path, "max_length": 30}, models["fixed"], "max_length=30 is longer than"),
             ({"tokenizer": tokenizer_path, "max_length": 0}, models["mask"], "positive int")]
    for keywords, model, fragment in cases:
        with pytest.raises(ValueError, match=fragment):
            explain_file(model, None, "ig", text=TEXTS, target=1, out=out, plot=tmp_path / "p.html", **keywords)
    long = [LONG]
    with pytest.raises(ValueError, match=rf"row\(s\) \[0\] .* fix the sequence length at {FIXED}.*max_length"):
        explain_file(models["fixed"], None, "ig", text=long, tokenizer=tokenizer_path, target=1, out=out)
    with pytest.raises(ValueError, match="not both"):
        explain_file(models["mask"], str(tmp_path / "x.npz"), "ig", text=TEXTS, tokenizer=tokenizer_path)
    with pytest.raises(ValueError, match="texts must be strings"):
        read_texts(["ok", 3], tokenizer_path, infos(models["mask"]))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        load_tokenizer(tmp_path / "broken.json")
    assert not out.exists() and not (tmp_path / "p.html").exists()


# ---------------------------------------------------------------------- the command line
def _fails(capsys, argv, *fragments):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err


def test_cli_explains_texts_and_text_files(tokenizer_path, models, tmp_path, capsys):
    out, page = tmp_path / "a.npz", tmp_path / "t.png"
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS[1:]) + "\n\n", encoding="utf-8")
    assert main(["explain", models["types"], "--text", TEXTS[0], "--text-file", str(tmp_path / "texts.txt"),
                 "--tokenizer", tokenizer_path, "-m", "ig", "--target", "2", "--n-steps", "8", "--out", str(out),
                 "--plot", str(page)]) == 0
    assert str(page) in capsys.readouterr().out and page.exists()
    assert read_text_file(tmp_path / "texts.txt") == TEXTS[1:]
    feeds, _ = reference_feeds(tokenizer_path, TEXTS)
    expected = onnxplain.Explainer(models["types"], "ig", inputs=["input_ids"]).explain(feeds, 2, n_steps=8)
    np.testing.assert_allclose(np.load(out)["attributions"], expected, rtol=1e-5, atol=1e-7)
    base = ["explain", models["mask"], "-m", "ig", "--target", "1"]
    _fails(capsys, base, "give the INPUT file(s)", "--text")
    _fails(capsys, base + ["--tokenizer", tokenizer_path], "--tokenizer apply to texts")
    _fails(capsys, base + ["--text", "a film"], "needs a tokenizer")
    _fails(capsys, base[:2] + [str(tmp_path / "x.npz")] + base[2:] + ["--text", "a film", "--tokenizer",
                                                                      tokenizer_path], "not both")
    _fails(capsys, base + ["--text", "a film", "--tokenizer", tokenizer_path, "--batch-size", "2",
                           "--out", str(tmp_path / "s.npy")], "--text cannot be used with --batch-size")
    _fails(capsys, ["explain", models["fixed"], "-m", "ig", "--target", "1", "--tokenizer", tokenizer_path,
                    "--text", LONG, "--out", str(tmp_path / "b.npz")], f"at {FIXED}")
    assert not (tmp_path / "b.npz").exists() and not os.path.exists(tmp_path / "s.npy")


def test_tokenizers_is_imported_only_when_a_tokenizer_is_read(tokenizer_path, monkeypatch):
    import subprocess
    import sys
    code = ("import sys, onnxplain, onnxplain.files, onnxplain.cli, onnxplain.sources.text; "
            "assert 'tokenizers' not in sys.modules, 'imported'")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    monkeypatch.setitem(sys.modules, "tokenizers", None)          # as on an install without the extra
    with pytest.raises(onnxplain.errors.MissingExtraError, match=r'pip install "onnxplain\[text\]"'):
        load_tokenizer(tokenizer_path)
