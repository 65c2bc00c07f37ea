"""`onnxplain serve`: the real server on loopback (a subprocess, started once), driven by tritonclient.

The server runs in its own process: kserve and tritonclient.grpc register the same
protocol messages in protobuf's default pool, so they cannot share one.
"""
from __future__ import annotations

import http.client
import importlib.util
import json
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxplain
from onnxplain.cli import demo_files

if importlib.util.find_spec("kserve") is None:      # never imported here: see the module's docstring
    pytest.skip('the server needs pip install "onnxplain[serve]"', allow_module_level=True)
http_client = pytest.importorskip("tritonclient.http")
grpc_client = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from models import masked_tabular, two_inputs  # noqa: E402
from checks import stop_server  # noqa: E402

MAX_BYTES = 1 << 20
NAMES = ["cnn", "cnn-deeplift", "masked-ig", "masked-deeplift", "pair-ig", "pair-deeplift"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    model, example = masked_tabular()
    masked = folder / "masked.onnx"
    onnx.save(onnxplain.from_torch(model, example), masked)
    model, example = two_inputs()
    pair = folder / "pair.onnx"
    onnx.save(onnxplain.from_torch(model, example, dynamo=True), pair)
    return {"cnn": demo_files()["model"], "masked": str(masked), "pair": str(pair)}


@pytest.fixture(scope="module")
def server(paths, tmp_path_factory):
    """``python -m onnxplain serve`` with two models x two methods; stopped at the end (SIGTERM test or here)."""
    http_port, grpc_port = free_port(), free_port()
    log = open(tmp_path_factory.mktemp("log") / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "onnxplain", "serve", paths["cnn"], paths["masked"], paths["pair"],
                             "--method", "integrated_gradients,deeplift", *sum((["--name", n] for n in NAMES), []),
                             "--http-port", str(http_port), "--grpc-port", str(grpc_port),
                             "--max-request-bytes", str(MAX_BYTES), "--threads", "1"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"127.0.0.1:{http_port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read()[-3000:]}")
        try:
            if http_client.InferenceServerClient(url).is_server_ready():
                break
        except Exception:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the server did not become ready in 120 s")
        time.sleep(0.2)
    yield {"proc": proc, "http": url, "grpc": f"127.0.0.1:{grpc_port}", "http_port": http_port}
    stop_server(proc)
    log.close()


@pytest.fixture(scope="module")
def explainers(paths):
    """The in-process references: the same models and methods through Explainer.explain."""
    return {"cnn": onnxplain.Explainer(paths["cnn"], "integrated_gradients"),
            "cnn-deeplift": onnxplain.Explainer(paths["cnn"], "deeplift"),
            "masked-ig": onnxplain.Explainer(paths["masked"], "integrated_gradients"),
            "masked-deeplift": onnxplain.Explainer(paths["masked"], "deeplift"),
            "pair-ig": onnxplain.Explainer(paths["pair"], "integrated_gradients")}


def client(server, protocol):
    return (http_client if protocol == "http" else grpc_client).InferenceServerClient(server[protocol])


def tensor(protocol, name, array, binary=True):
    module = http_client if protocol == "http" else grpc_client
    datatype = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64",
                np.dtype(np.int32): "INT32", np.dtype(object): "BYTES"}[np.asarray(array).dtype]
    t = module.InferInput(name, list(np.shape(array)), datatype)
    if protocol == "http":
        t.set_data_from_numpy(np.asarray(array), binary_data=binary)
    else:
        t.set_data_from_numpy(np.asarray(array))
    return t


def cnn_rows(n, seed):
    return np.random.default_rng(seed).random((n, 1, 16, 16), dtype=np.float32)


def masked_rows(n, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 7)).astype(np.float32), (rng.random((n, 7)) > 0.3).astype(np.int64)


# ---------------------------------------------------------------------- metadata and health
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_health_and_metadata_describe_every_served_model(server, protocol):
    c = client(server, protocol)
    assert c.is_server_live() and c.is_server_ready()
    for name in NAMES:
        assert c.is_model_ready(name)
    meta = c.get_model_metadata("cnn")
    if protocol == "grpc":
        from google.protobuf.json_format import MessageToDict
        meta = MessageToDict(meta, preserving_proto_field_name=True)
    inputs = {i["name"]: (i["datatype"], [int(d) for d in i["shape"]]) for i in meta["inputs"]}
    outputs = {o["name"]: (o["datatype"], [int(d) for d in o["shape"]]) for o in meta["outputs"]}
    assert inputs["image"] == ("FP32", [-1, 1, 16, 16])          # the demo model's own input, batch dynamic
    assert inputs["target"] == ("INT64", [-1]) and inputs["target_weights"] == ("FP32", [-1, 4])
    assert inputs["n_steps"] == ("INT64", [1]) and inputs["integration"] == ("BYTES", [1])
    assert inputs["baselines"] == ("FP32", [-1, 1, 16, 16])
    assert outputs == {"attributions": ("FP32", [-1, 1, 16, 16]), "delta": ("FP64", [-1]),
                       "logits": ("FP32", [-1, 4])}


def test_the_masked_models_metadata_has_its_integer_mask(server):
    meta = client(server, "http").get_model_metadata("masked-deeplift")
    inputs = {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]}
    assert inputs["x"] == ("FP32", [-1, 7]) and inputs["mask"] == ("INT64", [-1, 7])
    assert inputs["baselines"] == ("FP32", [-1, 7]) and "eps" in inputs
    assert "mask" not in {o["name"] for o in meta["outputs"]}


# ---------------------------------------------------------------------- results
@pytest.mark.parametrize("protocol,binary", [("http", True), ("http", False), ("grpc", True)])
def test_integrated_gradients_equal_explain_with_per_request_parameters(server, explainers, protocol, binary):
    x, target = cnn_rows(5, seed=1), np.array([0, 3, 1, 2, 3], np.int64)
    base = np.full((1, 1, 16, 16), 0.25, np.float32)
    c = client(server, protocol)
    inputs = [tensor(protocol, "image", x, binary), tensor(protocol, "target", target, binary),
              tensor(protocol, "n_steps", np.array([12], np.int64), binary),
              tensor(protocol, "integration", np.array([b"riemann_trapezoid"], dtype=object), binary),
              tensor(protocol, "baselines", base, binary)]
    r = c.infer("cnn", inputs)
    ref, delta = explainers["cnn"].explain(x, target.tolist(), n_steps=12, method="riemann_trapezoid",
                                              baselines=base, return_convergence_delta=True)
    np.testing.assert_allclose(r.as_numpy("attributions"), ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(r.as_numpy("delta"), delta, rtol=1e-5, atol=1e-7)
    logits = ort.InferenceSession(explainers["cnn"].model.SerializeToString()).run(None, {"image": x})[0]
    np.testing.assert_allclose(r.as_numpy("logits"), logits, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_deeplift_sums_to_the_output_difference_and_a_subset_of_outputs(server, explainers, paths, protocol):
    x, mask = masked_rows(6, seed=2)
    weights = np.random.default_rng(3).standard_normal((6, 3)).astype(np.float32)   # any weighted sum of outputs
    c = client(server, protocol)
    module = http_client if protocol == "http" else grpc_client
    r = c.infer("masked-deeplift", [tensor(protocol, "x", x), tensor(protocol, "mask", mask),
                                    tensor(protocol, "target_weights", weights)],
                outputs=[module.InferRequestedOutput("attributions")])
    attr = r.as_numpy("attributions")
    assert r.as_numpy("delta") is None and r.as_numpy("output") is None       # only what was asked for
    ref = explainers["masked-deeplift"].explain({"x": x, "mask": mask}, target_weights=weights)
    np.testing.assert_allclose(attr, ref, rtol=1e-5, atol=1e-6)
    # summation-to-delta on a Linear/ReLU net: sum(attr) = w . (f(x, mask) - f(0, mask)), computed independently
    sess = ort.InferenceSession(paths["masked"])
    gap = (weights * (sess.run(None, {"x": x, "mask": mask})[0]
                      - sess.run(None, {"x": np.zeros_like(x), "mask": mask})[0])).sum(1)
    np.testing.assert_allclose(attr.sum(1), gap, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_several_attributed_inputs_get_an_output_and_parameters_each(server, explainers, protocol):
    meta = client(server, "http").get_model_metadata("pair-ig")
    inputs = {i["name"]: i["shape"] for i in meta["inputs"]}
    assert inputs["a"] == [-1, 5] and inputs["b"] == [-1, 3]
    assert inputs["baselines_a"] == [-1, 5] and inputs["baselines_b"] == [-1, 3] and "baselines" not in inputs
    assert [o["name"] for o in meta["outputs"]] == ["attributions_a", "attributions_b", "delta", "output"]
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((4, 5)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    base_b = np.full((1, 3), 0.5, np.float32)
    r = client(server, protocol).infer("pair-ig", [tensor(protocol, "a", a), tensor(protocol, "b", b),
                                                   tensor(protocol, "target", np.array([0, 1, 1, 0], np.int64)),
                                                   tensor(protocol, "baselines_b", base_b)])
    ref, delta = explainers["pair-ig"].explain({"a": a, "b": b}, [0, 1, 1, 0], baselines={"b": base_b},
                                               return_convergence_delta=True)
    for x in "ab":
        np.testing.assert_allclose(r.as_numpy(f"attributions_{x}"), ref[x], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(r.as_numpy("delta"), delta, rtol=1e-5, atol=1e-7)


def test_32_concurrent_requests_from_8_clients_are_all_correct(server, explainers):
    cases = []
    for k in range(32):
        name = NAMES[k % 4]
        n = 1 + k % 5
        if name.startswith("cnn"):
            feeds = {"image": cnn_rows(n, seed=100 + k)}
            out = 4
        else:
            x, mask = masked_rows(n, seed=100 + k)
            feeds = {"x": x, "mask": mask}
            out = 3
        target = np.random.default_rng(k).integers(0, out, n).astype(np.int64)
        cases.append((name, feeds, target))

    def one_client(index):
        protocol = "http" if index % 2 else "grpc"
        c = client(server, protocol)
        got = []
        for name, feeds, target in cases[index::8]:
            r = c.infer(name, [tensor(protocol, k, v) for k, v in feeds.items()]
                        + [tensor(protocol, "target", target)])
            got.append((name, feeds, target, r.as_numpy("attributions")))
        return got

    with ThreadPoolExecutor(8) as pool:
        results = [item for part in pool.map(one_client, range(8)) for item in part]
    assert len(results) == 32
    for name, feeds, target, attr in results:
        inputs = feeds if len(feeds) > 1 else feeds["image"]
        np.testing.assert_allclose(attr, explainers[name].explain(inputs, target.tolist()), rtol=1e-5, atol=1e-6)


def test_a_slow_request_does_not_block_health_checks(server):
    x = cnn_rows(64, seed=4)
    slow = {}

    def run():
        c = client(server, "http")
        t0 = time.monotonic()
        inputs = [tensor("http", "image", x), tensor("http", "target", np.zeros(64, np.int64)),
                  tensor("http", "n_steps", np.array([400], np.int64))]
        slow["attr"] = c.infer("cnn", inputs).as_numpy("attributions")
        slow["seconds"] = time.monotonic() - t0

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.5)
    c = client(server, "grpc")
    t0 = time.monotonic()
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("masked-ig")
    health = time.monotonic() - t0
    still_running = thread.is_alive()
    thread.join(120)
    assert still_running, "the slow request ended before the health checks: make it slower"
    assert health < 2.0 and slow["seconds"] > health
    assert slow["attr"].shape == x.shape


# ---------------------------------------------------------------------- bad requests
def good_cnn_inputs(protocol):
    return [tensor(protocol, "image", cnn_rows(2, seed=5)), tensor(protocol, "target", np.array([1, 2], np.int64))]


BAD = {   # what is sent -> a fragment of the error, which names what was expected
    "unknown model": ("nope", lambda p: good_cnn_inputs(p), "unknown model 'nope'"),
    "unknown input": ("cnn", lambda p: good_cnn_inputs(p) + [tensor(p, "steps", np.array([3], np.int64))],
                      "unknown input(s) ['steps']"),
    "missing input": ("masked-ig", lambda p: [tensor(p, "x", masked_rows(2, 0)[0])], "missing input(s) ['mask']"),
    "wrong datatype": ("cnn", lambda p: [tensor(p, "image", cnn_rows(2, 0).astype(np.float64))],
                       "must have datatype FP32, got FP64"),
    "wrong shape": ("cnn", lambda p: [tensor(p, "image", np.zeros((2, 1, 15, 16), np.float32))],
                    "must have shape [-1, 1, 16, 16]"),
    "integer for a float input": ("masked-ig", lambda p: [tensor(p, "x", np.zeros((2, 7), np.int32)),
                                                          tensor(p, "mask", np.zeros((2, 7), np.int64))],
                                  "must have datatype FP32, got INT32"),
    "target out of range": ("cnn", lambda p: [tensor(p, "image", cnn_rows(2, 0)),
                                                 tensor(p, "target", np.array([0, 4], np.int64))], "out of range"),
    "one target for two rows": ("cnn", lambda p: [tensor(p, "image", cnn_rows(2, 0)),
                                                     tensor(p, "target", np.array([1], np.int64))],
                                "needs 2 entries"),
    "NaN in the inputs": ("cnn-deeplift", lambda p: [tensor(p, "image", np.full((2, 1, 16, 16), np.nan, np.float32)),
                                                     tensor(p, "target", np.array([0, 1], np.int64))],
                          "NaN or infinite"),
    "bad parameter value": ("cnn", lambda p: good_cnn_inputs(p) + [tensor(p, "n_steps", np.array([0], np.int64))],
                            "n_steps"),
}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_requests_are_refused_and_the_server_stays_correct(server, explainers, protocol, case):
    name, inputs, fragment = BAD[case]
    c = client(server, protocol)
    with pytest.raises(InferenceServerException) as info:
        c.infer(name, inputs(protocol))
    expected = "400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"
    assert str(info.value.status()) == expected
    assert fragment in info.value.message()
    assert_still_correct(server, explainers)


def assert_still_correct(server, explainers):
    c = client(server, "http")
    assert c.is_server_live() and c.is_model_ready("cnn")
    x = cnn_rows(2, seed=6)
    r = c.infer("cnn-deeplift", [tensor("http", "image", x), tensor("http", "target", np.array([2, 0], np.int64))])
    np.testing.assert_allclose(r.as_numpy("attributions"), explainers["cnn-deeplift"].explain(x, [2, 0]),
                               rtol=1e-5, atol=1e-7)


def post(server, path, body: bytes, headers=None, send_all=True):
    conn = http.client.HTTPConnection("127.0.0.1", server["http_port"], timeout=30)
    conn.putrequest("POST", path)
    for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}.items():
        conn.putheader(k, v)
    conn.endheaders()
    if send_all:
        conn.send(body)
    response = conn.getresponse()
    status, payload = response.status, json.loads(response.read() or b"{}")
    conn.close()
    return status, payload


@pytest.mark.parametrize("body", [b'{"inputs": [', b"not json", b'{"inputs": 3}', b'{"outputs": []}'])
def test_malformed_json_is_a_400_naming_the_expected_request(server, explainers, body):
    status, payload = post(server, "/v2/models/cnn/infer", body)
    assert status == 400 and "inputs" in payload["error"]
    assert_still_correct(server, explainers)


def test_a_body_over_the_limit_is_a_413_before_it_is_read(server, explainers):
    status, payload = post(server, "/v2/models/cnn/infer", b"{" + b" " * (2 * MAX_BYTES), send_all=False)
    assert status == 413 and str(MAX_BYTES) in payload["error"]
    c = client(server, "grpc")
    big = np.zeros((1200, 1, 16, 16), np.float32)          # 1.2 MB > the limit
    with pytest.raises(InferenceServerException) as info:
        c.infer("cnn", [tensor("grpc", "image", big)])
    assert "RESOURCE_EXHAUSTED" in str(info.value.status())
    assert_still_correct(server, explainers)


# ---------------------------------------------------------------------- command line, README and stop
def test_the_readme_tritonclient_snippet_runs_against_the_server(server, explainers):
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("```python", readme.index("## Deployment")) + len("```python")
    code = readme[start:readme.index("```", start)].replace("localhost:8000", server["http"])
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    ref, delta = explainers["cnn"].explain(scope["x"], [0, 1, 2, 3], n_steps=32, return_convergence_delta=True)
    np.testing.assert_allclose(scope["attributions"], ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(scope["delta"], delta, rtol=1e-5, atol=1e-7)


def run_cli(*args, prelude=""):
    code = f"import sys; {prelude}from onnxplain.cli import main; sys.exit(main({list(args)!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_cli_mistakes_end_in_one_line(server, paths):
    busy = run_cli("serve", paths["cnn"], "--method", "saliency", "--http-port", str(server["http_port"]))
    assert busy.returncode == 2 and busy.stderr.count("\n") == 1
    assert f"cannot listen on 127.0.0.1:{server['http_port']}" in busy.stderr
    names = run_cli("serve", paths["cnn"], paths["masked"], "--method", "saliency", "--name", "a",
                    "--http-port", str(free_port()), "--grpc-port", str(free_port()))
    assert names.returncode == 2 and "1 name(s) given for 2 served" in names.stderr
    extra = run_cli("serve", paths["cnn"], "--method", "saliency", prelude="sys.modules['kserve'] = None; ")
    assert extra.returncode == 2 and 'pip install "onnxplain[serve]"' in extra.stderr
    budget = run_cli("serve", paths["cnn"], "--method", "saliency", "--memory-budget", "lots",
                     "--http-port", str(free_port()), "--grpc-port", str(free_port()))
    assert budget.returncode == 2 and "memory_budget must be a positive number of bytes" in budget.stderr


def test_importing_onnxplain_does_not_import_the_server():
    code = ("import sys, onnxplain, onnxplain.cli, onnxplain.serve, onnxplain.serve.triton; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kserve', 'fastapi', 'uvicorn', 'grpc')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


def test_sigterm_lets_the_request_in_flight_finish_then_stops(server, explainers):
    """Runs last: it stops the module's server."""
    proc = server["proc"]
    x, target = cnn_rows(32, seed=7), np.arange(32, dtype=np.int64) % 4
    steps = 1200     # over a second of work even on a fast, warm server: SIGTERM lands mid-request
    done = {}

    def run():
        r = client(server, "grpc").infer("cnn", [tensor("grpc", "image", x), tensor("grpc", "target", target),
                                                     tensor("grpc", "n_steps", np.array([steps], np.int64))])
        done["attr"] = r.as_numpy("attributions")

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.7)
    proc.send_signal(signal.SIGTERM)
    in_flight = thread.is_alive()
    thread.join(120)
    assert in_flight, "the request ended before SIGTERM: make it slower"
    np.testing.assert_allclose(done["attr"], explainers["cnn"].explain(x, target.tolist(), n_steps=steps),
                               rtol=1e-5, atol=1e-7)
    assert proc.wait(60) == 0
    with pytest.raises(Exception):
        client(server, "http").is_server_live()


@pytest.mark.parametrize("noise_tunnel", [None, "smoothgrad"])
def test_every_method_parameter_has_a_request_form(noise_tunnel):
    """A served method's parameters become optional request inputs: each is declared, and each declaration has a
    request form (or says that no request carries it)."""
    from onnxplain.methods import METHODS, get_method
    from onnxplain.serve.protocol import request_form
    for name in METHODS:
        method = get_method(name)
        if noise_tunnel and not method.forward_only and "nt_samples" not in method.defaults \
                and not method.noise_tunnel_refusal:
            method = get_method(name, noise_tunnel=noise_tunnel)
        declared = {p.name: p for p in method.parameters}
        missing = set(method.defaults) - set(declared)
        assert not missing, f"{method.name}: no declaration, so no request form, for {sorted(missing)}"
        for p in declared.values():
            form = request_form(p)       # raises for a declaration without a form
            assert form is not None or p.request is None, f"{method.name}: no request form for {p.name}"


def test_served_explainers_take_batch_axes_and_batch_size():
    """(In a process of its own: kserve and tritonclient.grpc register the same protobuf messages.)"""
    script = ("from onnxplain.demo import demo_files\n"
              "from onnxplain.serve.server import explainer_models\n"
              "(served,) = explainer_models([demo_files()['model']], 'integrated_gradients', batch_size=1,\n"
              "                             batch_axes={'image': 0}, n_steps=4)\n"
              "ex = served.interface.explainer\n"
              "print(ex.spec.batch_size, ex.batch_axes)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[-2] == "1 {'image': 0}"
