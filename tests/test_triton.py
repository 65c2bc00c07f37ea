"""`onnxplain triton`: a model repository entry, checked with Triton's own ModelConfig protobuf and run as
Triton's ONNX Runtime backend runs it (requests concatenated along the batch, optional inputs left out)."""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format

import onnxplain
from onnxplain.cli import demo_files, main
from onnxplain.methods.integrated_gradients import quadrature
from onnxplain.serve.triton import export_triton

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

from models import masked_tabular  # noqa: E402

TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64",
         onnx.TensorProto.DOUBLE: "TYPE_FP64", onnx.TensorProto.BOOL: "TYPE_BOOL"}


def read(folder):
    config = text_format.Parse(open(os.path.join(folder, "config.pbtxt")).read(), model_config_pb2.ModelConfig())
    return config, onnx.load(os.path.join(folder, "1", "model.onnx"))


def dims(vi):
    return [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]


def check_against_graph(config, graph, batched: bool):
    """Every config tensor is a graph tensor with its type and dims (without the batch axis when batched)."""
    params = {i.name for i in graph.graph.initializer}
    graph_inputs = {vi.name: vi for vi in graph.graph.input}
    listed = {i.name for i in config.input}
    expected = {n for n in graph_inputs if not (batched and n in params)}
    assert listed == expected
    for entry in list(config.input) + list(config.output):
        vi = graph_inputs.get(entry.name) or next(o for o in graph.graph.output if o.name == entry.name)
        assert model_config_pb2.DataType.Name(entry.data_type) == TYPES[vi.type.tensor_type.elem_type]
        want = dims(vi)[1:] if batched else dims(vi)
        if want:
            assert list(entry.dims) == want
        else:                      # a scalar (per row): dims [1] reshaped away
            assert list(entry.dims) == [1] and entry.HasField("reshape") and list(entry.reshape.shape) == []
    assert {o.name for o in config.output} == {o.name for o in graph.graph.output}
    for entry in config.input:
        assert entry.optional == (entry.name in params)


def test_a_batching_config_matches_the_graph_and_runs_as_triton_batches(tmp_path):
    x = np.load(demo_files()["inputs"]).astype(np.float32)[:4]
    folder = export_triton(demo_files()["model"], tmp_path, "cnn_ig", "integrated_gradients", max_batch_size=6,
                           n_steps=8)
    assert folder == os.path.join(tmp_path, "cnn_ig") and sorted(os.listdir(tmp_path)) == ["cnn_ig"]
    config, graph = read(folder)
    assert config.name == "cnn_ig" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 6
    assert config.HasField("dynamic_batching")
    assert [model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group] == ["KIND_CPU"]
    check_against_graph(config, graph, batched=True)
    assert {i.name for i in config.input} == {"image", "target_weights"}   # parameters keep the graph's values

    # three requests (1, 2 and 1 rows) concatenated into one batch, run with only the listed inputs
    requests = [x[:1], x[1:3], x[3:]]
    targets = [[2], [0, 3], [1]]
    weights = [np.eye(4, dtype=np.float32)[t] for t in targets]
    sess = ort.InferenceSession(os.path.join(folder, "1", "model.onnx"))
    attr, delta = sess.run(["attributions", "delta"], {"image": np.concatenate(requests),
                                                       "target_weights": np.concatenate(weights)})
    ex = onnxplain.Explainer(demo_files()["model"], "integrated_gradients")
    start = 0
    for rows, target in zip(requests, targets):
        alone, alone_delta = ex.explain(rows, target, n_steps=8, return_convergence_delta=True)
        np.testing.assert_allclose(attr[start:start + len(rows)], alone, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(delta[start:start + len(rows)], alone_delta, rtol=1e-4, atol=1e-6)
        start += len(rows)


def test_without_batching_the_parameters_are_optional_inputs(tmp_path):
    x = np.load(demo_files()["inputs"]).astype(np.float32)
    folder = export_triton(demo_files()["model"], tmp_path, "cnn_ig", "integrated_gradients", max_batch_size=0,
                           gpu=True)
    config, graph = read(folder)
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group] == ["KIND_GPU"]
    check_against_graph(config, graph, batched=False)
    assert {i.name for i in config.input if i.optional} == {"alphas", "alpha_weights", "baselines", "multiply_by_inputs"}
    sess = ort.InferenceSession(os.path.join(folder, "1", "model.onnx"))
    tw = np.eye(4, dtype=np.float32)[[0, 1, 2, 3]]
    ex = onnxplain.Explainer(demo_files()["model"], "integrated_gradients")
    left_out = sess.run(["attributions"], {"image": x, "target_weights": tw})[0]          # the defaults: 50 steps
    np.testing.assert_allclose(left_out, ex.explain(x, [0, 1, 2, 3]), rtol=1e-5, atol=1e-7)
    alphas, alpha_weights = quadrature(12, "riemann_left")
    given = sess.run(["attributions"], {"image": x, "target_weights": tw, "alphas": alphas.astype(np.float32),
                                        "alpha_weights": alpha_weights.astype(np.float32)})[0]
    np.testing.assert_allclose(given, ex.explain(x, [0, 1, 2, 3], n_steps=12, method="riemann_left"),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dynamo", [False, True])
def test_a_torch_model_with_an_integer_mask_from_both_exporters(tmp_path, dynamo):
    model, example = masked_tabular()
    onx = onnxplain.from_torch(model, example, dynamo=dynamo)
    folder = export_triton(onx, tmp_path, "masked", "input_x_gradient", max_batch_size=16)
    config, graph = read(folder)
    check_against_graph(config, graph, batched=True)
    types = {i.name: model_config_pb2.DataType.Name(i.data_type) for i in config.input}
    assert types == {"x": "TYPE_FP32", "mask": "TYPE_INT64", "target_weights": "TYPE_FP32"}
    rng = np.random.default_rng(0)
    x, mask = rng.standard_normal((5, 7)).astype(np.float32), (rng.random((5, 7)) > 0.3).astype(np.int64)
    tw = np.eye(3, dtype=np.float32)[[0, 2, 1, 1, 0]]
    attr = ort.InferenceSession(os.path.join(folder, "1", "model.onnx")).run(
        ["attributions"], {"x": x, "mask": mask, "target_weights": tw})[0]
    import torch
    xt = torch.tensor(x, requires_grad=True)
    (model(xt, torch.tensor(mask)) * torch.tensor(tw)).sum().backward()
    np.testing.assert_allclose(attr, (xt.grad * xt).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_a_failed_export_leaves_nothing_and_an_existing_model_is_kept(tmp_path):
    with pytest.raises(ValueError, match="n_steps"):
        export_triton(demo_files()["model"], tmp_path, "cnn", "integrated_gradients", n_steps=0)
    assert os.listdir(tmp_path) == []
    export_triton(demo_files()["model"], tmp_path, "cnn", "saliency")
    before = open(tmp_path / "cnn" / "config.pbtxt").read()
    with pytest.raises(ValueError, match="exists already"):
        export_triton(demo_files()["model"], tmp_path, "cnn", "gradient")
    assert sorted(os.listdir(tmp_path)) == ["cnn"] and open(tmp_path / "cnn" / "config.pbtxt").read() == before
    for bad in ("", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="folder name"):
            export_triton(demo_files()["model"], tmp_path, bad, "saliency")
    with pytest.raises(ValueError, match="max_batch_size"):
        export_triton(demo_files()["model"], tmp_path, "x", "saliency", max_batch_size=-1)
    assert sorted(os.listdir(tmp_path)) == ["cnn"]


def test_the_command_line_writes_the_repository(tmp_path, capsys):
    code = main(["triton", demo_files()["model"], "--method", "ig", "--name", "cnn_ig", "--output", str(tmp_path),
                 "--n-steps", "16", "--max-batch-size", "4", "--gpu"])
    assert code == 0 and "wrote" in capsys.readouterr().out
    config, graph = read(tmp_path / "cnn_ig")
    assert config.max_batch_size == 4 and config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    alphas = next(i for i in graph.graph.initializer if i.name == "alphas")
    assert tuple(alphas.dims) == (16,)                                     # --n-steps became the graph's default
    assert main(["triton", demo_files()["model"], "--method", "ig", "--name", "cnn_ig",
                 "--output", str(tmp_path)]) == 2
    assert "exists already" in capsys.readouterr().err


def test_a_missing_repository_is_created_and_a_failed_export_leaves_nothing(tmp_path, capsys):
    repository = tmp_path / "models" / "explain"
    assert main(["triton", demo_files()["model"], "--method", "saliency", "--name", "cnn",
                 "--output", str(repository)]) == 0
    config, _ = read(repository / "cnn")
    assert config.name == "cnn"
    capsys.readouterr()
    fresh = tmp_path / "other" / "repo"
    with pytest.raises(Exception, match="no_such_output"):     # fails inside the export, after the folders exist
        export_triton(demo_files()["model"], fresh, "cnn", "saliency", output="no_such_output")
    assert sorted(os.listdir(tmp_path)) == ["models"]          # the folders made for it are gone again
    (tmp_path / "a_file").write_text("")
    assert main(["triton", demo_files()["model"], "--method", "saliency", "--name", "cnn",
                 "--output", str(tmp_path / "a_file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
