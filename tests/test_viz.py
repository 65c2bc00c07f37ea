"""Pictures, rendered to files and read back.

The colour under a pixel is found from the figure's own axes transform, and
checked against what the attribution there says (red-ish where strongly
positive, blue-ish where strongly negative under the diverging map); token HTML
is parsed back; bar charts are read from their patches and held against a
brute-force ranking written here.
"""
from __future__ import annotations

import html.parser
import pathlib
import subprocess
import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.image import imread  # noqa: E402

from onnxplain import viz  # noqa: E402
from onnxplain.errors import MissingExtraError  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
H, W = 12, 15                       # odd, non-square sizes: rows and columns cannot be swapped unnoticed


def png_size(path) -> tuple[int, int]:
    data = open(path, "rb").read(24)
    assert data[:8] == PNG_SIGNATURE
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def colour_at(fig, ax, path, row: int, col: int) -> np.ndarray:
    """RGB in [0, 1] of the saved PNG at the centre of data pixel (row, col) of ``ax``."""
    x, y = ax.transData.transform((col, row))          # imshow puts pixel (r, c) centred at data (c, r)
    img = imread(path)
    height = img.shape[0]
    assert img.shape[1] == round(fig.get_figwidth() * fig.dpi) and height == round(fig.get_figheight() * fig.dpi)
    return img[int(height - y), int(x), :3]


def redish(rgb) -> bool:
    """The diverging map's positive end (dark red), blended over the grey image: red clearly dominates."""
    return rgb[0] > rgb[2] + 0.15 and rgb[0] > rgb[1] + 0.15


def blueish(rgb) -> bool:
    return rgb[2] > rgb[0] + 0.15 and rgb[2] > rgb[1] + 0.1


@pytest.fixture(scope="module")
def scene():
    """A grey image (a bright bar) and attributions with a positive block, a negative block and weak noise."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 0.4, (H, W))
    image[5, 2:12] = 0.9
    attr = 0.02 * rng.standard_normal((3, H, W))
    attr[:, 2:4, 3:6] = 1.0             # summed over channels: +3
    attr[:, 8:10, 9:12] = -1.0          # -3
    return image, attr


def test_png_signature_and_size_follow_the_figure(tmp_path, scene):
    image, attr = scene
    path = tmp_path / "heat.png"
    fig = viz.image_heatmap(attr, image, size=3.0, path=path)
    assert png_size(path) == (round(fig.get_figwidth() * fig.dpi), round(fig.get_figheight() * fig.dpi))
    assert fig.get_figheight() == 3.0
    fig2 = viz.image_heatmap(attr, image, size=5.0, colorbar=False)
    assert fig2.get_figwidth() == fig2.get_figheight() == 5.0


def test_signed_heatmap_is_red_where_positive_blue_where_negative(tmp_path, scene):
    image, attr = scene
    path = tmp_path / "heat.png"
    fig = viz.image_heatmap(attr, image, path=path)
    ax = fig.axes[0]
    assert redish(colour_at(fig, ax, path, 3, 4))
    assert blueish(colour_at(fig, ax, path, 9, 10))
    # where the attribution is weak the (dimmed) image shows through: grey, and the bright bar brighter
    weak, bar = colour_at(fig, ax, path, 0, 0), colour_at(fig, ax, path, 5, 7)
    assert np.ptp(weak) < 0.08 and np.ptp(bar) < 0.08 and bar.mean() > weak.mean() + 0.2
    # the colour bar is centred on 0: symmetric limits
    bar_ax = fig.axes[1]
    lo, hi = bar_ax.get_ylim()
    assert lo == pytest.approx(-hi) and hi > 0


def test_channels_last_draws_the_same_picture_as_channels_first(tmp_path, scene):
    image, attr = scene
    first, last = tmp_path / "first.png", tmp_path / "last.png"
    viz.image_heatmap(attr, np.stack([image] * 3), path=first)
    viz.image_heatmap(np.moveaxis(attr, 0, -1), np.stack([image] * 3, axis=-1), path=last)
    np.testing.assert_array_equal(imread(first), imread(last))
    with pytest.raises(ValueError, match="channels must be one of"):
        viz.image_heatmap(attr, image, channels="middle")


def test_absolute_attributions_use_one_sequential_colour_for_both_signs(tmp_path, scene):
    image, attr = scene
    path = tmp_path / "abs.png"
    fig = viz.image_heatmap(attr, image, sign="absolute", path=path)
    ax = fig.axes[0]
    np.testing.assert_allclose(colour_at(fig, ax, path, 3, 4), colour_at(fig, ax, path, 9, 10), atol=0.02)
    assert fig.axes[1].get_ylim()[0] == 0
    # non-negative attributions (saliency) are drawn as absolute without being told
    assert viz.image_heatmap(np.abs(attr), image).axes[1].get_ylim()[0] == 0


@pytest.mark.parametrize("reduction", viz.REDUCTIONS)
def test_channel_reductions_against_a_loop_over_pixels(scene, reduction):
    _, attr = scene
    a = np.random.default_rng(3).standard_normal((3, H, W))
    expected = np.empty((H, W))
    for r in range(H):
        for c in range(W):
            v = a[:, r, c]
            expected[r, c] = {"sum": sum(v), "mean": sum(v) / 3, "abs_sum": sum(abs(t) for t in v),
                              "max_abs": max(abs(t) for t in v)}[reduction]
    np.testing.assert_allclose(viz.reduce_channels(a, reduction), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(viz.reduce_channels(np.moveaxis(a, 0, -1), reduction, channels="last"), expected)


def test_outlier_clipping_keeps_moderate_attributions_visible(tmp_path, scene):
    image, attr = scene
    attr = attr.copy()
    attr[:, 0, 0] = 1000.0                                   # one outlier pixel
    clipped, raw = tmp_path / "clipped.png", tmp_path / "raw.png"
    fig_c = viz.image_heatmap(attr, image, clip_percentile=95, path=clipped)
    fig_r = viz.image_heatmap(attr, image, clip_percentile=None, path=raw)
    assert redish(colour_at(fig_c, fig_c.axes[0], clipped, 3, 4))       # still saturated red
    assert not redish(colour_at(fig_r, fig_r.axes[0], raw, 3, 4))       # washed out by the outlier
    assert fig_r.axes[1].get_ylim()[1] == pytest.approx(3000.0)
    with pytest.raises(ValueError, match="clip_percentile"):
        viz.image_heatmap(attr, image, clip_percentile=0)


def test_grayscale_without_an_image_and_bad_shapes(tmp_path, scene):
    image, attr = scene
    path = tmp_path / "plain.png"
    fig = viz.image_heatmap(attr.sum(0), path=path)                    # (H, W), no image underneath
    assert redish(colour_at(fig, fig.axes[0], path, 3, 4)) and blueish(colour_at(fig, fig.axes[0], path, 9, 10))
    with pytest.raises(ValueError, match="12x15 pixels but the image is|the image is 15x12"):
        viz.image_heatmap(attr, image.T)
    with pytest.raises(ValueError, match="reduction must be one of"):
        viz.image_heatmap(attr, image, reduction="median")
    with pytest.raises(ValueError, match="sign must be one of"):
        viz.image_heatmap(attr, image, sign="both")


def test_grid_puts_methods_side_by_side_and_colours_each_cell(tmp_path, scene):
    image, attr = scene
    images = np.stack([image, image[::-1]])[:, None]                    # (2, 1, H, W)
    a = np.stack([attr, -attr[:, ::-1]])                                  # second row: flipped and negated
    path = tmp_path / "grid.png"
    fig = viz.image_grid(images, {"ig": a, "saliency": np.abs(a)}, row_labels=["cat", "dog"], path=path)
    png_size(path)
    cells = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(cells) == 2 * 3
    grid = np.array(cells).reshape(2, 3)
    assert [grid[0, c].get_title() for c in range(3)] == ["input", "ig", "saliency"]
    assert [grid[r, 0].get_ylabel() for r in range(2)] == ["cat", "dog"]
    assert redish(colour_at(fig, grid[0, 1], path, 3, 4)) and blueish(colour_at(fig, grid[0, 1], path, 9, 10))
    # row 1 is negated and flipped upside down: block rows 2:4 -> H-4:H-2
    assert blueish(colour_at(fig, grid[1, 1], path, H - 3, 4)) and redish(colour_at(fig, grid[1, 1], path, H - 9, 10))
    # two images per line: the second image's heatmap is the fourth cell of the first line
    wrapped_path = tmp_path / "wrapped.png"
    wrapped = viz.image_grid(images, {"ig": a}, per_line=2, path=wrapped_path)
    cells = [ax for ax in wrapped.axes if ax.get_label() != "<colorbar>" and ax.get_visible()]
    assert len(cells) == 4 and [ax.get_ylabel() for ax in cells[::2]] == ["#0", "#1"]
    assert blueish(colour_at(wrapped, cells[3], wrapped_path, H - 3, 4))
    assert cells[3].get_position().x0 > cells[1].get_position().x1 and \
        cells[3].get_position().y0 == pytest.approx(cells[1].get_position().y0)
    shared = viz.image_grid(images, {"ig": a}, shared_scale=True, show_input=False)
    assert len([ax for ax in shared.axes if ax.get_label() == "<colorbar>"]) == 1
    with pytest.raises(ValueError, match="expected 2"):
        viz.image_grid(images, {"ig": a[:1]})


class _Spans(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tokens, self.open = [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and attrs.get("class") == "tok":
            self.open = {"style": attrs["style"], "title": attrs["title"], "text": ""}

    def handle_data(self, data):
        if self.open is not None:
            self.open["text"] += data

    def handle_endtag(self, tag):
        if tag == "span" and self.open is not None:
            self.tokens.append(self.open)
            self.open = None


def test_token_html_escapes_tokens_and_colours_them_by_score(tmp_path):
    tokens = [["[CLS]", "<script>alert(1)</script>", "good", "##ness", "&", "[SEP]"],
              ["[CLS]", "bad", "\"quoted\"", "[SEP]", "[PAD]", "[PAD]"]]
    scores = np.array([[0.0, 0.5, 2.0, 1.0, -0.1, 0.0], [0.0, -2.0, 0.3, 0.0, 0.0, 0.0]])
    path = tmp_path / "t.html"
    text = viz.token_html(tokens, scores, title="<b>review</b>", row_labels=["#0", "#1"], path=path)
    assert path.read_text(encoding="utf-8") == text
    assert text.startswith("<!DOCTYPE html>") and "<script" not in text and "<b>review" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "&lt;b&gt;review&lt;/b&gt;" in text
    parsed = _Spans()
    parsed.feed(text)
    assert [t["text"] for t in parsed.tokens] == [t for row in tokens for t in row]   # pieces as given, in order
    flat = scores.reshape(-1)
    for t, s in zip(parsed.tokens, flat):
        rgb_alpha = t["style"].split("rgba(")[1].split(")")[0].split(",")
        r, g, b, alpha = (float(v) for v in rgb_alpha)
        assert alpha == pytest.approx(abs(s) / 2.0, abs=1e-3)            # one scale: the largest |score|
        if s > 0:
            assert r > b
        elif s < 0:
            assert b > r
        assert f"{s:+.4g}" in t["title"]
    assert "legend" in text and "-2" in text and "+2" in text
    with pytest.raises(ValueError, match="row 1: 6 tokens but 5 scores"):
        viz.token_html(tokens, [scores[0], scores[1][:5]])


def test_feature_bars_show_the_top_features_by_magnitude_with_their_signs(tmp_path):
    scores = np.array([0.3, -2.0, 0.05, 1.5, -0.7, 0.0, 0.9])
    names = [f"f{k}" for k in range(7)]
    path = tmp_path / "bars.png"
    fig = viz.feature_bars(scores, names, top=4, path=path)
    png_size(path)
    ax = fig.axes[0]
    bars = sorted(ax.patches, key=lambda p: -p.get_y())                  # top of the chart first
    ranking = sorted(range(7), key=lambda k: -abs(scores[k]))[:4]       # brute force
    assert [round(p.get_width(), 9) for p in bars] == [scores[k] for k in ranking]
    labels = {round(t.get_position()[1]): t.get_text() for t in ax.get_yticklabels()}
    assert [labels[round(p.get_y() + p.get_height() / 2)] for p in bars] == [names[k] for k in ranking]
    for p in bars:
        r, _, b, _ = p.get_facecolor()
        assert (r > b) == (p.get_width() > 0)
    # every label fits inside the figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for t in ax.get_yticklabels() + ax.texts:
        box = t.get_window_extent(renderer)
        assert box.x0 >= 0 and box.x1 <= fig.bbox.width
    # several rows: a panel each
    many = viz.feature_bars(np.stack([scores, -scores]), names, top=2, columns=2)
    assert len([a for a in many.axes if a.get_visible()]) == 2
    assert [p.get_width() for p in sorted(many.axes[1].patches, key=lambda p: -p.get_y())] == [2.0, -1.5]
    with pytest.raises(ValueError, match="3 feature names for 7 features"):
        viz.feature_bars(scores, names[:3])


def test_a_missing_matplotlib_is_an_error_naming_the_extra(monkeypatch, scene):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    image, attr = scene
    with pytest.raises(MissingExtraError, match=r'pip install "onnxplain\[viz\]"'):
        viz.image_heatmap(attr, image)
    assert "<html" in viz.token_html(["a"], [1.0])        # the HTML needs no matplotlib


def test_importing_onnxplain_does_not_import_matplotlib():
    code = ("import sys, onnxplain, onnxplain.viz, onnxplain.cli; onnxplain.cli.build_parser(); "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_readme_pictures_example_runs_and_writes_its_files(tmp_path, monkeypatch):
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("### Pictures")
    section = readme[start:readme.index("\n## ", start)]
    code = section.split("```python\n")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (Pictures)", "exec"), {})
    for name in ("ig.png", "grid.png", "bars.png"):
        png_size(tmp_path / name)
    assert "great" in (tmp_path / "tokens.html").read_text(encoding="utf-8")


def test_a_picture_of_an_input_batched_on_its_last_axis_draws_one_panel_per_row(tmp_path):
    """Features laid out (features, rows): each panel shows one row's attributions, read from the
    input's own layout, against the gradient of y = (w . x) (v . x) written by hand."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import onnxplain

    w = np.array([[0.5, -2.0, 0.1, 1.5, -0.7]], np.float32)
    v = np.array([[1.0, 0.3, -0.4, 0.2, 0.8]], np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["w", "x"], ["p"]), helper.make_node("MatMul", ["v", "x"], ["q"]),
         helper.make_node("Mul", ["p", "q"], ["pq"]), helper.make_node("Transpose", ["pq"], ["y"])], "bilinear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, "rows"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 1])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(v, "v")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    ex = onnxplain.Explainer(model, "gradient", batch_axes={"x": 1})
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    a = ex.explain(x, target=0)
    want = (w.T * (v @ x) + v.T * (w @ x))                                   # (5, rows)
    np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-6)
    fig = viz.plot_explanation(ex, x, a, tmp_path / "rows.png", feature_names=list("abcde"), top=2)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.patches]
    assert len(panels) == 3
    for r, ax in enumerate(panels):
        top = sorted(range(5), key=lambda k: -abs(want[k, r]))[:2]
        got = [p.get_width() for p in sorted(ax.patches, key=lambda p: -p.get_y())]
        np.testing.assert_allclose(got, want[top, r], rtol=1e-5)
