"""The ``onnxplain`` command line: demo, convert, explain, inspect.

    onnxplain demo [--out attributions.npz]
    onnxplain convert MODEL OUT --method M [--output NAME] [--n-steps N ...]
    onnxplain explain MODEL INPUT.npy|.npz --method M --target T [--out attr.npy]
    onnxplain inspect MODEL

Mistakes of the caller (a bad path, method, parameter or target; a model that
cannot be read or has an op without a backward rule) end with exit code 2 and a
one-line message on stderr; set ``ONNXPLAIN_DEBUG=1`` to see the traceback.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from importlib import resources

import numpy as np

USAGE_ERROR = 2
DEMO_CLASSES = ("horizontal", "vertical", "diagonal", "square")


class CLIError(Exception):
    """A mistake of the caller, reported in one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, no usage block; main() turns it into exit code 2
        raise CLIError(f"{message} (see '{self.prog} --help')")


# ---------------------------------------------------------------------- entry point
def main(argv=None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return USAGE_ERROR
        return args.run(args) or 0
    except SystemExit as e:                 # --help, --version
        return e.code if isinstance(e.code, int) else 0
    except BrokenPipeError:                 # e.g. `onnxplain inspect m.onnx | head`: stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except KeyboardInterrupt:
        print("onnxplain: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not _is_usage_error(e) or os.environ.get("ONNXPLAIN_DEBUG"):
            raise
        print(f"onnxplain: error: {_one_line(e)}", file=sys.stderr)
        return USAGE_ERROR


def _is_usage_error(e: BaseException) -> bool:
    from .errors import OnnxplainError
    return isinstance(e, (CLIError, OnnxplainError, ValueError, TypeError, OSError))


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename and e.strerror:
        text = f"{e.strerror}: {e.filename!r}"
    return " ".join(text.split())


def _build_parser() -> argparse.ArgumentParser:
    from . import __version__
    p = _Parser(prog="onnxplain", description="Attributions for any ONNX model, computed by one explanation "
                                               "graph in onnxruntime.")
    p.add_argument("--version", action="version", version=f"onnxplain {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser("demo", help="explain the embedded demo CNN's sample images (integrated gradients, saliency)",
                       description="Explain the four sample images of the embedded demo CNN (1x16x16 strokes: "
                                   + ", ".join(DEMO_CLASSES) + ") with integrated gradients and saliency.")
    d.add_argument("--target", help="class to explain for every sample: an index or a name (default: the "
                                    "predicted class of each sample)")
    d.add_argument("--n-steps", type=int, default=50, help="integration steps (default: 50)")
    d.add_argument("--integration", default="gausslegendre", metavar="SCHEME",
                   help="gausslegendre (default), riemann_left, riemann_right, riemann_middle, riemann_trapezoid")
    d.add_argument("--heatmap", action="store_true", help="also print each sample and its IG attributions as text")
    d.add_argument("--out", help="write inputs, targets, attributions and deltas to this .npz file")
    d.set_defaults(run=cmd_demo)

    c = sub.add_parser("convert", help="write the explanation graph of a model",
                       description="Write the explanation graph (forward + backward in standard ONNX ops) of "
                                   "MODEL to OUT. Parameters given here become the graph's defaults; clients "
                                   "may still feed them.")
    c.add_argument("model", help="the ONNX model")
    c.add_argument("out", help="where to write the explanation graph (.onnx)")
    _add_method_args(c, graph_defaults=True)
    c.set_defaults(run=cmd_convert)

    e = sub.add_parser("explain", help="compute attributions for inputs stored in .npy/.npz",
                       description="Compute attributions of MODEL's output for the rows in INPUT (.npy for a "
                                   "model with one input, .npz with one array per input name).")
    e.add_argument("model", help="the ONNX model")
    e.add_argument("input", help="the inputs: .npy, or .npz keyed by input name")
    _add_method_args(e, graph_defaults=False)
    e.add_argument("--target", nargs="+", metavar="T",
                   help="what to explain: an index (3), a tuple of indices (1,2), one of these per row "
                        "(3 1 0 2), 'pred' for each row's largest output, or 'none' for an output with "
                        "one value per row")
    e.add_argument("--target-weights", metavar="FILE.npy", help="weights shaped like the output instead of --target")
    e.add_argument("--out", help="write the attributions: .npy (one attributed input) or .npz")
    e.set_defaults(run=cmd_explain)

    i = sub.add_parser("inspect", help="inputs, outputs, opset, ops, and which methods can explain the model",
                       description="Show a model's inputs, outputs, opsets and op histogram, and whether "
                                   "every op between its inputs and outputs has a backward rule.")
    i.add_argument("model", help="the ONNX model")
    i.add_argument("--json", action="store_true", help="print the facts as JSON")
    _add_batch_axis_arg(i)
    i.set_defaults(run=cmd_inspect)
    return p


def _add_method_args(p, graph_defaults: bool) -> None:
    from .methods import METHODS
    p.add_argument("--method", "-m", required=True,
                   help=f"one of {', '.join(METHODS)} (or an alias such as intgrad, grad*input)")
    p.add_argument("--output", help="the model output to explain (default: the first floating-point one)")
    p.add_argument("--input", dest="inputs", action="append", metavar="NAME",
                   help="an input to attribute (repeatable; default: every floating-point input)")
    p.add_argument("--layer", metavar="TENSOR", help="attribute this intermediate tensor instead of the inputs")
    _add_batch_axis_arg(p)
    p.add_argument("--batch-size", type=int, metavar="B",
                   help="the most rows the model may see per run (1 for models that run one row at a time)")
    g = p.add_argument_group("method parameters" + (" (stored as the graph's defaults)" if graph_defaults else ""))
    g.add_argument("--n-steps", type=int, help="integrated_gradients: integration steps (50)")
    g.add_argument("--integration", metavar="SCHEME",
                   help="integrated_gradients: gausslegendre (default), riemann_left, riemann_right, "
                        "riemann_middle, riemann_trapezoid")
    g.add_argument("--baseline", metavar="VALUE" if graph_defaults else "VALUE|FILE.npy",
                   help="integrated_gradients: baseline, a number" + ("" if graph_defaults else
                                                                      " or an .npy file (default 0)"))
    if not graph_defaults:
        g.add_argument("--internal-batch-size", type=int, help="integrated_gradients: most rows per run")
    g.add_argument("--nt-samples", type=int, help="smoothgrad/smoothgrad_sq/vargrad: noisy samples (5)")
    g.add_argument("--stdevs", type=float, help="smoothgrad/smoothgrad_sq/vargrad: noise standard deviation (1.0)")
    g.add_argument("--seed", type=int, help="smoothgrad/smoothgrad_sq/vargrad: seed of the noise")
    g.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="any other method parameter, VALUE read as a Python literal" +
                        ("" if graph_defaults else " or @FILE.npy for an array") + " (repeatable)")


def _add_batch_axis_arg(p) -> None:
    p.add_argument("--batch-axis", action="append", default=[], metavar="NAME=AXIS",
                   help="the batch axis of an input, or NAME=none for an unbatched one (repeatable; default: "
                        "detected)")


def _method_params(args, allow_files: bool) -> dict:
    """The method parameters given on the command line (only those given)."""
    params = {}
    for flag, key in (("n_steps", "n_steps"), ("integration", "method"), ("internal_batch_size", "internal_batch_size"),
                      ("nt_samples", "nt_samples"), ("stdevs", "stdevs"), ("seed", "seed")):
        value = getattr(args, flag, None)
        if value is not None:
            params[key] = value
    if args.baseline is not None:
        params["baselines"] = _baseline(args.baseline, allow_files)
    for item in args.param:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"--param expects KEY=VALUE, got {item!r}")
        if text.startswith("@"):
            if not allow_files:
                raise CLIError(f"--param {key}: arrays from files (@FILE.npy) are for 'explain'; here give a literal")
            value = _load_array(text[1:], f"--param {key}")
        else:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
        params[key.strip().replace("-", "_")] = value
    return params


def _baseline(text: str, allow_files: bool):
    try:
        return float(text)
    except ValueError:
        pass
    if not allow_files:
        raise CLIError(f"--baseline must be a number here, got {text!r}")
    return _load_array(text, "--baseline")


def _check_method(name: str) -> str:
    from .methods import canonical_name
    return canonical_name(name)   # ValueError listing the valid names


# ---------------------------------------------------------------------- demo
def demo_files() -> dict[str, str]:
    """Paths of the embedded demo model and its samples."""
    folder = resources.files("onnxplain") / "data"
    paths = {"model": folder / "demo_cnn.onnx", "inputs": folder / "demo_inputs.npy",
             "labels": folder / "demo_labels.npy"}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise CLIError(f"the embedded demo files are missing ({', '.join(missing)}); reinstall onnxplain")
    return {k: str(v) for k, v in paths.items()}


def cmd_demo(args) -> int:
    from .api import Explainer
    from .methods.integrated_gradients import quadrature

    quadrature(args.n_steps, args.integration)        # bad values fail before anything is built
    _check_out(args.out, (".npz",))
    files = demo_files()
    x = np.load(files["inputs"], allow_pickle=False)
    labels = np.load(files["labels"], allow_pickle=False)
    n = len(x)
    zeros = np.zeros_like(x)

    t0 = time.perf_counter()
    ig = Explainer(files["model"], method="integrated_gradients")
    sal = Explainer(files["model"], method="saliency")
    t_build = time.perf_counter() - t0

    f_x, f_0 = _forward(ig, x), _forward(ig, zeros)
    predicted = f_x.argmax(axis=1)
    if args.target is None:
        targets = predicted
    else:
        targets = np.full(n, _class_index(args.target, f_x.shape[1]))
    t0 = time.perf_counter()
    attr, delta = ig.explain(x, target=targets.tolist(), n_steps=args.n_steps, method=args.integration,
                             return_convergence_delta=True)
    t_ig = time.perf_counter() - t0
    sal_attr = sal.explain(x, target=targets.tolist())

    rows = np.arange(n)
    gap = f_x[rows, targets] - f_0[rows, targets]
    sums = attr.reshape(n, -1).sum(axis=1, dtype=np.float64)

    print(f"onnxplain demo: the embedded CNN ({x.shape[1]}x{x.shape[2]}x{x.shape[3]} images of strokes, classes "
          f"{', '.join(DEMO_CLASSES)})")
    print(f"integrated gradients: {args.integration}, {args.n_steps} steps, baseline 0; saliency: |gradient|")
    print()
    header = ["sample", "label", "predicted", "target", "sum(IG)", "f(x)-f(0)", "delta", "saliency peak"]
    table = []
    for k in range(n):
        peak = np.unravel_index(int(np.argmax(sal_attr[k].reshape(-1))), sal_attr[k].shape)
        table.append([str(k), _class_name(labels[k]), _class_name(predicted[k]), _class_name(targets[k]),
                      f"{sums[k]:.5f}", f"{gap[k]:.5f}", f"{delta[k]:+.2e}",
                      "(" + ", ".join(str(int(i)) for i in peak[-2:]) + ")"])
    _print_table(header, table)
    print()
    print(f"explanation graphs built once in {t_build:.2f} s; {n} samples x {args.n_steps} steps of integrated "
          f"gradients in {t_ig * 1000:.1f} ms")
    print("delta = sum(IG) - (f(x) - f(0)): the completeness residual, small when the integration is accurate")
    if args.heatmap:
        for k in range(n):
            print()
            print(f"sample {k} ({_class_name(labels[k])}): input | IG attributions for {_class_name(targets[k])} "
                  f"(+ positive, - negative)")
            print(_heatmap(x[k, 0], attr[k, 0]))
    if args.out:
        np.savez(args.out, inputs=x, labels=labels, logits=f_x, targets=targets, integrated_gradients=attr,
                 saliency=sal_attr, delta=np.asarray(delta))
        print(f"wrote {args.out}: inputs, labels, logits, targets, integrated_gradients, saliency, delta")
    return 0


def _forward(explainer, x: np.ndarray) -> np.ndarray:
    """The model's explained output for ``x``."""
    return explainer.forward(x)[explainer.output]


def _class_index(text: str, n_classes: int) -> int:
    key = str(text).strip().lower()
    if key in DEMO_CLASSES:
        return DEMO_CLASSES.index(key)
    try:
        t = int(key)
    except ValueError:
        raise CLIError(f"--target must be a class index 0..{n_classes - 1} or one of {', '.join(DEMO_CLASSES)}, "
                       f"got {text!r}") from None
    if not 0 <= t < n_classes:
        raise CLIError(f"--target {t} is out of range: the demo model has {n_classes} classes (0..{n_classes - 1})")
    return t


def _class_name(k) -> str:
    k = int(k)
    return f"{k} {DEMO_CLASSES[k]}" if 0 <= k < len(DEMO_CLASSES) else str(k)


def _heatmap(image: np.ndarray, attr: np.ndarray) -> str:
    shades = " .:-=+*#%@"
    lo, hi = float(image.min()), float(image.max())
    img = (image - lo) / (hi - lo or 1.0)
    scale = float(np.abs(attr).max()) or 1.0
    lines = []
    for r in range(image.shape[0]):
        left = "".join(shades[min(len(shades) - 1, int(v * len(shades)))] for v in img[r])
        right = ""
        for v in attr[r] / scale:
            right += " " if abs(v) < 0.1 else ("+" if v > 0.5 else "'" if v > 0 else "-" if v < -0.5 else ",")
        lines.append(f"  {left}  |  {right}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- convert
def cmd_convert(args) -> int:
    from .api import convert
    method = _check_method(args.method)
    _check_out(args.out, (".onnx",), strict=False)
    params = _method_params(args, allow_files=False)
    t0 = time.perf_counter()
    graph = convert(args.model, args.out, method=method, output=args.output, inputs=args.inputs,
                    **_layer(args), **_batching(args), **params)
    elapsed = time.perf_counter() - t0
    inputs = [i.name for i in graph.graph.input]
    outputs = [o.name for o in graph.graph.output]
    print(f"wrote {args.out}: {method} explanation graph of {args.model} ({len(graph.graph.node)} nodes, "
          f"{os.path.getsize(args.out) / 1024:.1f} KiB, {elapsed:.2f} s)")
    print(f"  inputs:  {', '.join(inputs)}")
    print(f"  outputs: {', '.join(outputs)}")
    if params:
        print(f"  defaults: {', '.join(f'{k}={_short(v)}' for k, v in params.items())}")
    return 0


def _layer(args) -> dict:
    return {"layer": args.layer} if args.layer else {}


def _batching(args) -> dict:
    """``batch_axes`` and ``batch_size`` from ``--batch-axis NAME=AXIS`` and ``--batch-size``."""
    axes = _batch_axes(args)
    out = {"batch_axes": axes} if axes else {}
    if args.batch_size is not None:
        out["batch_size"] = args.batch_size
    return out


def _batch_axes(args) -> dict:
    axes = {}
    for item in args.batch_axis:
        name, sep, text = item.partition("=")
        text = text.strip().lower()
        if not sep or not name.strip() or not (text == "none" or text.lstrip("-").isdigit()):
            raise CLIError(f"--batch-axis expects NAME=AXIS (an int, or none for an unbatched input), got {item!r}")
        axes[name.strip()] = None if text == "none" else int(text)
    return axes


def _short(v) -> str:
    return f"array{np.shape(v)}" if isinstance(v, np.ndarray) else repr(v)


# ---------------------------------------------------------------------- explain
def cmd_explain(args) -> int:
    from .api import Explainer
    method = _check_method(args.method)
    params = _method_params(args, allow_files=True)
    if args.target is not None and args.target_weights is not None:
        raise CLIError("give either --target or --target-weights, not both")
    inputs = _load_inputs(args.input)
    ex = Explainer(args.model, method=method, output=args.output, inputs=args.inputs, **_layer(args),
                   **_batching(args))
    ex.method.check_params(dict(params))   # unknown or bad parameters fail before anything runs
    several = not ex.spec.single
    _check_out(args.out, (".npz",) if several else (".npy", ".npz"),
               why="several inputs are attributed" if several else "")
    inputs = _match_inputs(ex, inputs, args.input)

    kwargs = {}
    target = None
    if args.target_weights is not None:
        kwargs["target_weights"] = _load_array(args.target_weights, "--target-weights")
    else:
        target = _parse_target(args.target, ex, inputs)
    t0 = time.perf_counter()
    try:
        if ex.method.has_delta:
            attr, delta = ex.explain(inputs, target, return_convergence_delta=True, **kwargs, **params)
        else:
            attr, delta = ex.explain(inputs, target, **kwargs, **params), None
    except ValueError as e:
        if target is None and not kwargs and str(e).startswith("target=None"):
            raise CLIError(f"output {ex.output!r} has several values per row: pass --target (an index such as 3, "
                           f"indices such as 1,2, one per row, or 'pred')") from e
        raise
    elapsed = time.perf_counter() - t0

    arrays = attr if isinstance(attr, dict) else {ex.inputs[0]: attr}
    by_row = {k: np.moveaxis(a, ex.batch_axes.get(k) or 0, 0) for k, a in arrays.items()}   # a state: (L, N, H)
    n = len(next(iter(by_row.values())))
    print(f"{ex.method_name} attributions of {ex.output!r} for {n} row(s) of {', '.join(arrays)} "
          f"in {elapsed * 1000:.1f} ms")
    header = ["row", "target", "sum(attributions)"] + (["delta"] if delta is not None else [])
    sums = sum(a.reshape(n, -1).sum(axis=1, dtype=np.float64) for a in by_row.values())
    shown = min(n, 10)
    table = []
    for r in range(shown):
        row = [str(r), _target_text(target, r, kwargs), f"{sums[r]:.6g}"]
        if delta is not None:
            row.append(f"{delta[r]:+.2e}")
        table.append(row)
    _print_table(header, table)
    if n > shown:
        print(f"... {n - shown} more row(s)")
    if args.out:
        if args.out.endswith(".npz"):
            named = {ex.spec.attribution_name(k): v for k, v in arrays.items()}
            if delta is not None:
                named["delta"] = np.asarray(delta)
            np.savez(args.out, **named)
            print(f"wrote {args.out}: {', '.join(named)}")
        else:
            np.save(args.out, arrays[ex.inputs[0]])
            print(f"wrote {args.out}: attributions {arrays[ex.inputs[0]].shape}")
    else:
        print("(no --out given: nothing written)")
    return 0


def _load_array(path: str, what: str) -> np.ndarray:
    if not path.endswith(".npy"):
        raise CLIError(f"{what} must be an .npy file, got {path!r}")
    if not os.path.isfile(path):
        raise CLIError(f"{what}: no such file {path!r}")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:
        raise CLIError(f"{what}: cannot read {path!r} as an .npy array: {_one_line(e)}") from e


def _load_inputs(path: str):
    if not os.path.isfile(path):
        raise CLIError(f"no such input file {path!r}")
    if path.endswith(".npy"):
        return _load_array(path, "INPUT")
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except Exception as e:
            raise CLIError(f"cannot read {path!r} as an .npz archive: {_one_line(e)}") from e
    raise CLIError(f"INPUT must be an .npy or .npz file, got {path!r}")


def _match_inputs(ex, inputs, path: str):
    """An .npz with one unnamed array (np.savez's arr_0) feeds a one-input model."""
    names = ex.model_inputs
    if isinstance(inputs, dict):
        if len(inputs) == 1 and len(names) == 1 and names[0] not in inputs:
            return next(iter(inputs.values()))
        missing = [k for k in names if k not in inputs]
        if missing:
            raise CLIError(f"{path!r} has arrays {sorted(inputs)} but the model's inputs are {names} "
                           f"(missing {missing})")
        return {k: inputs[k] for k in names}
    if len(names) != 1:
        raise CLIError(f"the model has {len(names)} inputs {names}: give an .npz with one array per input name")
    return inputs


def _parse_target(values, ex, inputs):
    if values is None:
        return None
    words = [v.strip().lower() for v in values]
    if words == ["none"]:
        return None
    if words in (["pred"], ["predicted"]):
        out = ex.forward(inputs)[ex.output]
        flat = out.reshape(len(out), -1).argmax(axis=1)
        shape = out.shape[1:]
        if len(shape) == 1:
            return [int(i) for i in flat]
        return [tuple(int(j) for j in np.unravel_index(int(i), shape)) for i in flat]
    parsed = [_one_target(v) for v in values]
    return parsed[0] if len(parsed) == 1 else parsed


def _one_target(text: str):
    parts = [p for p in text.replace("(", "").replace(")", "").split(",") if p.strip()]
    try:
        idx = [int(p) for p in parts]
    except ValueError:
        idx = []
    if not idx:
        raise CLIError(f"bad --target {text!r}: expected an index (3), a tuple of indices (1,2), 'pred' or 'none'")
    return idx[0] if len(idx) == 1 and "," not in text else tuple(idx)


def _target_text(target, r, kwargs) -> str:
    if "target_weights" in kwargs:
        return "weights"
    if isinstance(target, list):
        return str(target[r])
    return "-" if target is None else str(target)


def _check_out(path, suffixes, strict: bool = True, why: str = "") -> None:
    """Fail before any work when an output file cannot be written."""
    if not path:
        return
    if strict and not path.endswith(tuple(suffixes)):
        reason = f" ({why})" if why else ""
        raise CLIError(f"--out must end with {' or '.join(suffixes)}{reason}, got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CLIError(f"cannot write {path!r}: folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise CLIError(f"cannot write {path!r}: it is a folder")


# ---------------------------------------------------------------------- inspect
def cmd_inspect(args) -> int:
    from .inspection import inspect

    facts = inspect(args.model, batch_axes=_batch_axes(args) or None)
    facts = {"model": args.model if isinstance(args.model, str) else "<bytes>", **facts}
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    print(f"model:    {facts['model']}")
    print(f"format:   IR version {facts['ir_version']}" + (f", produced by {facts['producer']}" if facts["producer"]
                                                             else ""))
    print("opsets:   " + ", ".join(f"{d} {v}" for d, v in facts["opsets"].items()))
    print("inputs:")
    axes = {k: "none" if a is None else str(a) for k, a in facts["batch_axes"].items()}
    _print_table(["", "name", "type", "shape", "batch axis"],
                 [["", v["name"], v["type"], v["shape"], axes.get(v["name"], "?")] for v in facts["inputs"]])
    print("outputs:")
    _print_table(["", "name", "type", "shape"], [["", v["name"], v["type"], v["shape"]] for v in facts["outputs"]])
    print(f"ops ({facts['nodes']} nodes):")
    _print_table(["", "op", "count"], [["", op, str(k)] for op, k in facts["ops"].items()])
    if facts["functions"]:
        print(f"local functions (inlined before explaining): {', '.join(facts['functions'])}")
    if facts["output"] is None:
        print("no floating-point output: nothing to explain")
        return 0
    print(f"explained output: {facts['output']!r}; attributed: {', '.join(facts['attributed']) or '-'}")
    print("methods:")
    for name, g in facts["methods"].items():
        kind = "forward only" if g["forward_only"] else "backward"
        if g["available"]:
            print(f"  {name:22s} available ({kind})")
            continue
        print(f"  {name:22s} NOT available: {g['reason']}")
        for op, nodes in g["missing"].items():
            listed = ", ".join(nodes[:5]) + (f" and {len(nodes) - 5} more" if len(nodes) > 5 else "")
            print(f"    {op}: {len(nodes)} node(s): {listed}")
    return 0


# ---------------------------------------------------------------------- printing
def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


if __name__ == "__main__":   # pragma: no cover
    sys.exit(main())
