"""Images in: photos written by Pillow in the test, read as a model's input, explained, drawn.

The tensors are held against a reference written here (Pillow's resize, numpy slicing and normalisation),
the attributions against :class:`onnxplain.Explainer` on that tensor, the picture against the photo's own
colours, and the streamed folder run against itself resumed (nothing recomputed, the same bytes).
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import onnxplain
from onnxplain.cli import main
from onnxplain.files import explain_file, explain_npy
from onnxplain.sources.images import (PRESETS, ImageFormat, format_for_model, image_format, image_format_from_text,
                                      read_images)

from models import export

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
SOLID = (40, 160, 90)


# ---------------------------------------------------------------------- models and photos
class SmallCNN(nn.Module):
    """Conv, ReLU, conv, global pooling, linear: any H x W; ``window`` looks only at the image's left columns
    (so the right part's attributions are exactly 0); ``nhwc`` takes channels last."""

    def __init__(self, channels: int = 3, window: int | None = None, nhwc: bool = False):
        super().__init__()
        torch.manual_seed(channels + (window or 0) + 7 * nhwc)
        self.window, self.nhwc = window, nhwc
        self.body = nn.Sequential(nn.Conv2d(channels, 6, 5, stride=2), nn.ReLU(), nn.Conv2d(6, 8, 3), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x):
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        if self.window is not None:
            x = x[..., : self.window]
        return self.body(x)


def export_any_size(model: nn.Module) -> bytes:
    """ONNX bytes with the batch, height and width axes all dynamic."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.rand(2, 3, 40, 50),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 2: "h", 3: "w"}, "y": {0: "batch"}})
    return buf.getvalue()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    built = {"rgb": export(SmallCNN(), (3, 37, 45)),             # a fixed odd size: the crop adapts to it
             "grey": export(SmallCNN(1), (1, 37, 45)),
             "four": export(SmallCNN(4), (4, 37, 45)),
             "window": export(SmallCNN(window=20), (3, 37, 45)),
             "nhwc": export(SmallCNN(nhwc=True), (37, 45, 3)),
             "any": export_any_size(SmallCNN())}
    paths = {}
    for name, data in built.items():
        paths[name] = str(folder / f"{name}.onnx")
        with open(paths[name], "wb") as f:
            f.write(data)
    return paths


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth picture with some texture: gradients and a seeded noise, uint8 RGB."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    base = np.stack([255 * xx / w, 255 * yy / h, 128 + 100 * np.sin((xx + 2 * yy) / 17.0)], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A landscape RGB PNG (301 x 257), a portrait RGB JPEG (257 x 301), a grey PNG, a solid-colour PNG."""
    folder = tmp_path_factory.mktemp("photos")
    paths = {"png": str(folder / "wide.png"), "jpg": str(folder / "tall.jpg"), "grey": str(folder / "grey.png"),
             "solid": str(folder / "solid.png")}
    Image.fromarray(_photo(257, 301, 0)).save(paths["png"])
    Image.fromarray(_photo(301, 257, 1)).save(paths["jpg"], quality=90)
    Image.fromarray(_photo(257, 301, 2)[..., 1]).save(paths["grey"])
    Image.fromarray(np.full((257, 301, 3), SOLID, np.uint8)).save(paths["solid"])
    return paths


# ---------------------------------------------------------------------- the reference pipeline
def reference(path, short: int | None, crop, mean=None, std=None, mode: str = "RGB"):
    """Pillow's bilinear resize of the shorter side, a centre crop by slicing, then x / 255, - mean, / std."""
    img = Image.open(path).convert(mode)
    w, h = img.size
    if short is not None:
        size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        img = img.resize(size, Image.BILINEAR)
    pixels = np.asarray(img)
    if crop is not None:
        top = int(round((pixels.shape[0] - crop[0]) / 2.0))
        left = int(round((pixels.shape[1] - crop[1]) / 2.0))
        pixels = pixels[top:top + crop[0], left:left + crop[1]]
    x = pixels.astype(np.float64) / 255.0
    if x.ndim == 2:
        x = x[..., None]
    if mean is not None:
        x = (x - mean) / std
    return pixels, x.transpose(2, 0, 1)


def test_png_and_jpeg_become_the_reference_tensor(models, photos):
    """imagenet on a model fixing 37 x 45: crop 37 x 45, shorter side round(45 * 256 / 224) = 51; on a model of
    any size: 256 then 224; grey models read L with the averaged statistics; BGR reverses the channels."""
    info = onnxplain.Explainer(models["rgb"]).model.graph.input[0]
    fmt = format_for_model("imagenet", info)
    assert (fmt.size, fmt.crop, fmt.layout, fmt.channels) == (51, (37, 45), "NCHW", 3)
    rows = read_images([photos["png"], photos["jpg"]], fmt, "x")
    assert rows.names == ["wide.png", "tall.jpg"] and rows.inputs["x"].dtype == np.float32
    for r, key in enumerate(("png", "jpg")):
        pixels, x = reference(photos[key], 51, (37, 45), MEAN, STD)
        np.testing.assert_allclose(rows.inputs["x"][r], x, rtol=0, atol=2e-6)
        assert rows.images[r].dtype == np.uint8 and np.array_equal(rows.images[r], pixels)

    wide = format_for_model("imagenet", (None, 3, None, None))
    assert (wide.size, wide.crop) == (256, (224, 224))
    _, x = reference(photos["jpg"], 256, (224, 224), MEAN, STD)
    np.testing.assert_allclose(read_images(photos["jpg"], wide, "x").inputs["x"][0], x, rtol=0, atol=2e-6)

    grey = format_for_model("imagenet", onnxplain.Explainer(models["grey"]).model.graph.input[0])
    assert grey.channels == 1 and grey.mean == (pytest.approx(MEAN.mean()),)
    for key in ("grey", "png"):                        # a grey file, and a colour one converted to L
        pixels, x = reference(photos[key], 51, (37, 45), MEAN.mean(), STD.mean(), mode="L")
        rows = read_images(photos[key], grey, "x")
        np.testing.assert_allclose(rows.inputs["x"][0], x, rtol=0, atol=2e-6)
        assert rows.inputs["x"].shape == (1, 1, 37, 45) and np.array_equal(rows.images[0], pixels)

    bgr = format_for_model(image_format("imagenet", channel_order="BGR"), (None, 3, 37, 45))
    _, x = reference(photos["png"], 51, (37, 45), MEAN, STD)
    np.testing.assert_allclose(read_images(photos["png"], bgr, "x").inputs["x"][0], x[::-1], rtol=0, atol=2e-6)

    none = read_images([photos["png"], photos["grey"]], "none", "x")        # no resize, pixels / 255
    for r, key in enumerate(("png", "grey")):
        assert np.array_equal(none.images[r], np.asarray(Image.open(photos[key]).convert("RGB")))
        np.testing.assert_allclose(none.inputs["x"][r], reference(photos[key], None, None)[1], rtol=0, atol=1e-7)


def test_raw_bytes_and_pil_images_read_like_their_files(photos):
    fmt = format_for_model("imagenet", (None, 3, 37, 45))
    with open(photos["jpg"], "rb") as f:
        data = f.read()
    by_file = read_images(photos["jpg"], fmt, "x").inputs["x"]
    assert np.array_equal(read_images(data, fmt, "x").inputs["x"], by_file)
    rows = read_images([Image.open(photos["jpg"])], fmt, "x")
    assert np.array_equal(rows.inputs["x"], by_file) and rows.names == ["tall.jpg"]


def test_the_model_shape_is_checked_before_anything_runs(models, photos, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("nothing may run")
    monkeypatch.setattr(onnxplain.Explainer, "explain", never)
    monkeypatch.setattr(onnxplain.Explainer, "forward", never)
    out, plot = tmp_path / "a.npy", tmp_path / "a.png"
    cases = [
        (models["rgb"], [photos["png"]], dict(image=image_format("imagenet", crop=30)), ["(?, 3, 37, 45)", "30x30"]),
        (models["rgb"], [photos["png"]], dict(image="none"), ["(?, 3, 37, 45)", "(1, 3, 257, 301)"]),
        (models["four"], [photos["png"]], {}, ["(?, 4, 37, 45)", "4 channel(s)"]),
        (models["nhwc"], [photos["png"]], dict(image=image_format("imagenet", layout="NCHW")), ["(?, 37, 45, 3)"]),
        (models["any"], [photos["png"], photos["jpg"]], dict(image="none"), ["different sizes", "301x257"]),
        (models["rgb"], [photos["png"], os.path.join(os.path.dirname(photos["png"]), "missing.png")], {},
         ["no such image file"]),
        (models["rgb"], [photos["png"], str(tmp_path)], {}, ["holds no image files"]),
    ]
    for model, paths, kwargs, fragments in cases:
        with pytest.raises(ValueError) as e:
            explain_file(model, paths, "saliency", target=0, out=out, plot=plot, **kwargs)
        assert all(f in str(e.value) for f in fragments), (fragments, str(e.value))
        assert not out.exists() and not plot.exists()
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    for paths, fragment in (([photos["png"], str(notes)], "mix images"), ([str(notes)], ".npy or .npz")):
        with pytest.raises(ValueError, match=fragment):
            explain_file(models["rgb"], paths, "saliency", target=0, out=out)
    fake = tmp_path / "fake.png"
    fake.write_text("not a png")
    with pytest.raises(ValueError, match="cannot read 'fake.png' as an image"):
        explain_file(models["rgb"], [photos["png"], str(fake)], "saliency", target=0, out=out)
    assert not out.exists()


@pytest.mark.parametrize("method,params", [("saliency", {}), ("integrated_gradients", {"n_steps": 8})])
def test_attributions_through_image_files_equal_the_explainer_on_their_tensor(models, photos, method, params):
    result = explain_file(models["rgb"], [photos["png"], photos["jpg"]], method, target=[1, 3], params=params)
    x = result.inputs["x"]
    for r, key in enumerate(("png", "jpg")):
        np.testing.assert_allclose(x[r], reference(photos[key], 51, (37, 45), MEAN, STD)[1], rtol=0, atol=2e-6)
    expected = onnxplain.Explainer(models["rgb"], method).explain(x, [1, 3], **params)
    assert np.array_equal(result.attributions["x"], expected)
    assert "wide.png" in result.summary() and "tall.jpg" in result.summary()


def test_the_command_draws_the_heatmap_over_the_photo_as_the_model_saw_it(models, photos, tmp_path, capsys):
    """A solid-colour photo: the input panel shows its colour, and the heatmap panel shows it dimmed (the
    backdrop under the heatmap) where the attribution is 0: right of the 20 columns the model looks at."""
    out = tmp_path / "out.png"
    assert main(["explain", models["window"], photos["solid"], photos["png"], "--method", "saliency",
                 "--target", "2", "--plot", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "solid.png" in printed and f"wrote {out}" in printed
    picture = np.asarray(Image.open(out).convert("RGB")).astype(int)
    top, bottom = picture[: len(picture) // 2], picture[len(picture) // 2:]     # the solid photo's row, the other
    dimmed_colour = np.round(255 * (0.15 + 0.55 * np.array(SOLID) / 255))
    cell = 2.2 * 100                                          # viz.image_grid's cell: 2.2 inches at 100 dpi
    plain = np.all(np.abs(top - SOLID) <= 1, axis=-1)
    assert plain.sum() > 0.4 * cell * cell                    # the photo itself, not its normalised tensor
    assert np.all(np.abs(bottom - SOLID) <= 1, axis=-1).sum() < 0.01 * cell * cell
    dimmed = np.all(np.abs(top - dimmed_colour) <= 1, axis=-1)
    columns = dimmed.sum(axis=0)
    full = np.nonzero(columns > 0.5 * columns.max())[0]       # the heatmap's right part: attributions 0
    c0, width = full.min(), full.max() - full.min() + 1
    assert width == pytest.approx(len(full), abs=2) and width == pytest.approx(cell * 25 / 45 * 0.8, rel=0.35)
    rows = np.nonzero(dimmed[:, c0 + width // 2])[0]
    seen = top[rows.min() + 2:rows.max() - 2, c0 - int(width * 20 / 25) + 3:c0 - 3]   # the 20 columns looked at
    assert np.abs(seen - dimmed_colour).sum(axis=-1).mean() > 20                    # the heatmap's colours there


def test_nhwc_models_take_channels_last(models, photos):
    explicit = explain_file(models["nhwc"], photos["png"], "saliency", target=4,
                            image=image_format("imagenet", layout="NHWC"))
    x = explicit.inputs["x"]
    assert x.shape == (1, 37, 45, 3)
    np.testing.assert_allclose(x[0], reference(photos["png"], 51, (37, 45), MEAN, STD)[1].transpose(1, 2, 0),
                               rtol=0, atol=2e-6)
    assert np.array_equal(explicit.attributions["x"], onnxplain.Explainer(models["nhwc"]).explain(x, 4))
    found = explain_file(models["nhwc"], photos["png"], "saliency", target=4)   # the layout read from the model
    assert np.array_equal(found.inputs["x"], x)


def test_a_folder_streams_batch_by_batch_and_resumes(models, tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    for k in range(5):
        Image.fromarray(_photo(61 + 7 * k, 83 - 5 * k, 10 + k)).save(folder / f"img{k}.{'png' if k % 2 else 'jpg'}")
    (folder / "labels.csv").write_text("not an image, ignored\n")
    out = tmp_path / "attr.npy"
    argv = ["explain", models["rgb"], str(folder), "--method", "saliency", "--target", "1", "--batch-size", "2",
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert "5 row(s) in 3 batch(es), 3 computed now" in capsys.readouterr().out
    first = out.read_bytes()
    names = [f"img{k}.{'png' if k % 2 else 'jpg'}" for k in range(5)]
    assert (tmp_path / "attr.npy.names.txt").read_text().splitlines() == names
    assert main(argv) == 0
    assert "3 computed now" not in capsys.readouterr().out
    run = explain_npy(models["rgb"], str(folder), out, "saliency", target=1, batch_size=2, progress=False)
    assert (run.rows, run.computed) == (5, 0) and out.read_bytes() == first
    x = read_images(str(folder), format_for_model("imagenet", (None, 3, 37, 45)), "x").inputs["x"]
    assert np.array_equal(np.load(out), onnxplain.Explainer(models["rgb"]).explain(x, 1))

    other = tmp_path / "other"
    other.mkdir()
    for k in range(5):
        Image.fromarray(_photo(50, 60, k)).save(other / f"b{k}.png")
    with pytest.raises(ValueError, match="other images"):
        explain_npy(models["rgb"], str(other), out, "saliency", target=1, batch_size=2, progress=False)
    assert out.read_bytes() == first


def test_formats_refuse_bad_values_with_clear_errors():
    assert set(PRESETS) >= {"imagenet", "none"} and PRESETS["none"].mean is None
    for call, fragment in [(lambda: image_format("coco"), "unknown image preset 'coco'"),
                           (lambda: image_format("imagenet", colour=1), "unknown image format field"),
                           (lambda: image_format("imagenet", layout="NCWH"), "layout must be one of"),
                           (lambda: image_format("imagenet", std=(0.2, 0, 0.2)), "std must not contain 0"),
                           (lambda: ImageFormat(mean=(0.1, 0.2)), "mean has 2 values"),
                           (lambda: image_format_from_text(size="a,b"), "--size expects"),
                           (lambda: format_for_model("imagenet", (None, 3, 224)), "rank-4")]:
        with pytest.raises(ValueError, match=fragment):
            call()
    assert image_format_from_text() is None
    fmt = image_format_from_text("none", size="300,200", crop="128", mean="0.5", layout="nhwc")
    assert (fmt.size, fmt.crop, fmt.mean, fmt.layout) == ((300, 200), (128, 128), (0.5,), "NHWC")
