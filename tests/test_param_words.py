"""A parameter's words (``Param.words``): integrated gradients' ``n_steps`` is an int or the word ``"auto"``, and
the word reaches the method from the Python API, the command line's ``--n-steps`` flag and a served request
(a BYTES tensor, through the real tritonclient).  Each route is held against the in-process
``Explainer.explain(..., n_steps="auto")``; an unknown word is refused by name before anything runs."""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import onnxplain
from onnxplain import cli
from onnxplain.demo import demo_files
from onnxplain.methods import Param, get_method
from onnxplain.methods.params import _markdown_param

MODEL = demo_files()["model"]
X = np.load(demo_files()["inputs"])[:2].astype(np.float32)      # (2, 1, 16, 16)
AUTO = dict(n_steps="auto", target_delta=0.01)


@pytest.fixture(scope="module")
def reference():
    """The Python API's answer, computed once: attributions and delta of n_steps="auto" for target 0."""
    return onnxplain.Explainer(MODEL, "integrated_gradients").explain(X, target=0, return_convergence_delta=True,
                                                                       **AUTO)


# ---------------------------------------------------------------------- the declaration
def test_words_are_accepted_besides_the_kind_and_shown():
    p = Param("n", 5, "int", "steps", words=("auto", "off"))
    for value in (3, np.int64(3), "auto", "off"):
        p.check(value, "m")
    for value in ("Auto", "often", 2.5, b"auto"):      # exact and case-sensitive
        with pytest.raises(ValueError, match=r'^n must be an int or "auto" or "off", got .+ \(parameter of'):
            p.check(value, "m")
    assert _markdown_param(p) == '`n=5` (or `"auto"` or `"off"`): steps'
    ig = get_method("integrated_gradients")
    assert next(q for q in ig.parameters if q.name == "n_steps").words == ("auto",)
    assert all(q.words == () for q in get_method("layer_conductance").parameters if q.name == "n_steps")


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="str", default="a", words=("auto",)), "words are for the kinds int, float, bool, ints, not 'str'"),
    (dict(kind="int", default=1, words="auto"), "words must be a tuple of non-empty strings"),
    (dict(kind="int", default=1, words=(" auto",)), "words must be a tuple of non-empty strings"),
])
def test_bad_words_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Param("n", doc="doc", **kwargs)


# ---------------------------------------------------------------------- the command line
def test_the_flag_takes_the_word_and_equals_the_api(tmp_path, reference):
    np.save(tmp_path / "x.npy", X)
    out = tmp_path / "a.npy"
    assert cli.main(["explain", MODEL, str(tmp_path / "x.npy"), "-m", "integrated_gradients", "--n-steps", "auto",
                     "--target-delta", "0.01", "--target", "0", "--out", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), reference[0], rtol=1e-6, atol=1e-7)
    args = cli.build_parser().parse_args(["explain", MODEL, "x.npy", "-m", "ig", "--n-steps", "7"])
    assert cli._method_params(args, allow_files=True) == {"n_steps": 7}      # ints still read as ints
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command").choices["explain"]
    flag = next(a for a in sub._actions if "--n-steps" in a.option_strings)
    assert 'target_delta needs (default: 50) (also "auto"); internal_influence' in flag.help


@pytest.mark.parametrize("argv, fragment", [
    (["-m", "integrated_gradients", "--n-steps", "often"],
     """argument --n-steps: expected an int or "auto", got 'often'"""),
    (["-m", "integrated_gradients", "--n-steps", "Auto"], """expected an int or "auto", got 'Auto'"""),
    (["-m", "layer_conductance", "--layer", "x", "--n-steps", "auto"],
     "--n-steps auto: method 'layer_conductance' takes an int there; 'auto' is for integrated_gradients"),
])
def test_a_word_no_declaration_takes_is_a_one_line_usage_error(capsys, tmp_path, argv, fragment):
    assert cli.main(["explain", MODEL, demo_files()["inputs"], *argv, "--target", "0",
                     "--out", str(tmp_path / "a.npy")]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1, err
    assert not (tmp_path / "a.npy").exists()


# ---------------------------------------------------------------------- a served request
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`onnxplain serve` of the demo model with integrated gradients on loopback, stopped at the module's end."""
    if importlib.util.find_spec("kserve") is None:
        pytest.skip('the server needs pip install "onnxplain[serve]"')
    http = pytest.importorskip("tritonclient.http")
    from checks import stop_server
    port = _free_port()
    log = open(tmp_path_factory.mktemp("words") / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "onnxplain", "serve", MODEL, "--method", "integrated_gradients",
                             "--http-port", str(port), "--grpc-port", str(_free_port()), "--threads", "1"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"the server exited with {proc.returncode}:\n{log.read()[-3000:]}")
            try:
                if http.InferenceServerClient(url).is_server_ready():
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the server did not become ready in 120 s")
            time.sleep(0.2)
        yield http, url, os.path.splitext(os.path.basename(MODEL))[0]
    finally:
        stop_server(proc)
        log.close()


def _ask(server, n_steps: bytes):
    http, url, name = server
    inputs = []
    for input_name, array, datatype in (("image", X, "FP32"), ("target", np.zeros(2, np.int64), "INT64"),
                                        ("n_steps", np.array([n_steps], dtype=object), "BYTES"),
                                        ("target_delta", np.array([0.01], np.float32), "FP32")):
        t = http.InferInput(input_name, list(array.shape), datatype)
        t.set_data_from_numpy(array)
        inputs.append(t)
    return http.InferenceServerClient(url).infer(name, inputs)


def test_a_request_carries_the_word_as_a_string_tensor(server):
    reference = onnxplain.Explainer(MODEL, "integrated_gradients").explain(
        X, target=0, return_convergence_delta=True, n_steps="auto", target_delta=float(np.float32(0.01)))
    r = _ask(server, b"auto")
    np.testing.assert_allclose(r.as_numpy("attributions"), reference[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(r.as_numpy("delta"), np.asarray(reference[1]), rtol=1e-6, atol=1e-7)


def test_a_request_with_another_word_is_a_400(server):
    from tritonclient.utils import InferenceServerException
    with pytest.raises(InferenceServerException) as info:
        _ask(server, b"often")
    assert str(info.value.status()) == "400", info.value.message()
    assert "n_steps" in info.value.message() and "'often'" in info.value.message()
