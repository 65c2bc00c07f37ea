"""The Explainer's contract: build once, feed everything, validate before running."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain import api, cache, runtime
from onnxplain.errors import ModelError
from onnxplain.methods.integrated_gradients import quadrature

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((8, 5)).astype(np.float32)
B1 = RNG.standard_normal(8).astype(np.float32)
W2 = RNG.standard_normal((3, 8)).astype(np.float32)
B2 = RNG.standard_normal(3).astype(np.float32)


def mlp_model(with_mask: bool = False) -> onnx.ModelProto:
    """x -> Gemm -> Relu -> Gemm (-> * mask, an int input passed through)."""
    inits = [numpy_helper.from_array(a, n) for a, n in [(W1, "W1"), (B1, "B1"), (W2, "W2"), (B2, "B2")]]
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "B2"], ["logits" if not with_mask else "z"], transB=1)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5])]
    if with_mask:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.INT64, ["n", 3]))
        nodes += [helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["z", "maskf"], ["logits"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])]
    g = helper.make_graph(nodes, "mlp", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def forward(x):
    return np.maximum(x @ W1.T + B1, 0) @ W2.T + B2


def grad(x, weights):
    """Analytic gradient of sum(weights * f(x)) (float64)."""
    z = x.astype(np.float64) @ W1.T + B1
    return ((weights @ W2) * (z > 0)) @ W1


def one_hot(targets, n=3):
    w = np.zeros((len(targets), n))
    w[np.arange(len(targets)), targets] = 1
    return w


def ig_reference(x, base, targets, n_steps=50, scheme="gausslegendre"):
    alphas, weights = quadrature(n_steps, scheme)
    total = sum(w * grad(base + a * (x - base), one_hot(targets)) for a, w in zip(alphas, weights))
    return (x - base) * total


@pytest.fixture(scope="module")
def model_bytes():
    return mlp_model().SerializeToString()


X = RNG.standard_normal((4, 5)).astype(np.float32)


def test_saliency_and_input_x_gradient_match_the_analytic_gradient(model_bytes):
    g = grad(X, one_hot([0, 1, 2, 1]))
    sal = onnxplain.Explainer(model_bytes, "saliency").explain(X, target=[0, 1, 2, 1])
    np.testing.assert_allclose(sal, np.abs(g), rtol=1e-5, atol=1e-5)
    ixg = onnxplain.Explainer(model_bytes, "grad*input").explain(X, target=[0, 1, 2, 1])
    np.testing.assert_allclose(ixg, X * g, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scheme", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
                                    "riemann_trapezoid"])
def test_integrated_gradients_match_a_quadrature_written_here(model_bytes, scheme):
    ex = onnxplain.Explainer(model_bytes, "integrated_gradients")
    base = np.full((1, 5), 0.25, np.float32)
    a, delta = ex.explain(X, target=2, n_steps=16, method=scheme, baselines=base, return_convergence_delta=True)
    np.testing.assert_allclose(a, ig_reference(X, base, [2] * 4, 16, scheme), rtol=1e-4, atol=1e-5)
    completeness = a.sum(1) - (forward(X)[:, 2] - forward(base)[0, 2])
    np.testing.assert_allclose(delta, completeness, rtol=1e-4, atol=1e-5)


def test_a_graph_being_built_blocks_only_the_explainers_of_that_graph(monkeypatch):
    """Explainers of other graphs are made while one graph is still being built; Explainers of the graph
    being built wait for that one build and share it."""
    import threading

    cache.GRAPHS.clear()
    release, started, builds = threading.Event(), threading.Event(), []
    real_build = api.build_graph

    def slow_build(model, method, spec):
        builds.append(method.name)
        if method.name == "integrated_gradients":
            started.set()
            assert release.wait(60), "the build was never released"
        return real_build(model, method, spec)

    monkeypatch.setattr(api, "build_graph", slow_build)
    made = {}

    def make(name, method):
        made[name] = onnxplain.Explainer(mlp_model(), method)

    first = threading.Thread(target=make, args=("ig", "integrated_gradients"))
    twin = threading.Thread(target=make, args=("ig_twin", "integrated_gradients"))
    first.start()
    assert started.wait(60)
    twin.start()
    make("saliency", "saliency")          # another graph: made while the first build is held
    assert "ig" not in made and "ig_twin" not in made
    release.set()
    first.join(60)
    twin.join(60)
    assert builds.count("integrated_gradients") == 1
    assert made["ig"].session is made["ig_twin"].session
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    grad = ((x @ W1.T + B1 > 0) * W2[1]) @ W1                   # the MLP's gradient, by hand
    np.testing.assert_allclose(made["saliency"].explain(x, target=1), np.abs(grad), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(made["ig_twin"].explain(x, target=1, baselines=0, n_steps=300).sum(axis=1),
                               forward(x)[:, 1] - forward(np.zeros_like(x))[:, 1], rtol=1e-2, atol=1e-3)


def test_nothing_is_rebuilt_between_calls(model_bytes, monkeypatch):
    builds, sessions = [], []
    real_build, real_session = api.build_graph, api.Session
    monkeypatch.setattr(api, "build_graph", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    monkeypatch.setattr(api, "Session", lambda *a, **k: sessions.append(1) or real_session(*a, **k))
    cache.GRAPHS.clear()
    ex = onnxplain.Explainer(model_bytes, "integrated_gradients")
    runs = []
    real_run = ex.session.run
    monkeypatch.setattr(ex.session, "run", lambda *a, **k: runs.append(1) or real_run(*a, **k))
    for n, target, steps, base in [(4, 1, 50, None), (2, [0, 2], 20, 0.5), (7, 2, 7, np.ones(5))]:
        x = RNG.standard_normal((n, 5)).astype(np.float32)
        a = ex.explain(x, target=target, n_steps=steps, baselines=base)
        assert a.shape == x.shape
    assert len(builds) == 1 and len(sessions) == 1
    assert len(runs) == 3, "each call's steps for its rows go through the session in one run"
    again = onnxplain.Explainer(model_bytes, "intgrad")
    assert again.session is ex.session and len(builds) == 1


def test_memory_budget_splits_rows_and_steps_without_changing_the_result(model_bytes):
    x = RNG.standard_normal((5, 5)).astype(np.float32)
    whole = onnxplain.Explainer(model_bytes, "integrated_gradients").explain(x, target=1, n_steps=30)
    tiny = onnxplain.Explainer(model_bytes, "integrated_gradients", memory_budget=2000)
    runs = []
    real_run = tiny.session.run
    tiny.session.run = lambda *a, **k: runs.append(1) or real_run(*a, **k)
    a, delta = tiny.explain(x, target=1, n_steps=30, return_convergence_delta=True)
    np.testing.assert_allclose(a, whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(delta, a.sum(1) - (forward(x)[:, 1] - forward(np.zeros((1, 5)))[0, 1]),
                               rtol=1e-4, atol=1e-5)
    assert len(runs) > 5, "a budget below one row's steps must split the integration steps"


def test_internal_batch_size_caps_the_expanded_rows(model_bytes):
    ex = onnxplain.Explainer(model_bytes, "integrated_gradients")
    a = ex.explain(X, target=0, n_steps=10, internal_batch_size=8)
    np.testing.assert_allclose(a, ig_reference(X, np.zeros((1, 5)), [0] * 4, 10), rtol=1e-4, atol=1e-5)


def test_target_forms_and_target_weights(model_bytes):
    ex = onnxplain.Explainer(model_bytes, "gradient")
    w = RNG.standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_allclose(ex.explain(X, target_weights=w), grad(X, w), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ex.explain(X, target=(2,)), grad(X, one_hot([2] * 4)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ex.explain(X, target=np.array([2, 0, 1, 1])), grad(X, one_hot([2, 0, 1, 1])),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ex.explain(X, target=-1), grad(X, one_hot([2] * 4)), rtol=1e-5, atol=1e-5)


def test_smoothgrad_family_matches_the_statistics_of_gradients_at_the_noisy_points(model_bytes):
    noise = RNG.standard_normal((6, 4, 5)).astype(np.float32)
    stdev = 0.3
    grads = np.stack([grad(X + stdev * e, one_hot([1] * 4)) for e in noise])
    expected = {"smoothgrad": grads.mean(0), "smoothgrad_sq": (grads ** 2).mean(0), "vargrad": grads.var(0)}
    for method, ref in expected.items():
        got = onnxplain.Explainer(model_bytes, method).explain(X, target=1, nt_samples=6, stdevs=stdev, noise=noise)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5, err_msg=method)


def test_smoothgrad_seed_makes_calls_reproducible_and_differs_across_seeds(model_bytes):
    ex = onnxplain.Explainer(model_bytes, "smoothgrad")
    a = ex.explain(X, target=1, seed=3)
    np.testing.assert_array_equal(a, ex.explain(X, target=1, seed=3))
    assert not np.allclose(a, ex.explain(X, target=1, seed=4))


def test_pass_through_inputs_and_dict_inputs():
    model = mlp_model(with_mask=True).SerializeToString()
    mask = np.array([[1, 0, 1], [1, 1, 1], [0, 0, 1], [1, 1, 0]], np.int64)
    ex = onnxplain.Explainer(model, "integrated_gradients")
    assert ex.inputs == ["x"]
    a = ex.explain({"x": X, "mask": mask}, target=0, n_steps=8)
    ref = ig_reference(X, np.zeros((1, 5)), [0] * 4, 8) * mask[:, :1]
    np.testing.assert_allclose(a, ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- errors, before anything runs
@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 6), np.float32), r"must have shape \('n', 5\).*got \(4, 6\)"),
    (np.zeros((5,), np.float32), r"must have shape \('n', 5\).*got \(5,\)"),
    (np.zeros((4, 5), np.int64), "must be a floating-point array"),
    ({"y": X}, r"missing \['x'\], unexpected \['y'\]"),
])
def test_bad_inputs_name_expected_and_given(model_bytes, bad, message):
    with pytest.raises(ValueError, match=message):
        onnxplain.Explainer(model_bytes, "saliency").explain(bad, target=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(target=3), "out of range"),
    (dict(target=None), "target=None needs an output with one value per row"),
    (dict(target=[0, 1]), "needs 4 entries"),
    (dict(target=(0, 1)), "needs 1 index"),
    (dict(target_weights=np.ones((4, 4))), r"must have the output's shape \(4, 3\)"),
    (dict(target=0, n_steps=0), "n_steps must be a positive int"),
    (dict(target=0, method="simpson"), "unknown integration method"),
    (dict(target=0, baselines=np.zeros((2, 5))), "baselines for input 'x'"),
])
def test_bad_call_arguments_are_refused_before_running(model_bytes, kwargs, message, monkeypatch):
    ex = onnxplain.Explainer(model_bytes, "integrated_gradients")
    monkeypatch.setattr(ex.session, "run", lambda *a, **k: pytest.fail("ran despite bad arguments"))
    with pytest.raises(ValueError, match=message):
        ex.explain(X, **kwargs)


def test_unknown_parameter_and_method_names(model_bytes):
    with pytest.raises(TypeError, match="accepts: baselines, internal_batch_size, max_steps, method, multiply_by_inputs, n_steps, target_delta"):
        onnxplain.Explainer(model_bytes, "integrated_gradients").explain(X, target=0, steps=3)
    with pytest.raises(ValueError, match="valid methods: saliency, gradient, input_x_gradient"):
        onnxplain.Explainer(model_bytes, "shap")


def test_bad_models_and_outputs(tmp_path, model_bytes):
    with pytest.raises(onnxplain.ModelError, match="no ONNX model at"):
        onnxplain.Explainer(str(tmp_path / "missing.onnx"))
    with pytest.raises(onnxplain.ModelError, match="not an ONNX model"):
        onnxplain.Explainer(b"not a model")
    with pytest.raises(ValueError, match=r"outputs are \['logits'\]"):
        onnxplain.Explainer(model_bytes, output="probs")


def test_missing_rule_names_op_and_node_and_points_to_perturbation_methods():
    """An op of another domain (a runtime's custom op) has no rule and no standard body."""
    g = helper.make_graph([helper.make_node("Gate", ["x"], ["g"], name="the_gate", domain="com.example"),
                           helper.make_node("ReduceSum", ["g", "ax"], ["y"], keepdims=0)], "custom",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
                          [numpy_helper.from_array(np.array([1], np.int64), "ax")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    with pytest.raises(onnxplain.UnsupportedOperatorError, match=r"Gate \(node 'the_gate'\).*occlusion"):
        onnxplain.Explainer(m, "saliency")


# ---------------------------------------------------------------------- the standalone graph
def test_converted_graph_runs_without_onnxplain_in_onnxruntime_and_reference(tmp_path, model_bytes):
    path = tmp_path / "mlp.ig.onnx"
    onnxplain.convert(model_bytes, path, method="integrated_gradients", n_steps=20)
    g = onnx.load(str(path))
    assert {o.name for o in g.graph.output} == {"attributions", "logits", "delta"}
    assert {op.domain for op in g.opset_import} <= {"", "ai.onnx"}
    assert all(n.domain in ("", "ai.onnx") for n in g.graph.node)
    expected = onnxplain.Explainer(model_bytes, "integrated_gradients").explain(X, target=[0, 1, 2, 0], n_steps=20)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "tw.npy", one_hot([0, 1, 2, 0]).astype(np.float32))
    script = textwrap.dedent(f"""
        import sys, numpy as np, onnxruntime as ort
        from onnx.reference import ReferenceEvaluator
        x, tw = np.load({str(tmp_path / 'x.npy')!r}), np.load({str(tmp_path / 'tw.npy')!r})
        feeds = {{"x": x, "target_weights": tw}}   # every parameter left at its default
        a = ort.InferenceSession({str(path)!r}, providers=["CPUExecutionProvider"]).run(["attributions"], feeds)[0]
        b = ReferenceEvaluator({str(path)!r}).run(["attributions"], feeds)[0]
        np.save({str(tmp_path / 'ort.npy')!r}, a); np.save({str(tmp_path / 'ref.npy')!r}, b)
        assert "onnxplain" not in sys.modules
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=str(tmp_path))
    np.testing.assert_allclose(np.load(tmp_path / "ort.npy"), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "ref.npy"), expected, rtol=1e-4, atol=1e-5)


def test_convert_writes_nothing_on_error(tmp_path, model_bytes):
    with pytest.raises(ValueError):
        onnxplain.convert(model_bytes, tmp_path / "x.onnx", method="nope")
    with pytest.raises(ValueError):
        onnxplain.convert(model_bytes, tmp_path / "missing_dir" / "x.onnx", method="saliency")
    assert os.listdir(tmp_path) == []


def test_written_graphs_load_in_the_installed_onnxruntime(tmp_path, model_bytes):
    """onnx writes IR versions newer than onnxruntime reads; onnxplain writes the oldest that fits."""
    g = onnxplain.convert(model_bytes, tmp_path / "s.onnx", method="saliency")
    assert g.ir_version == helper.find_min_ir_version_for(list(g.opset_import), ignore_unknown=True)
    assert g.ir_version < onnx.IR_VERSION


# ---------------------------------------------------------------------- providers
def test_cuda_is_chosen_only_when_a_session_can_use_it(monkeypatch):
    runtime.cuda_usable.cache_clear()
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert runtime.select_providers() == ["CPUExecutionProvider"]
    runtime.cuda_usable.cache_clear()

    class FakeSession:
        def __init__(self, *a, providers=None, **k):
            self._p = providers

        def get_providers(self):
            return self._p

    monkeypatch.setattr(runtime.ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(runtime.ort, "InferenceSession", FakeSession)
    assert runtime.select_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    runtime.cuda_usable.cache_clear()
    with pytest.raises(ValueError, match="not available"):
        runtime.select_providers(["TensorrtExecutionProvider", "NoSuchProvider"])
    runtime.cuda_usable.cache_clear()


def test_no_cuda_noise_on_a_machine_without_gpu():
    script = "import onnxplain.runtime as r; print(r.select_providers())"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['CPUExecutionProvider']" or "CUDA" in done.stdout
    assert "libcu" not in done.stderr and "Failed to load" not in done.stderr, done.stderr


def test_a_zipmap_classifier_gets_told_how_to_convert_it():
    """skl2onnx's default ZipMap output is a sequence of maps, not a tensor to explain."""
    seq_of_maps = helper.make_sequence_type_proto(helper.make_map_type_proto(TensorProto.INT64,
                                                                             helper.make_tensor_type_proto(
                                                                                 TensorProto.FLOAT, [])))
    g = helper.make_graph([helper.make_node("ZipMap", ["p"], ["probs"], domain="ai.onnx.ml",
                                            classlabels_int64s=[0, 1])], "zip",
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 2])],
                          [helper.make_value_info("probs", seq_of_maps)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    with pytest.raises(ValueError, match="zipmap"):
        onnxplain.Explainer(m, "occlusion")


def test_on_cuda_outputs_are_bound_on_the_device_and_copied_once(monkeypatch):
    """The CUDA path feeds through IO binding (no GPU here: onnxruntime's session is faked)."""
    from checks import fake_cuda_onnxruntime

    calls, made = fake_cuda_onnxruntime(monkeypatch, lambda x: x * 2)
    sess = runtime.Session(mlp_model(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert sess.on_cuda
    out = sess.run({"x": np.ones((2, 5), np.float32)}, ["y"])
    np.testing.assert_array_equal(out["y"], np.full((2, 5), 2, np.float32))
    assert calls == [("bind_output", "y", "cuda"), ("run",), ("clear_inputs",), ("clear_outputs",)]
    assert made[0].inputs == {} and made[0].outputs == []   # the kept binding holds nothing after the run


# ---------------------------------------------------------------------- onnxruntime's failures, worded
def token_model() -> onnx.ModelProto:
    """Token ids -> embedding rows (a vocabulary of 10) -> their sum, and a float input gathered by those ids."""
    table = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32), "E")
    one = onnx.numpy_helper.from_array(np.array([1], np.int64), "one")
    nodes = [onnx.helper.make_node("Gather", ["E", "ids"], ["h"], name="embed"),
             onnx.helper.make_node("GatherElements", ["x", "ids"], ["picked"], axis=1, name="pick"),
             onnx.helper.make_node("Unsqueeze", ["picked", "two"], ["p3"]),
             onnx.helper.make_node("Mul", ["h", "p3"], ["hp"]),
             onnx.helper.make_node("ReduceSum", ["hp", "one"], ["y"], keepdims=0)]
    two = onnx.numpy_helper.from_array(np.array([2], np.int64), "two")
    graph = onnx.helper.make_graph(nodes, "g", [onnx.helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 5]),
                                                onnx.helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10])],
                                   [onnx.helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                                   [table, one, two])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "occlusion"])
def test_a_model_node_failing_on_the_inputs_is_a_model_error_naming_the_node(method):
    ids = np.array([[1, 2, 3, 4, 5], [1, 2, 30, 4, 5]], np.int64)        # 30 is outside the vocabulary
    x = np.ones((2, 10), np.float32)
    ex = onnxplain.Explainer(token_model(), method, inputs=["x"])
    params = {"sliding_window_shapes": (1,)} if method == "occlusion" else {}
    with pytest.raises(ModelError, match=r"the model's node '(embed|pick)' \((Gather|GatherElements)\) failed on this call's inputs: "
                                         r"[^/]*[Oo]ut of.*Check the inputs"):
        ex.explain({"ids": ids, "x": x}, target=1, **params)
    good = ex.explain({"ids": ids % 10, "x": x}, target=1, **params)    # the same Explainer still works
    assert good.shape == x.shape


def test_a_failure_in_a_node_the_explanation_graph_added_is_a_run_error():
    """onnxruntime's own message form ("running Op node. Name:'...' Status Message: ..."), for both kinds of node."""
    from onnxplain.errors import RunError
    from onnxplain.runtime import run_failure
    Fail = type("Fail", (Exception,), {"__module__": "onnxruntime.capi.onnxruntime_pybind11_state"})
    message = ("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running {op} node. "
               "Name:'{name}' Status Message: broadcast failed")
    ours = run_failure(Fail(message.format(op="ReduceMean", name="onnxplain_ReduceMean__5")))
    assert isinstance(ours, RunError) and "node 'onnxplain_ReduceMean__5' (ReduceMean), which onnxplain added" in str(ours)
    theirs = run_failure(Fail(message.format(op="Conv", name="/conv1/Conv__partner_3")))
    assert isinstance(theirs, ModelError) and "the model's node '/conv1/Conv' (Conv)" in str(theirs)
    assert run_failure(ValueError("not onnxruntime's")) is None


def test_explain_options_split_the_explainers_keywords_from_the_methods_parameters():
    import dataclasses
    import inspect

    from onnxplain.options import EXPLAINER_KEYWORDS, ExplainOptions

    ctor = [p for p in inspect.signature(onnxplain.Explainer).parameters if p not in ("model", "method")]
    assert list(EXPLAINER_KEYWORDS) == ctor, "the options name every keyword of the Explainer"
    assert [f.name for f in dataclasses.fields(ExplainOptions)] == ["method", *ctor, "params"]
    opts = ExplainOptions.split("ig", inputs_to_attribute="x", batch_size=4, n_steps=7, baselines=0.5)
    assert (opts.inputs, opts.batch_size, opts.params) == ("x", 4, {"n_steps": 7, "baselines": 0.5})
    with pytest.raises(TypeError, match="not both"):
        ExplainOptions.split("ig", inputs="x", inputs_to_attribute="x")
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    ex = onnxplain.Explainer.from_options(mlp_model(), opts)
    assert ex.method_name == "integrated_gradients" and ex.spec.batch_size == 4
    a = ex.explain(x, target=1, **opts.params)
    assert a.shape == x.shape
    np.testing.assert_allclose(a, onnxplain.explain(mlp_model(), x, "ig", target=1, batch_size=4, n_steps=7,
                                                    baselines=0.5), rtol=1e-6)


def test_explain_file_takes_its_options_as_one_object_or_as_keywords(tmp_path):
    from onnxplain.files import explain_file
    from onnxplain.options import ExplainOptions

    x = RNG.standard_normal((5, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    flat = explain_file(mlp_model(), tmp_path / "x.npy", "ig", target=1, batch_size=2, params={"n_steps": 9})
    options = ExplainOptions("ig", batch_size=2, params={"n_steps": 9})
    one = explain_file(mlp_model(), tmp_path / "x.npy", target=1, options=options)
    by_hand = onnxplain.Explainer(mlp_model(), "ig", batch_size=2).explain(x, target=1, n_steps=9)
    for got in (flat, one):
        np.testing.assert_allclose(got.attributions["x"], by_hand, rtol=1e-6)
    with pytest.raises(TypeError, match="not both"):
        explain_file(mlp_model(), tmp_path / "x.npy", target=1, options=options, batch_size=3)


def test_callable_baselines_are_called_as_captum_calls_them():
    """Captum's DeepLiftShap takes baselines as a function of the inputs (or of nothing); the same functions,
    written for numpy and for torch, give Captum's attributions."""
    import torch
    from captum.attr import DeepLiftShap

    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(W1))
        net[0].bias.copy_(torch.from_numpy(B1))
        net[2].weight.copy_(torch.from_numpy(W2))
        net[2].bias.copy_(torch.from_numpy(B2))
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    shifts = np.linspace(-1.0, 1.0, 3, dtype=np.float32)[:, None]
    ex = onnxplain.Explainer(mlp_model().SerializeToString(), "deeplift_shap")
    for ours, theirs in [(lambda: np.tile(shifts, (1, 5)), lambda: torch.from_numpy(np.tile(shifts, (1, 5)))),
                         (lambda inp: inp[:3] * 0.5 + shifts, lambda inp: inp[:3] * 0.5 + torch.from_numpy(shifts))]:
        got = ex.explain(x, target=1, baselines=ours)
        want = DeepLiftShap(net).attribute(torch.from_numpy(x), baselines=theirs, target=1).detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="baselines for input 'x'"):
        onnxplain.Explainer(mlp_model().SerializeToString(), "integrated_gradients").explain(
            x, target=0, baselines=lambda inp: np.zeros((2, 6), np.float32))


def _double_erf_model(node_name: str) -> onnx.ModelProto:
    """A model onnxruntime cannot load (it has no float64 Erf kernel), though ONNX allows it."""
    from onnx import TensorProto, helper
    nodes = [helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE, name="to_double"),
             helper.make_node("Erf", ["d"], ["e"], name=node_name),
             helper.make_node("Cast", ["e"], ["y"], to=TensorProto.FLOAT, name="to_float")]
    graph = helper.make_graph(nodes, "erf64", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("method", ["saliency", "feature_ablation"])
def test_a_model_onnxruntime_cannot_load_is_a_model_error_naming_the_node(method):
    model = _double_erf_model("double_erf")
    with pytest.raises(ModelError, match=r"could not load the model at its node 'double_erf' \(Erf\)") as caught:
        onnxplain.Explainer(model, method).explain(np.ones((2, 3), np.float32), target=0)
    assert "ONNXRuntimeError" not in str(caught.value) and "onnxruntime_src" not in str(caught.value)


def test_a_node_onnxplain_added_that_onnxruntime_cannot_load_is_a_run_error():
    from onnxplain.errors import RunError
    from onnxplain.graph import NODE_PREFIX
    from onnxplain.runtime import Session
    with pytest.raises(RunError, match=rf"explanation graph at its node '{NODE_PREFIX}Erf_3' \(Erf\), which onnxplain"):
        Session(_double_erf_model(f"{NODE_PREFIX}Erf_3"))


def test_the_cli_reports_a_model_onnxruntime_cannot_load_in_one_line(tmp_path, capsys):
    from onnxplain.cli import main
    onnx.save(_double_erf_model("double_erf"), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.ones((2, 3), np.float32))
    assert main(["explain", str(tmp_path / "m.onnx"), str(tmp_path / "x.npy"), "-m", "saliency", "--target", "0",
                 "--out", str(tmp_path / "a.npy")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "node 'double_erf' (Erf)" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "a.npy").exists()
