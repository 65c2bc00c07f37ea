"""`onnxplain serve` with the newer methods and a token model, driven by the real tritonclient (http, grpc).

Two servers on loopback, started together once for the module and stopped at its end: the demo CNN
with Grad-CAM, Guided Grad-CAM, GradientSHAP, KernelSHAP, LIME, LRP (a composite) and occlusion
(``serve`` gives every model every method, so the token model, which has no feature map for
Grad-CAM, gets a server of its own with integrated gradients).  Every served attribution is held
against ``onnxplain.Explainer(model, method).explain`` in this process with the same parameters
(the same seed draws the same samples), and bad requests against a 400 that names the problem.
The servers run in their own processes: kserve and tritonclient.grpc register the same protobuf
messages.
"""
from __future__ import annotations

import importlib.util
import io
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

import onnxplain
from onnxplain.cli import demo_files

if importlib.util.find_spec("kserve") is None:      # never imported here: see the module's docstring
    pytest.skip('the server needs pip install "onnxplain[serve]"', allow_module_level=True)
http_client = pytest.importorskip("tritonclient.http")
grpc_client = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from checks import stop_server  # noqa: E402

CNN_METHODS = ["grad_cam", "guided_grad_cam", "gradient_shap", "kernel_shap", "lime", "lrp", "occlusion"]
VOCAB, WIDTH, CLASSES = 23, 6, 3


# ---------------------------------------------------------------------- models and servers
class TokenMean(nn.Module):
    """input_ids -> embedding -> mean over the attended tokens -> linear head (a sentence classifier's shape)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(21)
        self.emb = nn.Embedding(VOCAB, WIDTH)
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, input_ids, attention_mask):
        m = attention_mask.to(torch.float32).unsqueeze(-1)
        return self.head((self.emb(input_ids) * m).sum(1) / m.sum(1))


def export_token_model() -> bytes:
    ids = torch.tensor([[1, 5, 7, 2, 9], [4, 4, 8, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    buf = io.BytesIO()
    axes = {0: "batch", 1: "sequence"}
    torch.onnx.export(TokenMean().eval(), (ids, mask), buf, dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": {0: "batch"}})
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models, methods, log):
    http_port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "onnxplain", "serve", *models, "--method", ",".join(methods),
                             "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--threads", "1"],
                            stdout=log, stderr=subprocess.STDOUT)
    return {"proc": proc, "log": log, "http": f"127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}"}


def wait_ready(server, seconds=120):
    deadline = time.monotonic() + seconds
    while True:
        if server["proc"].poll() is not None:
            server["log"].seek(0)
            pytest.fail(f"the server exited with {server['proc'].returncode}:\n{server['log'].read()[-3000:]}")
        try:
            if http_client.InferenceServerClient(server["http"]).is_server_ready():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the server did not become ready in {seconds} s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    token = tmp_path_factory.mktemp("serve_methods") / "tokens.onnx"
    token.write_bytes(export_token_model())
    return {"cnn": demo_files()["model"], "tokens": str(token)}


@pytest.fixture(scope="module")
def launched(paths, tmp_path_factory):
    """Both servers, started at once (they build their Explainers while this process builds its own); both are
    stopped at the end of the module."""
    folder = tmp_path_factory.mktemp("serve_methods_logs")
    started = {"cnn": start_server([paths["cnn"]], CNN_METHODS, open(folder / "cnn.log", "w+")),
               "tokens": start_server([paths["tokens"]], ["integrated_gradients"], open(folder / "tokens.log", "w+"))}
    yield started
    for server in started.values():
        stop_server(server["proc"])
        server["log"].close()


@pytest.fixture(scope="module")
def explainers(paths, launched):
    """The in-process references, one per served (model, method)."""
    out = {f"demo_cnn-{m}": onnxplain.Explainer(paths["cnn"], m) for m in CNN_METHODS}
    out["tokens"] = onnxplain.Explainer(paths["tokens"], "integrated_gradients")
    return out


@pytest.fixture(scope="module")
def servers(launched, explainers):
    for server in launched.values():
        wait_ready(server)
    return launched


def client(server, protocol):
    return (http_client if protocol == "http" else grpc_client).InferenceServerClient(server[protocol])


DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64",
             np.dtype(np.int32): "INT32", np.dtype(np.bool_): "BOOL", np.dtype(object): "BYTES"}


def tensor(protocol, name, array):
    array = np.asarray(array)
    t = (http_client if protocol == "http" else grpc_client).InferInput(name, list(array.shape),
                                                                        DATATYPES[array.dtype])
    t.set_data_from_numpy(array)
    return t


def request_tensor(value):
    """A parameter value as the request tensor the protocol declares for it (one value: shape [1])."""
    if isinstance(value, str):
        return np.array([value.encode()], dtype=object)
    if isinstance(value, bool):
        return np.array([value])
    if isinstance(value, int):
        return np.array([value], np.int64)
    if isinstance(value, float):
        return np.array([value], np.float32)
    if isinstance(value, tuple):
        return np.array(value, np.int64)
    return np.asarray(value)


def cnn_rows(n, seed):
    return np.random.default_rng(seed).random((n, 1, 16, 16), dtype=np.float32)


def quadrants():
    """A feature mask of four 8 x 8 quadrants, one row broadcast over the batch."""
    rows, cols = np.indices((16, 16))
    return (2 * (rows // 8) + cols // 8).reshape(1, 1, 16, 16).astype(np.int64)


# every float is a float32 value, so what the request carries is exactly what the reference gets
CASES = {
    "grad_cam": {"relu_attributions": True, "interpolate": "bilinear"},
    "guided_grad_cam": {"interpolate_mode": "bilinear"},
    "gradient_shap": {"baselines": np.stack([np.zeros((1, 16, 16)), np.full((1, 16, 16), 0.5)]).astype(np.float32),
                      "n_samples": 4, "stdevs": 0.125, "seed": 5},
    "kernel_shap": {"feature_mask": quadrants(), "baselines": np.full((1, 1, 16, 16), 0.25, np.float32),
                    "n_samples": 24, "seed": 3, "paired": True},
    "lime": {"feature_mask": quadrants(), "n_samples": 30, "seed": 4, "interpretable_model": "ridge",
             "alpha": 0.5, "kernel_width": 0.75},
    "lrp": {"composite": "epsilon_plus", "epsilon": 0.001953125},
    "occlusion": {"sliding_window_shapes": (1, 4, 4), "strides": (1, 2, 2),
                  "baselines": np.full((1, 1, 16, 16), 0.5, np.float32)},
}


def ask(server, protocol, name, x_name, x, target, params, outputs=None):
    inputs = [tensor(protocol, x_name, x), tensor(protocol, "target", np.asarray(target, np.int64))]
    inputs += [tensor(protocol, k, request_tensor(v)) for k, v in params.items()]
    module = http_client if protocol == "http" else grpc_client
    wanted = None if outputs is None else [module.InferRequestedOutput(o) for o in outputs]
    return client(server, protocol).infer(name, inputs, outputs=wanted)


# ---------------------------------------------------------------------- the CNN's methods
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("method", CNN_METHODS)
def test_each_method_equals_explain_with_the_same_per_request_parameters(servers, explainers, method, protocol):
    name = f"demo_cnn-{method}"
    x, target = cnn_rows(3, seed=CNN_METHODS.index(method)), [0, 3, 1]
    params = CASES[method]
    ex = explainers[name]
    r = ask(servers["cnn"], protocol, name, "image", x, target, params)
    ref = ex.explain(x, target, return_convergence_delta=ex.method.has_delta, **params)
    ref, delta = ref if ex.method.has_delta else (ref, None)
    attr = r.as_numpy("attributions")
    assert attr.shape == ref.shape
    np.testing.assert_allclose(attr, ref, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(ref).max())))
    if delta is not None:
        np.testing.assert_allclose(r.as_numpy("delta"), delta, rtol=1e-5, atol=1e-6)
    # the metadata describes what was returned (-1: any size)
    meta = client(servers["cnn"], "http").get_model_metadata(name)
    shape = next(o["shape"] for o in meta["outputs"] if o["name"] == "attributions")
    assert len(shape) == attr.ndim and all(d in (-1, g) for d, g in zip(shape, attr.shape)), (shape, attr.shape)


def test_a_seeded_sampling_method_changes_with_the_seed_and_repeats_with_it(servers, explainers):
    """The per-request seed reaches the server's draws: another seed, other samples (KernelSHAP on 4 features
    with 24 draws differs), the same seed, the same attributions."""
    x, target = cnn_rows(2, seed=11), [2, 1]
    params = dict(CASES["kernel_shap"])
    first = ask(servers["cnn"], "grpc", "demo_cnn-kernel_shap", "image", x, target, params).as_numpy("attributions")
    again = ask(servers["cnn"], "http", "demo_cnn-kernel_shap", "image", x, target, params).as_numpy("attributions")
    other = ask(servers["cnn"], "http", "demo_cnn-kernel_shap", "image", x, target,
                {**params, "seed": 4, "n_samples": 6}).as_numpy("attributions")
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


BAD = {   # (served method, parameters sent) -> a fragment of the 400's message, which names what was expected
    "unknown parameter": ("kernel_shap", {"n_sample": 10}, "unknown input(s) ['n_sample']"),
    "a float for an integer": ("kernel_shap", {"n_samples": np.array([10.0], np.float32)},
                               "'n_samples' must have datatype"),
    "a string for a float": ("gradient_shap", {"stdevs": "wide"}, "'stdevs' must have datatype"),
    "an integer for a string": ("grad_cam", {"interpolate": 3}, "'interpolate' must have datatype"),
    "two values for one": ("gradient_shap", {"n_samples": (3, 4)}, "is one value"),
    "unknown choice": ("lrp", {"composite": "epsilon_nowhere"}, "epsilon_nowhere"),
    "unknown interpolation": ("grad_cam", {"interpolate": "cubic"}, "cubic"),
    "feature mask of the wrong shape": ("lime", {"feature_mask": np.zeros((1, 1, 8, 8), np.int64)}, "feature_mask"),
    "float feature mask": ("kernel_shap", {"feature_mask": quadrants().astype(np.float32)},
                           "'feature_mask' must have datatype"),
    "baselines of the wrong shape": ("gradient_shap", {"baselines": np.zeros((2, 1, 8, 8), np.float32)},
                                     "shaped (B, *(1, 16, 16))"),
    "zero samples": ("gradient_shap", {"n_samples": 0}, "n_samples"),
    "window of the wrong rank": ("occlusion", {"sliding_window_shapes": (4, 4)}, "sliding_window_shapes"),
    "negative alpha": ("lime", {"alpha": -1.0}, "alpha"),
}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_parameters_are_refused_with_400_and_the_server_keeps_answering(servers, explainers, case, protocol):
    method, params, fragment = BAD[case]
    with pytest.raises(InferenceServerException) as info:
        ask(servers["cnn"], protocol, f"demo_cnn-{method}", "image", cnn_rows(2, 0), [1, 2], params)
    expected = "400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"
    assert str(info.value.status()) == expected, info.value.message()
    assert fragment in info.value.message()
    # the next request, to the same served model, is answered and right
    x, target = cnn_rows(2, seed=9), [3, 0]
    r = ask(servers["cnn"], protocol, f"demo_cnn-{method}", "image", x, target, CASES[method],
            outputs=["attributions"])
    np.testing.assert_allclose(r.as_numpy("attributions"), explainers[f"demo_cnn-{method}"].explain(
        x, target, **CASES[method]), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- the token model
def token_rows(seed, length=7):
    """Three rows of ``length`` token ids, the last two padded (id 0, mask 0)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, (3, length)).astype(np.int64)
    mask = np.ones((3, length), np.int64)
    mask[1, length - 3:] = 0
    mask[2, length - 1:] = 0
    ids[mask == 0] = 0
    return ids, mask


def ask_tokens(server, protocol, ids, mask, target, **params):
    inputs = [tensor(protocol, "input_ids", ids), tensor(protocol, "attention_mask", mask),
              tensor(protocol, "target", np.asarray(target, np.int64))]
    inputs += [tensor(protocol, k, request_tensor(v)) for k, v in params.items()]
    return client(server, protocol).infer("tokens", inputs)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_token_model_integrated_gradients_at_the_embedding_equal_explain(servers, explainers, protocol):
    ids, mask = token_rows(seed=1)
    pad = np.zeros((1, 7), np.int64)              # the baseline: the padding token at every position
    r = ask_tokens(servers["tokens"], protocol, ids, mask, [0, 2, 1], baselines=pad, n_steps=16)
    ex = explainers["tokens"]
    ref, delta = ex.explain({"input_ids": ids, "attention_mask": mask}, [0, 2, 1], baselines=pad, n_steps=16,
                            return_convergence_delta=True)
    attr = r.as_numpy("attributions")
    assert attr.shape == (3, 7, WIDTH)            # one vector per token: the embedding's output
    np.testing.assert_allclose(attr, ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(r.as_numpy("delta"), delta, rtol=1e-5, atol=1e-7)
    meta = client(servers["tokens"], "http").get_model_metadata("tokens")
    inputs = {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]}
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert inputs["input_ids"] == ("INT64", [-1, -1]) and inputs["attention_mask"] == ("INT64", [-1, -1])
    assert inputs["baselines"] == ("INT64", [-1, -1]) and outputs["attributions"] == ("FP32", [-1, -1, WIDTH])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("where,bad_id", [("input_ids", VOCAB), ("input_ids", -VOCAB - 1), ("baselines", 99)])
def test_a_token_id_outside_the_vocabulary_is_a_400_and_the_next_request_succeeds(servers, explainers, protocol,
                                                                                  where, bad_id):
    ids, mask = token_rows(seed=2)
    baselines = np.zeros((1, 7), np.int64)
    (ids if where == "input_ids" else baselines)[0, 2] = bad_id
    with pytest.raises(InferenceServerException) as info:
        ask_tokens(servers["tokens"], protocol, ids, mask, [0, 1, 2], baselines=baselines)
    expected = "400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"
    message = info.value.message()
    assert str(info.value.status()) == expected, message
    assert f"input {where!r} holds token id {bad_id}" in message and "vocabulary" in message
    assert f"({VOCAB} entries: ids 0..{VOCAB - 1})" in message
    assert "Status Message" not in message and "out of data bounds" not in message     # not onnxruntime's words
    ids, mask = token_rows(seed=3, length=5)     # another sequence length: the axis is dynamic
    r = ask_tokens(servers["tokens"], protocol, ids, mask, [2, 2, 0])
    np.testing.assert_allclose(r.as_numpy("attributions"), explainers["tokens"].explain(
        {"input_ids": ids, "attention_mask": mask}, [2, 2, 0]), rtol=1e-5, atol=1e-7)
