"""Explaining inputs stored in files: .npy/.npz in, attributions and pictures out.

:func:`explain_file` is what ``onnxplain explain`` runs; a script may call it too:

    result = onnxplain.files.explain_file("model.onnx", "x.npy", method="ig", target="pred",
                                          out="attr.npz", plot="attr.png")
    print(result.summary())

:func:`explain_npy` (``onnxplain explain --batch-size N``) streams the rows of
an ``.npy`` file larger than memory through :func:`onnxplain.datasets.explain_dataset`.

Every mistake (a missing or unreadable file, a wrong suffix, a folder that does
not exist) is a ``ValueError`` naming what was expected, raised before any
attribution is computed.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field, replace

import numpy as np

from .api import Explainer
from .datasets import DatasetRun, explain_dataset
from .errors import one_line
from .options import ExplainOptions
from .paths import check_output_path
from .prepare import graph_inputs, prepare
from .report import text_table
from .targets import PREDICTED, parse_target, predicted_target

_INTEGER = re.compile(r"[+-]?\d+")


# ---------------------------------------------------------------------- reading
def load_array(path, what: str = "array", mmap: bool = False) -> np.ndarray:
    """The array in an ``.npy`` file (never unpickled); ``what`` names it in errors.  ``mmap``: memory-mapped,
    read only as its rows are (a dataset streamed batch by batch)."""
    path = os.fspath(path)
    if not path.endswith(".npy"):
        raise ValueError(f"{what} must be an .npy file, got {path!r}")
    if not os.path.isfile(path):
        raise ValueError(f"{what}: no such file {path!r}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{what}: cannot read {path!r} as an .npy array: {one_line(e)}") from e


def load_inputs(path, model_inputs: list[str] | None = None):
    """A model's inputs from ``.npy`` (one array) or ``.npz`` (one array per input name).

    With ``model_inputs`` (the model's input names) the arrays are matched to
    them: an ``.npz`` holding one unnamed array (``np.savez``'s ``arr_0``) feeds
    a one-input model, and a missing name is an error.  A list of one path is that path.
    """
    if isinstance(path, (list, tuple)) and len(path) == 1:
        path = path[0]
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"no such input file {path!r}")
    if path.endswith(".npy"):
        arrays = load_array(path, "INPUT")
    elif path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except Exception as e:
            raise ValueError(f"cannot read {path!r} as an .npz archive: {one_line(e)}") from e
    else:
        raise ValueError(f"INPUT must be an .npy or .npz file (or image files, or folders of them), got {path!r}")
    return arrays if model_inputs is None else _match_inputs(arrays, list(model_inputs), path)


def _match_inputs(arrays, names: list[str], path: str):
    if isinstance(arrays, dict):
        if len(arrays) == 1 and len(names) == 1 and names[0] not in arrays:
            return next(iter(arrays.values()))
        missing = [k for k in names if k not in arrays]
        if missing:
            raise ValueError(f"{path!r} has arrays {sorted(arrays)} but the model's inputs are {names} "
                             f"(missing {missing})")
        return {k: arrays[k] for k in names}
    if len(names) != 1:
        raise ValueError(f"the model has {len(names)} inputs {names}: give an .npz with one array per input name")
    return arrays


def parse_value(text: str, what: str, allow_files: bool = True):
    """A parameter typed as text: an int when it is written as one (a token id), a float, or an ``.npy`` file."""
    text = str(text).strip()
    if _INTEGER.fullmatch(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        pass
    if not allow_files:
        raise ValueError(f"{what} must be a number here, got {text!r}")
    if not text.endswith(".npy"):
        raise ValueError(f"{what} must be a number or an .npy file, got {text!r}")
    return load_array(text, what)


def parse_batch_axes(items) -> dict:
    """``batch_axes`` from ``NAME=AXIS`` strings (``NAME=none`` for an unbatched input), as the command
    line's ``--batch-axis`` gives them."""
    axes = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        text = text.strip().lower()
        if not sep or not name.strip() or not (text == "none" or text.lstrip("-").isdigit()):
            raise ValueError(f"--batch-axis expects NAME=AXIS (an int, or none for an unbatched input), "
                             f"got {item!r}")
        axes[name.strip()] = None if text == "none" else int(text)
    return axes


def read_tokens(path) -> list[list[str]]:
    """Word pieces to show for token ids: a JSON file with one list of strings per row (or one list)."""
    path = os.fspath(path)
    if not path.endswith(".json") or not os.path.isfile(path):
        raise ValueError(f"tokens must be an existing .json file (a list of token lists), got {path!r}")
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path!r} as JSON: {one_line(e)}") from e
    if isinstance(value, list) and value and all(isinstance(t, str) for t in value):
        value = [value]
    if not (isinstance(value, list) and all(isinstance(r, list) and all(isinstance(t, str) for t in r)
                                            for r in value)):
        raise ValueError(f"{path!r} must hold a list of strings per row, e.g. [[\"[CLS]\", \"hello\", \"[SEP]\"]]")
    return value


def read_feature_names(text: str) -> list[str]:
    """Feature names: a ``.txt`` file with one name per line, or the names separated by commas."""
    if text.endswith(".txt"):
        if not os.path.isfile(text):
            raise ValueError(f"feature names: no such file {text!r}")
        with open(text, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    return [name.strip() for name in text.split(",")]


# ---------------------------------------------------------------------- writing
def save_attributions(path, explainer, attributions, delta=None) -> str:
    """Write attributions (and ``delta``) as the explanation graph names them; return what was written.

    ``.npz``: ``attributions`` (or ``attributions_<input>`` for several inputs)
    and ``delta``; ``.npy``: the one attributed input's attributions.
    """
    path = os.fspath(path)
    arrays = attributions if isinstance(attributions, dict) else {explainer.inputs[0]: attributions}
    if path.endswith(".npz"):
        named = {explainer.spec.attribution_name(k): v for k, v in arrays.items()}
        if delta is not None:
            named["delta"] = np.asarray(delta)
        np.savez(path, **named)
        return f"wrote {path}: {', '.join(named)}"
    if len(arrays) != 1:
        raise ValueError(f"several inputs are attributed ({', '.join(arrays)}): write them to an .npz file")
    value = next(iter(arrays.values()))
    np.save(path, value)
    return f"wrote {path}: attributions {value.shape}"


# ---------------------------------------------------------------------- the whole command
@dataclass
class FileExplanation:
    """What :func:`explain_file` computed and wrote."""

    explainer: object
    inputs: object
    attributions: dict            # by attributed input (or layer) name
    delta: np.ndarray | None
    target: object                # the target as used (per-row indices for "pred"), None with target_weights
    weighted: bool                # explained with target_weights
    seconds: float
    written: list = field(default_factory=list)   # one line per file written
    names: list | None = None                      # the rows' labels in the summary (image files' names)

    @property
    def by_row(self) -> dict:
        """The attributions with each input's batch axis first (a state's ``(layers, N, hidden)`` -> ``(N, ...)``)."""
        axes = self.explainer.batch_axes
        return {k: np.moveaxis(a, axes.get(k) or 0, 0) for k, a in self.attributions.items()}

    @property
    def rows(self) -> int:
        return len(next(iter(self.by_row.values())))

    def summary(self, max_rows: int = 10) -> str:
        """A few lines for a terminal: what was explained, a table of sums (and deltas) per row, the files."""
        ex, n = self.explainer, self.rows
        lines = [f"{ex.method_name} attributions of {ex.output!r} for {n} row(s) of {', '.join(self.attributions)} "
                 f"in {self.seconds * 1000:.1f} ms"]
        sums = sum(a.reshape(n, -1).sum(axis=1, dtype=np.float64) for a in self.by_row.values())
        header = ["row", "target", "sum(attributions)"] + (["delta"] if self.delta is not None else [])
        table = []
        for r in range(min(n, max_rows)):
            row = [str(self.names[r]) if self.names else str(r), self._target_text(r), f"{sums[r]:.6g}"]
            if self.delta is not None:   # per row; a noise tunnel has one per noisy sample: the largest
                d = np.ravel(self.delta[r])
                row.append(f"{d[np.argmax(np.abs(d))]:+.2e}")
            table.append(row)
        lines.append(text_table(header, table))
        if n > max_rows:
            lines.append(f"... {n - max_rows} more row(s)")
        lines += self.written or ["(no --out given: nothing written)"]
        return "\n".join(lines)

    def _target_text(self, r: int) -> str:
        if self.weighted:
            return "weights"
        if isinstance(self.target, list):
            return str(self.target[r])
        return "-" if self.target is None else str(self.target)


def explain_file(model, input_path, method: str = "saliency", *, target=None, target_weights=None, out=None,
                 plot=None, tokens=None, feature_names=None, text=None, tokenizer=None, max_length=None,
                 columns=None, table: dict | None = None, summary: bool | None = None, image=None,
                 options: ExplainOptions | None = None, **keywords) -> FileExplanation:
    """Explain the rows stored in ``input_path`` (``.npy``, or ``.npz`` by input name).

    target: Captum's forms, or ``"pred"`` (each row's largest output), or
        ``target_weights`` (an array or an ``.npy`` path) instead.
    out: write the attributions (``.npy`` for one attributed input, or ``.npz``
        with ``delta`` too).
    plot: draw them (:func:`onnxplain.viz.plot_explanation`): ``.png`` for
        images and tabular rows, ``.html`` for token ids; ``tokens`` (lists of
        word pieces, or a ``.json`` path) and ``feature_names`` label them.
    text: instead of ``input_path`` (give ``None``), one text or a list, tokenized by ``tokenizer``
        (a ``tokenizer.json`` path or a ``tokenizers.Tokenizer``) into the model's ``input_ids``,
        ``attention_mask`` and ``token_type_ids`` (:func:`onnxplain.sources.text.read_texts`; ``max_length``
        truncates); ``input_ids`` is attributed at its embedding unless ``inputs`` or ``layer`` say
        otherwise, and ``plot`` (``.html``, ``.png``, ``.svg``, ``.pdf``) shows the tokens without padding.
    columns, table: for a ``.csv`` ``input_path`` (:func:`onnxplain.sources.tables.read_csv`): the feature
        columns in the model's order (a list or ``"a,b,c"``; default all but the excluded), and ``table`` the
        other keywords of ``read_csv`` (``{"exclude": ["label"], "id_column": "id", "fill": 0.0}``).  The
        columns' names label the picture and go with ``out`` (an ``.npz``'s ``feature_names``, or
        ``<out>.feature_names.txt`` beside an ``.npy``).
    summary: tabular rows drawn as one :func:`onnxplain.viz.feature_summary` (True), a bar chart per row
        (False), or the summary when there are more rows than ``viz.MAX_ROWS`` (None, the default).
    image: for image inputs (``input_path`` an image file, a folder of them, or a list of files and folders:
        :func:`onnxplain.sources.images.read_images`): an :class:`~onnxplain.sources.images.ImageFormat` or a
        preset's name (default ``"imagenet"``), fitted to the model's float rank-4 input
        (:func:`~onnxplain.sources.images.format_for_model`: a size or channel count the model contradicts
        is an error before anything runs).  ``plot`` draws the heatmaps over the images as the model saw
        them (resized and cropped, not normalised), rows labelled by file name.
    options: an :class:`~onnxplain.ExplainOptions` (the method, the Explainer's keywords and the method's
        parameters); or, as keywords, the Explainer's (``output``, ``inputs``, ``layer``, ``batch_axes``,
        ``batch_size``: the most rows the model sees per forward pass, ``noise_tunnel``, ``memory_budget``...)
        and ``params``: the method's parameters as :meth:`Explainer.explain` takes them
        (``{"n_steps": 32, "method": "riemann_left", "baselines": 0}``).  For a dataset larger than
        memory, streamed batch by batch, see :func:`explain_npy`.
    Paths, parameters and targets are checked before anything is computed.
    """
    from .methods import canonical_name

    options = ExplainOptions.merged(method, options, keywords)
    options = replace(options, method=canonical_name(options.method))
    params = options.params
    if target is not None and target_weights is not None:
        raise ValueError("give either a target or target_weights, not both")
    text_rows = None
    if text is not None:
        text_rows, options = _rows_from_text(model, input_path, text, tokenizer, max_length, options)
    images = image_inputs(input_path, image) if text_rows is None else None   # None unless image files
    raw = load_inputs(input_path) if text_rows is None and images is None and csv_input(input_path) is None \
        else None
    ex = Explainer.from_options(model, options)
    ex.method.check_params(dict(params))            # unknown or bad parameters fail before anything runs
    several = not ex.spec.single
    check_output_path(out, (".npz",) if several else (".npy", ".npz"),
                      why="several inputs are attributed" if several else "")
    if plot is not None:
        _prepare_plot(ex, plot)
    if isinstance(tokens, (str, os.PathLike)):
        tokens = read_tokens(tokens)
    table_rows = _rows_from_csv(ex, input_path, columns, table)     # None unless input_path is a .csv file
    if table_rows is not None and feature_names is None:
        feature_names = table_rows.feature_names
    image_rows = _rows_from_images(ex, images, image) if images is not None else None
    rows = text_rows if text_rows is not None else table_rows if table_rows is not None else image_rows
    x = _match_inputs(raw, ex.model_inputs, os.fspath(input_path)) if rows is None else rows.inputs
    if isinstance(target_weights, (str, os.PathLike)):
        target_weights = load_array(target_weights, "target weights")
    if isinstance(target, str):
        target = parse_target([target])
    if isinstance(target, str):                                   # "pred"
        target = predicted_target(ex.forward(x)[ex.output])

    t0 = time.perf_counter()
    kwargs = {"target_weights": target_weights} if target_weights is not None else {}
    if ex.method.has_delta:
        attr, delta = ex.explain(x, target, return_convergence_delta=True, **kwargs, **params)
    else:
        attr, delta = ex.explain(x, target, **kwargs, **params), None
    seconds = time.perf_counter() - t0

    result = FileExplanation(ex, x, attr if isinstance(attr, dict) else {ex.inputs[0]: attr},
                             None if delta is None else np.asarray(delta), target, target_weights is not None,
                             seconds, names=None if image_rows is None else image_rows.names)
    if out:
        result.written.append(save_attributions(out, ex, attr, delta))
        if table_rows is not None:
            result.written.append(save_feature_names(out, table_rows.feature_names))
    if plot is not None:
        from . import viz
        words = {"tokens": tokens} if text_rows is None else {"tokens": text_rows.tokens,
                                                              "token_positions": text_rows.extra["mask"]}
        viz.plot_explanation(ex, x, result.attributions, plot, feature_names=feature_names, summary=summary,
                             **words, **_image_pictures(image_rows))
        kind, drawn = viz.picture_kind(ex), min(result.rows, viz.MAX_ROWS)
        if kind == "tabular" and viz.draws_summary(result.rows, summary):
            kind, drawn = "tabular summary", result.rows
        shown = f"{drawn} row(s)" + (f", the first of {result.rows}" if drawn < result.rows else "")
        result.written.append(f"wrote {os.fspath(plot)}: {kind} picture of {shown}")
    return result


def image_inputs(input_path, image=None) -> list | None:
    """The image files and folders ``input_path`` names (one path or a list), or None when it names none
    (then ``image`` must not be given); images mixed with other files, or several non-image files, are errors."""
    from .sources.images import IMAGE_SUFFIXES, is_image_path

    paths = list(input_path) if isinstance(input_path, (list, tuple)) else [input_path]
    found = [is_image_path(p) for p in paths]
    if all(found) and paths:
        return paths
    if any(found):
        others = [os.fspath(p) for p, f in zip(paths, found) if not f]
        raise ValueError(f"the inputs mix images with other files ({', '.join(map(repr, others[:3]))}): give image "
                         f"files ({', '.join(IMAGE_SUFFIXES)}) and folders of them, or one .npy/.npz file")
    if image is not None:
        raise ValueError(f"image= (--preset, --size, --crop, --mean, --std, --layout, --channel-order) applies to "
                         f"image files, but the input is {input_path!r}")
    if len(paths) > 1 and csv_input(paths) is None:
        raise ValueError(f"give one .npy or .npz file, or image files and folders; got {len(paths)} inputs")
    return None


def image_input(ex):
    """The model input that images feed: its float rank-4 input (the attributed one when ``inputs=`` names it),
    batched on axis 0 and the model's only input."""
    from .graph import FLOAT_TYPES

    infos = {vi.name: vi for vi in graph_inputs(ex.model)}
    candidates = [k for k in ex.spec.wrt if k in infos] or list(infos)
    images = [k for k in candidates if len(infos[k].type.tensor_type.shape.dim) == 4
              and infos[k].type.tensor_type.elem_type in FLOAT_TYPES]
    if len(images) != 1:
        what = "the attributed inputs" if ex.spec.wrt and candidates != list(infos) else "the model's inputs"
        raise ValueError(f"images feed one floating-point rank-4 input (N, C, H, W) or (N, H, W, C); {what} "
                         f"{candidates} have {len(images) or 'no'} such input(s)" +
                         ("" if not images else ": name one with inputs=[NAME] (--input NAME)"))
    name = images[0]
    others = [k for k in infos if k != name]
    if others:
        raise ValueError(f"images feed the input {name!r}, but the model also takes {others}: give every input in "
                         f"an .npz file")
    if ex.batch_axes.get(name, 0) != 0:
        raise ValueError(f"images are rows of the input {name!r} on its axis 0, but its batch axis is "
                         f"{ex.batch_axes.get(name)}")
    return infos[name]


def _image_source(ex, paths, image):
    """The images of ``paths`` as a lazily decoded source (:class:`~onnxplain.sources.images.ImageSource`),
    their format fitted to the model's image input and their tensor's shape checked against it: every header
    read, no pixel decoded, nothing run."""
    from .sources.images import ImageSource, check_tensor_shape, format_for_model

    info = image_input(ex)
    fmt = format_for_model(image if image is not None else "imagenet", info)
    source = ImageSource(paths, fmt)
    check_tensor_shape(source.shape, info)
    return source, info.name


def _rows_from_images(ex, paths, image):
    """The images of ``paths`` read as the model's input (:class:`~onnxplain.sources.Rows`, with the images as
    the model saw them), checked against the model before any pixel is decoded."""
    source, name = _image_source(ex, paths, image)
    return source.rows(name)


def _image_pictures(rows) -> dict:
    """What :func:`onnxplain.viz.plot_explanation` draws image rows with: the images as the model saw them,
    labelled by file name ({} for other rows)."""
    if rows is None or rows.images is None:
        return {}
    fmt = rows.extra["format"]
    return {"shown_images": rows.images, "row_labels": rows.names,
            "channels": "first" if fmt.layout == "NCHW" else "last"}


def _rows_from_text(model, input_path, text, tokenizer, max_length, options: ExplainOptions):
    """The model's text inputs for ``text`` (:func:`onnxplain.sources.text.read_texts`), and the options
    attributing ``input_ids`` when they name no input or layer."""
    from .sources.text import load_tokenizer, read_texts

    if input_path is not None:
        raise ValueError(f"give either an input file or text, not both (got {os.fspath(input_path)!r} and text)")
    if tokenizer is None:
        raise ValueError("text needs a tokenizer: tokenizer='tokenizer.json' (--tokenizer), a tokenizers file")
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
    prepared = prepare(model, options.batch_axes, options.output)
    rows = read_texts(text, tok, {vi.name: vi for vi in graph_inputs(prepared.model)}, max_length)
    if options.inputs is None and options.layer is None:
        options = replace(options, inputs=["input_ids"])
    return rows, options


def csv_input(input_path) -> str | None:
    """The path of a ``.csv`` input (given alone, or as a list of one), else None."""
    paths = list(input_path) if isinstance(input_path, (list, tuple)) else [input_path]
    csvs = [os.fspath(p) for p in paths if isinstance(p, (str, os.PathLike)) and os.fspath(p).lower().endswith(".csv")]
    if csvs and len(paths) > 1:
        raise ValueError(f"a table is explained one .csv file at a time, got {len(paths)} inputs")
    return csvs[0] if csvs else None


def _rows_from_csv(ex, input_path, columns=None, table=None):
    """The rows of a ``.csv`` ``input_path`` as the model's one input (:func:`onnxplain.sources.tables.read_csv`),
    checked against its shape and dtype before anything runs; None for another input (which takes no
    ``columns`` or ``table``)."""
    path = csv_input(input_path)
    if path is None:
        if columns is not None or table:
            raise ValueError(f"columns= and table= choose the columns of a .csv file, but the input is "
                             f"{input_path!r}")
        return None
    from .sources.tables import read_csv

    model_inputs = graph_inputs(ex.model)
    if len(model_inputs) != 1:
        raise ValueError(f"a CSV file feeds a model of one input; this one has {len(model_inputs)} "
                         f"({', '.join(vi.name for vi in model_inputs)})")
    table = dict(table or {})
    unknown = sorted(set(table) - {"exclude", "id_column", "fill", "delimiter"})
    if unknown:
        raise ValueError(f"table= takes exclude, id_column, fill and delimiter, not {', '.join(unknown)}")
    return read_csv(path, columns, input_name=model_inputs[0].name, model_input=model_inputs[0], **table)


def save_feature_names(out, names) -> str:
    """Write the columns' names with the attributions in ``out``: into an ``.npz`` (``feature_names``, added
    to what it holds), else beside it as ``<out>.feature_names.txt``, one name per line (what
    ``--feature-names`` reads back)."""
    out = os.fspath(out)
    if out.endswith(".npz"):
        with np.load(out, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        np.savez(out, **arrays, feature_names=np.asarray(list(names), dtype=str))
        return f"wrote {out}: feature_names"
    side = out + ".feature_names.txt"
    with open(side, "w", encoding="utf-8") as f:
        f.write("".join(f"{name}\n" for name in names))
    return f"wrote {side}: {len(names)} column name(s)"


def _prepare_plot(explainer, path) -> None:
    """Fail early when the picture cannot be drawn: no picture for this input, a wrong suffix, no matplotlib."""
    from . import viz
    viz.check_picture_path(path, viz.picture_kind(explainer))
    viz.require()


# ---------------------------------------------------------------------- a dataset, streamed
def _streamed_call(method, options, keywords, model_batch_size, target, target_file, target_weights):
    """The options, target and target weights of a streamed run (:func:`explain_npy`, :func:`explain_csv`):
    ``model_batch_size`` is the Explainer's ``batch_size``, per-row targets and weights are memmapped files,
    and ``"pred"`` is refused (a streamed run does not keep the rows' outputs)."""
    if model_batch_size is not None:
        keywords["batch_size"] = model_batch_size
    options = ExplainOptions.merged(method, options, keywords)
    if isinstance(target, str) and target == PREDICTED:
        raise ValueError("target 'pred' is not streamed: write the predicted classes to an .npy file and give it "
                         "as target_file")
    if target is not None and target_file is not None:
        raise ValueError("give either target or target_file, not both")
    if target_file is not None:
        target = load_array(target_file, "target_file", mmap=True)
    extra = {} if target_weights is None else {"target_weights": load_array(target_weights, "target_weights",
                                                                             mmap=True)}
    return options, target, extra


def explain_npy(model, data, out, method: str = "saliency", *, target=None, target_file=None, target_weights=None,
                batch_size: int | None = None, overwrite: bool = False, progress: bool | None = None,
                model_batch_size: int | None = None, image=None, options: ExplainOptions | None = None,
                **keywords) -> DatasetRun:
    """:func:`~onnxplain.datasets.explain_dataset` of the rows of the ``.npy`` file ``data`` (memmapped: read
    batch by batch), or of images: ``data`` an image file, a folder of them or a list of files and folders,
    decoded batch by batch (:class:`~onnxplain.sources.images.ImageSource`; ``image``: the format, as
    :func:`explain_file` takes it).  The images' file names go beside ``out`` as ``<out>.names.txt``, one per
    line, in the rows' order; a run resumed over other images (other names) is refused unless ``overwrite``.

    ``batch_size``: the rows of one streamed batch (default: what the memory budget holds);
    ``model_batch_size``: the most rows the model sees per forward pass (the ``batch_size`` of
    :class:`~onnxplain.Explainer`).  ``target_file`` and ``target_weights`` are ``.npy`` paths (memmapped
    too): one target per row, or weights shaped like the output.  ``target="pred"`` is refused (write the
    predicted classes to a ``target_file``).  ``options`` or ``keywords``: as :func:`explain_file`'s (the
    Explainer's ``batch_size`` is ``model_batch_size`` here).  What the command line's ``explain
    --batch-size`` runs.
    """
    options, target, extra = _streamed_call(method, options, keywords, model_batch_size, target, target_file,
                                            target_weights)
    images = image_inputs(data, image)
    source = load_array(data, "the data", mmap=True) if images is None else None
    ex = Explainer.from_options(model, options)
    if images is not None:
        source, _ = _image_source(ex, images, image)
        check_names_file(out, source.names, overwrite)
    run = explain_dataset(ex, source, out, target, batch_size=batch_size, overwrite=overwrite, progress=progress,
                          **extra, **options.params)
    if images is None:
        return run
    return ImageDatasetRun(**vars(run), names_file=write_names_file(out, source.names))


@dataclass
class ImageDatasetRun(DatasetRun):
    """A :class:`~onnxplain.datasets.DatasetRun` over images, with the file holding their names."""

    names_file: str | None = None

    def summary(self) -> str:
        return super().summary() + (f"\nwrote {self.names_file}: the images' names" if self.names_file else "")


def names_file(out) -> str:
    """Where the names of a streamed run's rows go: ``<out>.names.txt`` (``out`` without a trailing ``/``)."""
    return os.fspath(out).rstrip("/\\") + ".names.txt"


def check_names_file(out, names, overwrite: bool) -> None:
    """Refuse to resume ``out`` over other rows: its names file, when there is one, must list ``names``."""
    path = names_file(out)
    if overwrite or not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        written = f.read().splitlines()
    if written != list(names):
        first = next((k for k, (a, b) in enumerate(zip(written, names)) if a != b), min(len(written), len(names)))
        raise ValueError(f"{os.fspath(out)!r} holds the attributions of other images ({path} lists {len(written)}, "
                         f"row {first} differs from the {len(names)} given): pass overwrite=True (--overwrite) to "
                         f"replace them")


def write_names_file(out, names) -> str:
    """Write ``names`` (one per line) to ``<out>.names.txt``, atomically; return the path."""
    path = names_file(out)
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
        f.write("".join(f"{name}\n" for name in names))
    os.replace(partial, path)
    return path


def explain_csv(model, path, out, method: str = "saliency", *, columns=None, table: dict | None = None,
                target=None, target_file=None, target_weights=None, batch_size: int | None = None,
                overwrite: bool = False, progress: bool | None = None, model_batch_size: int | None = None,
                options: ExplainOptions | None = None, **keywords) -> DatasetRun:
    """:func:`~onnxplain.datasets.explain_dataset` of the rows of the CSV file ``path``, into ``out``
    (``.npy`` or ``.zarr``), resumable.

    The file is parsed once, whole, into the model input's array (every cell checked before anything is
    written; ``columns`` and ``table`` as :func:`explain_file` takes them), then streamed ``batch_size`` rows
    at a time: a run started again with the same arguments computes only the batches not on disk.  The
    columns' names go beside ``out`` as ``<out>.feature_names.txt``.  The other arguments are
    :func:`explain_npy`'s.  What ``onnxplain explain --csv data.csv --batch-size N`` runs.
    """
    options, target, extra = _streamed_call(method, options, keywords, model_batch_size, target, target_file,
                                            target_weights)
    ex = Explainer.from_options(model, options)
    if csv_input(path) is None:
        raise ValueError(f"explain_csv reads a .csv file, got {path!r}")
    rows = _rows_from_csv(ex, path, columns, table)
    run = explain_dataset(ex, rows.inputs, out, target, batch_size=batch_size, overwrite=overwrite,
                          progress=progress, **extra, **options.params)
    save_feature_names(os.fspath(out).rstrip("/"), rows.feature_names)
    return run
