"""Method parameters are declared once (``onnxplain.methods.params.Param``): the declarations are checked, values
are checked against them before anything runs, and the command line's flags and the server's request inputs
are read off them, so that every declared parameter has a flag and a request form."""
from __future__ import annotations

import re

import numpy as np
import pytest

import onnxplain
from onnxplain import cli
from onnxplain.demo import demo_files
from onnxplain.methods import METHODS, NT_PARAMETERS, NT_TYPES, Method, Param, get_method, offered_parameters
from onnxplain.methods.params import KINDS, check_values, defaults_of, merged, offered
from onnxplain.serve.protocol import Interface, request_form

MODEL = demo_files()["model"]
X = np.load(demo_files()["inputs"])[:2].astype(np.float32)      # (2, 1, 16, 16)


def every_method():
    """Every method, and the noise tunnels over each gradient method, as get_method makes them."""
    for name in METHODS:
        yield get_method(name)
        if not get_method(name).forward_only and "nt_samples" not in get_method(name).defaults \
                and not get_method(name).noise_tunnel_refusal:
            for kind in NT_TYPES:
                yield get_method(name, noise_tunnel=kind)


# ---------------------------------------------------------------------- declarations
def test_every_method_declares_exactly_its_defaults():
    for method in every_method():
        assert defaults_of(method.parameters) == method.defaults, method.name    # names and values (not order)
        if not hasattr(method, "inner"):
            assert [p.name for p in method.parameters] == list(method.defaults)
        assert all(isinstance(p, Param) for p in method.parameters)
    offered((m.name, m.parameters) for m in every_method())    # one kind and one spelling per name: no raise


@pytest.mark.parametrize("args, kwargs, message", [
    (("n", 1, "integer", "doc"), {}, r"Param 'n': unknown kind 'integer'; the kinds are int, float, bool"),
    (("n", "a", "choice", "doc"), {}, "a choice needs its choices"),
    (("n", 1, "int", "doc"), dict(choices=("a",)), "choices are for kind 'choice'"),
    (("n", 1, "int", "doc"), dict(per_input=True), "only arrays are given per input"),
    (("n", "50", "int", "doc"), {}, r"its default '50' is not an int"),
    (("n", "x", "choice", "doc"), dict(choices=("a", "b")), r"its default 'x' is not one of a, b"),
    (("n", 1, "int", ""), {}, "doc must be one line"),
    (("n", 1, "int", "two\nlines"), {}, "doc must be one line"),
    (("n", 1, "int", "doc"), dict(required=True), "a required parameter has no default"),
    (("n", 1, "int", "doc"), dict(cli="-n"), "cli must be '--flag' or '--flag METAVAR'"),
    (("n", None, "array", "doc"), dict(dtype="int"), "dtype and leading describe per-input arrays"),
    (("n", None, "array", "doc"), dict(per_input=True, dtype="float32"), "dtype must be 'input'"),
    (("n", None, "array", "doc"), dict(per_input=True, leading=3), "leading must be 1"),
    (("not a name", 1, "int", "doc"), {}, "must be a Python identifier"),
])
def test_bad_declarations_are_refused_with_what_is_wrong(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Param(*args, **kwargs)


def test_defaults_derive_from_the_declarations_and_never_both():
    class Tiny(Method):
        name = "tiny"
        parameters = (Param("a", 1, "int", "an int"), Param("b", None, "str", "a string"))

    assert Tiny.defaults == {"a": 1, "b": None} and Tiny().defaults == {"a": 1, "b": None}
    with pytest.raises(TypeError, match="declares both parameters and defaults"):
        class Both(Method):
            parameters = (Param("a", 1, "int", "an int"),)
            defaults = {"a": 1}
    with pytest.raises(ValueError, match="declared twice"):
        defaults_of((Param("a", 1, "int", "x"), Param("a", 2, "int", "y")))
    inner, outer = (Param("a", 1, "int", "x"), Param("s", 0, "int", "y")), (Param("s", None, "int", "z"),)
    assert [(p.name, p.default) for p in merged(inner, outer)] == [("a", 1), ("s", None)]


# ---------------------------------------------------------------------- values
GOOD = {
    "int": [3, np.int64(3)],
    "float": [0.5, 2, np.float32(0.5)],
    "bool": [True, np.bool_(False)],
    "str": ["text"],
    "choice": ["b"],
    "ints": [3, (3, 8, 8), [1, 2], np.array([1, 2]), ((1, 2), (3,)), {"x": (1, 2)}],
    "array": [0, 0.5, True, np.zeros((2, 3)), [[0.0, 1.0]], (np.zeros(3), None), {"x": np.zeros(3), "y": None}],
}
BAD = {
    "int": [2.5, True, "3", (3,)],
    "float": ["big", True, (0.1,), np.zeros(2)],
    "bool": ["yes", 1, None],
    "str": [3, b"bytes"],
    "choice": ["c", 1],
    "ints": [2.5, "3,3", (1.0, 2), np.array([1.5]), {1: (2,)}, ((1, (2,)),)],
    "array": ["zero", b"0", np.array(["a"]), {1: 0}, object()],
}


@pytest.mark.parametrize("kind", KINDS)
def test_values_are_checked_against_their_kind(kind):
    default = {"int": 1, "float": 1.0, "bool": False, "str": "s", "choice": "a", "ints": None, "array": None}[kind]
    p = Param("p", default, kind, "what p is", choices=("a", "b") if kind == "choice" else (),
              per_input=kind == "array")
    for value in GOOD[kind]:
        p.check(value, "m")
    for value in BAD[kind]:
        with pytest.raises(ValueError, match=rf"^p must be {re.escape(p.expected)}, got .+ \(parameter of method 'm': "
                                             rf"what p is\)$"):
            p.check(value, "m")
    assert p.accepts(None) == (default is None)


def test_values_the_method_checks_itself_are_left_to_its_more_specific_message():
    checked = Param("n", 1, "int", "doc", own_check=True)
    check_values([checked], {"n": "many"}, "m")           # the method says more about it later
    with pytest.raises(ValueError, match="n must be an int"):
        check_values([checked.but(own_check=False)], {"n": "many"}, "m")


@pytest.mark.parametrize("method, kwargs, message", [
    ("integrated_gradients", dict(baselines="zero"),
     r"baselines must be an array or a number, or one per input .* got 'zero' \(parameter of method "
     r"'integrated_gradients'"),
    ("deeplift", dict(eps="small"), r"eps must be a number, got 'small' \(parameter of method 'deeplift'"),
    ("epsilon_lrp", dict(epsilon=True), r"epsilon must be a number, got True"),
    ("feature_ablation", dict(feature_mask="rows"), r"feature_mask must be an array"),
    ("occlusion", dict(sliding_window_shapes=(1, 2.5, 3)), r"sliding_window_shapes must be an int or a tuple of ints"),
    ("occlusion", dict(sliding_window_shapes=(1, 3, 3), strides="2"), r"strides must be an int or a tuple"),
    # the methods' own messages stay theirs
    ("shapley_sampling", dict(n_samples=2.5), "n_samples must be a positive int"),
    ("integrated_gradients", dict(method="simpson"), "unknown integration method 'simpson'"),
    ("integrated_gradients", dict(multiply_by_inputs="no"), "multiply_by_inputs must be True or False"),
    ("feature_ablation", dict(progress="yes"), "progress must be True, False or None"),
])
def test_bad_values_are_refused_before_anything_runs(method, kwargs, message, monkeypatch):
    ex = onnxplain.Explainer(MODEL, method)
    monkeypatch.setattr(ex.session, "run", lambda *a, **k: pytest.fail("the session ran"))
    with pytest.raises(ValueError, match=message):
        ex.explain(X, target=0, **kwargs)


def test_graph_defaults_are_checked_when_the_method_is_made():
    with pytest.raises(ValueError, match=r"eps must be a number, got 'x' \(parameter of method 'deeplift'"):
        get_method("deeplift", eps="x")


# ---------------------------------------------------------------------- the command line
def _options(command: str) -> dict:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {flag: action for action in sub._actions for flag in action.option_strings}


SAMPLE = {"int": ("3", 3), "float": ("0.25", 0.25), "bool": ("false", False), "str": ("text", "text"),
          "choice": ("riemann_left", "riemann_left"), "ints": ("3,8,8", (3, 8, 8)), "array": ("0.5", 0.5)}


@pytest.mark.parametrize("command, graph_defaults", [("explain", False), ("profile", False), ("serve", False),
                                                     ("convert", True), ("triton", True)])
def test_every_declared_parameter_has_a_flag(command, graph_defaults):
    """Calls take every parameter; convert and triton store graph defaults, so they offer those the graph stores."""
    options = _options(command)
    for o in offered_parameters():
        wanted = o.in_graph or not graph_defaults
        assert (o.param.flag in options) == wanted, f"{command}: {o.param.flag}"
        if wanted:
            assert options[o.param.flag].dest == f"param_{o.name}"
            for method, _ in o.uses:
                if not graph_defaults or any(p.in_graph for m, p in o.uses if m == method):
                    assert method in options[o.param.flag].help
    for p in NT_PARAMETERS:
        if p.in_graph or not graph_defaults:
            assert p.flag in options["--noise-tunnel"].help


def test_every_flag_reaches_the_method_as_its_keyword(tmp_path):
    argv = ["explain", MODEL, str(tmp_path / "x.npy"), "-m", "saliency"]
    expected = {}
    for o in offered_parameters():
        text, value = SAMPLE[o.param.kind]
        argv += [o.param.flag, text]
        expected[o.name] = value
    args = cli.build_parser().parse_args(argv)
    assert cli._method_params(args, allow_files=True) == expected
    np.save(tmp_path / "mask.npy", np.zeros((1, 1, 16, 16), np.int64))
    args = cli.build_parser().parse_args(["explain", MODEL, "x.npy", "-m", "feature_ablation",
                                          "--feature-mask", str(tmp_path / "mask.npy"), "--param", "n_baselines=2"])
    params = cli._method_params(args, allow_files=True)
    assert params["feature_mask"].shape == (1, 1, 16, 16) and params["n_baselines"] == 2


@pytest.mark.parametrize("argv, fragment", [
    (["--antithetic", "maybe"], "expected true or false, got 'maybe'"),
    (["--sliding-window-shapes", "3x3"], "expected an int or a tuple of ints"),
    (["--n-samples", "many"], "invalid int value"),
])
def test_bad_flag_values_are_usage_errors(capsys, argv, fragment):
    assert cli.main(["explain", MODEL, demo_files()["inputs"], "-m", "shapley_sampling", *argv]) == 2
    assert fragment in capsys.readouterr().err


def test_a_flag_the_method_does_not_take_is_refused_by_name(tmp_path, capsys):
    assert cli.main(["explain", MODEL, demo_files()["inputs"], "-m", "saliency", "--target", "0",
                     "--antithetic", "true", "--out", str(tmp_path / "a.npy")]) == 2
    err = capsys.readouterr().err
    assert "unexpected parameter(s) ['antithetic']" in err and "saliency" in err


def test_new_flags_run_end_to_end(tmp_path):
    out = tmp_path / "a.npy"
    assert cli.main(["explain", MODEL, demo_files()["inputs"], "-m", "shapley_sampling", "--target", "0",
                     "--n-samples", "2", "--antithetic", "true", "--seed", "3", "--feature-mask",
                     _mask(tmp_path), "--progress", "false", "--out", str(out)]) == 0
    x = np.load(demo_files()["inputs"])
    expected = onnxplain.explain(MODEL, x, method="shapley_sampling", target=0, n_samples=2, antithetic=True, seed=3,
                                 feature_mask=np.load(_mask(tmp_path)))
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-6)
    graph = tmp_path / "g.onnx"
    assert cli.main(["convert", MODEL, str(graph), "-m", "deeplift", "--eps", "1e-6",
                     "--multiply-by-inputs", "false"]) == 0
    import onnx
    from onnx import numpy_helper
    stored = {i.name: numpy_helper.to_array(i) for i in onnx.load(graph).graph.initializer}
    assert stored["eps"] == np.float32(1e-6) and not stored["multiply_by_inputs"]


def _mask(tmp_path) -> str:
    path = tmp_path / "mask.npy"
    if not path.exists():
        np.save(path, (np.arange(256).reshape(1, 1, 16, 16) // 64).astype(np.int64))
    return str(path)


# ---------------------------------------------------------------------- the server's request inputs
REQUEST = {   # a request tensor of each form for the demo model's (N, 1, 16, 16) image, and the value explain gets
    "int": ("INT64", np.array([3], np.int64), 3),
    "float": ("FP32", np.array([0.25], np.float32), 0.25),
    "bool": ("BOOL", np.array([False]), False),
    "ints": ("INT64", np.array([1, 4, 4], np.int64), (1, 4, 4)),
    "like_input": ("FP32", np.full((1, 1, 16, 16), 0.5, np.float32), None),
    "mask": ("INT64", np.zeros((1, 1, 16, 16), np.int64), None),
    "noise": ("FP32", np.zeros((2, 2, 1, 16, 16), np.float32), None),
}


def _a_layer(model) -> str:
    """The output of the model's first ReLU (for the methods that attribute a layer)."""
    import onnx
    return next(n.output[0] for n in onnx.load(model).graph.node if n.op_type == "Relu")


@pytest.mark.parametrize("method", [m for m in every_method()], ids=lambda m: m.name)
def test_every_declared_parameter_has_a_request_form(method):
    """Each parameter a request may carry is a request input of the served model, parsed back into the keyword
    ``explain`` takes; those no request carries (a progress bar) are not inputs."""
    kind = method.kind if hasattr(method, "inner") else None
    layer = _a_layer(MODEL) if method.needs_layer else None
    ex = onnxplain.Explainer(MODEL, method.inner.name if kind else method.name, noise_tunnel=kind, layer=layer)
    interface = Interface(ex)
    inputs = {t.name for t in interface.inputs}
    for p in ex.method.parameters:
        form = request_form(p)
        if form is None:
            assert p.request is None and p.request_name not in inputs
            continue
        name = ex.spec.param(p.request_name, "image") if p.per_input else p.request_name
        assert name in inputs, f"{ex.method.name}: {p.name} is no request input"
        if form == "string":
            datatype, array, value = "BYTES", np.array([p.choices[-1].encode()], dtype=object), p.choices[-1]
        else:
            datatype, array, value = REQUEST[form]
        *_, params, _ = interface.call({"image": ("FP32", X), name: (datatype, array)}, None)
        got = params[p.name]
        if value is None:
            np.testing.assert_array_equal(got, array)
        else:
            assert got == value and type(got) is type(value), (p.name, got)


def test_a_declaration_without_a_request_form_is_refused():
    with pytest.raises(ValueError, match="'mask2' .* has no request form"):
        request_form(Param("mask2", None, "array", "ids per sample", per_input=True, dtype="int", leading=2))
    assert request_form(Param("bar", None, "bool", "a bar", request=None)) is None
    assert request_form(Param("method", "a", "choice", "scheme", choices=("a",), request="integration")) == "string"
