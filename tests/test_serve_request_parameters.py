"""`onnxplain serve` with the method's parameters as request-level parameters, driven by the real tritonclient.

``{"inputs": [...], "parameters": {"n_steps": 16}}`` (tritonclient's ``infer(..., parameters={...})``: a JSON
value over REST, an InferParameter's bool, int64, double or string over gRPC) must explain exactly as
``onnxplain.Explainer(model, method).explain(x, target, n_steps=16)`` does in this process, which is the
reference.  One server on loopback for the module (the demo CNN with integrated gradients, GradientSHAP and
LRP), in its own process (kserve and tritonclient.grpc register the same protobuf messages).
"""
from __future__ import annotations

import http.client
import importlib.util
import json

import numpy as np
import pytest

import onnxplain
from onnxplain.cli import demo_files

if importlib.util.find_spec("kserve") is None:      # never imported here: see the module's docstring
    pytest.skip('the server needs pip install "onnxplain[serve]"', allow_module_level=True)
http_client = pytest.importorskip("tritonclient.http")
grpc_client = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from checks import stop_server  # noqa: E402
from test_serve_methods import client, cnn_rows, start_server, tensor, wait_ready  # noqa: E402

METHODS = ["integrated_gradients", "gradient_shap", "lrp"]
PROTOCOLS = ["http", "grpc"]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    log = open(tmp_path_factory.mktemp("serve_request_parameters") / "server.log", "w+")
    server = start_server([demo_files()["model"]], METHODS, log)
    yield server
    stop_server(server["proc"])
    log.close()


@pytest.fixture(scope="module")
def explainers(launched):
    """The in-process references (built while the server builds its own)."""
    return {m: onnxplain.Explainer(demo_files()["model"], m) for m in METHODS}


@pytest.fixture(scope="module")
def server(launched, explainers):
    wait_ready(launched)
    return launched


def ask(server, protocol, method, x, target=None, inputs=(), parameters=None, **options):
    """One request: the image, ``target`` as an input when given, extra inputs ``{name: array}``, and
    request-level ``parameters``."""
    tensors = [tensor(protocol, "image", x)]
    if target is not None:
        tensors.append(tensor(protocol, "target", np.asarray(target, np.int64)))
    tensors += [tensor(protocol, k, v) for k, v in dict(inputs).items()]
    return client(server, protocol).infer(f"demo_cnn-{method}", tensors, parameters=parameters, **options)


def assert_refused(info, protocol, *fragments):
    message = info.value.message()
    assert str(info.value.status()) == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"), message
    for fragment in fragments:
        assert fragment in message, message


def close(a, ref):
    np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(ref).max())))


# ---------------------------------------------------------------------- the same result as explain
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_integer_string_and_scalar_target_parameters_equal_explain(server, explainers, protocol):
    """n_steps (int), integration (a choice, as a string) and target (one class index for every row)."""
    x = cnn_rows(3, seed=1)
    r = ask(server, protocol, "integrated_gradients", x,
            parameters={"n_steps": 12, "integration": "riemann_trapezoid", "target": 2})
    ref, delta = explainers["integrated_gradients"].explain(x, 2, n_steps=12, method="riemann_trapezoid",
                                                            return_convergence_delta=True)
    close(r.as_numpy("attributions"), ref)
    close(r.as_numpy("delta"), np.asarray(delta))
    # and it differs from the defaults (50 Gauss-Legendre nodes), so the parameters were read
    default = explainers["integrated_gradients"].explain(x, 2)
    assert not np.allclose(ref, default, rtol=1e-4, atol=1e-7)


@pytest.mark.filterwarnings("ignore:integrated gradients, n_steps=\"auto\"")   # the default's reference row
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_auto_steps_and_a_float_target_delta_equal_explain(server, explainers, protocol):
    """n_steps="auto" goes through the same parsing as a BYTES input; target_delta is a float (a double over
    gRPC: tritonclient's double_param, which KServe's messages do not declare)."""
    x, target = cnn_rows(2, seed=2), [1, 3]
    r = ask(server, protocol, "integrated_gradients", x, target,
            parameters={"n_steps": "auto", "target_delta": 0.02})
    ref, delta = explainers["integrated_gradients"].explain(x, target, n_steps="auto", target_delta=0.02,
                                                            return_convergence_delta=True)
    close(r.as_numpy("attributions"), ref)
    close(r.as_numpy("delta"), np.asarray(delta))
    default = explainers["integrated_gradients"].explain(x, target, n_steps="auto")     # target_delta=1e-3
    assert not np.allclose(ref, default, rtol=1e-5, atol=1e-7)    # so the server did not use the default


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_gradient_shap_float_and_seed_parameters_with_baselines_as_an_input(server, explainers, protocol):
    x, target = cnn_rows(2, seed=3), [0, 2]
    baselines = np.stack([np.zeros((1, 16, 16)), np.full((1, 16, 16), 0.5)]).astype(np.float32)
    r = ask(server, protocol, "gradient_shap", x, target, inputs={"baselines": baselines},
            parameters={"stdevs": 0.1, "n_samples": 5, "seed": 7})
    ref = explainers["gradient_shap"].explain(x, target, baselines=baselines, stdevs=0.1, n_samples=5, seed=7)
    close(r.as_numpy("attributions"), ref)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_lrp_composite_by_name_and_a_rule_mapping_string(server, explainers, protocol):
    x, target = cnn_rows(2, seed=4), [3, 1]
    for params in ({"composite": "epsilon_gamma_box", "gamma": 0.5},
                   {"composite": "Conv=z_plus,first=flat", "epsilon": 0.01}):
        r = ask(server, protocol, "lrp", x, target, parameters=params)
        close(r.as_numpy("attributions"), explainers["lrp"].explain(x, target, **params))


def post_json(server, method, body):
    """A plain JSON request (no binary tensors), as curl would send it."""
    conn = http.client.HTTPConnection(server["http"], timeout=60)
    conn.request("POST", f"/v2/models/demo_cnn-{method}/infer", json.dumps(body),
                 {"content-type": "application/json"})
    response = conn.getresponse()
    status, data = response.status, json.loads(response.read())
    conn.close()
    return status, data


def test_plain_json_parameters_bool_and_an_integer_for_a_float(server, explainers):
    """A JSON bool (multiply_by_inputs) and a JSON integer for a float parameter (target_delta: 1 is 1.0)."""
    x = cnn_rows(1, seed=5)
    body = {"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            "outputs": [{"name": "attributions"}],
            "parameters": {"n_steps": 8, "multiply_by_inputs": False, "target": 1, "target_delta": 1,
                           "content_type": "np", "triton_anything": 3}}
    status, data = post_json(server, "integrated_gradients", body)
    assert status == 200, data
    out = next(o for o in data["outputs"] if o["name"] == "attributions")
    ref = explainers["integrated_gradients"].explain(x, 1, n_steps=8, multiply_by_inputs=False, target_delta=1.0)
    close(np.asarray(out["data"], np.float32).reshape(out["shape"]), ref)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tritonclient_reserved_parameters_change_nothing(server, explainers, protocol):
    """sequence_id/start/end, priority (uint64 over gRPC) and timeout are tritonclient's own request parameters;
    binary_data_output too over REST when no outputs are named."""
    x, target = cnn_rows(2, seed=6), [2, 0]
    r = ask(server, protocol, "integrated_gradients", x, target, parameters={"n_steps": 10},
            sequence_id=5, sequence_start=True, sequence_end=True, priority=3, timeout=60_000_000)
    close(r.as_numpy("attributions"), explainers["integrated_gradients"].explain(x, target, n_steps=10))


# ---------------------------------------------------------------------- refusals
def then_answers(server, explainers, protocol):
    x, target = cnn_rows(2, seed=8), [1, 1]
    r = ask(server, protocol, "integrated_gradients", x, target, parameters={"n_steps": 6})
    close(r.as_numpy("attributions"), explainers["integrated_gradients"].explain(x, target, n_steps=6))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_parameter_given_both_ways_is_a_400_naming_it(server, explainers, protocol):
    with pytest.raises(InferenceServerException) as info:
        ask(server, protocol, "integrated_gradients", cnn_rows(2, 0), [1, 2],
            inputs={"n_steps": np.array([8], np.int64)}, parameters={"n_steps": 16})
    assert_refused(info, protocol, "'n_steps' is given both as a request input and as a request parameter")
    with pytest.raises(InferenceServerException) as info:
        ask(server, protocol, "integrated_gradients", cnn_rows(2, 0), [1, 2], parameters={"target": 1})
    assert_refused(info, protocol, "'target' is given both")
    then_answers(server, explainers, protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case", ["unknown", "not one value", "wrong type", "bad word"])
def test_bad_request_parameters_are_400s_that_say_what_was_expected(server, explainers, protocol, case):
    params, fragments = {
        "unknown": ({"n_step": 8}, ["unknown request parameter 'n_step'", "'n_steps'", "'target_delta'",
                                    "'integration'", "'target'"]),
        "not one value": ({"baselines": 0}, ["unknown request parameter 'baselines'", "give it as a request input"]),
        "wrong type": ({"n_steps": 8.5}, ["'n_steps' must have datatype"]),
        "bad word": ({"n_steps": "many"}, ["many"]),
    }[case]
    with pytest.raises(InferenceServerException) as info:
        ask(server, protocol, "integrated_gradients", cnn_rows(2, 0), [1, 2], parameters=params)
    assert_refused(info, protocol, *fragments)
    then_answers(server, explainers, protocol)


def test_a_list_as_a_request_parameter_is_a_400(server, explainers):
    """Over REST with binary tensors (KServe reads the JSON header as it is) and as plain JSON (KServe's schema
    refuses it first); a gRPC InferParameter cannot hold a list."""
    with pytest.raises(InferenceServerException) as info:
        ask(server, "http", "integrated_gradients", cnn_rows(2, 0), [1, 2], parameters={"n_steps": [8, 16]})
    assert_refused(info, "http", "request parameter 'n_steps' must be one int, float, bool or string")
    x = cnn_rows(1, seed=0)
    status, data = post_json(server, "integrated_gradients", {
        "inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
        "parameters": {"n_steps": {"value": 8}}})
    assert status == 400 and "parameters" in data["error"], data
    then_answers(server, explainers, "http")
