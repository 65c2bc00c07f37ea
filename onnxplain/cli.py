"""The ``onnxplain`` command line: a parser over the library.

    onnxplain demo [--output DIR] [--target T] [--out demo.npz]
    onnxplain inspect MODEL [--json] [--batch-axis NAME=AXIS]
    onnxplain convert MODEL OUT --method M [--output NAME] [--n-steps N ...] [--batch-axis NAME=AXIS]
    onnxplain explain MODEL INPUT.npy|.npz --method M --target T [--out attr.npy] [--plot attr.png|attr.html]
    onnxplain explain MODEL DATA.npy --method M --out ATTR.npy --batch-size N   (streamed, resumable)
    onnxplain explain MODEL cat.jpg dog.png|photos/ --method M [--preset imagenet|none] [--size H[,W]] [--plot out.png]
    onnxplain explain MODEL --text TEXT [--text ...] --tokenizer tokenizer.json --method M [--plot attr.html|.png]
    onnxplain profile MODEL --method M [--batch N] [--data INPUT.npz] [method options]
    onnxplain audit MODEL [--data INPUT.npz] [--target T] [--baseline B] [--top 15] [--json OUT.json]
    onnxplain metrics MODEL INPUT.npy [--attributions ATTR.npy | --method M ...] [--metric deletion,insertion,...]
                      [--target T | --target-file T.npy] [--steps N] [--baseline B] [--out m.json|.npz] [--plot c.png]
    (convert, serve and profile take [--batch-axis NAME=AXIS ...] [--batch-size B], explain [--batch-axis ...]
     [--model-batch-size B]: the most rows the model sees per run)
    onnxplain serve MODEL [MODEL ...] --method M [--name NAME] [--http-port 8000] [--grpc-port 8001] [--ui]
    onnxplain view MODEL [MODEL ...] --method M[,M...] [--preset imagenet] [--tokenizer tok.json] [--port 8000] [--open]
    onnxplain triton MODEL --method M --name NAME --output REPO [--max-batch-size B] [--gpu]

Each command is one block: ``add_<command>(subparsers)`` declares its arguments
and sets ``run_<command>``, which calls one library function
(:func:`onnxplain.demo.run_demo`, :func:`onnxplain.inspect`,
:func:`onnxplain.convert`, :func:`onnxplain.files.explain_file`, or for a
streamed ``explain --batch-size N`` :func:`onnxplain.files.explain_npy`,
:func:`onnxplain.profile.profile`, :func:`onnxplain.metrics.evaluate`) and prints what it returns.  A new command is
two such functions and an entry in
:data:`COMMANDS`.

Mistakes of the caller (a bad path, method, parameter, shape or target; a model
that cannot be read or has an op without a backward rule; a missing optional
extra) end with exit code 2 and one line on stderr; anything else with exit
code 1 and one line.  ``--verbose`` (or ``ONNXPLAIN_DEBUG=1``) also prints the
traceback.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
import traceback

import numpy as np

from .demo import demo_files  # noqa: F401  (the embedded demo's paths, long imported from here)

USAGE_ERROR = 2
INTERNAL_ERROR = 1


class CLIError(Exception):
    """A mistake in the command line itself, reported in one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, no usage block; main() turns it into exit code 2
        raise CLIError(f"{message} (see '{self.prog} --help')")


# ---------------------------------------------------------------------- entry point
def main(argv=None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help(sys.stderr)
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
        verbose = getattr(args, "verbose", False) if args is not None else "--verbose" in argv
        return _report(e, verbose or bool(os.environ.get("ONNXPLAIN_DEBUG")))


def _report(e: Exception, verbose: bool) -> int:
    """One line on stderr (after the traceback with ``verbose``); the exit code."""
    from .errors import one_line
    if verbose:
        traceback.print_exception(e, file=sys.stderr)
    if is_usage_error(e):
        print(f"onnxplain: error: {one_line(e)}", file=sys.stderr)
        return USAGE_ERROR
    hint = "" if verbose else " (--verbose shows the traceback)"
    print(f"onnxplain: internal error: {type(e).__name__}: {one_line(e)}{hint}", file=sys.stderr)
    return INTERNAL_ERROR


def is_usage_error(e: BaseException) -> bool:
    """Whether ``e`` is the caller's mistake (exit code 2) rather than a failure of onnxplain (exit code 1)."""
    from .errors import OnnxplainError
    return isinstance(e, (CLIError, OnnxplainError, ValueError, TypeError, OSError))


def build_parser() -> argparse.ArgumentParser:
    """The whole parser: global options and one subparser per entry of :data:`COMMANDS`."""
    from . import __version__
    p = _Parser(prog="onnxplain", description="Attributions for any ONNX model, computed by one explanation "
                                               "graph in onnxruntime.")
    p.add_argument("--version", action="version", version=f"onnxplain {__version__}")
    p.add_argument("--verbose", action="store_true", help="on an error, print the traceback too")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return p


def command(sub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand's parser, with the options every command takes (``--verbose``)."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="on an error, print the traceback too")
    return p


# ---------------------------------------------------------------------- demo
def add_demo(sub) -> None:
    from .demo import DEFAULT_OUTPUT, DEMO_CLASSES
    d = command(sub, "demo", help="explain the embedded demo CNN's sample images and draw the attributions",
                description="Explain the four sample images of the embedded demo CNN (1x16x16 strokes: "
                            + ", ".join(DEMO_CLASSES) + ") with integrated gradients and saliency, print the "
                            "numbers, and write a PNG per method and report.md into --output.")
    d.add_argument("--target", help="class to explain for every sample: an index or a name (default: the "
                                    "predicted class of each sample)")
    d.add_argument("--n-steps", type=int, default=50, help="integration steps (default: 50)")
    d.add_argument("--integration", default="gausslegendre", metavar="SCHEME",
                   help="gausslegendre (default), riemann_left, riemann_right, riemann_middle, riemann_trapezoid")
    d.add_argument("--output", metavar="DIR",
                   help=f"folder for the pictures and report.md (default: ./{DEFAULT_OUTPUT}/; the pictures "
                        f"need matplotlib: pip install \"onnxplain[viz]\")")
    d.add_argument("--out", help="also write inputs, targets, attributions and deltas to this .npz file")
    d.set_defaults(run=run_demo)


def run_demo(args) -> int:
    from . import demo, viz
    from .errors import MissingExtraError
    from .files import check_output_path

    check_output_path(args.out, (".npz",))
    pictures = True
    try:
        viz.require()
    except MissingExtraError as e:
        if args.output is not None:          # pictures were asked for by name: that is an error
            raise
        pictures, note = False, str(e)
    demo.check_output_folder(args.output or demo.DEFAULT_OUTPUT)
    result = demo.run_demo(target=args.target, n_steps=args.n_steps, integration=args.integration)
    print(result.summary())
    if args.out:
        print(result.save_npz(args.out))
    if pictures:
        written = result.write(args.output or demo.DEFAULT_OUTPUT)
        print(f"wrote {', '.join(written)}")
    else:
        print(f"(no pictures: {note})")
    return 0


# ---------------------------------------------------------------------- inspect
def add_inspect(sub) -> None:
    i = command(sub, "inspect", help="inputs, outputs, opset, ops, and which methods can explain the model",
                description="Show a model's inputs, outputs, opsets and op histogram, and whether every op "
                            "between its inputs and outputs has a backward rule.")
    i.add_argument("model", help="the ONNX model")
    i.add_argument("--json", action="store_true", help="print the facts as JSON")
    _add_batching_args(i, batch_size_flag=None)
    i.set_defaults(run=run_inspect)


def run_inspect(args) -> int:
    from .inspection import describe, inspect
    facts = inspect(args.model, batch_axes=_batching(args)["batch_axes"])
    if args.json:
        print(json.dumps({"model": args.model, **facts}, indent=2))
    else:
        print(describe(facts, args.model))
    return 0


# ---------------------------------------------------------------------- convert
def add_convert(sub) -> None:
    c = command(sub, "convert", help="write the explanation graph of a model",
                description="Write the explanation graph (forward + backward in standard ONNX ops) of MODEL to "
                            "OUT. Parameters given here become the graph's defaults; clients may still feed them.")
    c.add_argument("model", help="the ONNX model")
    c.add_argument("out", help="where to write the explanation graph (.onnx)")
    _add_method_args(c, graph_defaults=True)
    _add_batching_args(c)
    c.set_defaults(run=run_convert)


def run_convert(args) -> int:
    from .api import convert
    from .files import check_output_path
    from .methods import canonical_name

    method = canonical_name(args.method)
    check_output_path(args.out)
    params = _method_params(args, allow_files=False)
    t0 = time.perf_counter()
    graph = convert(args.model, args.out, method, output=args.output, inputs=args.inputs, layer=args.layer,
                    noise_tunnel=args.noise_tunnel, defaults=params, **_batching(args))
    elapsed = time.perf_counter() - t0
    print(f"wrote {args.out}: {method} explanation graph of {args.model} ({len(graph.graph.node)} nodes, "
          f"{os.path.getsize(args.out) / 1024:.1f} KiB, {elapsed:.2f} s)")
    print(f"  inputs:  {', '.join(i.name for i in graph.graph.input)}")
    print(f"  outputs: {', '.join(o.name for o in graph.graph.output)}")
    if params:
        print(f"  defaults: {', '.join(f'{k}={_short(v)}' for k, v in params.items())}")
    return 0


def _short(v) -> str:
    return f"array{np.shape(v)}" if isinstance(v, np.ndarray) else repr(v)


# ---------------------------------------------------------------------- explain
def add_explain(sub) -> None:
    e = command(sub, "explain", help="compute attributions for inputs stored in .npy/.npz, and draw them",
                description="Compute attributions of MODEL's output for the rows in INPUT (.npy for a model with "
                            "one input, .npz with one array per input name; or image files and folders, read as "
                            "the 'images' options say); write them with --out, draw them with --plot.")
    e.add_argument("model", help="the ONNX model")
    e.add_argument("input", nargs="*", help="the inputs: .npy, or .npz keyed by input name; or image files "
                                            "and folders of them (see 'images'); none with --text")
    _add_method_args(e, graph_defaults=False)
    _add_batching_args(e, batch_size_flag="--model-batch-size")
    e.add_argument("--target", nargs="+", metavar="T",
                   help="what to explain: an index (3), a tuple of indices (1,2), one of these per row "
                        "(3 1 0 2), 'pred' for each row's largest output, or 'none' for an output with "
                        "one value per row")
    e.add_argument("--target-weights", metavar="FILE.npy", help="weights shaped like the output instead of --target")
    e.add_argument("--out", help="write the attributions: .npy (one attributed input) or .npz")
    s = e.add_argument_group("streaming (a dataset larger than memory; resumable)")
    s.add_argument("--batch-size", type=int, metavar="N",
                   help="read INPUT (.npy, memmapped) N rows at a time and write --out (.npy or .zarr) batch by "
                        "batch; run the same command again after a crash to finish the job (the model's own "
                        "cap per forward pass is --model-batch-size)")
    s.add_argument("--target-file", metavar="FILE.npy", help="with --batch-size: one target per row")
    _add_memory_budget(s)
    s.add_argument("--overwrite", action="store_true", help="with --batch-size: replace the results of another run")
    s.add_argument("--no-progress", action="store_true", help="with --batch-size: no progress bar")
    g = e.add_argument_group("pictures (need matplotlib: pip install \"onnxplain[viz]\")")
    g.add_argument("--plot", metavar="OUT.png|OUT.html",
                   help="draw the attributions, as the model's input calls for: heatmaps over images (rank-4 "
                        "float input; .png, .svg or .pdf), bars of the top features (rank-2 float input; .png), "
                        "or tokens highlighted by score (token ids; .html, .png, .svg or .pdf)")
    g.add_argument("--tokens", metavar="FILE.json",
                   help="the word pieces of token inputs, one list per row (default: the ids)")
    g.add_argument("--feature-names", metavar="A,B,C|FILE.txt",
                   help="names of tabular features, separated by commas or one per line in a .txt file")
    _add_text_args(e)
    _add_table_args(e)
    _add_image_args(e)
    e.set_defaults(run=run_explain)


def _add_text_args(e) -> None:
    t = e.add_argument_group("text (needs tokenizers: pip install \"onnxplain[text]\")")
    t.add_argument("--text", action="append", metavar="TEXT",
                   help="a text to explain instead of INPUT (repeat for several rows): tokenized by --tokenizer "
                        "into the model's input_ids, attention_mask and token_type_ids; input_ids is attributed "
                        "at its embedding, and --plot (.html, .png, .svg, .pdf) highlights the tokens")
    t.add_argument("--text-file", metavar="FILE.txt", help="texts to explain, one per line (blank lines skipped)")
    t.add_argument("--tokenizer", metavar="tokenizer.json", help="the tokenizers file that tokenizes the texts")
    t.add_argument("--max-length", type=int, metavar="N",
                   help="truncate each text to N tokens, special tokens included (default: none; a text longer "
                        "than a sequence length the model fixes is refused)")


def _add_table_args(e) -> None:
    t = e.add_argument_group("tables (a CSV file with a header row; features of a 2-D float input)")
    t.add_argument("--csv", metavar="FILE.csv",
                   help="the rows to explain, one per line of a CSV file (also accepted as INPUT)")
    t.add_argument("--columns", metavar="A,B,C",
                   help="the feature columns, in the order the model takes them (default: every column but "
                        "--exclude and --id-column)")
    t.add_argument("--exclude", metavar="A,B", help="columns that are not features (a label, a note)")
    t.add_argument("--id-column", metavar="NAME", help="a column naming the rows (not a feature)")
    t.add_argument("--fill", type=float, metavar="VALUE",
                   help="the number put in missing cells (empty, nan, NA, null); default: a missing cell is an "
                        "error naming its line and column")
    t.add_argument("--summary", action=argparse.BooleanOptionalAction, default=None,
                   help="with --plot: one summary of all rows (a dot per row and feature, coloured by the "
                        "feature's value) instead of a bar chart per row; default: the summary for more than "
                        "16 rows")


def _add_image_args(e) -> None:
    from .sources.images import CHANNEL_ORDERS, LAYOUTS, PRESETS
    i = e.add_argument_group("images (image files or folders as INPUT; decoded by Pillow: pip install "
                             "\"onnxplain[viz]\")")
    i.add_argument("--preset", choices=tuple(PRESETS),
                   help="imagenet (the default for images: shorter side resized to 256, centre crop 224, ImageNet "
                        "mean and std, NCHW, RGB; a model fixing another size gets a crop of its size) or none "
                        "(pixels scaled to [0, 1], no resize: the images must share one size)")
    i.add_argument("--size", metavar="H[,W]", help="resize: one number resizes the shorter side (aspect ratio kept), "
                                                   "H,W resizes to exactly that")
    i.add_argument("--crop", metavar="H[,W]", help="centre crop (one number: square)")
    i.add_argument("--mean", metavar="R,G,B", help="subtracted per channel from the pixels in [0, 1], in R,G,B order "
                                                   "whatever --channel-order")
    i.add_argument("--std", metavar="R,G,B", help="divides per channel after --mean, in R,G,B order")
    i.add_argument("--layout", type=str.upper, choices=LAYOUTS,
                   help="the model's image layout (default: from the model's input shape, else NCHW)")
    i.add_argument("--channel-order", type=str.upper, choices=CHANNEL_ORDERS, help="RGB (default) or BGR")


def _image_args(args) -> dict:
    """``image`` as :func:`onnxplain.files.explain_file` takes it, when an image flag is given ({} otherwise)."""
    from .sources.images import image_format_from_text
    fmt = image_format_from_text(args.preset, size=args.size, crop=args.crop, mean=args.mean, std=args.std,
                                 layout=args.layout, channel_order=args.channel_order)
    return {} if fmt is None else {"image": fmt}


def _table_args(args, source) -> dict:
    """``columns`` and ``table`` for a CSV source, as :func:`onnxplain.files.explain_file` takes them ({} for
    another source, which must not be given the table's flags)."""
    from .files import csv_input

    table = {k: v for k, v in (("exclude", args.exclude), ("id_column", args.id_column), ("fill", args.fill))
             if v is not None}
    if csv_input(source) is None:
        given = [f for f, v in (("--columns", args.columns), ("--exclude", args.exclude),
                                ("--id-column", args.id_column), ("--fill", args.fill)) if v is not None]
        if given:
            raise CLIError(f"{', '.join(given)} choose the columns of a CSV file: give a .csv INPUT (or --csv)")
        return {}
    return {"columns": args.columns, "table": table}


def _texts(args) -> list[str] | None:
    """The texts of --text and --text-file (None when neither is given), checked against INPUT."""
    from .sources.text import read_text_file

    texts = list(args.text or []) + (read_text_file(args.text_file) if args.text_file else [])
    if not texts:
        given = [f for f, v in (("--tokenizer", args.tokenizer), ("--max-length", args.max_length)) if v is not None]
        if given:
            raise CLIError(f"{', '.join(given)} apply to texts: add --text or --text-file")
        if not args.input:
            raise CLIError("give the INPUT file(s) to explain, or texts with --text/--text-file and --tokenizer")
        return None
    if args.input:
        raise CLIError(f"give either INPUT files or --text/--text-file, not both (got {' '.join(args.input)})")
    return texts


def run_explain(args) -> int:
    from .files import explain_file, read_feature_names
    from .targets import parse_target

    common = dict(target=parse_target(args.target) if args.target is not None else None,
                  target_weights=args.target_weights, output=args.output, inputs=args.inputs, layer=args.layer,
                  params=_method_params(args, allow_files=True), noise_tunnel=args.noise_tunnel,
                  memory_budget=args.memory_budget, batch_axes=_batching(args)["batch_axes"])
    model_batch_size = _batching(args)["batch_size"]
    if args.csv is not None:
        args.input = list(args.input) + [args.csv]
    texts = _texts(args)
    source = None if texts is not None else args.input[0] if len(args.input) == 1 else args.input
    if args.batch_size is not None:   # streamed: a dataset larger than memory, resumable
        from .files import explain_csv, explain_npy
        _refuse_unstreamed(args)
        table = _table_args(args, source)
        if table and _image_args(args):
            raise CLIError("the image flags (--preset, --size, ...) apply to image inputs, not to a CSV file")
        result = (explain_csv if table else explain_npy)(
            args.model, source, args.out, args.method, batch_size=args.batch_size,
            model_batch_size=model_batch_size, target_file=args.target_file, overwrite=args.overwrite,
            progress=False if args.no_progress else None, **table, **({} if table else _image_args(args)), **common)
    else:
        _refuse_streaming_flags(args)
        result = explain_file(args.model, source, args.method, out=args.out, plot=args.plot,
                              tokens=args.tokens, text=texts, tokenizer=args.tokenizer, max_length=args.max_length,
                              feature_names=read_feature_names(args.feature_names) if args.feature_names else None,
                              summary=args.summary, **_table_args(args, source), **_image_args(args),
                              batch_size=model_batch_size,
                              **common)
    print(result.summary())
    return 0


def _refuse_unstreamed(args) -> None:
    """Flags that draw or label rows held in memory, which a streamed run does not hold."""
    given = [flag for flag, value in (("--plot", args.plot), ("--tokens", args.tokens),
                                      ("--feature-names", args.feature_names), ("--text", args.text),
                                      ("--text-file", args.text_file), ("--summary", args.summary))
             if value is not None]
    if given:
        raise CLIError(f"{', '.join(given)} cannot be used with --batch-size (a streamed run does not keep the "
                       f"rows in memory to draw them); explain a few rows without --batch-size to draw them")


def _refuse_streaming_flags(args) -> None:
    given = [flag for flag, value in (("--target-file", args.target_file), ("--overwrite", args.overwrite),
                                      ("--no-progress", args.no_progress)) if value]
    if given:
        raise CLIError(f"{', '.join(given)} only apply to a streamed run: add --batch-size N")


# ---------------------------------------------------------------------- method arguments (convert, explain)
def _add_method_args(p, graph_defaults: bool, output_flag: str = "--output", method_help: str = "") -> None:
    from .methods import METHODS, NT_PARAMETERS, NT_TYPES, offered_parameters
    p.add_argument("--method", "-m", required=True,
                   help=f"one of {', '.join(METHODS)} (or an alias such as intgrad, grad*input){method_help}")
    p.add_argument(output_flag, dest="output", metavar="NAME",
                   help="the model output to explain (default: the first floating-point one)")
    p.add_argument("--input", dest="inputs", action="append", metavar="NAME",
                   help="an input to attribute (repeatable; default: every floating-point input, or the token "
                        "input feeding an embedding)")
    p.add_argument("--layer", metavar="TENSOR",
                   help="attribute this intermediate tensor instead of the inputs (grad_cam: the feature map it "
                        "explains; guided_grad_cam: the map that weighs the input's attributions)")
    g = p.add_argument_group("method parameters" + (" (stored as the graph's defaults)" if graph_defaults else ""))
    for offered in offered_parameters():   # one flag per parameter name, from the methods' declarations
        if offered.in_graph or not graph_defaults:
            _add_parameter_flag(g, offered, graph_defaults)
    noise = [p.flag for p in NT_PARAMETERS if p.in_graph or not graph_defaults]
    g.add_argument("--noise-tunnel", choices=NT_TYPES,
                   help=f"average the method's attributions over noisy copies of the inputs (Captum's NoiseTunnel; "
                        f"{', '.join(noise[:-1])} and {noise[-1]} set the noise)")
    g.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="any other method parameter, VALUE read as a Python literal" +
                        ("" if graph_defaults else " or @FILE.npy for an array") + " (repeatable)")


def _boolean(text: str) -> bool:
    word = text.strip().lower()
    if word in ("true", "yes", "1"):
        return True
    if word in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _ints(text: str):
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = None
    if not (isinstance(value, int) or (isinstance(value, tuple) and all(isinstance(v, int) for v in value))):
        raise argparse.ArgumentTypeError(f"expected an int or a tuple of ints such as 3,8,8, got {text!r}")
    return value


#: how the command line reads a value of each kind of method parameter (arrays: see :func:`_method_params`)
_READERS = {"int": int, "float": float, "bool": _boolean, "str": str, "choice": str, "ints": _ints, "array": str}
#: what a value of the kind looks like, for the help
_FORMS = {"ints": "a tuple as 3,8,8 (or one int)",
          "array": "a number (typed as an int, an integer token id: 0 is the id 0) or an .npy file"}


def _words(offered) -> tuple:
    """The words some method's declaration of the parameter takes besides its kind's values, in order."""
    return tuple(dict.fromkeys(w for _, p in offered.uses for w in p.words))


def _reader(offered):
    """The flag's reader: the kind's, then (exactly, case-sensitive) one of the words some method declares."""
    read, words = _READERS[offered.param.kind], _words(offered)
    if not words:
        return read

    def read_value_or_word(text: str):
        try:
            return read(text)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            if text in words:
                return text
        raise argparse.ArgumentTypeError(f"expected {offered.param.but(words=words).expected}, got {text!r}")

    read_value_or_word.__name__ = read.__name__
    return read_value_or_word


def _refuse_undeclared_word(args, offered, value) -> None:
    """A word given to a flag is for the methods whose declaration takes it: a method named by --method that
    takes the parameter without that word is refused by name."""
    from .methods import canonical_name
    names = str(getattr(args, "method", None) or "").split(",")
    chosen = []
    for name in names:
        try:
            chosen.append(canonical_name(name))
        except ValueError:
            continue            # an unknown method is refused where the method is made
    declared = dict(offered.uses)
    refused = [m for m in chosen if m in declared and value not in declared[m].words]
    if refused:
        takers = [m for m, p in offered.uses if value in p.words]
        raise CLIError(f"{offered.param.flag} {value}: method {refused[0]!r} takes {declared[refused[0]].expected} "
                       f"there; {value!r} is for {', '.join(takers)}")


def _add_parameter_flag(g, offered, graph_defaults: bool) -> None:
    """The flag of one method parameter: its spelling, the type of its values, and which methods take it."""
    param = offered.param
    if param.kind == "bool":
        metavar = "{true,false}"
    elif param.kind == "array":
        metavar = "VALUE" if graph_defaults else "VALUE|FILE.npy"
    else:
        metavar = param.metavar or param.name.upper()
    form = _FORMS.get(param.kind, "")
    if graph_defaults and param.kind == "array":
        form = "a number (typed as an int, an integer token id: 0 is the id 0)"
    g.add_argument(param.flag, dest=f"param_{param.name}", type=_reader(offered), metavar=metavar,
                   help=offered.describe(graph_only=graph_defaults) + (f"; {metavar}: {form}" if form else ""))


def _add_memory_budget(p) -> None:
    p.add_argument("--memory-budget", metavar="BYTES|SHARE",
                   help="what one run may use: 512MiB, 80%% (of the free memory), or bytes (default: a quarter "
                        "of the free memory)")


def _add_batching_args(p, batch_size_flag: str | None = "--batch-size") -> None:
    p.add_argument("--batch-axis", action="append", default=[], metavar="NAME=AXIS",
                   help="the batch axis of an input, or NAME=none for an unbatched one (repeatable; default: "
                        "detected)")
    if batch_size_flag:   # explain's --batch-size is the rows of a streamed batch: the model's cap is renamed
        p.add_argument(batch_size_flag, dest="model_batch_size", type=int, metavar="B",
                       help="the most rows the model may see per forward pass (1 for models that run one row at "
                            "a time)")


def _batching(args) -> dict:
    """``batch_axes`` and ``batch_size`` (the model's rows per forward pass) as :class:`onnxplain.Explainer`
    takes them."""
    from .files import parse_batch_axes
    return {"batch_axes": parse_batch_axes(args.batch_axis) or None,
            "batch_size": getattr(args, "model_batch_size", None)}


def _method_params(args, allow_files: bool) -> dict:
    """The method parameters given on the command line (only those given), as the API's keyword arguments."""
    from .files import load_array, parse_value
    from .methods import offered_parameters

    params = {}
    for offered in offered_parameters():   # the flags given (convert has only those of graph defaults)
        value = getattr(args, f"param_{offered.name}", None)
        if value is not None:
            if offered.param.kind == "array":   # a number, or an array from an .npy file
                value = parse_value(value, offered.param.flag, allow_files)
            elif isinstance(value, str) and value in _words(offered):
                _refuse_undeclared_word(args, offered, value)
            params[offered.name] = value
    for item in args.param:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"--param expects KEY=VALUE, got {item!r}")
        if text.startswith("@"):
            if not allow_files:
                raise CLIError(f"--param {key}: arrays from files (@FILE.npy) are for 'explain'; here give a literal")
            value = load_array(text[1:], f"--param {key}")
        else:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
        params[key.strip().replace("-", "_")] = value
    return params


# ---------------------------------------------------------------------- serve, triton
def add_serve(sub) -> None:
    s = command(sub, "serve", help="serve explanations over the Open Inference Protocol (REST and gRPC)",
                description="Serve explanations of each MODEL over the Open Inference Protocol (KServe v2, "
                            "as Triton speaks it: tritonclient works unchanged), REST and gRPC, until "
                            "SIGTERM or Ctrl-C. Needs pip install \"onnxplain[serve]\".")
    s.add_argument("models", nargs="+", metavar="MODEL", help="the ONNX model(s)")
    _add_method_args(s, graph_defaults=False, method_help="; several, comma-separated, serve each model with "
                                                           "each method")
    s.add_argument("--name", dest="names", action="append", metavar="NAME",
                   help="the served name, one per model and method (default: the file's stem, with "
                        "-METHOD when several methods are served)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    s.add_argument("--http-port", type=int, default=8000, help="REST port (default: 8000)")
    s.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default: 8001)")
    s.add_argument("--max-request-bytes", type=int, default=64 << 20,
                   help="larger request bodies are refused with 413 (default: 64 MiB)")
    s.add_argument("--threads", type=int, help="onnxruntime intra-op threads per model (default: one per usable "
                                               "core)")
    _add_memory_budget(s)
    _add_batching_args(s)
    s.add_argument("--ui", action="store_true",
                   help="also serve the local page on GET /ui (as onnxplain view does); see 'the page's inputs'")
    _add_page_args(s)
    s.set_defaults(run=run_serve)


def run_serve(args) -> int:
    from .methods import canonical_name
    page = _page_options(args, args.ui)
    try:
        from .serve.server import serve
    except ImportError as e:
        raise CLIError(str(e)) from e
    methods = [canonical_name(m) for m in args.method.split(",") if m.strip()]
    serve(args.models, methods, names=args.names, output=args.output, inputs=args.inputs, layer=args.layer,
          host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
          max_request_bytes=args.max_request_bytes, threads=args.threads, memory_budget=args.memory_budget,
          noise_tunnel=args.noise_tunnel, ui=args.ui, **page, **_batching(args),
          **_method_params(args, allow_files=True))
    return 0


# ---------------------------------------------------------------------- view: the local page
def add_view(sub) -> None:
    v = command(sub, "view", help="a local page: give a model an image, a text or a row and see its attribution",
                description="Serve each MODEL with each method (named MODEL-METHOD when several) and a page on "
                            "http://127.0.0.1:PORT/ui where you pick a model, upload an image, type a text or "
                            "a row of features, set the method's parameters and see the attribution. The page "
                            "talks to the Open Inference Protocol endpoints of the same server (REST only, "
                            "loopback only) and loads nothing from the network. Prints the URL once the "
                            "server listens; --open also opens it. Needs pip install \"onnxplain[serve]\".")
    v.add_argument("models", nargs="+", metavar="MODEL", help="the ONNX model(s)")
    _add_method_args(v, graph_defaults=False, method_help="; several, comma-separated, offer each model with "
                                                           "each method")
    v.add_argument("--name", dest="names", action="append", metavar="NAME",
                   help="the served name, one per model and method (default: the file's stem, with "
                        "-METHOD when several methods are served)")
    v.add_argument("--port", type=int, default=8000, help="the page's port on 127.0.0.1 (default: 8000)")
    v.add_argument("--open", dest="open_browser", action="store_true",
                   help="open the page in the default browser once the server listens")
    v.add_argument("--threads", type=int, help="onnxruntime intra-op threads per model (default: one per usable "
                                               "core)")
    _add_memory_budget(v)
    _add_batching_args(v)
    _add_page_args(v)
    v.set_defaults(run=run_view)


def _add_page_args(p) -> None:
    g = p.add_argument_group("the page's inputs (images: Pillow; texts: pip install \"onnxplain[text]\")")
    g.add_argument("--preset", metavar="NAME",
                   help="how images are resized, cropped and normalised: imagenet (the default) or none; "
                        "--size, --crop, --mean, --std, --layout and --channel-order override its steps")
    g.add_argument("--size", metavar="N|H,W", help="resize: the shorter side to N, or exactly H,W")
    g.add_argument("--crop", metavar="N|H,W", help="centre crop to N x N or H x W")
    g.add_argument("--mean", metavar="M|R,G,B", help="subtracted per channel after scaling pixels to [0, 1]")
    g.add_argument("--std", metavar="S|R,G,B", help="divided per channel after the mean")
    g.add_argument("--layout", choices=("NCHW", "NHWC"), type=str.upper, help="the image tensor's layout")
    g.add_argument("--channel-order", choices=("RGB", "BGR"), type=str.upper, help="the channels' order")
    g.add_argument("--tokenizer", metavar="tokenizer.json", help="the tokenizers file that tokenizes typed texts")
    g.add_argument("--max-length", type=int, metavar="N", help="truncate typed texts to N tokens")


def _page_options(args, ui: bool) -> dict:
    """The page's ``image``, ``tokenizer`` and ``max_length`` (:class:`onnxplain.serve.ui.Page`) from the flags."""
    image = {k: getattr(args, k) for k in ("preset", "size", "crop", "mean", "std", "layout", "channel_order")}
    given = {k: v for k, v in {**image, "tokenizer": args.tokenizer, "max_length": args.max_length}.items()
             if v is not None}
    if not ui:
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise CLIError(f"{flags} set how the page reads its inputs: add --ui")
        return {}
    from .sources.images import image_format_from_text
    return {"image": image_format_from_text(**image), "tokenizer": args.tokenizer, "max_length": args.max_length}


def run_view(args) -> int:
    from .methods import canonical_name
    try:
        from .serve.server import view
    except ImportError as e:
        raise CLIError(str(e)) from e
    methods = [canonical_name(m) for m in args.method.split(",") if m.strip()]
    view(args.models, methods, names=args.names, port=args.port, open_browser=args.open_browser,
         output=args.output, inputs=args.inputs, layer=args.layer, threads=args.threads,
         memory_budget=args.memory_budget, noise_tunnel=args.noise_tunnel, **_page_options(args, True),
         **_batching(args), **_method_params(args, allow_files=True))
    return 0


def add_triton(sub) -> None:
    t = command(sub, "triton", help="write a Triton model repository entry for the explanation graph",
                description="Write REPO/NAME/config.pbtxt and REPO/NAME/1/model.onnx (the explanation "
                            "graph), atomically. With --max-batch-size > 0 Triton batches requests and the "
                            "method parameters are fixed to the values given here; with 0 they are "
                            "optional inputs of every request.")
    t.add_argument("model", help="the ONNX model")
    _add_method_args(t, graph_defaults=True, output_flag="--explained-output")
    t.add_argument("--name", required=True, help="the model's name in the repository")
    t.add_argument("--output", dest="repository", required=True, metavar="REPO",
                   help="the model repository folder")
    t.add_argument("--max-batch-size", type=int, default=8, help="Triton's max_batch_size (default: 8; 0: no "
                                                                 "batching, parameters per request)")
    t.add_argument("--gpu", action="store_true", help="run the model on the GPU (instance group KIND_GPU)")
    t.set_defaults(run=run_triton)


def run_triton(args) -> int:
    from .methods import canonical_name
    from .serve.triton import export_triton
    folder = export_triton(args.model, args.repository, args.name, canonical_name(args.method),
                           max_batch_size=args.max_batch_size, gpu=args.gpu, output=args.output,
                           inputs=args.inputs, layer=args.layer, noise_tunnel=args.noise_tunnel,
                           defaults=_method_params(args, allow_files=False))
    print(f"wrote {folder}: config.pbtxt and 1/model.onnx (max_batch_size {args.max_batch_size}, "
          f"{'GPU' if args.gpu else 'CPU'})")
    return 0


# ---------------------------------------------------------------------- profile
def add_profile(sub) -> None:
    p = command(sub, "profile", help="time an explanation graph: op types, slowest nodes, floor ratio, memory",
                description="Run MODEL's explanation graph with onnxruntime's profiler and print the time per op "
                            "type and per node, the call's time against a plain forward over the same expanded "
                            "batch (the floor ratio), the share of time outside session.run, and peak memory. "
                            "Without --data the inputs are made up (--batch rows).")
    p.add_argument("model", help="the ONNX model")
    _add_method_args(p, graph_defaults=False)
    _add_batching_args(p)
    p.add_argument("--data", metavar="INPUT.npy|.npz", help="the rows to explain (default: made-up rows)")
    p.add_argument("--batch", type=int, default=8, help="rows of made-up inputs (default: 8)")
    p.add_argument("--target", nargs="+", metavar="T",
                   help="what to explain, as for 'explain' (default: each row's largest output)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls after a warm-up; medians (default: 3)")
    p.add_argument("--top", type=int, default=15, help="slowest nodes to list (default: 15)")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: one per usable core)")
    _add_memory_budget(p)
    p.add_argument("--json", metavar="OUT.json", help="also write the numbers as JSON")
    p.set_defaults(run=run_profile)


def run_profile(args) -> int:
    from .files import check_output_path, load_inputs
    from .profile import profile
    from .targets import PREDICTED, parse_target

    if args.json:
        check_output_path(args.json, (".json",), what="--json")
    target = parse_target(args.target) if args.target is not None else None
    result = profile(args.model, load_inputs(args.data) if args.data else None, args.method,
                     None if target == PREDICTED else target, batch=args.batch, repeats=args.repeats,
                     output=args.output, attribute=args.inputs, layer=args.layer, threads=args.threads,
                     memory_budget=args.memory_budget, noise_tunnel=args.noise_tunnel, **_batching(args),
                     params=_method_params(args, allow_files=True))
    return _print_result(result, args)


def _print_result(result, args) -> int:
    """Print a result's report (its ``--top`` rows) and write its numbers to ``--json`` when asked."""
    print(result.report(args.top))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.to_dict(), f, indent=1)
        print(f"wrote {args.json}")
    return 0


# ---------------------------------------------------------------------- audit
def add_audit(sub) -> None:
    p = command(sub, "audit", help="where DeepLIFT's relevance leaks: every node's summation-to-delta residual",
                description="Run MODEL's DeepLIFT graph with the relevance reaching every node and the relevance its "
                            "rule passes on, and list the nodes by their local residual (their sum is the call's "
                            "delta). Without --data the inputs are made up (--batch rows).")
    p.add_argument("model", help="the ONNX model")
    p.add_argument("--method", "-m", default="deeplift",
                   help="the method whose rules are audited: deeplift (the default and the only one)")
    p.add_argument("--output", metavar="NAME", help="the model output to explain (default: the first floating-point one)")
    p.add_argument("--input", dest="inputs", action="append", metavar="NAME", help="an input to attribute (repeatable)")
    p.add_argument("--layer", metavar="TENSOR", help="attribute this intermediate tensor instead of the inputs")
    _add_batching_args(p, batch_size_flag=None)    # the audit pairs rows and references in one batch
    p.add_argument("--data", metavar="INPUT.npy|.npz", help="the rows to explain (default: made-up rows)")
    p.add_argument("--batch", type=int, default=4, help="rows of made-up inputs (default: 4)")
    p.add_argument("--target", nargs="+", metavar="T",
                   help="what to explain, as for 'explain' (default: each row's largest output)")
    p.add_argument("--baseline", metavar="VALUE|FILE.npy", help="the baseline (default 0)")
    p.add_argument("--top", type=int, default=15, help="nodes to list (default: 15)")
    p.add_argument("--json", metavar="OUT.json", help="also write every node's numbers as JSON")
    p.set_defaults(run=run_audit)


def run_audit(args) -> int:
    from .api import audit
    from .files import check_output_path, load_inputs, parse_value
    from .methods import canonical_name
    from .targets import PREDICTED, parse_target

    if canonical_name(args.method) != "deeplift":
        raise CLIError(f"--method {args.method}: the audit checks DeepLIFT's rules (--method deeplift)")
    if args.json:
        check_output_path(args.json, (".json",), what="--json")
    target = parse_target(args.target) if args.target is not None else None
    params = {} if args.baseline is None else {"baselines": parse_value(args.baseline, "--baseline", True)}
    result = audit(args.model, load_inputs(args.data) if args.data else None, None if target == PREDICTED else target,
                   batch=args.batch, output=args.output, attribute=args.inputs, layer=args.layer,
                   batch_axes=_batching(args).get("batch_axes"), **params)
    return _print_result(result, args)


# ---------------------------------------------------------------------- metrics
def _default(function, name: str):
    """The default of a parameter of a Python function (the help shows the API's own defaults)."""
    import inspect
    return inspect.signature(function).parameters[name].default


def _norm_ord(text: str):
    word = text.strip().lower()
    if word == "fro":
        return "fro"
    try:
        return float(word)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fro or a number p (inf included), got {text!r}") from None


def add_metrics(sub) -> None:
    from . import metrics
    from .methods import METHODS, NT_PARAMETERS, NT_TYPES, offered_parameters
    from .metrics.evaluation import DEFAULT_METHOD, METRIC_NAMES, SHARED_PARAMS
    from .metrics.perturbations import gaussian_perturbation, uniform_perturbation

    p = command(sub, "metrics", help="how faithful attributions are: deletion, insertion, infidelity, max-sensitivity",
                description="Evaluate attributions of MODEL's output for the rows in INPUT (.npy, or .npz by input "
                            "name) with onnxplain.metrics.evaluate: the area under the deletion and insertion "
                            "curves, infidelity and max-sensitivity, one value per row. The attributions are read "
                            "from --attributions, or computed with --method first; sensitivity_max always explains "
                            "perturbed copies of the rows with --method. Prints a table; --out writes the values "
                            "and the curves, --plot draws the curves.")
    p.add_argument("model", help="the ONNX model")
    p.add_argument("input", help="the inputs: .npy, or .npz keyed by input name")
    p.add_argument("--attributions", metavar="ATTR.npy|.npz",
                   help="the attributions to evaluate, shaped like the attributed input(s): .npy (one attributed "
                        "input) or .npz keyed by input name or as 'explain --out' writes them (default: computed "
                        "with --method)")
    p.add_argument("--metric", default=",".join(METRIC_NAMES), metavar="M[,M...]",
                   help=f"the metrics, comma-separated: {', '.join(METRIC_NAMES)} (default: all)")
    p.add_argument("--output", metavar="NAME", help="the model output to explain (default: the first floating-point one)")
    p.add_argument("--input", dest="inputs", action="append", metavar="NAME",
                   help="an input to attribute (repeatable; default: every floating-point input)")
    p.add_argument("--target", nargs="+", metavar="T",
                   help="what to explain, as for 'explain': an index (3), a tuple of indices (1,2), one per row, "
                        "'pred' for each row's largest output, or 'none' for an output with one value per row")
    p.add_argument("--target-file", metavar="FILE.npy", help="one target per row: integers (N,) or index rows (N, k)")
    p.add_argument("--target-weights", metavar="FILE.npy", help="weights shaped like the output instead of --target")
    p.add_argument("--out", metavar="OUT.json|OUT.npz",
                   help="write every row's values and the deletion/insertion curves (fractions, values, area)")
    p.add_argument("--plot", metavar="OUT.png|.svg|.pdf",
                   help="draw the deletion and insertion curves (needs matplotlib: pip install \"onnxplain[viz]\")")
    _add_batching_args(p, batch_size_flag="--model-batch-size")
    _add_memory_budget(p)

    f = p.add_argument_group("deletion and insertion (onnxplain.metrics.deletion / insertion)")
    f.add_argument("--steps", type=int, metavar="N",
                   help=f"points of the curve after the first (default: one per feature, at most "
                        f"{metrics.DEFAULT_STEPS})")
    f.add_argument("--baseline", metavar="VALUE|FILE.npy",
                   help="what a flipped feature is set to (default 0); also the baselines of --method when it "
                        "takes them (override with --param baselines=...)")
    f.add_argument("--feature-mask", metavar="FILE.npy",
                   help="feature groups flipped together (equal ids form a group, scored by the sum of their "
                        "attributions; default: every element); also --method's feature_mask when it takes one")
    i = p.add_argument_group("infidelity and sensitivity_max (onnxplain.metrics.infidelity / sensitivity_max)")
    i.add_argument("--n-perturb-samples", type=int, metavar="N",
                   help=f"perturbed copies per row (default: {_default(metrics.infidelity, 'n_perturb_samples')})")
    i.add_argument("--max-examples-per-batch", type=int, metavar="N",
                   help="perturbed copies per call of the perturbation (Captum's; default: all of them, within "
                        "the memory budget)")
    i.add_argument("--normalize", type=_boolean, metavar="{true,false}",
                   help=f"infidelity: scale the attributions by Captum's beta first (default: "
                        f"{str(_default(metrics.infidelity, 'normalize')).lower()})")
    i.add_argument("--perturb-stdev", type=float, metavar="S",
                   help=f"infidelity: the Gaussian noise's standard deviation (default: "
                        f"{_default(gaussian_perturbation, 'stdev')})")
    i.add_argument("--perturb-radius", type=float, metavar="R",
                   help=f"sensitivity_max: the uniform noise's radius (default: "
                        f"{_default(metrics.sensitivity_max, 'perturb_radius')})")
    i.add_argument("--norm-ord", type=_norm_ord, metavar="fro|P",
                   help=f"sensitivity_max: the norm of the attributions' change (default: "
                        f"{_default(metrics.sensitivity_max, 'norm_ord')})")
    i.add_argument("--perturb-seed", type=int, metavar="SEED",
                   help=f"seed of the noise of both (default: {_default(uniform_perturbation, 'seed')})")

    g = p.add_argument_group("the method (attributions when --attributions is not given, and sensitivity_max)")
    g.add_argument("--method", "-m", help=f"one of {', '.join(METHODS)} (default: {DEFAULT_METHOD})")
    for offered in offered_parameters():   # explain's flags, but for those deletion and insertion share
        if offered.name not in SHARED_PARAMS:
            _add_parameter_flag(g, offered, graph_defaults=False)
    noise = [q.flag for q in NT_PARAMETERS]
    g.add_argument("--noise-tunnel", choices=NT_TYPES,
                   help=f"average the method's attributions over noisy copies of the inputs (Captum's NoiseTunnel; "
                        f"{', '.join(noise[:-1])} and {noise[-1]} set the noise)")
    g.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="any other method parameter, VALUE read as a Python literal or @FILE.npy (repeatable)")
    p.set_defaults(run=run_metrics)


#: how :func:`onnxplain.metrics.evaluate`'s errors name its arguments on the command line
_METRICS_FLAGS = {"metrics": "--metric", "attributions": "--attributions", "out": "--out", "plot": "--plot",
                  "baselines": "--baseline", "feature_mask": "--feature-mask", "method": "--method",
                  "noise_tunnel": "--noise-tunnel"}


def run_metrics(args) -> int:
    from .files import load_array, parse_value
    from .metrics import evaluate
    from .metrics.evaluation import METRIC_OPTIONS

    options = {k: getattr(args, k) for k in METRIC_OPTIONS}
    report = evaluate(
        args.model, args.input, args.attributions, args.metric, **_metric_targets(args), method=args.method,
        params=_method_params(args, allow_files=True), noise_tunnel=args.noise_tunnel,
        baselines=None if args.baseline is None else parse_value(args.baseline, "--baseline"),
        feature_mask=None if args.feature_mask is None else load_array(args.feature_mask, "--feature-mask"),
        **options, output=args.output, attribute=args.inputs, memory_budget=args.memory_budget, **_batching(args),
        out=args.out, plot=args.plot,
        argument_names={**{k: "--" + k.replace("_", "-") for k in METRIC_OPTIONS}, **_METRICS_FLAGS})
    print(report.table())
    for path in report.written:
        print(f"wrote {path}")
    return 0


def _metric_targets(args) -> dict:
    """``--target`` (words), ``--target-file`` or ``--target-weights`` as evaluate's ``target`` or
    ``target_weights``."""
    from .files import load_array
    from .targets import parse_target

    given = [f for f, v in (("--target", args.target), ("--target-file", args.target_file),
                            ("--target-weights", args.target_weights)) if v is not None]
    if len(given) > 1:
        raise CLIError(f"give one of --target, --target-file and --target-weights, not {' and '.join(given)}")
    if args.target_weights is not None:
        return {"target_weights": load_array(args.target_weights, "--target-weights")}
    if args.target_file is not None:
        t = load_array(args.target_file, "--target-file")
        if t.dtype.kind not in "iu" or t.ndim not in (1, 2):
            raise ValueError(f"--target-file must hold integer targets shaped (N,) or (N, k), got dtype {t.dtype} "
                             f"and shape {t.shape}")
        return {"target": [int(v) for v in t] if t.ndim == 1 else [tuple(int(i) for i in r) for r in t]}
    return {"target": parse_target(args.target) if args.target is not None else None}


# ---------------------------------------------------------------------- the commands, in the order --help lists them
COMMANDS = [add_demo, add_inspect, add_convert, add_explain, add_profile, add_audit, add_metrics, add_serve,
            add_view, add_triton]


if __name__ == "__main__":   # pragma: no cover
    sys.exit(main())
