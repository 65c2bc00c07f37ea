"""explain_dataset: sources, outputs, resuming after SIGKILL, refusing bad input; the cache and the budget.

References: the analytic integrated gradients and forward pass of the MLP in test_api (a quadrature written
there), DeepLIFT's summation-to-delta, and byte equality with one uninterrupted run.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
import zarr

import onnxplain
from onnxplain import prepare, runtime
from onnxplain import cache as caches
from onnxplain.cli import main as cli_main
from test_api import forward, grad, ig_reference, mlp_model

N_ROWS = 203     # odd: the last batch is short
RNG = np.random.default_rng(7)
X = RNG.standard_normal((N_ROWS, 5)).astype(np.float32)
LABELS = RNG.integers(0, 3, N_ROWS)
BASE = np.zeros((1, 5), np.float32)
STEPS = 12


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "mlp.onnx"
    path.write_bytes(mlp_model().SerializeToString())
    return str(path)


@pytest.fixture(scope="module")
def ig(model_path):
    return onnxplain.Explainer(model_path, "integrated_gradients")


@pytest.fixture(scope="module")
def reference():
    attr = ig_reference(X.astype(np.float64), BASE, LABELS, STEPS)
    gap = forward(X)[np.arange(N_ROWS), LABELS] - forward(BASE)[0, LABELS]
    return attr, attr.sum(1) - gap


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, X)
    return np.load(path, mmap_mode="r")


def check(attr, delta, reference):
    np.testing.assert_allclose(attr, reference[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(delta, reference[1], rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------- sources and outputs
def test_memmapped_npy_streams_into_npy_with_deltas_beside(ig, data, reference, tmp_path):
    out = tmp_path / "attr.npy"
    run = ig.explain_dataset(data, out, target=LABELS, batch_size=16, n_steps=STEPS, progress=False)
    assert (run.rows, run.batches, run.computed) == (N_ROWS, 13, 13)
    attr = np.load(out, mmap_mode="r")
    assert attr.shape == X.shape and attr.dtype == np.float32
    check(attr, np.load(tmp_path / "attr.delta.npy"), reference)
    manifest = json.loads((tmp_path / "attr.npy.manifest.json").read_text())
    assert manifest["complete"] and len(manifest["done"]) == 13
    assert manifest["run"]["source"]["x"]["shape"] == [N_ROWS, 5] and manifest["run"]["model"] == ig.digest
    again = ig.explain_dataset(data, out, target=LABELS, batch_size=16, n_steps=STEPS, progress=False)
    assert again.computed == 0, "a finished run is not computed again"


@pytest.mark.parametrize("kind", ["zarr", "h5py"])
def test_zarr_and_h5py_sources_into_a_zarr_store(ig, reference, tmp_path, kind):
    if kind == "zarr":
        source = zarr.create_array(str(tmp_path / "x.zarr"), shape=X.shape, chunks=(50, 5), dtype="float32")
        source[:] = X
    else:
        f = h5py.File(tmp_path / "x.h5", "w")
        source = f.create_dataset("x", data=X, chunks=(40, 5))
    out = tmp_path / "attr.zarr"
    run = ig.explain_dataset(source, out, target=LABELS, batch_size=37, n_steps=STEPS, progress=False)
    group = zarr.open_group(str(out), mode="r")
    assert run.batches == -(-N_ROWS // 37) and group["attributions"].chunks == (37, 5)
    check(group["attributions"][:], group["delta"][:], reference)


def test_an_iterable_of_batches_with_their_targets(ig, reference, tmp_path):
    sizes = [50, 1, 70, 82]
    starts = np.cumsum([0] + sizes)

    def batches():
        for a, b in zip(starts[:-1], starts[1:]):
            yield X[a:b], LABELS[a:b]

    out = tmp_path / "attr.npy"
    run = ig.explain_dataset(batches(), out, n_steps=STEPS, progress=False)
    assert (run.rows, run.batches) == (N_ROWS, 4)
    check(np.load(out), np.load(tmp_path / "attr.delta.npy"), reference)


def test_a_dict_source_with_an_integer_mask_passed_through(tmp_path):
    ex = onnxplain.Explainer(mlp_model(with_mask=True).SerializeToString(), "deeplift")
    mask = RNG.integers(0, 2, (N_ROWS, 3)).astype(np.int64)
    out = tmp_path / "attr.npy"
    ex.explain_dataset({"x": X, "mask": mask}, out, target=1, batch_size=50, progress=False)
    attr, delta = np.load(out), np.load(tmp_path / "attr.delta.npy")
    f = forward(X)[:, 1] * mask[:, 1] - forward(BASE)[0, 1] * mask[:, 1]
    np.testing.assert_allclose(attr.sum(1), f, rtol=1e-4, atol=1e-4)   # DeepLIFT: summation to delta
    np.testing.assert_allclose(delta, 0, atol=1e-4)
    assert np.all(attr[mask[:, 1] == 0] == 0), "rows whose output the mask zeroes get no attribution"


def test_progress_bar_on_request(ig, data, tmp_path, capsys):
    ig.explain_dataset(data, tmp_path / "a.npy", target=LABELS, batch_size=64, n_steps=STEPS, progress=True)
    err = capsys.readouterr().err
    assert "explain_dataset" in err and f"{N_ROWS}/{N_ROWS}" in err
    ig.explain_dataset(data, tmp_path / "b.npy", target=LABELS, batch_size=64, n_steps=STEPS, progress=False)
    assert capsys.readouterr().err == ""


def test_the_command_line_streams_the_same_bytes(ig, data, model_path, tmp_path):
    np.save(tmp_path / "labels.npy", LABELS)
    ig.explain_dataset(data, tmp_path / "lib.npy", target=LABELS, batch_size=32, n_steps=STEPS, progress=False)
    code = cli_main(["explain", model_path, str(tmp_path / "x.npy"), "-m", "integrated_gradients", "--n-steps",
                     str(STEPS), "--out", str(tmp_path / "cli.npy"), "--batch-size", "32", "--target-file",
                     str(tmp_path / "labels.npy"), "--no-progress"])
    assert code == 0
    assert (tmp_path / "cli.npy").read_bytes() == (tmp_path / "lib.npy").read_bytes()
    assert (tmp_path / "cli.delta.npy").read_bytes() == (tmp_path / "lib.delta.npy").read_bytes()


# ---------------------------------------------------------------------- resuming
RESUMABLE = textwrap.dedent("""
    import sys, numpy as np, onnxplain
    model, data, labels, out, zarr_out = sys.argv[1:6]
    ex = onnxplain.Explainer(model, "shapley_sampling")
    x = np.load(data, mmap_mode="r")
    for o in (out, zarr_out):
        ex.explain_dataset(x, o, target=np.load(labels), batch_size=8, n_samples=40, progress=False)
""")


def test_killed_with_sigkill_and_started_again_it_finishes_byte_identical(model_path, tmp_path):
    """A subprocess is killed while it writes; the same call again computes only the missing batches and
    leaves the bytes of an uninterrupted run (random permutations included: seeds are per batch)."""
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "labels.npy", LABELS)
    script = tmp_path / "run.py"
    script.write_text(RESUMABLE)
    args = [str(model_path), str(tmp_path / "x.npy"), str(tmp_path / "labels.npy")]
    whole = [str(tmp_path / "whole.npy"), str(tmp_path / "whole.zarr")]
    subprocess.run([sys.executable, str(script), *args, *whole], check=True, timeout=240)

    cut = [str(tmp_path / "cut.npy"), str(tmp_path / "cut.zarr")]
    for target in cut:
        manifest = target + ".manifest.json"
        proc = subprocess.Popen([sys.executable, str(script), *args, *([target] * 2)])
        try:
            deadline = time.time() + 120
            while time.time() < deadline and proc.poll() is None:
                if os.path.exists(manifest) and len(json.loads(open(manifest).read())["done"]) >= 3:
                    break
                time.sleep(0.01)
            assert proc.poll() is None, "the run ended before it could be killed: make it longer"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
        done = len(json.loads(open(manifest).read())["done"])
        assert 3 <= done < 26
        ex = onnxplain.Explainer(model_path, "shapley_sampling")
        run = ex.explain_dataset(np.load(tmp_path / "x.npy", mmap_mode="r"), target, target=LABELS, batch_size=8,
                                 n_samples=40, progress=False)
        assert run.computed == run.batches - done == 26 - done
    assert open(cut[0], "rb").read() == open(whole[0], "rb").read()
    a, b = zarr.open_group(cut[1], mode="r"), zarr.open_group(whole[1], mode="r")
    assert np.array_equal(a["attributions"][:], b["attributions"][:])
    # Shapley efficiency holds on every row of the resumed output
    f = forward(X)[np.arange(N_ROWS), LABELS] - forward(BASE)[0, LABELS]
    np.testing.assert_allclose(np.load(cut[0]).sum(1), f, rtol=1e-4, atol=1e-4)


def test_other_arguments_are_refused_unless_overwrite(ig, data, tmp_path):
    out = tmp_path / "a.npy"
    ig.explain_dataset(data, out, target=LABELS, batch_size=64, n_steps=STEPS, progress=False)
    before = out.read_bytes()
    for kwargs in [dict(n_steps=STEPS + 1), dict(n_steps=STEPS, batch_size=32), dict(n_steps=STEPS, target=0)]:
        call = {"target": LABELS, "batch_size": 64, **kwargs}
        with pytest.raises(ValueError, match="another run"):
            ig.explain_dataset(data, out, progress=False, **call)
    assert out.read_bytes() == before
    run = ig.explain_dataset(data, out, target=0, batch_size=64, n_steps=STEPS, progress=False, overwrite=True)
    assert run.computed == run.batches
    np.testing.assert_allclose(np.load(out), ig_reference(X.astype(np.float64), BASE, [0] * N_ROWS, STEPS),
                               rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- bad input
def test_bad_input_fails_before_any_work_and_leaves_nothing(ig, data, tmp_path, monkeypatch):
    runs = []
    real = ig.session.run
    monkeypatch.setattr(ig.session, "run", lambda *a, **k: runs.append(1) or real(*a, **k))
    out = tmp_path / "a.npy"
    cases = [
        (dict(source=np.zeros((10, 4), np.float32)), "shape"),
        (dict(source=np.zeros((10, 5), np.int64)), "floating-point"),
        (dict(out=tmp_path / "missing" / "a.npy"), "does not exist"),
        (dict(target=LABELS[:-1]), "rows"),
        (dict(target_weights=np.ones((N_ROWS + 1, 3), np.float32), target=None), "rows"),
        (dict(out=tmp_path / "a.csv"), ".npy path or a zarr store"),
        (dict(batch_size=0), "batch_size"),
        (dict(n_steps=0), "n_steps"),
    ]
    for change, message in cases:
        call = {"source": data, "out": out, "target": LABELS, "batch_size": 16, "n_steps": STEPS, **change}
        with pytest.raises((ValueError, TypeError), match=message):
            ig.explain_dataset(call.pop("source"), call.pop("out"), progress=False, **call)
        assert sorted(os.listdir(tmp_path)) == ["x.npy"], f"{change} left files behind"
    assert not runs, "nothing ran"

    readonly = tmp_path / "ro.npy"
    readonly.write_bytes(b"")
    os.chmod(readonly, 0o444)
    if os.access(readonly, os.W_OK):   # root writes read-only files: ask as a user would be answered
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(readonly) and mode == os.W_OK
                            else real_access(p, mode))
    with pytest.raises(ValueError, match="read-only"):
        ig.explain_dataset(data, readonly, target=LABELS, progress=False)
    assert readonly.read_bytes() == b"" and not runs


def test_a_manifest_from_another_run_or_a_foreign_file_is_refused(ig, data, tmp_path):
    out = tmp_path / "a.npy"
    np.save(out, np.ones(3))
    with pytest.raises(ValueError, match="no manifest"):
        ig.explain_dataset(data, out, target=LABELS, progress=False)
    assert np.array_equal(np.load(out), np.ones(3)), "a file not ours is left as it was"
    other = onnxplain.Explainer(mlp_model().SerializeToString(), "saliency")
    other.explain_dataset(data, tmp_path / "b.npy", target=LABELS, batch_size=50, progress=False)
    os.replace(tmp_path / "b.npy.manifest.json", tmp_path / "a.npy.manifest.json")
    with pytest.raises(ValueError, match="another run.*method"):
        ig.explain_dataset(data, out, target=LABELS, batch_size=50, progress=False)


# ---------------------------------------------------------------------- budget and cache
def test_memory_budget_forms():
    free = runtime.free_memory()
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    assert abs(free - available) < 0.1 * available
    assert abs(runtime.memory_budget("80%") - 0.8 * free) < 0.1 * free
    assert abs(runtime.memory_budget(None) - runtime.DEFAULT_MEMORY_SHARE * free) < 0.1 * free
    assert runtime.memory_budget("512MiB") == 512 << 20 and runtime.memory_budget("2GB") == 2 * 10 ** 9
    assert onnxplain.Explainer(mlp_model(), "saliency", memory_budget="1.5k").memory_budget == 1536
    for bad in ["0%", "120%", "lots", -1, 0, 1.5, True]:
        with pytest.raises(ValueError, match="memory_budget"):
            runtime.memory_budget(bad)


def test_the_cache_is_bounded_and_cleared(monkeypatch):
    cache = runtime.LRUCache(max_items=3, max_bytes=100)
    for k in "abc":
        cache.put(k, k, 10)
    cache.get("a")
    cache.put("d", "d", 10)
    assert "b" not in cache and all(k in cache for k in "acd"), "the least recently used goes first"
    cache.put("e", "e", 85)
    assert "e" in cache and cache.nbytes <= 100 and len(cache) == 2
    cache.put("big", "big", 500)
    assert len(cache) == 1 and "big" in cache, "an entry larger than the bound alone is kept"

    onnxplain.clear_cache()
    assert len(caches.GRAPHS) == 0 and len(caches.MODELS) == 0
    monkeypatch.setattr(caches, "GRAPHS", runtime.LRUCache(max_items=2, max_bytes=1 << 30))
    for method in ["saliency", "gradient", "deeplift"]:
        onnxplain.Explainer(mlp_model(), method)
    assert len(caches.GRAPHS) == 2


def test_one_shot_explain_normalises_a_model_once(model_path, monkeypatch):
    onnxplain.clear_cache()
    calls = []
    real = prepare.normalize
    monkeypatch.setattr(prepare, "normalize", lambda m, **kw: calls.append(1) or real(m, **kw))
    for _ in range(3):
        a = onnxplain.explain(model_path, X[:4], "saliency", target=1)
    assert len(calls) == 1
    os.utime(model_path, ns=(time.time_ns(), time.time_ns() + 10 ** 9))   # a changed file is read again
    onnxplain.explain(model_path, X[:4], "saliency", target=1)
    assert len(calls) == 2
    onnxplain.explain(model_path, X[:4], "saliency", target=1, batch_axes={"x": 0})   # other batch axes: again
    assert len(calls) == 3
    np.testing.assert_allclose(a, np.abs(grad(X[:4], np.eye(3)[[1] * 4])), rtol=1e-5,
                               atol=1e-6)


def test_the_readme_dataset_example_runs_and_resumes(tmp_path):
    """The first example of the README's datasets section, run twice as written: 5000 rows, then none."""
    import pathlib
    import re
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Datasets, memory and Dask"):]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "example.py").write_text(example)
    printed = [subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300) for _ in range(2)]
    assert [p.stdout.split() for p in printed] == [["5000", "10"], ["5000", "0"]], printed[0].stderr[-2000:]
    attr, delta = np.load(tmp_path / "attr.npy"), np.load(tmp_path / "attr.delta.npy")
    assert attr.shape == (5000, 1, 16, 16) and np.abs(delta).max() < 0.05 * np.abs(attr).sum(axis=(1, 2, 3)).max()
