"""onnxplain.dask on a real distributed.LocalCluster (two worker processes on loopback, started once).

References: the analytic integrated gradients of the MLP in test_api, and for the CNN the single-process
Explainer on the same rows (Captum agreement of that path is tested elsewhere).
"""
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import dask
import dask.array as da
import numpy as np
import pytest
import torch
import zarr
from distributed import Client, LocalCluster
from torch import nn

import onnxplain
import onnxplain.dask as odask
from test_api import forward, ig_reference, mlp_model
from vision_models import export_dynamo

N_ROWS = 157
RNG = np.random.default_rng(11)
X = RNG.standard_normal((N_ROWS, 5)).astype(np.float32)
LABELS = RNG.integers(0, 3, N_ROWS)
STEPS = 10


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, worker_dashboard_address=None) as cluster, Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "mlp.onnx"
    path.write_bytes(mlp_model().SerializeToString())
    return str(path)


def reference(targets=LABELS):
    return ig_reference(X.astype(np.float64), np.zeros((1, 5)), targets, STEPS)


def reference_delta():
    """Completeness residual of the reference: sum of attributions minus f(x) - f(baseline)."""
    gap = forward(X)[np.arange(N_ROWS), LABELS] - forward(np.zeros((1, 5)))[0, LABELS]
    return reference().sum(1) - gap


def test_import_onnxplain_imports_no_dask():
    code = "import sys, onnxplain; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('dask', 'distributed', 'zarr', 'psutil', 'h5py')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_a_dask_array_is_explained_without_importing_onnxplain_dask_first(model_path, tmp_path):
    """Explainer.explain_dataset loads the dask front-end when a dask array arrives, as it always did."""
    out = tmp_path / "a.zarr"
    code = ("import sys, numpy as np, dask, dask.array as da, onnxplain\n"
            "dask.config.set(scheduler='synchronous')\n"
            f"ex = onnxplain.Explainer({str(model_path)!r}, 'saliency')\n"
            "x = da.from_array(np.ones((6, 5), np.float32), chunks=(4, 5))\n"
            f"ex.explain_dataset(x, {str(out)!r}, target=1)\n"
            "print('onnxplain.dask' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "True"
    ex = onnxplain.Explainer(str(model_path), "saliency")
    np.testing.assert_allclose(zarr.open_group(str(out), mode="r")["attributions"][:],
                               ex.explain(np.ones((6, 5), np.float32), target=1), rtol=1e-6)


def test_lazy_attributions_with_the_row_chunks_of_x(client, model_path):
    x = da.from_array(X, chunks=(40, 5))
    for target in (LABELS, da.from_array(LABELS, chunks=60)):   # numpy, and dask with other chunks
        attr = odask.explain(model_path, x, "integrated_gradients", target=target, n_steps=STEPS)
        assert isinstance(attr, da.Array) and attr.chunks == x.chunks
        np.testing.assert_allclose(attr.compute(), reference(), rtol=1e-4, atol=1e-5)
    attr, delta = odask.explain(model_path, x, "integrated_gradients", target=LABELS, n_steps=STEPS,
                                return_convergence_delta=True)
    assert delta.chunks == (x.chunks[0],)
    attr, delta = dask.compute(attr, delta)
    np.testing.assert_allclose(attr, reference(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(delta, reference_delta(), rtol=1e-3, atol=1e-4)
    constant = odask.explain(mlp_model(), x, "integrated_gradients", target=2, n_steps=STEPS)   # bytes, scattered
    np.testing.assert_allclose(constant.compute(), reference([2] * N_ROWS), rtol=1e-4, atol=1e-5)
    built = client.run(lambda: len(__import__("onnxplain.dask", fromlist=["_EXPLAINERS"])._EXPLAINERS))
    assert len(built) == 2 and all(n <= 2 for n in built.values()), \
        f"one Explainer per worker and model, reused for every chunk: {built}"


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x):
        return self.body(x)


def test_a_cnn_from_the_dynamo_exporter_matches_one_process(client):
    torch.manual_seed(0)
    onx = export_dynamo(SmallCNN().eval(), (3, 13, 11))
    x = np.random.default_rng(3).standard_normal((45, 3, 13, 11)).astype(np.float32)
    one = onnxplain.Explainer(onx, "deeplift")
    expected, delta = one.explain(x, target=1, return_convergence_delta=True)
    np.testing.assert_allclose(delta, 0, atol=1e-4)   # summation to delta on the reference itself
    lazy = odask.explain(onx, da.from_array(x, chunks=(16, 3, 5, 11)), "deeplift", target=1)
    graph = pickle.dumps(dict(lazy.__dask_graph__()))
    assert onx[-4000:] not in graph, "the model travels once (scattered to the workers), not inside the tasks"
    np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-5, atol=1e-6)


def test_a_worker_killed_midway_is_recomputed_exactly(client, model_path):
    x = da.from_array(np.repeat(X, 4, axis=0), chunks=(12, 5))
    target = np.repeat(LABELS, 4)
    attr = odask.explain(model_path, x, "integrated_gradients", target=target, n_steps=400)
    future = client.compute(attr)
    pids = client.run(os.getpid)
    deadline = time.time() + 60
    while time.time() < deadline and not any(client.processing().values()):
        time.sleep(0.01)
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    result = future.result(timeout=240)
    expected = ig_reference(np.repeat(X, 4, axis=0).astype(np.float64), np.zeros((1, 5)), target, 400)
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-5)
    client.wait_for_workers(2, timeout=60)


def test_explain_dataset_of_a_dask_array_into_zarr_resumes(client, model_path, tmp_path):
    ex = onnxplain.Explainer(model_path, "integrated_gradients")
    x = da.from_array(X, chunks=(30, 5))
    out = tmp_path / "attr.zarr"
    run = ex.explain_dataset(x, out, target=LABELS, n_steps=STEPS)
    assert (run.rows, run.batches, run.computed) == (N_ROWS, 6, 6)
    stored = zarr.open_group(str(out), mode="a")["attributions"]
    np.testing.assert_allclose(stored[:], reference(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(zarr.open_group(str(out), mode="r")["delta"][:], reference_delta(), rtol=1e-3,
                               atol=1e-4)
    # as if the run had been killed before chunks 2 and 4 were written: they are computed again, only they
    manifest_path = str(out) + ".manifest.json"
    manifest = json.loads(open(manifest_path).read())
    for i in ("2", "4"):
        a, b = manifest["done"].pop(i)
        stored[a:b] = 0
    manifest["complete"] = False
    open(manifest_path, "w").write(json.dumps(manifest))
    again = ex.explain_dataset(x, out, target=LABELS, n_steps=STEPS)
    assert again.computed == 2
    np.testing.assert_allclose(zarr.open_group(str(out), mode="r")["attributions"][:], reference(), rtol=1e-4,
                               atol=1e-5)
    with pytest.raises(ValueError, match="another run"):
        ex.explain_dataset(x, out, target=LABELS, n_steps=STEPS + 1)
    with pytest.raises(ValueError, match="zarr store"):
        ex.explain_dataset(x, tmp_path / "attr.npy", target=LABELS, n_steps=STEPS)


def test_bad_input_is_refused_before_anything_is_scheduled(client, model_path):
    x = da.from_array(X, chunks=(40, 5))
    with pytest.raises(ValueError, match="rows"):
        odask.explain(model_path, x, "saliency", target=LABELS[:-2])
    with pytest.raises(ValueError, match="shape"):
        odask.explain(model_path, da.zeros((10, 4), chunks=5, dtype=np.float32), "saliency", target=0)
    with pytest.raises(ValueError, match="dask array"):
        odask.explain(model_path, X, "saliency", target=0)
    with pytest.raises(TypeError, match="unexpected parameter"):
        odask.explain(model_path, x, "saliency", target=0, n_steps=3)
