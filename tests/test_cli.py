"""The command line, through ``main(argv)`` (and once as ``python -m onnxplain``).

Results are held against the Python API, the model's own outputs and properties
that must hold (completeness of integrated gradients, attributions on the
strokes of the demo images); errors against exit code 2 and a one-line message.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.backward import missing_rules
from onnxplain.cli import demo_files, main
from onnxplain.converters.normalize import normalize
from onnxplain.graph import GraphBuilder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _demo_missing() -> list[str]:
    m = normalize(demo_files()["model"])
    b = GraphBuilder(m)
    return sorted({n.op_type for n in missing_rules(b.nodes, ["image"], ["logits"], b)})


MISSING = _demo_missing()
needs_demo_rules = pytest.mark.skipif(bool(MISSING), reason=f"no backward rule yet for {MISSING} "
                                                            f"(see test_the_demo_model_has_every_rule)")


def test_the_demo_model_has_every_rule():
    """The embedded default must be explainable: it uses only Conv, Relu, MaxPool, GlobalAveragePool, Flatten, Gemm."""
    assert MISSING == []


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def _in_a_temporary_folder(tmp_path, monkeypatch):
    """Commands that write next to the caller (the demo's ./onnxplain-demo/) write into the test's own folder."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """x[batch, 4] -> Gemm -> Relu -> Gemm -> y[batch, 3], fixed weights; ops that have rules since the start."""
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    w2, b2 = rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
                              [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    onnx.save(model, path)
    return str(path)


@pytest.fixture(scope="module")
def rows():
    return np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)


@pytest.fixture
def rows_file(tmp_path, rows):
    path = tmp_path / "x.npy"
    np.save(path, rows)
    return str(path)


def _forward(path, x):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _fails(capsys, argv, *fragments):
    """main(argv) exits 2 with one line on stderr that contains every fragment, and no traceback."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxplain: error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


# ---------------------------------------------------------------------- demo
@needs_demo_rules
def test_demo_prints_a_row_per_sample_and_writes_consistent_attributions(tmp_path, capsys):
    out = tmp_path / "demo.npz"
    assert main(["demo", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for column in ("sample", "predicted", "target", "sum(IG)", "f(x)-f(0)", "delta"):
        assert column in text
    f = np.load(out)
    x, labels, logits = f["inputs"], f["labels"], f["logits"]
    ig, sal, delta, targets = f["integrated_gradients"], f["saliency"], f["delta"], f["targets"]
    assert x.shape == (4, 1, 16, 16) and ig.shape == x.shape and sal.shape == x.shape
    # the trained demo model recognises its samples, and the default target is the prediction
    np.testing.assert_array_equal(logits.argmax(axis=1), labels)
    np.testing.assert_array_equal(targets, labels)
    sess = ort.InferenceSession(demo_files()["model"], providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(logits, sess.run(None, {"image": x})[0], rtol=1e-5, atol=1e-5)
    # completeness: sum(IG) = f(x) - f(0) up to the quadrature error, and delta is that residual
    f0 = sess.run(None, {"image": np.zeros_like(x)})[0]
    gap = logits[np.arange(4), targets] - f0[np.arange(4), targets]
    sums = ig.reshape(4, -1).sum(axis=1)
    np.testing.assert_allclose(delta, sums - gap, rtol=1e-3, atol=1e-4)
    assert np.all(np.abs(delta) < 1e-2 * np.abs(gap) + 1e-3)
    assert np.all(sal >= 0)
    # the attributions sit on the strokes: |IG| on stroke pixels is many times that elsewhere
    for k in range(4):
        stroke = x[k] > 0.5
        assert np.abs(ig[k][stroke]).mean() > 5 * np.abs(ig[k][~stroke]).mean()
    # and the command line agrees with the Python API
    api = onnxplain.Explainer(demo_files()["model"], method="integrated_gradients").explain(x, target=targets.tolist())
    np.testing.assert_allclose(ig, api, rtol=1e-5, atol=1e-6)


@needs_demo_rules
def test_demo_target_by_name_or_index(tmp_path, capsys):
    out = tmp_path / "square.npz"
    assert main(["demo", "--target", "square", "--n-steps", "8", "--output", str(tmp_path / "pics"),
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("3 square") >= 4                # the target column of every row
    np.testing.assert_array_equal(np.load(out)["targets"], [3, 3, 3, 3])
    assert main(["demo", "--target", "1", "--integration", "riemann_trapezoid", "--n-steps", "10",
                 "--output", str(tmp_path / "pics")]) == 0


@needs_demo_rules
def test_demo_writes_a_picture_per_method_and_a_report_of_the_numbers(tmp_path, capsys):
    """By default into ./onnxplain-demo/; the report's table holds the numbers the model itself gives."""
    assert main(["demo"]) == 0
    printed = capsys.readouterr().out
    folder = tmp_path / "onnxplain-demo"
    assert sorted(p.name for p in folder.iterdir()) == ["integrated_gradients.png", "report.md", "saliency.png"]
    for png in ("integrated_gradients.png", "saliency.png"):
        data = (folder / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert 300 < width < height < 2000            # four samples, one under the other
        assert os.path.join("onnxplain-demo", png) in printed
    report = (folder / "report.md").read_text()
    assert "![integrated_gradients](integrated_gradients.png)" in report and "![saliency](saliency.png)" in report
    rows = [line.split("|")[1:-1] for line in report.splitlines() if line.startswith("| ") and "---" not in line]
    header, rows = [c.strip() for c in rows[0]], [[c.strip() for c in r] for r in rows[1:]]
    assert header[:7] == ["sample", "label", "predicted", "target", "sum(IG)", "f(x)-f(0)", "delta"]
    x = np.load(demo_files()["inputs"])
    sess = ort.InferenceSession(demo_files()["model"], providers=["CPUExecutionProvider"])
    fx, f0 = sess.run(None, {"image": x})[0], sess.run(None, {"image": np.zeros_like(x)})[0]
    assert len(rows) == len(x)
    for k, row in enumerate(rows):
        t = int(fx[k].argmax())
        assert row[2].split()[0] == row[3].split()[0] == str(t)
        assert float(row[5]) == pytest.approx(fx[k, t] - f0[k, t], rel=1e-4, abs=1e-4)
        assert float(row[4]) - float(row[5]) == pytest.approx(float(row[6]), abs=2e-5 + 1e-5 * abs(float(row[5])))
    # the text summary stays
    assert "sum(IG)" in printed and "delta = sum(IG)" in printed


@needs_demo_rules
def test_demo_without_matplotlib_still_prints_and_says_how_to_get_pictures(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)          # as on a core install
    assert main(["demo", "--n-steps", "8"]) == 0
    text = capsys.readouterr().out
    assert "sum(IG)" in text and 'pip install "onnxplain[viz]"' in text
    assert not (tmp_path / "onnxplain-demo").exists()
    _fails(capsys, ["demo", "--output", str(tmp_path / "pics")], 'pip install "onnxplain[viz]"')


@pytest.mark.parametrize("argv, fragment", [
    (["demo", "--target", "9"], "out of range"),
    (["demo", "--target", "circle"], "'circle'"),
    (["demo", "--n-steps", "0"], "n_steps"),
    (["demo", "--integration", "simpson"], "simpson"),
    (["demo", "--out", "/no/such/folder/demo.npz"], "does not exist"),
    (["demo", "--out", "demo.npy"], ".npz"),
    (["demo", "--n-steps", "many"], "many"),
    (["demo", "--heatmap"], "unrecognized arguments: --heatmap"),
    (["demo", "--output", "/no/such/folder/pics"], "does not exist"),
    (["demo", "--output", os.devnull], "is not a folder"),
])
def test_demo_errors(capsys, argv, fragment):
    _fails(capsys, argv, fragment)


@needs_demo_rules
def test_python_dash_m_runs_the_demo(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ONNXPLAIN_DEBUG"}
    done = subprocess.run([sys.executable, "-m", "onnxplain", "demo"], capture_output=True, text=True, timeout=300,
                          env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "sum(IG)" in done.stdout and "delta" in done.stdout
    assert done.stdout.count("\n") >= 8


def test_python_dash_m_reports_errors_in_one_line():
    done = subprocess.run([sys.executable, "-m", "onnxplain", "inspect", "/no/such/model.onnx"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["onnxplain: error: no ONNX model at '/no/such/model.onnx'"]


# ---------------------------------------------------------------------- convert
def test_convert_writes_a_graph_that_runs_alone_with_the_given_defaults(tmp_path, mlp, rows, capsys):
    out = tmp_path / "mlp.ig.onnx"
    assert main(["convert", mlp, str(out), "--method", "intgrad", "--n-steps", "16", "--baseline", "0.5"]) == 0
    assert str(out) in capsys.readouterr().out
    graph = onnx.load(out)
    onnx.checker.check_model(graph)
    inits = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    assert inits["alphas"].shape == (16,)
    assert {"x", "target_weights", "alphas", "alpha_weights", "baselines"} <= {i.name for i in graph.graph.input}
    assert {"attributions", "delta", "y"} <= {o.name for o in graph.graph.output}
    tw = np.zeros((len(rows), 3), np.float32)
    tw[:, 2] = 1
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    attr, delta = sess.run(["attributions", "delta"], {"x": rows, "target_weights": tw})
    expected = onnxplain.Explainer(mlp, "integrated_gradients").explain(rows, target=2, n_steps=16, baselines=0.5)
    np.testing.assert_allclose(attr, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["saliency", "grad*input", "smoothgrad"])
def test_convert_other_methods(tmp_path, mlp, method):
    out = tmp_path / "g.onnx"
    assert main(["convert", mlp, str(out), "-m", method]) == 0
    assert "attributions" in {o.name for o in onnx.load(out).graph.output}


def test_convert_errors_write_nothing(tmp_path, mlp, capsys):
    out = tmp_path / "g.onnx"
    _fails(capsys, ["convert", str(tmp_path / "missing.onnx"), str(out), "--method", "saliency"], "missing.onnx")
    _fails(capsys, ["convert", mlp, str(out), "--method", "shap"], "unknown method 'shap'", "saliency")
    _fails(capsys, ["convert", mlp, str(out), "--method", "saliency", "--n-steps", "8"], "n_steps")
    _fails(capsys, ["convert", mlp, str(out), "--method", "ig", "--output", "z"], "'z'")
    _fails(capsys, ["convert", mlp, str(tmp_path / "no" / "g.onnx"), "--method", "saliency"], "does not exist")
    _fails(capsys, ["convert", mlp, str(out), "--method", "ig", "--param", "steps"], "KEY=VALUE")
    _fails(capsys, ["convert", mlp, str(out)], "--method")
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("not a model")
    _fails(capsys, ["convert", str(not_onnx), str(out), "--method", "saliency"], "notes.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.onnx"]


# ---------------------------------------------------------------------- explain
def test_explain_writes_what_the_api_computes(tmp_path, mlp, rows, rows_file, capsys):
    out = tmp_path / "attr.npy"
    assert main(["explain", mlp, rows_file, "--method", "saliency", "--target", "1", "--out", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), onnxplain.explain(mlp, rows, method="saliency", target=1), rtol=1e-6)
    text = capsys.readouterr().out
    assert "sum(attributions)" in text and str(out) in text


def test_explain_integrated_gradients_to_npz_with_delta_and_per_row_targets(tmp_path, mlp, rows, rows_file):
    out = tmp_path / "attr.npz"
    targets = ["0", "1", "2", "0", "1", "2"]
    assert main(["explain", mlp, rows_file, "-m", "ig", "--target", *targets, "--n-steps", "20",
                 "--integration", "riemann_middle", "--out", str(out)]) == 0
    f = np.load(out)
    assert sorted(f.files) == ["attributions", "delta"]
    attr, delta = onnxplain.Explainer(mlp, "ig").explain(rows, target=[int(t) for t in targets], n_steps=20,
                                                         method="riemann_middle", return_convergence_delta=True)
    np.testing.assert_allclose(f["attributions"], attr, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f["delta"], delta, rtol=1e-4, atol=1e-5)


def test_explain_noise_tunnel_over_integrated_gradients(tmp_path, mlp, rows, rows_file):
    out = tmp_path / "attr.npy"
    assert main(["explain", mlp, rows_file, "-m", "ig", "--target", "1", "--n-steps", "8", "--noise-tunnel", "vargrad",
                 "--nt-samples", "3", "--stdevs", "0.2", "--seed", "4", "--out", str(out)]) == 0
    ex = onnxplain.Explainer(mlp, "ig", noise_tunnel="vargrad")
    ref = ex.explain(rows, target=1, n_steps=8, nt_samples=3, stdevs=0.2, seed=4)
    np.testing.assert_allclose(np.load(out), ref, rtol=1e-5, atol=1e-7)
    graph = tmp_path / "nt.onnx"
    assert main(["convert", mlp, str(graph), "-m", "saliency", "--noise-tunnel", "smoothgrad_sq"]) == 0
    assert {"noise", "stdevs"} <= {i.name for i in onnx.load(graph).graph.input}


def test_explain_target_pred_is_each_rows_argmax(tmp_path, mlp, rows, rows_file):
    out = tmp_path / "attr.npy"
    assert main(["explain", mlp, rows_file, "-m", "gradient", "--target", "pred", "--out", str(out)]) == 0
    pred = _forward(mlp, rows).argmax(axis=1).tolist()
    np.testing.assert_allclose(np.load(out), onnxplain.explain(mlp, rows, method="gradient", target=pred), rtol=1e-6)


def test_explain_reads_npz_and_baseline_files_and_target_weights(tmp_path, mlp, rows):
    np.savez(tmp_path / "x.npz", rows)                 # unnamed (arr_0) for a one-input model
    np.save(tmp_path / "b.npy", np.full((1, 4), 0.25, np.float32))
    w = np.tile(np.array([[0.5, -1.0, 2.0]], np.float32), (len(rows), 1))
    np.save(tmp_path / "w.npy", w)
    out = tmp_path / "a.npy"
    assert main(["explain", mlp, str(tmp_path / "x.npz"), "-m", "ig", "--baseline", str(tmp_path / "b.npy"),
                 "--target-weights", str(tmp_path / "w.npy"), "--out", str(out)]) == 0
    expected = onnxplain.Explainer(mlp, "ig").explain(rows, target_weights=w, baselines=np.full((1, 4), 0.25, np.float32))
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-6)
    np.savez(tmp_path / "named.npz", x=rows)
    assert main(["explain", mlp, str(tmp_path / "named.npz"), "-m", "smoothgrad", "--target", "0",
                 "--nt-samples", "3", "--stdevs", "0.1", "--seed", "4", "--out", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), onnxplain.explain(mlp, rows, method="smoothgrad", target=0, nt_samples=3,
                                                              stdevs=0.1, seed=4), rtol=1e-5, atol=1e-6)


def test_explain_errors(tmp_path, mlp, rows, rows_file, capsys):
    _fails(capsys, ["explain", mlp, str(tmp_path / "none.npy"), "-m", "saliency", "--target", "0"], "none.npy")
    (tmp_path / "x.csv").write_text("1,2,3,4\n")   # a CSV is read as a table, which needs a header row
    _fails(capsys, ["explain", mlp, str(tmp_path / "x.csv"), "-m", "saliency", "--target", "0"], "no header row")
    (tmp_path / "x.txt").write_text("1,2,3,4\n")
    _fails(capsys, ["explain", mlp, str(tmp_path / "x.txt"), "-m", "saliency", "--target", "0"], ".npy or .npz")
    _fails(capsys, ["explain", mlp, rows_file, "-m", "saliency", "--target", "3"], "out of range")
    _fails(capsys, ["explain", mlp, rows_file, "-m", "saliency", "--target", "-4"], "out of range")
    _fails(capsys, ["explain", mlp, rows_file, "-m", "saliency", "--target", "cat"], "bad target 'cat'")
    _fails(capsys, ["explain", mlp, rows_file, "-m", "saliency", "--target", "0", "1"], "6 entries")
    _fails(capsys, ["explain", mlp, rows_file, "-m", "saliency", "--target", "0,1"], "index")
    _fails(capsys, ["explain", mlp, rows_file, "-m", "saliency"], "target=")
    _fails(capsys, ["explain", mlp, rows_file, "-m", "saliency_map", "--target", "0"], "unknown method")
    _fails(capsys, ["explain", mlp, rows_file, "-m", "ig", "--target", "0", "--n-steps", "-1"], "n_steps")
    _fails(capsys, ["explain", mlp, rows_file, "-m", "ig", "--target", "0", "--baseline", "zero"], "--baseline")
    _fails(capsys, ["explain", mlp, rows_file, "-m", "ig", "--target", "0", "--out", str(tmp_path / "a.txt")], ".npy")
    _fails(capsys, ["explain", mlp, rows_file, "-m", "ig", "--target", "0", "--target-weights", rows_file],
           "either a target or target_weights")
    np.save(tmp_path / "ints.npy", np.ones((2, 4), np.int64))
    _fails(capsys, ["explain", mlp, str(tmp_path / "ints.npy"), "-m", "saliency", "--target", "0"], "floating")
    np.save(tmp_path / "wide.npy", np.ones((2, 5), np.float32))
    _fails(capsys, ["explain", mlp, str(tmp_path / "wide.npy"), "-m", "saliency", "--target", "0"], "shape")
    np.savez(tmp_path / "two.npz", a=rows, b=rows)
    _fails(capsys, ["explain", mlp, str(tmp_path / "two.npz"), "-m", "saliency", "--target", "0"], "missing ['x']")
    assert not (tmp_path / "a.txt").exists()


def test_explain_streaming_flags_are_refused_where_they_do_not_apply(tmp_path, mlp, rows_file, capsys):
    out = str(tmp_path / "s.npy")
    _fails(capsys, ["explain", mlp, rows_file, "-m", "saliency", "--target", "0", "--batch-size", "2", "--out", out,
                    "--plot", str(tmp_path / "s.png")], "--plot", "--batch-size")
    _fails(capsys, ["explain", mlp, rows_file, "-m", "saliency", "--target", "pred", "--batch-size", "2",
                    "--out", out], "target_file")
    _fails(capsys, ["explain", mlp, rows_file, "-m", "saliency", "--target-file", rows_file, "--out", out],
           "--target-file", "--batch-size")
    assert not os.path.exists(out)


# ---------------------------------------------------------------------- inspect
def test_inspect_the_demo_model(capsys):
    assert main(["inspect", demo_files()["model"]]) == 0
    text = capsys.readouterr().out
    for fragment in ("image", "[batch, 1, 16, 16]", "logits", "[batch, 4]", "ai.onnx 17", "Conv", "MaxPool",
                     "GlobalAveragePool", "Gemm"):
        assert fragment in text
    assert ("available" in text) and (("NOT available" in text) == bool(MISSING))


def test_inspect_json_counts_ops_and_finds_rules(mlp, capsys):
    assert main(["inspect", mlp, "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["ops"] == {"Gemm": 2, "Relu": 1}
    assert facts["opsets"] == {"ai.onnx": 17}
    assert facts["inputs"] == [{"name": "x", "type": "float32", "shape": "[batch, 4]"}]
    assert facts["output"] == "y" and facts["attributed"] == ["x"]
    assert facts["methods"]["integrated_gradients"] == {"available": True, "forward_only": False, "reason": "",
                                                        "missing": {}}


def test_inspect_names_ops_without_rules(tmp_path, capsys):
    """A node of an unknown domain between input and output: gradient methods unavailable, the node named."""
    nodes = [helper.make_node("Relu", ["x"], ["h"]),
             helper.make_node("Frobnicate", ["h"], ["f"], domain="example.custom", name="the_odd_one"),
             helper.make_node("Relu", ["f"], ["y"])]
    graph = helper.make_graph(nodes, "odd", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)])
    model.ir_version = 8
    path = tmp_path / "odd.onnx"
    onnx.save(model, path)
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "NOT available" in text and "example.custom.Frobnicate" in text and "the_odd_one" in text
    assert main(["inspect", str(path), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["methods"]["saliency"]["missing"] == {"example.custom.Frobnicate": ["the_odd_one"]}
    assert facts["methods"]["deeplift"]["available"] is False


def test_inspect_errors(tmp_path, capsys):
    _fails(capsys, ["inspect", str(tmp_path / "nope.onnx")], "nope.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"\x00\x01garbage")
    _fails(capsys, ["inspect", str(tmp_path / "bad.onnx")], "bad.onnx")


# ---------------------------------------------------------------------- the program itself
def test_usage_errors_are_one_line(capsys):
    _fails(capsys, ["frobnicate"], "invalid choice")
    _fails(capsys, ["explain"], "required")
    assert main(["--version"]) == 0
    assert onnxplain.__version__ in capsys.readouterr().out
    assert main(["convert", "--help"]) == 0
    assert "--n-steps" in capsys.readouterr().out
    assert main([]) == 2


def test_explain_passes_any_parameter_and_arrays_from_files(tmp_path, mlp, rows, rows_file):
    """--param KEY=VALUE (a Python literal, or @FILE.npy) reaches the method as the API's keyword argument."""
    mask = np.array([[0, 0, 1, 1]])
    np.save(tmp_path / "mask.npy", mask)
    out = tmp_path / "a.npy"
    assert main(["explain", mlp, rows_file, "-m", "feature_ablation", "--target", "2",
                 "--param", f"feature_mask=@{tmp_path / 'mask.npy'}", "--out", str(out)]) == 0
    expected = onnxplain.explain(mlp, rows, method="feature_ablation", target=2, feature_mask=mask)
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-6)
    assert main(["explain", mlp, rows_file, "-m", "occlusion", "--target", "0",
                 "--param", "sliding_window_shapes=(2,)", "--out", str(out)]) == 0
    expected = onnxplain.explain(mlp, rows, method="occlusion", target=0, sliding_window_shapes=(2,))
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- the whole command line
def test_help_lists_every_command_in_order(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    listed = [line.split()[0] for line in text.splitlines() if line.startswith("    ") and line[4] != " "]
    assert listed[:4] == ["demo", "inspect", "convert", "explain"]
    for command in ("demo", "inspect", "convert", "explain"):
        assert main([command, "--help"]) == 0
        assert "--verbose" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--verbose", "inspect", "/no/such/model.onnx"],
                                  ["inspect", "/no/such/model.onnx", "--verbose"]])
def test_verbose_shows_the_traceback_then_the_same_line(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)")
    assert err.strip().splitlines()[-1] == "onnxplain: error: no ONNX model at '/no/such/model.onnx'"


def test_an_unexpected_failure_is_one_line_with_exit_code_1(capsys, monkeypatch, mlp):
    import onnxplain.inspection

    def broken(model, output=None, batch_axes=None):   # inspect's signature
        raise RuntimeError("the session\nfailed")

    monkeypatch.setattr(onnxplain.inspection, "inspect", broken)
    assert main(["inspect", mlp]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["onnxplain: internal error: RuntimeError: the session failed "
                                        "(--verbose shows the traceback)"]
    assert main(["inspect", mlp, "--verbose"]) == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.fixture(scope="module")
def odd_model(tmp_path_factory):
    """x -> Relu -> example.custom.Frobnicate -> Relu -> y: an op no backward rule knows."""
    nodes = [helper.make_node("Relu", ["x"], ["h"]),
             helper.make_node("Frobnicate", ["h"], ["f"], domain="example.custom", name="the_odd_one"),
             helper.make_node("Relu", ["f"], ["y"])]
    graph = helper.make_graph(nodes, "odd", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("example.custom", 1)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("odd") / "odd.onnx"
    onnx.save(model, path)
    return str(path)


def test_an_op_without_a_rule_is_one_line_for_every_command_that_builds(tmp_path, odd_model, capsys):
    np.save(tmp_path / "x.npy", np.ones((2, 3), np.float32))
    _fails(capsys, ["explain", odd_model, str(tmp_path / "x.npy"), "-m", "saliency", "--target", "0"],
           "Frobnicate", "the_odd_one", "perturbation")
    _fails(capsys, ["convert", odd_model, str(tmp_path / "g.onnx"), "-m", "deeplift"], "Frobnicate")
    assert not (tmp_path / "g.onnx").exists()


def test_convert_stores_the_integration_scheme_as_the_default(tmp_path, mlp):
    out = tmp_path / "left.onnx"
    assert main(["convert", mlp, str(out), "-m", "ig", "--n-steps", "8", "--integration", "riemann_left"]) == 0
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}
    np.testing.assert_allclose(inits["alphas"], np.arange(8) / 8, atol=1e-7)        # left Riemann sum on [0, 1]
    np.testing.assert_allclose(inits["alpha_weights"], np.full(8, 1 / 8), atol=1e-7)


# ---------------------------------------------------------------------- pictures from the command line
PNG = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    data = open(path, "rb").read(24)
    assert data[:8] == PNG
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.fixture(scope="module")
def token_model(tmp_path_factory):
    """ids[batch, seq] (int64) and mask[batch, seq] -> Gather(embedding) * mask -> ReduceMean over seq -> Gemm.

    Linear in the embeddings, so integrated gradients at the embedding is exact:
    its sum is f(ids) - f(baseline ids) for the same mask.
    """
    rng = np.random.default_rng(5)
    table = rng.standard_normal((11, 4)).astype(np.float32)
    w, b = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"]),
             helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["maskf", "last"], ["mask3"]),
             helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
             helper.make_node("ReduceMean", ["masked"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("Gemm", ["pooled", "w", "b"], ["logits"], transB=1)]
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(b, "b"), numpy_helper.from_array(np.array([-1], np.int64), "last")]
    graph = helper.make_graph(nodes, "tok",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
                               helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "seq"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("tok") / "tok.onnx"
    onnx.save(model, path)
    return str(path)


@pytest.mark.parametrize("baseline", ["0", "2"])
def test_explain_token_model_baseline_is_an_integer_id_and_plot_writes_escaped_html(tmp_path, token_model, baseline,
                                                                                     capsys):
    ids = np.array([[1, 5, 7, 2, 2], [1, 9, 3, 4, 2]], np.int64)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], np.int64)
    np.savez(tmp_path / "in.npz", ids=ids, mask=mask)
    words = [["[CLS]", "<script>", "good", "[PAD]", "[PAD]"], ["[CLS]", "a&b", "\"x\"", "##s", "[PAD]"]]
    (tmp_path / "words.json").write_text(json.dumps(words))
    out, page = tmp_path / "a.npz", tmp_path / "t.html"
    assert main(["explain", token_model, str(tmp_path / "in.npz"), "-m", "ig", "--target", "1", "--baseline", baseline,
                 "--n-steps", "8", "--out", str(out), "--plot", str(page), "--tokens", str(tmp_path / "words.json")]) == 0
    sess = ort.InferenceSession(token_model, providers=["CPUExecutionProvider"])
    fx = sess.run(None, {"ids": ids, "mask": mask})[0]
    f0 = sess.run(None, {"ids": np.full_like(ids, int(baseline)), "mask": mask})[0]
    attr = np.load(out)["attributions"]
    assert attr.shape == (2, 5, 4)
    np.testing.assert_allclose(attr.reshape(2, -1).sum(1), fx[:, 1] - f0[:, 1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.load(out)["delta"], 0, atol=1e-5)
    text = page.read_text(encoding="utf-8")
    assert "<script>" not in text and "&lt;script&gt;" in text and "a&amp;b" in text and "&quot;x&quot;" in text
    assert text.count('class="tok"') == 10
    assert str(page) in capsys.readouterr().out
    # without word pieces the ids are shown; a JPEG is refused for tokens before anything runs
    assert main(["explain", token_model, str(tmp_path / "in.npz"), "-m", "ig", "--target", "1", "--n-steps", "4",
                 "--plot", str(page)]) == 0
    assert ">9</span>" in page.read_text(encoding="utf-8")
    _fails(capsys, ["explain", token_model, str(tmp_path / "in.npz"), "-m", "ig", "--target", "1",
                    "--plot", str(tmp_path / "t.jpg")], ".html", "t.jpg")


def test_explain_plot_draws_image_grids_and_feature_bars(tmp_path, mlp, rows_file, capsys):
    x = np.load(demo_files()["inputs"])
    np.save(tmp_path / "img.npy", x)
    grid = tmp_path / "grid.png"
    assert main(["explain", demo_files()["model"], str(tmp_path / "img.npy"), "-m", "ig", "--target", "pred",
                 "--n-steps", "8", "--plot", str(grid)]) == 0
    width, height = _png_size(grid)
    assert height > width > 200                                    # four rows of (input, heatmap)
    bars = tmp_path / "bars.png"
    assert main(["explain", mlp, rows_file, "-m", "grad*input", "--target", "0", "--plot", str(bars),
                 "--feature-names", "age,height,weight,score"]) == 0
    width, height = _png_size(bars)
    assert width > height > 100
    out = capsys.readouterr().out
    assert str(grid) in out and str(bars) in out
    _fails(capsys, ["explain", demo_files()["model"], str(tmp_path / "img.npy"), "-m", "ig", "--target", "0",
                    "--plot", str(tmp_path / "g.html")], ".png")
    _fails(capsys, ["explain", mlp, rows_file, "-m", "saliency", "--target", "0", "--plot", str(bars),
                    "--feature-names", "a,b"], "2 feature names for 4 features")
    _fails(capsys, ["explain", mlp, rows_file, "-m", "ig", "--target", "0", "--layer", "r", "--plot", str(bars)],
           "layer")
    _fails(capsys, ["explain", mlp, rows_file, "-m", "ig", "--target", "0",
                    "--plot", str(tmp_path / "no" / "b.png")], "does not exist")


def test_explain_plot_without_matplotlib_fails_before_computing(tmp_path, mlp, rows_file, monkeypatch, capsys):
    import onnxplain.api
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    calls = []
    monkeypatch.setattr(onnxplain.api.Explainer, "explain", lambda *a, **k: calls.append(1))
    _fails(capsys, ["explain", mlp, rows_file, "-m", "saliency", "--target", "0", "--plot",
                    str(tmp_path / "b.png")], 'pip install "onnxplain[viz]"')
    assert calls == [] and not (tmp_path / "b.png").exists()


def test_explain_file_is_the_command_as_a_function(tmp_path, mlp, rows, rows_file):
    """What `onnxplain explain` runs, called from Python: the same numbers as the API, the same files."""
    from onnxplain.files import explain_file

    result = explain_file(mlp, rows_file, "intgrad", target="pred", out=tmp_path / "a.npz",
                          params={"n_steps": 12, "method": "riemann_right", "baselines": 0})
    pred = _forward(mlp, rows).argmax(axis=1).tolist()
    attr, delta = onnxplain.Explainer(mlp, "ig").explain(rows, target=pred, n_steps=12, method="riemann_right",
                                                         return_convergence_delta=True)
    assert result.target == pred
    np.testing.assert_allclose(result.attributions["x"], attr, rtol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "a.npz")["delta"], delta, rtol=1e-5, atol=1e-7)
    assert "sum(attributions)" in result.summary() and str(tmp_path / "a.npz") in result.summary()
