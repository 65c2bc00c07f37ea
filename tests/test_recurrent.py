"""LSTM, GRU and RNN on the gradient path.

PyTorch classifiers exported by both exporters are held against autograd
(gradients), Captum (integrated gradients, layer integrated gradients), and a
textbook DeepLIFT Rescale through time written here in numpy (vanilla RNNs);
ONNX nodes built by hand (``sequence_lens``, peepholes, ``clip``, layouts,
activations) against onnxruntime's own kernels and finite differences.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from captum.attr import IntegratedGradients, LayerIntegratedGradients
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn

import onnxplain
from checks import assert_close
from onnxplain.errors import UnsupportedOperatorError
from onnxplain.graph import GraphBuilder
from onnxplain.vjp.recurrent import GRU, LSTM, RNN, expand

FEATURES, HIDDEN, CLASSES, ROWS, STEPS = 5, 4, 3, 3, 6


class Classifier(nn.Module):
    """A recurrent layer over ``(batch, seq, features)``, the mean over time, a linear head.

    ``with_state``: the initial states are inputs too, batch first ``(batch, layers*dirs, hidden)``
    and moved to the layer's layout inside.  ``batch_first=False`` runs the layer sequence first.
    """

    def __init__(self, kind, layers=1, bidirectional=False, batch_first=True, nonlinearity="tanh",
                 with_state=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        kw = {"nonlinearity": nonlinearity} if kind == "RNN" else {}
        self.kind, self.batch_first, self.with_state = kind, batch_first, with_state
        self.rnn = getattr(nn, kind)(FEATURES, HIDDEN, num_layers=layers, bidirectional=bidirectional,
                                     batch_first=batch_first, **kw)
        self.seq = nn.Identity()   # the hidden sequence, for layer attribution
        self.head = nn.Linear(HIDDEN * (2 if bidirectional else 1), CLASSES)
        self.n_states = layers * (2 if bidirectional else 1)

    def forward(self, x, h0=None, c0=None):
        if not self.batch_first:
            x = x.transpose(0, 1)
        state = None
        if h0 is not None:
            h = h0.transpose(0, 1).contiguous()
            state = (h, c0.transpose(0, 1).contiguous()) if self.kind == "LSTM" else h
        y, _ = self.rnn(x, state)
        if not self.batch_first:
            y = y.transpose(0, 1)
        return self.head(self.seq(y).mean(1))

    def example(self, rows=ROWS, seed=1):
        g = torch.Generator().manual_seed(seed)
        args = [torch.randn(rows, STEPS, FEATURES, generator=g)]
        if self.with_state:
            args.append(0.5 * torch.randn(rows, self.n_states, HIDDEN, generator=g))
            if self.kind == "LSTM":
                args.append(0.5 * torch.randn(rows, self.n_states, HIDDEN, generator=g))
        return tuple(args)


CONFIGS = {
    "lstm": dict(kind="LSTM"),
    "lstm_2layer_bidirectional_seq_first_states": dict(kind="LSTM", layers=2, bidirectional=True, batch_first=False,
                                                       with_state=True),
    "gru_2layer_bidirectional": dict(kind="GRU", layers=2, bidirectional=True),
    "gru_seq_first_state": dict(kind="GRU", batch_first=False, with_state=True),
    "rnn_tanh": dict(kind="RNN"),
    "rnn_relu": dict(kind="RNN", nonlinearity="relu"),
}
EXPORTERS = {"torchscript": False, "dynamo": True}
#: every model with the TorchScript exporter; with the (slower) dynamo exporter one of each layer kind
EXPORTS = [(c, "torchscript") for c in CONFIGS] + [(c, "dynamo") for c in (
    "lstm", "lstm_2layer_bidirectional_seq_first_states", "gru_seq_first_state", "rnn_relu")]


class Exported:
    """A torch classifier and its ONNX export, explained with one input dict."""

    def __init__(self, config: str, exporter: str):
        self.net = Classifier(**CONFIGS[config]).eval()
        self.args = self.net.example()
        self.names = ["x", "h0", "c0"][:len(self.args)]
        self.onnx = onnxplain.from_torch(self.net, self.args, input_names=self.names,
                                         dynamo=EXPORTERS[exporter])

    def feeds(self):
        return {n: a.numpy() for n, a in zip(self.names, self.args)}

    def explain(self, method, **kw):
        out = onnxplain.Explainer(self.onnx, method).explain(self.feeds(), **kw)
        return out if isinstance(out, dict) else {"x": out}


class Zoo(dict):
    def __missing__(self, key):
        self[key] = Exported(*key)
        return self[key]


@pytest.fixture(scope="module")
def zoo():
    return Zoo()


def target_weights(seed=3):
    return np.random.default_rng(seed).standard_normal((ROWS, CLASSES)).astype(np.float32)


@pytest.mark.parametrize("config, exporter", EXPORTS)
def test_gradient_matches_autograd(zoo, config, exporter):
    case = zoo[config, exporter]
    tw = target_weights()
    ours = case.explain("gradient", target_weights=tw)
    args = [a.clone().requires_grad_() for a in case.args]
    (case.net(*args) * torch.from_numpy(tw)).sum().backward()
    for name, a in zip(case.names, args):
        assert_close(ours[name], a.grad, rtol=1e-4, what=f"{config}/{exporter}: gradient of {name}")


@pytest.mark.parametrize("config, exporter", EXPORTS)
def test_integrated_gradients_match_captum(zoo, config, exporter):
    case = zoo[config, exporter]
    ours = case.explain("integrated_gradients", target=1, n_steps=12)
    ref = IntegratedGradients(case.net).attribute(case.args, target=1, n_steps=12)
    for name, r in zip(case.names, ref):
        assert_close(ours[name], r, rtol=2e-4, what=f"{config}/{exporter}: IG of {name}")


def textbook_rnn_backward(net: Classifier, x: np.ndarray, tw: np.ndarray, eps=1e-10, guided=False) -> np.ndarray:
    """DeepLIFT Rescale through time for a one-layer RNN with a zero reference, in float64 numpy.

    ``h_t = f(W x_t + R h_{t-1} + b)``, output ``V mean_t(h_t) + c``; the multiplier of
    each pre-activation is ``(f(z) - f(z_ref)) / (z - z_ref)`` (the derivative where they meet).
    ``guided``: guided backpropagation at ReLU instead, ``relu(dy) * [z > 0]``, and the
    modified gradient itself is returned.
    """
    f = np.tanh if net.rnn.nonlinearity == "tanh" else (lambda z: np.maximum(z, 0))
    df = (lambda z: 1 - np.tanh(z) ** 2) if net.rnn.nonlinearity == "tanh" else (lambda z: (z > 0) * 1.0)
    p = {k: v.detach().double().numpy() for k, v in net.rnn.named_parameters()}
    W, R, b = p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"] + p["bias_hh_l0"]
    V = net.head.weight.detach().double().numpy()

    def run(inp):
        h, zs = np.zeros((len(inp), HIDDEN)), []
        for t in range(inp.shape[1]):
            zs.append(inp[:, t] @ W.T + h @ R.T + b)
            h = f(zs[-1])
        return zs

    x = x.astype(np.float64)
    zs, zrefs = run(x), run(np.zeros_like(x))
    steps = x.shape[1]
    from_output = (tw.astype(np.float64) @ V) / steps
    m_h, m_x = np.zeros((len(x), HIDDEN)), np.zeros_like(x)
    for t in reversed(range(steps)):
        z, zr = zs[t], zrefs[t]
        dz = z - zr
        small = np.abs(dz) < eps
        if guided:
            m_z = np.maximum(m_h + from_output, 0) * (z > 0)
        else:
            m_z = (m_h + from_output) * np.where(small, df(z), (f(z) - f(zr)) / np.where(small, 1, dz))
        m_x[:, t] = m_z @ W
        m_h = m_z @ R
    return m_x if guided else m_x * x


@pytest.mark.parametrize("config, exporter, batch_size", [("rnn_tanh", "torchscript", None),
                                                          ("rnn_relu", "torchscript", None),
                                                          ("rnn_relu", "dynamo", ROWS)])
def test_deeplift_vanilla_rnn_textbook_and_summation_to_delta(zoo, config, exporter, batch_size):
    """The dynamo exporter unrolls nn.RNN into ops on (1, batch, hidden) tensors, whose axis 0 is not the
    rows: with batch_size the references run through their own copy of the forward pass, which pairs
    every tensor with its reference whatever its layout."""
    case = zoo[config, exporter]
    tw = target_weights()
    attr, delta = onnxplain.Explainer(case.onnx, "deeplift", batch_size=batch_size).explain(
        case.feeds(), target_weights=tw, return_convergence_delta=True)
    ref = textbook_rnn_backward(case.net, case.feeds()["x"], tw)
    assert_close(attr, ref, rtol=1e-4, what=f"{config}/{exporter}: DeepLIFT")
    scale = np.abs(attr).sum(axis=(1, 2)).max()
    assert np.abs(delta).max() < 1e-5 * scale, f"summation-to-delta broken: {delta}"


GATED = [(c, e) for c, e in EXPORTS if CONFIGS[c]["kind"] != "RNN"]


@pytest.mark.parametrize("config, exporter", GATED)
def test_deeplift_gated_cells_sum_to_delta(zoo, config, exporter):
    """Gates times states take the two-player Shapley multipliers, so the attributions of the sequence and
    the initial states add up to f(x) - f(baseline), computed here by the torch model itself."""
    case = zoo[config, exporter]
    tw = target_weights()
    out = onnxplain.Explainer(case.onnx, "deeplift").explain(case.feeds(), target_weights=tw)
    out = out if isinstance(out, dict) else {"x": out}
    with torch.no_grad():
        gap = ((case.net(*case.args) - case.net(*[torch.zeros_like(a) for a in case.args]))
               * torch.from_numpy(tw)).sum(1).numpy()
    total = sum(a.reshape(len(a), -1).sum(1) for a in out.values())
    scale = sum(np.abs(a).reshape(len(a), -1).sum(1) for a in out.values()).max()
    np.testing.assert_allclose(total, gap, atol=1e-5 * scale + 1e-6)


@pytest.mark.parametrize("config", ["lstm", "gru_2layer_bidirectional", "rnn_tanh"])
def test_deeplift_inside_a_recurrent_layer_under_batch_size_says_it_needs_the_stacked_batch(zoo, config):
    """With batch_size the references run through their own copy of the layer, whose cell body cannot pair a
    row with its reference: a clear refusal when the Explainer is built; the gradient methods still run."""
    case = zoo[config, "torchscript"]
    with pytest.raises(onnxplain.UnsupportedOperatorError,
                       match=r"DeepLIFT's rules inside the (LSTM|GRU|RNN) node .* without batch_size"):
        onnxplain.Explainer(case.onnx, "deeplift", batch_size=ROWS)
    tw = target_weights()
    capped = onnxplain.Explainer(case.onnx, "integrated_gradients", batch_size=2).explain(case.feeds(), target_weights=tw)
    whole = onnxplain.Explainer(case.onnx, "integrated_gradients").explain(case.feeds(), target_weights=tw)
    for name in (whole if isinstance(whole, dict) else {"x": None}):
        got, expected = (capped[name], whole[name]) if isinstance(whole, dict) else (capped, whole)
        assert_close(got, expected, rtol=1e-4, what=f"{config}: IG with batch_size=2, {name}")


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_epsilon_lrp_in_relu_rnn_is_gradient_times_input(zoo, exporter):
    """At ReLU the epsilon rule is ``dy * relu(z) / (z + eps sign z)``: the gradient as eps -> 0."""
    case = zoo["rnn_relu", exporter]
    ours = case.explain("epsilon_lrp", target=2, epsilon=1e-9)["x"]
    x = case.args[0].clone().requires_grad_()
    case.net(x)[:, 2].sum().backward()
    assert_close(ours, x.grad * x, rtol=1e-4, what="epsilon-LRP vs gradient x input")


def test_guided_backprop_in_relu_rnn_matches_textbook(zoo):
    case = zoo["rnn_relu", "torchscript"]
    tw = target_weights(4)
    ours = case.explain("guided_backprop", target_weights=tw)["x"]
    assert_close(ours, textbook_rnn_backward(case.net, case.feeds()["x"], tw, guided=True), rtol=1e-4,
                 what="guided backprop through time")


def test_integrated_gradients_within_a_small_memory_budget(zoo):
    """Steps x rows x time split into several runs give what one run gives, and Captum's numbers."""
    case = zoo["lstm", "torchscript"]
    small = onnxplain.Explainer(case.onnx, "integrated_gradients", memory_budget=40_000)
    feeds = case.feeds()
    params = small.method.check_params({"n_steps": 24})
    parts = small.method.parts(params, small.spec, feeds, small.row_cost(feeds), small.memory_budget)
    assert len(parts) > 1, "the budget should split the integration steps"
    ours = small.explain(feeds, target=0, n_steps=24)
    ref = IntegratedGradients(case.net).attribute(case.args[0], target=0, n_steps=24)
    assert_close(ours, ref, rtol=2e-4, what="IG in budgeted chunks")


def hidden_sequence(model: onnx.ModelProto) -> str:
    """The tensor the head averages over time: the recurrent layer's hidden sequence, batch first."""
    return next(n.input[0] for n in model.graph.node if n.op_type == "ReduceMean")


@pytest.mark.parametrize("config", ["lstm", "gru_2layer_bidirectional"])
def test_layer_integrated_gradients_at_the_hidden_sequence(zoo, config):
    case = zoo[config, "torchscript"]
    layer = hidden_sequence(case.onnx)
    ours = onnxplain.Explainer(case.onnx, "integrated_gradients", layer=layer).explain(
        case.feeds(), target=1, n_steps=12)
    ref = LayerIntegratedGradients(case.net, case.net.seq).attribute(case.args[0], target=1, n_steps=12)
    assert_close(ours, ref, rtol=2e-4, what=f"{config}: layer IG at {layer}")


@pytest.mark.parametrize("config", ["lstm", "rnn_relu"])
def test_inspect_reports_every_method_available(zoo, config):
    facts = onnxplain.inspect(zoo[config, "torchscript"].onnx)
    unavailable = {m: v["reason"] for m, v in facts["methods"].items() if not v["available"]}
    assert set(unavailable) == {"grad_cam", "guided_grad_cam"}, unavailable   # they need a 4-D feature map
    assert all("feature map" in why for why in unavailable.values()), unavailable


@pytest.mark.parametrize("method", ["gradient", "deeplift", "integrated_gradients"])
@pytest.mark.parametrize("config", ["lstm", "gru_2layer_bidirectional", "rnn_tanh"])
def test_standalone_graph_runs_in_onnxruntime_and_reference(zoo, config, method, tmp_path):
    case = zoo[config, "torchscript"]
    path = tmp_path / "g.onnx"
    graph = onnxplain.convert(case.onnx, path, method=method, n_steps=4) if method == "integrated_gradients" else \
        onnxplain.convert(case.onnx, path, method=method)
    onnx.checker.check_model(graph, full_check=True)
    feeds = {**case.feeds(), "target_weights": target_weights()}
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["attributions"], feeds)[0]
    ref = ReferenceEvaluator(str(path)).run(["attributions"], feeds)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


# ---------------------------------------------------------------------- ONNX nodes built by hand
def recurrent_model(op, direction="bidirectional", layout=0, lens=False, peepholes=False, h0=True, seed=0, **attrs):
    """One ``op`` node between a batch-first input ``x`` (and ``h0``, ``lens`` when asked) and its outputs."""
    rng = np.random.default_rng(seed)
    dirs, gates, H, n_in = (2 if direction == "bidirectional" else 1), {"LSTM": 4, "GRU": 3, "RNN": 1}[op], 3, 2
    inits = [numpy_helper.from_array(0.8 * rng.standard_normal((dirs, gates * H, n_in)).astype(np.float32), "W"),
             numpy_helper.from_array(0.8 * rng.standard_normal((dirs, gates * H, H)).astype(np.float32), "R"),
             numpy_helper.from_array(0.5 * rng.standard_normal((dirs, 2 * gates * H)).astype(np.float32), "B")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", n_in] if layout else ["T", "N", n_in])]
    names = ["x", "W", "R", "B", "lens" if lens else "", "h0" if h0 else ""]
    if lens:
        inputs.append(helper.make_tensor_value_info("lens", TensorProto.INT32, ["N"]))
    if h0:
        inputs.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, ["N", dirs, H] if layout else [dirs, "N", H]))
    if op == "LSTM":
        names += ["", "P" if peepholes else ""]
        if peepholes:
            inits.append(numpy_helper.from_array(rng.standard_normal((dirs, 3 * H)).astype(np.float32), "P"))
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, names, outs, hidden_size=H, direction=direction, **attrs,
                            **({"layout": layout} if layout else {}))
    graph = helper.make_graph([node], op.lower(), inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                           for o in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def expanded_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with its recurrent node replaced by onnxplain's expansion."""
    b = GraphBuilder(model)
    node, b.nodes = b.nodes[0], []
    outs = expand(b, node, {"LSTM": LSTM, "GRU": GRU, "RNN": RNN}[node.op_type])
    for o, name in zip(outs, node.output):
        b.op("Identity", o, outputs=[name])
    b.inputs, b.outputs = list(model.graph.input), list(model.graph.output)
    return b.build()


def hand_feeds(layout, dirs, lens, h0, seed=1):
    rng = np.random.default_rng(seed)
    n, t = 4, 5
    feeds = {"x": rng.standard_normal((n, t, 2) if layout else (t, n, 2)).astype(np.float32)}
    if h0:
        feeds["h0"] = rng.standard_normal((n, dirs, 3) if layout else (dirs, n, 3)).astype(np.float32)
    if lens:
        feeds["lens"] = np.array([5, 2, 3, 1], np.int32)
    return feeds


def _ort(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


EXPANSIONS = {
    "lstm": ("LSTM", {}),
    "lstm_lens": ("LSTM", dict(lens=True)),
    "lstm_batch_first_lens_peepholes": ("LSTM", dict(layout=1, lens=True, peepholes=True)),
    "lstm_clip_reverse": ("LSTM", dict(clip=0.7, direction="reverse")),
    "lstm_input_forget": ("LSTM", dict(input_forget=1, direction="forward")),
    "lstm_clip_peepholes": ("LSTM", dict(clip=0.5, peepholes=True)),
    "lstm_clip_peepholes_input_forget_lens": ("LSTM", dict(clip=0.3, input_forget=1, peepholes=True, lens=True)),
    "gru_clip": ("GRU", dict(clip=0.4)),
    "rnn_clip": ("RNN", dict(clip=0.4)),
    "lstm_scaled_tanh_softsign": ("LSTM", dict(activations=["Sigmoid", "ScaledTanh", "Softsign"] * 2,
                                               activation_alpha=[0.9, 0.8], activation_beta=[1.3, 1.1])),
    "gru_linear_before_reset_lens": ("GRU", dict(linear_before_reset=1, lens=True)),
    "gru_batch_first": ("GRU", dict(layout=1)),
    "gru_hardsigmoid_affine_no_h0": ("GRU", dict(activations=["HardSigmoid", "Affine"], activation_alpha=[0.3, 0.5],
                                                 activation_beta=[0.4, 0.1], direction="forward", h0=False)),
    "rnn_relu_leaky_lens": ("RNN", dict(activations=["Relu", "LeakyRelu"], activation_alpha=[0.2], lens=True)),
}


@pytest.mark.parametrize("case", EXPANSIONS)
def test_expansion_matches_onnxruntime_kernels(case):
    """The Scan expansion computes what onnxruntime's fused kernels compute (layout 1, which onnxruntime
    does not run, against the layout-0 node on transposed tensors)."""
    op, kw = EXPANSIONS[case]
    layout, dirs = kw.get("layout", 0), 1 if kw.get("direction") in ("forward", "reverse") else 2
    feeds = hand_feeds(layout, dirs, kw.get("lens"), kw.get("h0", True))
    model = recurrent_model(op, **kw)
    ours = _ort(expanded_model(model), feeds)
    if layout:
        moved = {k: (v.transpose(1, 0, 2) if k in ("x", "h0") else v) for k, v in feeds.items()}
        ref = _ort(recurrent_model(op, **{**kw, "layout": 0}), moved)
        ref = [ref[0].transpose(2, 0, 1, 3)] + [r.transpose(1, 0, 2) for r in ref[1:]]
    else:
        ref = _ort(model, feeds)
    for name, a, r in zip(["Y", "Y_h", "Y_c"], ours, ref):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5, err_msg=f"{case}: {name}")


def classifier_around(op, **kw):
    """``x`` (batch, seq, 2) -> transpose -> the node (with ``lens`` when asked) -> sum of Y and Y_h -> 2 outputs."""
    core = recurrent_model(op, **kw)
    g = core.graph
    x_vi = helper.make_tensor_value_info("x_bf", TensorProto.FLOAT, ["N", "T", 2])
    head = numpy_helper.from_array(np.random.default_rng(5).standard_normal((3, 2)).astype(np.float32), "head")
    nodes = [helper.make_node("Transpose", ["x_bf"], ["x"], perm=[1, 0, 2]), *g.node,
             helper.make_node("ReduceSum", ["Y", "axes_y"], ["y_sum"], keepdims=0),      # (dirs, N, H)
             helper.make_node("Add", ["y_sum", "Y_h"], ["both"]),
             helper.make_node("ReduceSum", ["both", "axes_d"], ["per_row"], keepdims=0),  # (N, H)
             helper.make_node("MatMul", ["per_row", "head"], ["out"])]
    inits = list(g.initializer) + [head, numpy_helper.from_array(np.array([0], np.int64), "axes_y"),
                                   numpy_helper.from_array(np.array([0], np.int64), "axes_d")]
    inputs = [x_vi] + [vi for vi in g.input if vi.name == "lens"]
    model = helper.make_model(helper.make_graph(nodes, "classifier", inputs,
                                                [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 2])],
                                                inits), opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("op, kw", [("LSTM", dict(peepholes=True)), ("GRU", dict(linear_before_reset=1)),
                                    ("RNN", dict(activations=["Relu", "Tanh"]))], ids=["lstm", "gru", "rnn"])
def test_sequence_lens_gradient_matches_finite_differences(op, kw):
    model = classifier_around(op, lens=True, h0=False, **kw)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 5, 2)).astype(np.float32)
    lens = np.array([5, 2, 3, 1], np.int32)
    tw = rng.standard_normal((4, 2)).astype(np.float32)
    ours = onnxplain.Explainer(model, "gradient", inputs=["x_bf"]).explain({"x_bf": x, "lens": lens},
                                                                         target_weights=tw)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    f = lambda v: float((sess.run(None, {"x_bf": v.astype(np.float32), "lens": lens})[0] * tw).sum(dtype=np.float64))
    fd, e = np.zeros_like(x), 1e-2
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += e
        down[idx] -= e
        fd[idx] = (f(up) - f(down)) / (2 * e)
    assert np.all(ours[1, 2:] == 0) and np.all(ours[3, 1:] == 0), "steps past a row's length get no gradient"
    assert_close(ours, fd, rtol=2e-3, what=f"{op} with sequence_lens vs finite differences")


def test_activation_without_its_parameters_is_refused():
    model = classifier_around("RNN", activations=["ScaledTanh", "Tanh"], h0=False)
    with pytest.raises(UnsupportedOperatorError, match="ScaledTanh needs its alpha and beta"):
        onnxplain.Explainer(model, "gradient")
