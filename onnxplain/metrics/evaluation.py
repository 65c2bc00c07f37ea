"""Several metrics of the same attributions in one call: :func:`evaluate` and its :class:`MetricsReport`
(what ``onnxplain metrics`` prints, writes and draws)."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..api import Explainer
from ..errors import one_line
from ..files import load_array, load_inputs
from ..methods import canonical_name
from ..methods.perturbation import check_positive_int
from ..paths import check_output_path
from ..report import text_table
from ..targets import PREDICTED, predicted_target
from .flipping import FlippingCurve, deletion, insertion
from .infidelity import infidelity
from .perturbations import gaussian_perturbation, uniform_perturbation
from .sensitivity import sensitivity_max

#: the metrics :func:`evaluate` computes, in the order its report lists them
METRIC_NAMES = ("deletion", "insertion", "infidelity", "sensitivity_max")
#: the options of the metrics and the metrics that take each (an option given for none of those asked for is
#: refused)
METRIC_OPTIONS = {"steps": ("deletion", "insertion"),
                  "n_perturb_samples": ("infidelity", "sensitivity_max"),
                  "max_examples_per_batch": ("infidelity", "sensitivity_max"),
                  "normalize": ("infidelity",),
                  "perturb_stdev": ("infidelity",),
                  "perturb_radius": ("sensitivity_max",),
                  "norm_ord": ("sensitivity_max",),
                  "perturb_seed": ("infidelity", "sensitivity_max")}
#: what deletion and insertion share with a method that takes them: one value gives both
SHARED_PARAMS = ("baselines", "feature_mask")
DEFAULT_METHOD = "integrated_gradients"
REPORT_SUFFIXES = (".json", ".npz")
#: rows the table lists before it says how many more there are
MAX_TABLE_ROWS = 20
_COLUMNS = {"deletion": "deletion AUC", "insertion": "insertion AUC", "infidelity": "infidelity",
            "sensitivity_max": "sensitivity_max"}


@dataclass
class MetricsReport:
    """The metrics of one set of attributions, row by row.

    results: by metric name, in :data:`METRIC_NAMES` order: a :class:`FlippingCurve` (deletion, insertion) or
        float64 values ``(N,)`` (infidelity, sensitivity_max).
    target: the target the metrics explained (``"pred"`` resolved to each row's argmax), or ``"weights"``.
    method: the method that ran (attributions computed, or sensitivity_max), None when none did.
    origin: where the attributions came from, for the table's first line; ``sources`` the paths given
        (``model``, ``input``, ``attributions``), written into the JSON.
    """

    results: dict
    target: object
    method: str | None
    origin: str
    rows: int
    seconds: float = 0.0
    sources: dict = field(default_factory=dict)
    written: list = field(default_factory=list)

    def per_row(self) -> dict:
        """Each metric's value per row (the area under a curve), float64 ``(N,)``."""
        return {k: np.asarray(v.area if isinstance(v, FlippingCurve) else v, dtype=np.float64)
                for k, v in self.results.items()}

    def curves(self) -> dict:
        """The deletion and insertion curves among the results, by name."""
        return {k: v for k, v in self.results.items() if isinstance(v, FlippingCurve)}

    def table(self, max_rows: int = MAX_TABLE_ROWS) -> str:
        """The metrics of each row (at most ``max_rows``) and their means, as lines for a terminal."""
        values = self.per_row()
        header = ["row", "target"] + [_COLUMNS[k] for k in values]
        n = self.rows
        table = [[str(r), self._target_text(r)] + [f"{v[r]:.6g}" for v in values.values()]
                 for r in range(min(n, max_rows))]
        if n > max_rows:
            table.append([f"... {n - max_rows} more", ""] + [""] * len(values))
        table.append(["mean", ""] + [f"{np.mean(v):.6g}" for v in values.values()])
        lines = [f"{', '.join(values)} for {n} row(s), {self.origin}, in {self.seconds:.2f} s",
                 text_table(header, table)]
        if self.curves():
            lines.append("(deletion AUC: lower is better; insertion AUC: higher is better; area over the fraction "
                         "of features flipped, 0 to 1)")
        return "\n".join(lines)

    def _target_text(self, r: int) -> str:
        t = self.target
        return "weights" if t == "weights" else "-" if t is None else str(t[r]) if isinstance(t, list) else str(t)

    def arrays(self) -> dict:
        """The results as flat arrays: ``<metric>`` for per-row values, ``<curve>_area``, ``_fractions`` and
        ``_values`` for a curve (the ``.npz`` that :meth:`save` writes)."""
        out = {}
        for name, value in self.results.items():
            if isinstance(value, FlippingCurve):
                out.update({f"{name}_area": value.area, f"{name}_fractions": value.fractions,
                            f"{name}_values": value.values})
            else:
                out[name] = np.asarray(value)
        return out

    def to_dict(self) -> dict:
        """The report as JSON-ready values: the sources, method, target and every metric (a curve as its
        ``area``, ``fractions`` and ``values``)."""
        doc = {**{k: self.sources.get(k) for k in ("model", "input", "attributions")}, "method": self.method,
               "target": _jsonable(self.target), "metrics": {}}
        for name, value in self.results.items():
            doc["metrics"][name] = ({"area": _jsonable(value.area), "fractions": _jsonable(value.fractions),
                                     "values": _jsonable(value.values)} if isinstance(value, FlippingCurve)
                                    else _jsonable(np.asarray(value)))
        return doc

    def save(self, path) -> str:
        """Write the report to ``path``: ``.json`` (:meth:`to_dict`) or ``.npz`` (:meth:`arrays`), whole or not
        at all (a temporary file beside it, renamed when complete)."""
        path = os.fspath(path)
        check_writable(path, REPORT_SUFFIXES, "path")
        tmp = f"{path}.partial{os.getpid()}"
        try:
            if path.endswith(".npz"):
                with open(tmp, "wb") as f:
                    np.savez(f, **self.arrays())
            else:
                text = json.dumps(self.to_dict(), indent=1)
                with open(tmp, "w") as f:
                    f.write(text)
            os.replace(tmp, path)
        except BaseException:
            remove_quietly(tmp)
            raise
        return path

    def plot(self, path=None, *, title: str | None = None, **options):
        """The deletion and insertion curves (:func:`onnxplain.viz.flipping_curves`); the figure, written to
        ``path`` when given."""
        from .. import viz
        if not self.curves():
            raise ValueError("the report has no deletion or insertion curve to draw")
        return viz.flipping_curves(self.curves(), title=title, path=path, **options)


def evaluate(model, inputs, attributions=None, metrics=METRIC_NAMES, *, target=None, target_weights=None,
             method: str | None = None, params: dict | None = None, noise_tunnel: str | None = None,
             baselines=None, feature_mask=None, steps: int | None = None, n_perturb_samples: int | None = None,
             max_examples_per_batch: int | None = None, normalize: bool | None = None,
             perturb_stdev: float | None = None, perturb_radius: float | None = None, norm_ord=None,
             perturb_seed: int | None = None, output: str | None = None, attribute=None, batch_axes=None,
             batch_size: int | None = None, memory_budget=None, out=None, plot=None,
             argument_names: dict | None = None) -> MetricsReport:
    """Deletion and insertion curves, infidelity and max-sensitivity of attributions, one value per row.

    model: a model (path, bytes, ``ModelProto``; the Explainer is built from ``method``, ``noise_tunnel``,
        ``output``, ``attribute``, ``batch_axes``, ``batch_size`` and ``memory_budget``) or an
        :class:`~onnxplain.Explainer` (its method is the method; those keywords must then be left out).
    inputs: an array, a dict by input name, or an ``.npy`` / ``.npz`` path (:func:`onnxplain.files.load_inputs`).
    attributions: shaped like the attributed inputs (an array, a dict by input name or a tuple), or an
        ``.npy`` / ``.npz`` path (:func:`read_attributions`: arrays by input name or as ``explain --out``
        writes them); None: computed with ``method`` (default :data:`DEFAULT_METHOD`) and ``params``.
        sensitivity_max always explains perturbed copies with the method.
    metrics: names from :data:`METRIC_NAMES` (a sequence or ``"deletion,insertion"``), computed in that order.
    target: Captum's forms, or ``"pred"`` (each row's largest output); or ``target_weights``.
    baselines, feature_mask: what a flipped feature is set to and which features flip together
        (:func:`deletion`); also given to the method when it takes them (``params`` overrides).
    steps .. perturb_seed: the metrics' options (:data:`METRIC_OPTIONS` says which metric takes each; one
        given for none of ``metrics`` is an error); None: the metric's default.  ``perturb_stdev`` and
        ``perturb_seed`` build infidelity's :func:`gaussian_perturbation`, ``perturb_seed`` max-sensitivity's
        :func:`uniform_perturbation`.
    out: also :meth:`MetricsReport.save` the report there (``.json`` or ``.npz``); plot: draw the curves
        (``.png``, ``.svg``, ``.pdf``).  Written whole or not at all: a failed picture removes ``out``.
    argument_names: how errors name the arguments (the command line gives its flags: ``{"steps": "--steps"}``).
    Every argument, path, shape and target is checked before anything runs.  The numbers are those of
    :func:`deletion`, :func:`insertion`, :func:`infidelity` and :func:`sensitivity_max` on the same arrays.
    """
    name = _namer(argument_names)
    chosen = chosen_metrics(metrics, name("metrics"))
    options = {k: v for k, v in dict(steps=steps, n_perturb_samples=n_perturb_samples,
                                     max_examples_per_batch=max_examples_per_batch, normalize=normalize,
                                     perturb_stdev=perturb_stdev, perturb_radius=perturb_radius, norm_ord=norm_ord,
                                     perturb_seed=perturb_seed).items() if v is not None}
    check_metric_options(options, chosen, name)
    if plot is not None:
        _check_curves_plot(plot, chosen, name)
    if out is not None:
        check_writable(out, REPORT_SUFFIXES, name("out"))
    shared = {k: v for k, v in (("baselines", baselines), ("feature_mask", feature_mask)) if v is not None}
    ex, method, params = _explainer(model, method, params, noise_tunnel, shared, attributions is not None, chosen,
                                    dict(output=output, inputs=attribute, batch_axes=batch_axes,
                                         batch_size=batch_size, memory_budget=memory_budget), name)
    flips = shared if {"deletion", "insertion"} & set(chosen) else {}
    unused = [name(k) for k in shared if k not in flips and k not in (params or {})]
    if unused:
        raise ValueError(f"{', '.join(unused)}: used by deletion/insertion and by methods that take it; here by "
                         f"neither")
    sources = {"model": _path_or_none(model), "input": _path_or_none(inputs),
               "attributions": _path_or_none(attributions)}
    x = load_inputs(inputs, ex.model_inputs) if isinstance(inputs, (str, os.PathLike)) else inputs
    if isinstance(attributions, (str, os.PathLike)):
        attributions = read_attributions(attributions, ex, x, name("attributions"))
    targets = _targets(ex, x, target, target_weights)

    t0 = time.perf_counter()
    given = attributions is not None
    if not given:
        attributions = ex.explain(x, **targets, **params)
    results = _compute(chosen, ex, x, attributions, targets, flips, params, options)
    report = MetricsReport(results, "weights" if "target_weights" in targets else targets["target"],
                           method if params is not None else None, _origin(sources, given, method, chosen),
                           _rows(ex, x), time.perf_counter() - t0, sources)
    _write(report, out, plot, title=f"{_origin(sources, given, method, ())} of {ex.output!r}")
    return report


def chosen_metrics(metrics, what: str = "metrics") -> list[str]:
    """The metric names asked for (a sequence, or names separated by commas; ``-`` read as ``_``), in
    :data:`METRIC_NAMES` order."""
    words = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    names = [str(m).strip().lower().replace("-", "_") for m in words if str(m).strip()]
    unknown = [m for m in names if m not in METRIC_NAMES]
    if unknown or not names:
        raise ValueError(f"{what}: unknown metric(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"choose from {', '.join(METRIC_NAMES)}")
    return [m for m in METRIC_NAMES if m in names]


def check_metric_options(options: dict, chosen, name=str) -> None:
    """Options given for none of the ``chosen`` metrics, and values the metrics would refuse later; ``name``
    spells an option in errors."""
    for key in options:
        takers = METRIC_OPTIONS[key]
        if not set(takers) & set(chosen):
            raise ValueError(f"{name(key)} applies to {' and '.join(takers)}, which {name('metrics')} does not "
                             f"ask for")
    for key in ("steps", "n_perturb_samples", "max_examples_per_batch"):
        check_positive_int(options.get(key), key, allow_none=True)
    for key in ("perturb_stdev", "perturb_radius"):
        value = options.get(key)
        if value is not None and not value >= 0:
            raise ValueError(f"{name(key)} must be a number >= 0, got {value!r}")
    norm = options.get("norm_ord")
    if norm is not None and norm != "fro" and (isinstance(norm, bool) or
                                               not isinstance(norm, (int, float, np.integer, np.floating))):
        raise ValueError(f"{name('norm_ord')} must be 'fro' or a number p, got {norm!r}")


def read_attributions(path, explainer: Explainer, inputs, what: str = "attributions"):
    """The attributions in an ``.npy`` (one attributed input) or ``.npz`` file (arrays by input name, or named
    as the explanation graph names them, as ``explain --out`` writes them; a lone array for one input), by
    attributed input (an array for one), each checked against its input's shape."""
    path = os.fspath(path)
    names = explainer.inputs
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except FileNotFoundError:
            raise ValueError(f"{what}: no such file {path!r}") from None
        except Exception as e:
            raise ValueError(f"{what}: cannot read {path!r} as an .npz archive: {one_line(e)}") from e
        found = {}
        for k in names:
            key = next((c for c in (k, explainer.spec.attribution_name(k)) if c in arrays), None)
            if key is None and len(names) == 1:
                left = [c for c in arrays if c not in ("delta", "feature_names")]
                key = left[0] if len(left) == 1 else None
            if key is None:
                raise ValueError(f"{what} {path!r} has arrays {sorted(arrays)}; expected one per attributed "
                                 f"input {names} (by input name, or {explainer.spec.attribution_name(k)!r})")
            found[k] = arrays[key]
    elif path.endswith(".npy"):
        if len(names) != 1:
            raise ValueError(f"{len(names)} inputs are attributed ({', '.join(names)}): give {what} as an "
                             f".npz with one array per input name")
        found = {names[0]: load_array(path, what)}
    else:
        raise ValueError(f"{what} must be an .npy or .npz file, got {path!r}")
    for k, a in found.items():
        want = np.shape(inputs[k] if isinstance(inputs, dict) else inputs)
        if a.shape != want:
            raise ValueError(f"{what} for input {k!r} must have the input's shape {want}, got {a.shape}")
        if a.dtype.kind not in "fiub":
            raise ValueError(f"{what} for input {k!r} must be numbers, got dtype {a.dtype}")
    return found[names[0]] if len(names) == 1 else found


def check_writable(path, suffixes, what: str) -> None:
    """``path`` has one of ``suffixes`` and its folder exists and may be written (checked before any work)."""
    check_output_path(path, suffixes, what=what)
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.access(folder, os.W_OK):
        raise ValueError(f"cannot write {os.fspath(path)!r}: folder {folder!r} is not writable")


def remove_quietly(path) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


# ---------------------------------------------------------------------- the pieces of evaluate
def _namer(argument_names: dict | None):
    names = dict(argument_names or {})
    return lambda key: names.get(key, key)


def _check_curves_plot(path, chosen, name) -> None:
    from .. import viz
    if not {"deletion", "insertion"} & set(chosen):
        raise ValueError(f"{name('plot')} draws the deletion and insertion curves: add deletion or insertion to "
                         f"{name('metrics')}")
    viz.require()
    check_writable(path, viz.CURVE_SUFFIXES, name("plot"))


def _explainer(model, method, params, noise_tunnel, shared: dict, given: bool, chosen, keywords: dict, name):
    """``(explainer, method, params)``: the Explainer the metrics run (the method's when attributions are
    computed or sensitivity_max is asked for, else a forward-only one), the method's name and its checked
    parameters (None when no method runs; the shared baselines and feature mask added when it takes them)."""
    params = dict(params or {})
    runs_method = not given or "sensitivity_max" in chosen
    if isinstance(model, Explainer):
        extra = [{"inputs": "attribute"}.get(k, k) for k, v in (("method", method), ("noise_tunnel", noise_tunnel),
                                                                *keywords.items()) if v is not None]
        if extra:
            raise ValueError(f"{', '.join(extra)}: give them to the Explainer (model is an Explainer)")
        ex, method, explicit = model, model.method_name, False
    else:
        ex, explicit = None, method is not None
        method = canonical_name(method or DEFAULT_METHOD)
    if not runs_method:
        asked = ([name("method")] if explicit else []) + ([name("noise_tunnel")] if noise_tunnel else []) + \
            [f"parameter {k}" for k in params]
        if asked:
            raise ValueError(f"{', '.join(asked)}: no method runs ({name('attributions')} are given and "
                             f"sensitivity_max is not asked for)")
        return (ex or Explainer(model, "feature_ablation", **keywords)), method, None
    if ex is None:
        ex = Explainer(model, method, noise_tunnel=noise_tunnel, **keywords)
    params = {**{k: v for k, v in shared.items() if k in ex.method.defaults}, **params}
    ex.method.check_params(dict(params))
    return ex, method, params


def _targets(ex: Explainer, x, target, target_weights) -> dict:
    """``target`` or ``target_weights`` as the metrics take them (``"pred"`` resolved to each row's argmax)."""
    if target is not None and target_weights is not None:
        raise ValueError("give either a target or target_weights, not both")
    if target_weights is not None:
        return {"target_weights": target_weights}
    if isinstance(target, str) and target.lower() in (PREDICTED, "predicted"):
        target = predicted_target(ex.forward(x)[ex.output])
    return {"target": target}


def _compute(chosen, ex, x, attributions, targets: dict, flips: dict, params, options: dict) -> dict:
    """Each chosen metric on the same arrays: a FlippingCurve or per-row values."""
    def given(*keys):
        return {k: options[k] for k in keys if k in options}
    seed = {"seed": options["perturb_seed"]} if "perturb_seed" in options else {}
    out = {}
    for metric in chosen:
        if metric in ("deletion", "insertion"):
            fn = deletion if metric == "deletion" else insertion
            out[metric] = fn(ex, x, attributions, **targets, **flips, **given("steps"))
        elif metric == "infidelity":
            stdev = {"stdev": options["perturb_stdev"]} if "perturb_stdev" in options else {}
            out[metric] = infidelity(ex, gaussian_perturbation(**stdev, **seed), x, attributions, **targets,
                                     **given("n_perturb_samples", "max_examples_per_batch", "normalize"))
        else:
            out[metric] = sensitivity_max((ex, params), x, uniform_perturbation(**seed),
                                          **given("perturb_radius", "n_perturb_samples", "norm_ord",
                                                  "max_examples_per_batch"), **targets)
    return out


def _write(report: MetricsReport, out, plot, title: str) -> None:
    """The picture drawn first, then ``out`` and the picture written; a failure leaves neither behind."""
    figure = None
    if plot is not None:
        from .. import viz
        figure = viz.flipping_curves(report.curves(), title=title)
    if out is not None:
        report.written.append(report.save(out))
    if figure is not None:
        from .. import viz
        try:
            viz.save(figure, plot)
        except Exception:
            for path in report.written + [os.fspath(plot)]:
                remove_quietly(path)
            report.written.clear()
            raise
        report.written.append(os.fspath(plot))


def _rows(ex: Explainer, x) -> int:
    first = x[ex.inputs[0]] if isinstance(x, dict) else x
    return int(np.shape(first)[ex.batch_axes.get(ex.inputs[0]) or 0])


def _origin(sources: dict, given: bool, method: str, chosen) -> str:
    path = sources.get("attributions")
    where = (f"attributions from {path}" if path else "given attributions") if given else f"{method} attributions"
    sens = f" (sensitivity_max explains with {method})" if given and "sensitivity_max" in chosen else ""
    return where + sens


def _path_or_none(value):
    return os.fspath(value) if isinstance(value, (str, os.PathLike)) else None


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
