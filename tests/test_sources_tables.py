"""Tables: CSV files read into a model's (rows, features) input, explained, drawn, and streamed.

References: the CSV is written here with the csv module and read back by ``np.loadtxt`` (columns picked by
index); attributions through the CSV path equal ``Explainer(model).explain`` on the array the test built;
the summary's feature order is the mean |attribution| computed here; a resumed stream is compared with the
one-shot Explainer and its batch calls are counted.
"""
import csv
import os
import shutil
import sys

import numpy as np
import pytest

import onnxplain
from onnxplain import viz
from onnxplain.cli import main
from onnxplain.datasets import schedule
from onnxplain.files import explain_csv, explain_file
from onnxplain.sources.tables import read_csv

sys.path.insert(0, os.path.dirname(__file__))
from models import MLP, export  # noqa: E402

matplotlib = pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

N = 40
HEADER = ["id", "f_c", "f_a", "note", "f_e", "f_b", "f_d"]     # 7 columns: an id, a text note, 5 features
ORDER = ["f_a", "f_b", "f_c", "f_d", "f_e"]                     # the model's order, not the file's
TABLE = {"id_column": "id", "exclude": "note"}
RNG = np.random.default_rng(11)
X = (RNG.standard_normal((N, 5)) * [1.0, 3.0, 0.5, 2.0, 1.0] + [0.0, 5.0, -1.0, 0.0, 2.0]).astype(np.float32)


def write_csv(path, x=X, header=HEADER, edit=None):
    """The rows of ``x`` (model order) under ``header``, numbers written in a few spellings; ``edit(row,
    cells)`` may change a line's cells."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r, row in enumerate(x):
            by_name = dict(zip(ORDER, row))
            cells = [f"r{r:02d}" if h == "id" else "fine, thanks" if h == "note" else
                     (f" {float(by_name[h])!r} " if r % 3 == 0 else f"{by_name[h]:.9e}") for h in header]
            if edit:
                edit(r, cells)
            w.writerow(cells)
    return str(path)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import torch
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("tables") / "mlp.onnx"
    path.write_bytes(export(MLP("tanh", d_in=5, hidden=9, d_out=3), (5,)))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("csv") / "rows.csv")


@pytest.fixture(scope="module")
def ig(model):
    return onnxplain.Explainer(model, "ig")


def loadtxt(path, dtype=np.float32):
    """The features in the model's order, read by numpy (the columns picked by their index in the header)."""
    return np.loadtxt(path, delimiter=",", skiprows=1, usecols=[HEADER.index(c) for c in ORDER],
                      dtype=dtype, ndmin=2, quotechar='"')


def test_read_csv_selects_and_orders_the_columns_as_numpy_reads_them(data, ig):
    vi = next(v for v in ig.spec.model.graph.input if v.name == "x")
    rows = read_csv(data, "f_a, f_b,f_c,f_d,f_e", input_name="x", model_input=vi, **TABLE)
    expected = loadtxt(data)
    assert rows.inputs["x"].dtype == np.float32                      # the model input's dtype
    np.testing.assert_array_equal(rows.inputs["x"], expected)
    np.testing.assert_allclose(expected, X, rtol=1e-6)              # and what was written
    assert rows.feature_names == ORDER and rows.names == [f"r{r:02d}" for r in range(N)]
    by_default = read_csv(data, model_input=(None, 5), exclude=["note"], id_column="id", dtype=np.float64)
    assert by_default.feature_names == ["f_c", "f_a", "f_e", "f_b", "f_d"]          # the file's order
    assert by_default.inputs["input"].dtype == np.float64
    np.testing.assert_array_equal(by_default.inputs["input"][:, 1], loadtxt(data, np.float64)[:, 0])


@pytest.mark.parametrize("method, params", [("ig", {"n_steps": 16}), ("kernel_shap", {"n_samples": 40, "seed": 3})])
def test_attributions_through_the_csv_equal_the_explainer_on_the_array(model, data, method, params, tmp_path):
    out = tmp_path / "attr.npz"
    result = explain_file(model, data, method, columns=ORDER, table=TABLE, target=2, out=out, params=params)
    ref = onnxplain.Explainer(model, method).explain(loadtxt(data), 2, **params)
    np.testing.assert_allclose(result.attributions["x"], ref, rtol=1e-6, atol=1e-7)
    with np.load(out, allow_pickle=False) as f:
        np.testing.assert_allclose(f["attributions"], ref, rtol=1e-6, atol=1e-7)
        assert list(f["feature_names"]) == ORDER


def test_the_command_line_reads_a_csv_positional_or_by_flag(model, data, tmp_path, capsys):
    ref = onnxplain.Explainer(model, "ig").explain(loadtxt(data), 1, n_steps=8)
    for i, where in enumerate(([data], ["--csv", data])):
        out = tmp_path / f"a{i}.npy"
        assert main(["explain", model, *where, "-m", "ig", "--n-steps", "8", "--target", "1", "--columns",
                     ",".join(ORDER), "--id-column", "id", "--exclude", "note", "--out", str(out)]) == 0
        np.testing.assert_allclose(np.load(out), ref, rtol=1e-6, atol=1e-7)
        with open(f"{out}.feature_names.txt") as f:
            assert f.read().split() == ORDER
    assert "feature_names" in capsys.readouterr().out


def _bad_value(r, cells):
    if r == 6:
        cells[HEADER.index("f_b")] = "12,5kg"


def _missing_value(r, cells):
    if r == 3:
        cells[HEADER.index("f_e")] = ""


@pytest.mark.parametrize("edit, columns, table, fragments", [
    (_bad_value, ORDER, TABLE, ["line 8", "'f_b'", "'12,5kg' is not a number"]),
    (_missing_value, ORDER, TABLE, ["line 5", "'f_e'", "missing value", "--fill"]),
    (None, ORDER[:4], TABLE, ["takes 5 features", "4 column(s)"]),
    (None, ["f_a", "f_b", "note", "f_d", "f_e"], {"id_column": "id"}, ["line 2", "'note'", "'fine, thanks' is not a number"]),
    (None, None, {"id_column": "id"}, ["takes 5 features", "6 column(s)", "note"]),
    (None, ORDER[:4] + ["f_x"], TABLE, ["no column(s) 'f_x'", "f_c, f_a"]),
])
def test_bad_tables_fail_before_anything_runs_and_write_nothing(model, tmp_path, monkeypatch, edit, columns,
                                                               table, fragments):
    path = write_csv(tmp_path / "bad.csv", edit=edit)
    monkeypatch.setattr(onnxplain.Explainer, "explain", lambda *a, **k: pytest.fail("explained a bad table"))
    out, plot = tmp_path / "a.npz", tmp_path / "a.png"
    with pytest.raises(ValueError) as e:
        explain_file(model, path, "ig", columns=columns, table=table, target=0, out=out, plot=plot)
    for f in fragments:
        assert f in str(e.value), str(e.value)
    with pytest.raises(ValueError):
        explain_csv(model, path, tmp_path / "s.npy", "ig", columns=columns, table=table, target=0, batch_size=8)
    assert sorted(os.listdir(tmp_path)) == ["bad.csv"]


def test_a_missing_cell_is_filled_when_asked_and_headerless_files_are_refused(tmp_path, model, capsys):
    path = write_csv(tmp_path / "gap.csv", edit=_missing_value)
    rows = read_csv(path, ORDER, fill=-7.5, **TABLE)
    expected = X.copy()
    expected[3, ORDER.index("f_e")] = -7.5
    np.testing.assert_allclose(rows.inputs["input"], expected, rtol=1e-6)
    bare = tmp_path / "bare.csv"
    np.savetxt(bare, X, delimiter=",")
    with pytest.raises(ValueError, match="no header row"):
        read_csv(bare)
    code = main(["explain", model, str(bare), "-m", "ig", "--target", "0"])
    assert code == 2 and "no header row" in capsys.readouterr().err


def _picture(path):
    """The PNG's pixels (RGB) and size in pixels."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).astype(int), img.size


def test_the_summary_of_40_rows_and_the_bars_of_a_few(model, data, ig, tmp_path, monkeypatch):
    summary = tmp_path / "summary.png"
    result = explain_file(model, data, "ig", columns=ORDER, table=TABLE, target=0, plot=summary)
    assert any("tabular summary picture of 40 row(s)" in line for line in result.written)   # > viz.MAX_ROWS
    shutil.copy(summary, "/tmp/table_summary.png")
    pixels, size = _picture(summary)
    a = result.attributions["x"]
    fig = viz.feature_summary(a, loadtxt(data), ORDER, title="integrated_gradients attributions of 'y'")
    assert size == tuple(int(round(v * fig.dpi)) for v in fig.get_size_inches())
    coloured = (np.abs(pixels - pixels.mean(axis=2, keepdims=True)).max(axis=2) > 40).mean()
    assert coloured > 0.005, coloured                                # dots and the colour bar, not blank
    reddish = ((pixels[..., 0] - pixels[..., 2]) > 80).sum()
    bluish = ((pixels[..., 2] - pixels[..., 0]) > 80).sum()
    assert reddish > 50 and bluish > 50                              # high and low feature values
    ax = fig.axes[0]
    top_down = [t.get_text() for _, t in sorted(zip(ax.get_yticks(), ax.get_yticklabels()), key=lambda p: -p[0])]
    assert top_down == [ORDER[j] for j in np.argsort(-np.abs(a).mean(axis=0), kind="stable")]

    drawn = []
    original = viz.feature_bars
    monkeypatch.setattr(viz, "feature_bars", lambda *a, **k: drawn.append(a[1]) or original(*a, **k))
    few = write_csv(tmp_path / "few.csv", x=X[:3])
    bars = tmp_path / "bars.png"
    result = explain_file(model, few, "ig", columns=ORDER, table=TABLE, target=0, plot=bars)
    assert drawn == [ORDER] and any("tabular picture of 3 row(s)" in line for line in result.written)
    shutil.copy(bars, "/tmp/table_bars.png")
    pixels, _ = _picture(bars)
    assert ((pixels[..., 0] - pixels[..., 2]) > 80).mean() + ((pixels[..., 2] - pixels[..., 0]) > 80).mean() > 0.01
    drawn.clear()
    assert main(["explain", model, data, "-m", "ig", "--target", "0", "--columns", ",".join(ORDER), "--id-column",
                 "id", "--exclude", "note", "--plot", str(tmp_path / "b40.png"), "--no-summary"]) == 0
    assert drawn == [ORDER]                                          # 40 rows, bars asked for: the first 16


def test_a_streamed_csv_resumes_without_recomputing(model, data, tmp_path, monkeypatch):
    out = tmp_path / "attr.npy"
    ref = onnxplain.Explainer(model, "ig").explain(loadtxt(data), 1, n_steps=8)
    calls = []
    original = schedule.explain_batch

    def crash_at_batch_3(ex, batch, target, params):
        rows = len(next(iter(batch.values())))
        calls.append(rows)
        if len(calls) == 4:                       # the probe row, then batches 0, 1: killed in batch 2
            raise KeyboardInterrupt
        return original(ex, batch, target, params)

    args = dict(columns=ORDER, table=TABLE, target=1, batch_size=8, n_steps=8)
    monkeypatch.setattr(schedule, "explain_batch", crash_at_batch_3)
    with pytest.raises(KeyboardInterrupt):
        explain_csv(model, data, out, "ig", **args)
    counting = []
    monkeypatch.setattr(schedule, "explain_batch", lambda ex, b, *a: counting.append(len(b["x"])) or original(ex, b, *a))
    run = explain_csv(model, data, out, "ig", **args)
    assert (run.rows, run.batches, run.computed) == (N, 5, 3) and counting == [1, 8, 8, 8]
    np.testing.assert_allclose(np.load(out), ref, rtol=1e-6, atol=1e-7)
    counting.clear()
    again = explain_csv(model, data, out, "ig", **args)
    assert again.computed == 0 and counting == [1]                   # only the one-row probe of the layout
    with open(f"{out}.feature_names.txt") as f:
        assert f.read().split() == ORDER
    cli_out = tmp_path / "cli.npy"
    assert main(["explain", model, "--csv", data, "-m", "ig", "--n-steps", "8", "--target", "1", "--columns",
                 ",".join(ORDER), "--id-column", "id", "--exclude", "note", "--batch-size", "16",
                 "--out", str(cli_out), "--no-progress"]) == 0
    np.testing.assert_array_equal(np.load(cli_out), np.load(out))
