"""Text in: sentences tokenized by a local ``tokenizer.json`` into a text model's input arrays.

    tok = load_tokenizer("tokenizer.json")
    rows = read_texts(["a fine film", "dull"], tok, {"input_ids": vi_ids, "attention_mask": vi_mask})
    rows.inputs["input_ids"]      # (2, L), the model's dtype, padded
    rows.tokens                   # the tokens' strings of each row, padding left out

The tokenizer is the ``tokenizers`` package's (the optional extra ``onnxplain[text]``), read from a file:
nothing is fetched from a hub.  The model's inputs are filled by name: ``input_ids`` (required),
``attention_mask`` and ``token_type_ids`` (when the model takes them); any other input is refused, since
text cannot say what it holds.

Padding and truncation are decided here, not by the tokenizer file's own settings (which are ignored):
rows are padded to the longest row, or to the sequence length the model's input fixes, with the
tokenizer's pad id (its padding settings', else the id of ``[PAD]`` or ``<pad>``, else 0), on the side
its padding settings name (default the right).  Nothing is truncated unless ``max_length`` asks: a text
longer than a fixed sequence length is refused, naming that length.  Hugging Face's
``tokenizer(texts, padding=True)`` pads the same way; its ``truncation=True`` is ``max_length`` here.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import MissingExtraError
from . import Rows

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>")
_INSTALL = 'pip install "onnxplain[text]"'


# ---------------------------------------------------------------------- the tokenizer
def _tokenizers():
    try:
        import tokenizers
    except ImportError as e:
        raise MissingExtraError(f"text inputs need the tokenizers package, which is not installed: {_INSTALL}") \
            from e
    return tokenizers


def load_tokenizer(path):
    """The ``tokenizers.Tokenizer`` saved in the local file ``path`` (a ``tokenizer.json``).

    A missing or unreadable file is a ``ValueError`` naming it; a missing ``tokenizers`` package a
    :class:`~onnxplain.errors.MissingExtraError` naming ``pip install "onnxplain[text]"``.
    """
    path = os.fspath(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "tokenizer.json")):
        path = os.path.join(path, "tokenizer.json")        # a saved model's folder
    if not os.path.isfile(path):
        raise ValueError(f"tokenizer: no such file {path!r} (expected a tokenizer.json saved by the tokenizers "
                         f"package, e.g. tokenizer.save('tokenizer.json'))")
    tokenizers = _tokenizers()
    try:
        return tokenizers.Tokenizer.from_file(path)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"tokenizer: cannot read {path!r} as a tokenizer.json: {first}") from e


def read_text_file(path) -> list[str]:
    """The texts of a UTF-8 text file, one per line (blank lines skipped, line ends stripped)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"text file: no such file {path!r} (expected one text per line)")
    with open(path, encoding="utf-8") as f:
        texts = [line.rstrip("\r\n") for line in f]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError(f"text file {path!r} holds no text (one text per line)")
    return texts


def pad_id(tokenizer) -> int:
    """The id padding uses: the tokenizer's padding settings', else ``[PAD]``/``<pad>``'s id, else 0."""
    settings = tokenizer.padding
    if settings:
        return int(settings["pad_id"])
    for token in PAD_TOKENS:
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return 0


# ---------------------------------------------------------------------- the model's inputs
def _dtype_and_shape(info):
    """(numpy dtype, shape with None for symbolic dims) of a ValueInfoProto or a plain shape (int64 then)."""
    if hasattr(info, "type"):
        from onnx import helper
        tt = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        return np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)), dims
    if info is None:
        return np.dtype(np.int64), [None, None]
    return np.dtype(np.int64), [d if isinstance(d, (int, np.integer)) and d > 0 else None for d in info]


def text_layout(model_inputs: dict) -> tuple[dict, int | None]:
    """The dtypes of the text inputs a model takes, and the sequence length it fixes (None: any).

    Refuses a model without ``input_ids``, an input other than the three text fills (naming it), an
    input that is not ``(batch, sequence)``, and inputs fixing different lengths.
    """
    names = list(model_inputs)
    unknown = [k for k in names if k not in TEXT_INPUTS]
    if unknown:
        raise ValueError(f"the model's input(s) {unknown} cannot be filled from text, which gives only "
                         f"{', '.join(TEXT_INPUTS)}; feed this model an .npz with one array per input name")
    if "input_ids" not in names:
        raise ValueError(f"text is fed to a model's 'input_ids' input, and this model's inputs are {names}")
    dtypes, lengths = {}, {}
    for name in names:
        dtype, dims = _dtype_and_shape(model_inputs[name])
        if len(dims) != 2:
            raise ValueError(f"input {name!r} has shape {dims}: text inputs are (batch, sequence)")
        dtypes[name] = dtype
        if dims[1] is not None:
            lengths[name] = int(dims[1])
    if len(set(lengths.values())) > 1:
        raise ValueError(f"the model's inputs fix different sequence lengths: {lengths}")
    return dtypes, next(iter(lengths.values()), None)


# ---------------------------------------------------------------------- texts -> rows
def _texts(texts) -> list[str]:
    rows = [texts] if isinstance(texts, str) else list(texts)
    if not rows:
        raise ValueError("no text given: give at least one text")
    bad = [r for r, t in enumerate(rows) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"texts must be strings; row(s) {bad} are not")
    return rows


def _encodings(texts: list[str], tokenizer, max_length: int | None):
    """The tokenizer's encodings of ``texts``, unpadded, truncated to ``max_length`` when given."""
    own = type(tokenizer).from_str(tokenizer.to_str())     # the caller's tokenizer keeps its settings
    own.no_padding()
    own.no_truncation()
    if max_length is not None:
        try:
            own.enable_truncation(int(max_length))
            return own.encode_batch(texts)
        except Exception as e:
            raise ValueError(f"cannot truncate to max_length={max_length}: {str(e).strip() or type(e).__name__} "
                             f"(the special tokens need room too)") from e
    return own.encode_batch(texts)


def _check_max_length(max_length, fixed: int | None) -> None:
    if max_length is None:
        return
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
        raise ValueError(f"max_length must be a positive int (tokens per text, special tokens included), "
                         f"got {max_length!r}")
    if fixed is not None and max_length > fixed:
        raise ValueError(f"max_length={max_length} is longer than the sequence length {fixed} the model's "
                         f"inputs fix")


def read_texts(texts, tokenizer, model_inputs: dict, max_length: int | None = None) -> Rows:
    """The model's text inputs for ``texts`` (one string or a list), as :class:`~onnxplain.sources.Rows`.

    tokenizer: a ``tokenizers.Tokenizer`` or the path of a ``tokenizer.json`` (:func:`load_tokenizer`).
    model_inputs: the model's inputs by name, each an ``onnx.ValueInfoProto`` (its dtype and static
        sequence length are used) or a shape (``(None, 128)``; int64 then).  ``input_ids`` is required;
        ``attention_mask`` (1 for tokens, 0 for padding) and ``token_type_ids`` are filled when present.
    max_length: truncate each text to this many tokens (special tokens included, as the tokenizer's own
        truncation counts them); without it a text longer than the model's fixed length is refused.
    Rows are padded to the longest row, or to the model's fixed length (see the module's docstring).
    Returns ``Rows`` with ``tokens`` (each row's tokens' strings, padding left out), ``names`` (the
    texts) and ``extra["mask"]``: a boolean ``(N, L)`` array, True at each row's tokens.
    """
    rows = _texts(texts)
    dtypes, fixed = text_layout(model_inputs)
    _check_max_length(max_length, fixed)
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
    if not hasattr(tok, "encode_batch"):
        raise ValueError(f"tokenizer must be a tokenizers.Tokenizer or a tokenizer.json path, got "
                         f"{type(tokenizer).__name__}")
    encodings = _encodings(rows, tok, max_length)
    longest = max(len(e.ids) for e in encodings)
    if fixed is not None and longest > fixed:
        too_long = [r for r, e in enumerate(encodings) if len(e.ids) > fixed]
        raise ValueError(f"text row(s) {too_long} have up to {longest} tokens but the model's inputs fix the "
                         f"sequence length at {fixed}; give max_length (--max-length) of at most {fixed} to "
                         f"truncate them")
    length = fixed if fixed is not None else longest
    settings = tok.padding or {}
    left = settings.get("direction", "right") == "left"
    mask = np.zeros((len(rows), length), dtype=bool)
    values = {"input_ids": np.full((len(rows), length), pad_id(tok), dtype=np.int64),
              "attention_mask": np.zeros((len(rows), length), dtype=np.int64),
              "token_type_ids": np.full((len(rows), length), int(settings.get("pad_type_id", 0)), dtype=np.int64)}
    for r, e in enumerate(encodings):
        where = slice(length - len(e.ids), length) if left else slice(0, len(e.ids))
        values["input_ids"][r, where] = e.ids
        values["attention_mask"][r, where] = e.attention_mask
        values["token_type_ids"][r, where] = e.type_ids
        mask[r, where] = True
    inputs = {name: values[name].astype(dtypes[name]) for name in model_inputs}
    return Rows(inputs, rows, tokens=[list(e.tokens) for e in encodings],
                extra={"mask": mask, "length": length, "pad_id": pad_id(tok)})
