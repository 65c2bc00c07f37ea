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
    a one-input model, and a missing name is an error.
    """
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
        raise ValueError(f"INPUT must be an .npy or .npz file, got {path!r}")
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
            row = [str(r), self._target_text(r), f"{sums[r]:.6g}"]
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
                 plot=None, tokens=None, feature_names=None, options: ExplainOptions | None = None,
                 **keywords) -> FileExplanation:
    """Explain the rows stored in ``input_path`` (``.npy``, or ``.npz`` by input name).

    target: Captum's forms, or ``"pred"`` (each row's largest output), or
        ``target_weights`` (an array or an ``.npy`` path) instead.
    out: write the attributions (``.npy`` for one attributed input, or ``.npz``
        with ``delta`` too).
    plot: draw them (:func:`onnxplain.viz.plot_explanation`): ``.png`` for
        images and tabular rows, ``.html`` for token ids; ``tokens`` (lists of
        word pieces, or a ``.json`` path) and ``feature_names`` label them.
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
    raw = load_inputs(input_path)
    ex = Explainer.from_options(model, options)
    ex.method.check_params(dict(params))            # unknown or bad parameters fail before anything runs
    several = not ex.spec.single
    check_output_path(out, (".npz",) if several else (".npy", ".npz"),
                      why="several inputs are attributed" if several else "")
    if plot is not None:
        _prepare_plot(ex, plot)
    if isinstance(tokens, (str, os.PathLike)):
        tokens = read_tokens(tokens)
    x = _match_inputs(raw, ex.model_inputs, os.fspath(input_path))
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
                             seconds)
    if out:
        result.written.append(save_attributions(out, ex, attr, delta))
    if plot is not None:
        from . import viz
        viz.plot_explanation(ex, x, result.attributions, plot, tokens=tokens, feature_names=feature_names)
        drawn = min(result.rows, viz.MAX_ROWS)
        shown = f"{drawn} row(s)" + (f", the first of {result.rows}" if drawn < result.rows else "")
        result.written.append(f"wrote {os.fspath(plot)}: {viz.picture_kind(ex)} picture of {shown}")
    return result


def _prepare_plot(explainer, path) -> None:
    """Fail early when the picture cannot be drawn: no picture for this input, a wrong suffix, no matplotlib."""
    from . import viz
    viz.check_picture_path(path, viz.picture_kind(explainer))
    viz.require()


# ---------------------------------------------------------------------- a dataset, streamed
def explain_npy(model, data, out, method: str = "saliency", *, target=None, target_file=None, target_weights=None,
                batch_size: int | None = None, overwrite: bool = False, progress: bool | None = None,
                model_batch_size: int | None = None, options: ExplainOptions | None = None,
                **keywords) -> DatasetRun:
    """:func:`~onnxplain.datasets.explain_dataset` of the rows of the ``.npy`` file ``data`` (memmapped: read
    batch by batch).

    ``batch_size``: the rows of one streamed batch (default: what the memory budget holds);
    ``model_batch_size``: the most rows the model sees per forward pass (the ``batch_size`` of
    :class:`~onnxplain.Explainer`).  ``target_file`` and ``target_weights`` are ``.npy`` paths (memmapped
    too): one target per row, or weights shaped like the output.  ``target="pred"`` is refused (write the
    predicted classes to a ``target_file``).  ``options`` or ``keywords``: as :func:`explain_file`'s (the
    Explainer's ``batch_size`` is ``model_batch_size`` here).  What the command line's ``explain
    --batch-size`` runs.
    """
    if model_batch_size is not None:
        keywords["batch_size"] = model_batch_size
    options = ExplainOptions.merged(method, options, keywords)
    if isinstance(target, str) and target == PREDICTED:
        raise ValueError("target 'pred' is not streamed: write the predicted classes to an .npy file and give it "
                         "as target_file")
    source = load_array(data, "the data", mmap=True)
    if target is not None and target_file is not None:
        raise ValueError("give either target or target_file, not both")
    if target_file is not None:
        target = load_array(target_file, "target_file", mmap=True)
    extra = {} if target_weights is None else {"target_weights": load_array(target_weights, "target_weights",
                                                                             mmap=True)}
    ex = Explainer.from_options(model, options)
    return explain_dataset(ex, source, out, target, batch_size=batch_size, overwrite=overwrite, progress=progress,
                           **extra, **options.params)
