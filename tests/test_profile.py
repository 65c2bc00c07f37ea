"""The profiler (onnxplain.profile and ``onnxplain profile``).

Timings are never asserted (the machine is shared): the tests hold the trace
arithmetic against a hand-written onnxruntime trace, the row counts against the
method's textbook expansion, the op types against the explanation graph's own
nodes, and the command line against its JSON.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import onnxplain
from onnxplain.cli import main
from onnxplain.profile import made_up_inputs, profile, summarise
from models import conv_bn_cnn, export, masked_tabular


@pytest.fixture(scope="module")
def cnn():
    model, row = conv_bn_cnn()
    return export(model, row), row


def _node(name, op, ts, dur):
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}


def test_summarise_sums_kernel_times_by_op_type_and_node_after_the_warm_up():
    run = [{"cat": "Session", "name": "model_run", "ts": t, "dur": 50} for t in (0, 100, 200)]
    events = run + [
        _node("c1", "Conv", 10, 1000),            # first run: the warm-up, left out
        _node("c1", "Conv", 110, 7), _node("c2", "Conv", 120, 5), _node("r", "Relu", 130, 2),
        _node("c1", "Conv", 210, 3), _node("r", "Relu", 230, 4),
        {"cat": "Node", "name": "c1_fence_before", "ts": 111, "dur": 99, "args": {"op_name": "Conv"}},
    ]
    types, nodes = summarise(events, skip_runs=1)
    assert [(t.op_type, t.microseconds, t.calls) for t in types] == [("Conv", 15.0, 3), ("Relu", 6.0, 2)]
    assert [(t.name, t.microseconds, t.calls) for t in nodes] == [("c1", 10.0, 2), ("r", 6.0, 2), ("c2", 5.0, 1)]
    assert sum(t.microseconds for t in summarise(events)[0]) == 1021.0


def test_profile_of_integrated_gradients_counts_its_rows_and_names_the_graph_ops(cnn):
    onx, row = cnn
    x = np.random.default_rng(0).random((3,) + row, dtype=np.float32)
    p = profile(onx, x, "integrated_gradients", target=1, n_steps=6, repeats=1)
    assert p.batch == 3 and p.runs == 1
    assert p.rows == 3 * (6 + 2)      # per row: one forward per step, and x and the baseline for the delta
    graph_ops = {n.op_type for n in onnxplain.Explainer(onx, "integrated_gradients").graph.graph.node}
    assert "ConvTranspose" in graph_ops or "Conv" in graph_ops
    seen = {t.op_type for t in p.op_types}
    assert seen & {"Conv", "ConvTranspose"}                          # the backward's convolutions ran
    assert sum(t.microseconds for t in p.op_types) == pytest.approx(sum(t.microseconds for t in p.nodes))
    assert p.seconds > 0 and p.floor_seconds > 0 and 0 <= p.outside_share <= 1
    assert p.peak_bytes is None or p.peak_bytes >= 0
    assert "floor ratio" in p.report(3) and len(p.to_dict()["nodes"]) == len(p.nodes)


def test_made_up_inputs_fill_every_input_with_its_dtype_and_symbolic_lengths():
    model, example = masked_tabular()
    onx = onnxplain.from_torch(model, example, dynamic="auto")
    feeds = made_up_inputs(onnxplain.normalize(onx), 4, length=5)
    assert feeds["x"].shape == (4, 5) and feeds["x"].dtype == np.float32
    assert feeds["mask"].dtype == np.int64 and (feeds["mask"] == 1).all()
    with pytest.raises(ValueError, match="batch must be a positive int"):
        made_up_inputs(onnxplain.normalize(onx), 0)


def test_profile_command_prints_the_report_and_writes_json(cnn, tmp_path, capsys):
    onx, _ = cnn
    path = tmp_path / "m.onnx"
    path.write_bytes(onx)
    out = tmp_path / "p.json"
    code = main(["profile", str(path), "--method", "occlusion", "--batch", "2", "--repeats", "1", "--top", "2",
                 "--param", "sliding_window_shapes=(2,3,3)", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "floor ratio" in printed and "slowest nodes (top 2)" in printed
    numbers = json.loads(out.read_text())
    assert numbers["method"] == "occlusion" and numbers["batch"] == 2
    assert numbers["floor_ratio"] == pytest.approx(numbers["seconds"] / numbers["floor_seconds"])
    assert main(["profile", str(path), "--method", "saliency", "--json", str(tmp_path / "p.txt")]) == 2
    assert "--json must end with .json" in capsys.readouterr().err


def test_profile_command_takes_integrated_gradients_own_method_parameter(cnn, tmp_path, capsys):
    """IG's parameter ``method`` (the integration scheme) reaches the method, not profile's own ``method``."""
    onx, _ = cnn
    path = tmp_path / "m.onnx"
    path.write_bytes(onx)
    out = tmp_path / "p.json"
    assert main(["profile", str(path), "--method", "ig", "--integration", "riemann_left", "--n-steps", "3",
                 "--batch", "2", "--repeats", "1", "--json", str(out)]) == 0
    numbers = json.loads(out.read_text())
    assert numbers["method"] == "integrated_gradients" and numbers["rows"] == 2 * (3 + 2)


def _features_by_rows_model():
    """y = x^T W with x of shape (features, N): the batch on axis 1."""
    from onnx import TensorProto, helper, numpy_helper
    w = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
                               helper.make_node("MatMul", ["xt", "w"], ["y"])], "rows_last",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, "N"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_profile_makes_up_inputs_in_their_own_layout_and_counts_noise_tunnel_and_batch_size_rows():
    model = _features_by_rows_model()
    p = profile(model, None, "saliency", batch=3, repeats=1, batch_axes={"x": 1})
    assert p.batch == 3 and p.rows == 3                        # one forward row per input row
    batch_first, axes = onnxplain.prepare.batch_first_model(model, {"x": 1})
    assert made_up_inputs(batch_first, 3, batch_axes=axes)["x"].shape == (5, 3)
    # a noise tunnel of 4 samples runs 4 noisy copies of every row and the clean rows (fed last)
    nt = profile(model, np.ones((5, 3), np.float32), "saliency", repeats=1, batch_axes={"x": 1},
                 noise_tunnel="smoothgrad", nt_samples=4, stdevs=0.1)
    assert nt.batch == 3 and nt.rows == 3 * (4 + 1)
    # batch_size=2: the model never sees more than 2 rows, so 3 rows take 2 runs
    capped = profile(model, None, "saliency", batch=3, repeats=1, batch_axes={"x": 1}, batch_size=2)
    assert (capped.rows, capped.runs) == (3, 2) and capped.floor_seconds > 0


def test_profile_command_takes_the_noise_tunnel_and_batching_flags(tmp_path, capsys):
    path = tmp_path / "rows_last.onnx"
    path.write_bytes(_features_by_rows_model().SerializeToString())
    out = tmp_path / "p.json"
    code = main(["profile", str(path), "--method", "saliency", "--batch", "2", "--repeats", "1", "--batch-axis",
                 "x=1", "--noise-tunnel", "smoothgrad", "--nt-samples", "3", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    numbers = json.loads(out.read_text())
    assert numbers["batch"] == 2 and numbers["rows"] == 2 * (3 + 1)      # 3 noisy copies and the clean rows


def test_profile_command_takes_a_memory_budget_that_cuts_the_call_into_more_runs(cnn, tmp_path):
    onx, _ = cnn
    path = tmp_path / "m.onnx"
    path.write_bytes(onx)
    counts = {}
    for budget in (None, "64KiB"):
        out = tmp_path / f"p{budget}.json"
        flags = ["--memory-budget", budget] if budget else []
        assert main(["profile", str(path), "--method", "integrated_gradients", "--n-steps", "20", "--batch", "4",
                     "--repeats", "1", *flags, "--json", str(out)]) == 0
        numbers = json.loads(out.read_text())
        counts[budget] = (numbers["rows"], numbers["runs"])
    assert counts[None] == (4 * 22, 1)                        # 20 steps, f(x) and f(baseline) per row
    rows, runs = counts["64KiB"]
    assert runs > 1 and rows >= 4 * 22               # one row's steps split over runs (each run with its ends)
