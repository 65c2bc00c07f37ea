"""neuron_conductance against Captum's NeuronConductance: the conductance of each input feature through one unit
of a hidden layer (``layer=``, ``neuron_selector``), toward the target output."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from captum.attr import NeuronConductance
from onnx.reference import ReferenceEvaluator

import onnxplain
from models import export
from onnxplain.cli import main
from onnxplain.targets import target_weights
from test_layer_path import ROW, SmallCNN
from vision_models import export_dynamo

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

UNITS = {"act1": (4, 6, 0), "conv2": (1, 2, 1)}     # an index into one row of each layer


@pytest.fixture(scope="module")
def net():
    return SmallCNN().eval()


@pytest.fixture(scope="module")
def exported(net):
    """Each exporter's model and the names of its tensors of ``act1`` (the first Relu) and ``conv2`` (the
    second Conv)."""
    out = {}
    for exporter, onx in (("torchscript", export(net, ROW)), ("dynamo", export_dynamo(net, ROW))):
        nodes = onnx.load_from_string(onx).graph.node
        relus = [n.output[0] for n in nodes if n.op_type == "Relu"]
        convs = [n.output[0] for n in nodes if n.op_type == "Conv"]
        out[exporter] = onx, {"act1": relus[0], "conv2": convs[1]}
    return out


def rows(seed, n=3):
    return np.random.default_rng(seed).standard_normal((n,) + ROW).astype(np.float32)


BASE = np.random.default_rng(1).standard_normal((1,) + ROW).astype(np.float32) * 0.1


def captum(net, layer, x, unit, target, multiply_by_inputs=True, **kwargs):
    nc = NeuronConductance(net, getattr(net, layer), multiply_by_inputs=multiply_by_inputs)
    return nc.attribute(torch.from_numpy(x), unit, baselines=torch.from_numpy(BASE), target=target,
                        **kwargs).detach().numpy()


@pytest.mark.parametrize("exporter, layer", [("torchscript", "act1"), ("torchscript", "conv2"), ("dynamo", "act1")])
def test_matches_captum_at_a_conv_and_a_relu_layer_with_its_defaults(net, exported, exporter, layer):
    """Captum's own defaults (its scheme and 50 steps, not passed), three rows with different targets."""
    onx, tensors = exported[exporter]
    x, target = rows(0), [0, 2, 1]
    got = onnxplain.Explainer(onx, "neuron_conductance", layer=tensors[layer]).explain(
        x, target=target, baselines=BASE, neuron_selector=UNITS[layer])
    want = captum(net, layer, x, UNITS[layer], target)
    assert np.abs(want).max() > 1e-4
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def test_schemes_local_form_and_a_budget_that_splits_the_steps(net, exported):
    onx, tensors = exported["torchscript"]
    x, target = rows(2), [1, 0, 2]
    ex = onnxplain.Explainer(onx, "neuron_conductance", layer=tensors["conv2"])
    got = ex.explain(x, target=target, baselines=BASE, neuron_selector=(3, 1, 0), method="gausslegendre", n_steps=11,
                     multiply_by_inputs=False)
    want = captum(net, "conv2", x, (3, 1, 0), target, multiply_by_inputs=False, method="gausslegendre", n_steps=11)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    small = onnxplain.Explainer(onx, "neuron_conductance", layer=tensors["conv2"], memory_budget=60_000)
    call = dict(target=target, baselines=BASE, neuron_selector=(3, 1, 0), n_steps=30)
    assert small.estimate(x, **call).runs > 2
    np.testing.assert_allclose(small.explain(x, **call), captum(net, "conv2", x, (3, 1, 0), target, n_steps=30),
                               rtol=1e-4, atol=1e-7)


def test_a_unit_per_row_is_each_rows_own_captum_call(net, exported):
    onx, tensors = exported["torchscript"]
    x, units, target = rows(3), [(4, 6, 0), (0, 2, 5), (2, -1, 3)], [2, 2, 0]
    got = onnxplain.Explainer(onx, "neuron_conductance", layer=tensors["act1"]).explain(
        x, target=target, baselines=BASE, neuron_selector=units, n_steps=12)
    for r, unit in enumerate(units):
        want = captum(net, "act1", x[r:r + 1], unit, target[r], n_steps=12)
        np.testing.assert_allclose(got[r:r + 1], want, rtol=1e-4, atol=1e-7)


def test_the_standalone_graph_runs_in_the_reference_evaluator(net, exported, tmp_path):
    onx, tensors = exported["torchscript"]
    path = tmp_path / "nc.onnx"
    onnxplain.convert(onx, str(path), "neuron_conductance", layer=tensors["conv2"], neuron_selector=(1, 2, 1),
                      n_steps=6)
    x = rows(4, 2)
    feeds = {"x": x, "target_weights": target_weights([2, 0], (3,), 2, np.float32)}
    want = NeuronConductance(net, net.conv2).attribute(torch.from_numpy(x), (1, 2, 1), target=[2, 0], n_steps=6)
    got = ReferenceEvaluator(str(path)).run(["attributions"], feeds)[0]
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-4, atol=1e-7)
    unit = np.asarray([[0, 0, 1]], np.int64)    # the unit is a feed: another unit, no rebuild
    want = NeuronConductance(net, net.conv2).attribute(torch.from_numpy(x), (0, 0, 1), target=[2, 0], n_steps=6)
    got = ReferenceEvaluator(str(path)).run(["attributions"], {**feeds, "neuron_selector": unit})[0]
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-4, atol=1e-7)


def test_the_command_line_and_inspect(net, exported, tmp_path, capsys):
    onx, tensors = exported["torchscript"]
    (tmp_path / "m.onnx").write_bytes(onx)
    x = rows(5, 2)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "a.npy"
    assert main(["explain", str(tmp_path / "m.onnx"), str(tmp_path / "x.npy"), "--method", "neuron_conductance",
                 "--layer", tensors["act1"], "--neuron-selector", "4,6,0", "--target", "1", "--n-steps", "8",
                 "--out", str(out)]) == 0
    want = NeuronConductance(net, net.act1).attribute(torch.from_numpy(x), (4, 6, 0), target=1, n_steps=8)
    np.testing.assert_allclose(np.load(out), want.detach().numpy(), rtol=1e-4, atol=1e-7)
    assert main(["inspect", str(tmp_path / "m.onnx")]) == 0
    assert "neuron_conductance" in capsys.readouterr().out


@pytest.mark.parametrize("selector, message", [
    (None, "needs neuron_selector"),
    ((1, 2), "has 2 indices, but one row of layer .* has 3 axes"),
    ((5, 0, 0), r"out of range for its size 4"),
    ((1, slice(0, 2), 0), "a slice selects several units"),
    ("1,2,3", "neuron_selector must be an int or a tuple of ints"),
    ([(1, 2, 0)] * 2, "gives 2 units, one per row, but the call has 3 rows"),
])
def test_bad_selectors_are_refused_before_anything_runs(exported, selector, message):
    onx, tensors = exported["torchscript"]
    ex = onnxplain.Explainer(onx, "neuron_conductance", layer=tensors["conv2"])
    with pytest.raises(ValueError, match=message):
        ex.explain(rows(6), target=0, **({} if selector is None else {"neuron_selector": selector}))


def test_a_layer_is_required(exported):
    onx, _ = exported["torchscript"]
    with pytest.raises(ValueError, match="give layer="):
        onnxplain.Explainer(onx, "neuron_conductance")
