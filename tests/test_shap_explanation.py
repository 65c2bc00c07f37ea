"""onnxplain.shap: Shapley-like attributions as shap.Explanation objects that shap.plots draw.

``base_values`` is held against the model's expected output over the baselines computed with PyTorch, and
``base_values + sum(values)`` against ``f(x)`` where the method is efficient; the plots are drawn and written.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import onnxplain  # noqa: E402
from models import export, mlp, pool_cnn  # noqa: E402

shap = pytest.importorskip("shap")
from onnxplain.shap import explanation, shapley_like_methods  # noqa: E402


@pytest.fixture(scope="module")
def tabular():
    net, row = mlp("relu")
    x = np.random.default_rng(0).standard_normal((5,) + row).astype(np.float32)
    return net, export(net, row), x


@pytest.fixture(scope="module")
def image():
    net, row = pool_cnn()
    x = np.random.default_rng(1).random((2,) + row, dtype=np.float32)
    return net, export(net, row), x


def _torch_out(net, x, target):
    with torch.no_grad():
        return net(torch.from_numpy(np.asarray(x, dtype=np.float32)))[:, target].double().numpy()


def test_exact_shapley_values_add_up_to_the_output_around_the_baselines_output(tabular):
    net, onx, x = tabular
    base_row = np.linspace(-0.5, 0.5, x.shape[1], dtype=np.float32)
    ex = onnxplain.Explainer(onx, "shapley_values")
    e = explanation(ex, x, target=2, baselines=base_row, feature_names=[f"f{i}" for i in range(x.shape[1])])
    assert isinstance(e, shap.Explanation) and e.values.shape == x.shape
    np.testing.assert_allclose(e.base_values, _torch_out(net, base_row[None].repeat(len(x), 0), 2), atol=1e-5)
    np.testing.assert_allclose(e.base_values + e.values.sum(axis=1), _torch_out(net, x, 2), atol=1e-5)
    np.testing.assert_array_equal(e.data, x)
    assert e.feature_names == [f"f{i}" for i in range(x.shape[1])]


def test_deeplift_shap_base_values_are_the_mean_output_over_the_background(tabular):
    net, onx, x = tabular
    background = np.random.default_rng(2).standard_normal((7, x.shape[1])).astype(np.float32)
    e = explanation(onnxplain.Explainer(onx, "deeplift_shap"), x, target=0, baselines=background)
    np.testing.assert_allclose(e.base_values, np.full(len(x), _torch_out(net, background, 0).mean()), atol=1e-5)


def test_gradient_shap_base_values_are_the_mean_output_over_the_drawn_baselines(tabular):
    net, onx, x = tabular
    background = np.random.default_rng(3).standard_normal((1, x.shape[1])).astype(np.float32)
    e = explanation(onnxplain.Explainer(onx, "gradient_shap"), x, target=3, baselines=background, n_samples=6)
    np.testing.assert_allclose(e.base_values, np.full(len(x), _torch_out(net, background, 3)[0]), atol=1e-5)


def test_the_plots_draw_the_explanation(tabular, image, tmp_path):
    net, onx, x = tabular
    e = explanation(onnxplain.Explainer(onx, "shapley_sampling"), x, target=1, n_samples=8, seed=0,
                    feature_names=[f"col{i}" for i in range(x.shape[1])])
    for name, draw in [("waterfall", lambda: shap.plots.waterfall(e[0], show=False)),
                       ("beeswarm", lambda: shap.plots.beeswarm(e, show=False)),
                       ("bar", lambda: shap.plots.bar(e, show=False))]:
        plt.figure()
        draw()
        path = tmp_path / f"{name}.png"
        plt.savefig(path)
        plt.close("all")
        assert path.stat().st_size > 5000, name
    _, onx_img, xi = image
    patches = (np.arange(xi.shape[2])[:, None] // 4 * 3 + np.arange(xi.shape[3])[None, :] // 4)[None, None]
    ei = explanation(onnxplain.Explainer(onx_img, "shapley_sampling"), xi, target=3, n_samples=4, seed=0,
                     feature_mask=np.broadcast_to(patches, (1,) + xi.shape[1:]), channels_last=True)
    assert ei.values.shape == (2,) + xi.shape[2:] + xi.shape[1:2]
    shap.plots.image(ei, show=False)
    path = tmp_path / "image.png"
    plt.savefig(path)
    plt.close("all")
    assert path.stat().st_size > 5000


def test_text_explanations_take_the_tokens_strings(tabular):
    _, onx, x = tabular
    tokens = np.array([[f"t{j}" for j in range(x.shape[1])]] * len(x), dtype=object)
    e = explanation(onnxplain.Explainer(onx, "shapley_values"), x, target=0, data=tokens)
    html = shap.plots.text(e[0], display=False)
    assert all(f"t{j}" in html for j in range(x.shape[1]))


def test_methods_that_are_not_shapley_like_are_refused_by_name(tabular):
    _, onx, x = tabular
    with pytest.raises(ValueError, match="shapley_values"):
        explanation(onnxplain.Explainer(onx, "saliency"), x, target=0)
    with pytest.raises(ValueError, match="data for input"):
        explanation(onnxplain.Explainer(onx, "shapley_values"), x, target=0, data=x[:, :3])
    assert {"deeplift_shap", "shapley_sampling", "shapley_values"} <= set(shapley_like_methods())
