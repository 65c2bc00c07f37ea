"""The framework front-ends, end to end, against each framework's own outputs and gradients.

* ``from_torch``: both exporters (TorchScript and ``torch.export``); onnxplain's gradient
  equals PyTorch autograd on a small CNN and on a two-input model with a dict output.
* ``from_keras`` (torch backend): the ONNX forward equals ``model.predict``; onnxplain's
  gradient equals ``torch.autograd.grad`` through the Keras model itself.
* ``from_sklearn``: an MLP's ONNX forward equals ``predict_proba`` and its gradient equals
  the MLP's backward written out here from ``coefs_`` / ``intercepts_``; a random forest is
  explained by perturbation methods against brute force on ``predict_proba``.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import warnings
from math import factorial

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import onnxplain
from onnxplain.converters.keras import from_keras
from onnxplain.converters.sklearn import from_sklearn
from onnxplain.converters.torch import from_torch
from onnxplain.errors import ModelError

RTOL = 1e-4          # of the largest reference value: float32 onnxruntime vs float32 torch / float64 numpy
N_ROWS = 3

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore::UserWarning")


def assert_close(ours, ref, rtol: float = RTOL):
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    ours = np.asarray(ours)
    assert ours.shape == ref.shape
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=rtol * max(float(np.abs(ref).max()), 1e-12))


def forward(model, feeds: dict) -> list:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def autograd(module, x: torch.Tensor, weights: torch.Tensor, pick=lambda y: y) -> np.ndarray:
    """d sum(weights * pick(module(x))) / dx."""
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((pick(module(x)) * weights).sum(), x)
    return g.numpy()


# ---------------------------------------------------------------------- PyTorch
class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 8, 3), nn.SiLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(32, 5)

    def forward(self, image):
        return self.head(torch.flatten(self.features(image), 1))


class TwoInputs(nn.Module):
    """Named float inputs, a dict output: ``{"logits": ..., "aux": ...}``."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(3, 8)
        self.out = nn.Linear(8, 4)

    def forward(self, features, extra):
        h = torch.tanh(self.a(features)) * torch.sigmoid(self.b(extra))
        return {"logits": self.out(h), "aux": h.sum(-1, keepdim=True)}


@pytest.fixture(scope="module")
def torch_cnn():
    torch.manual_seed(0)
    module = SmallCNN()
    with torch.no_grad():
        bn = module.features[1]
        bn.running_mean.copy_(0.3 * torch.randn(6))
        bn.running_var.copy_(0.5 + torch.rand(6))
    module.train()              # from_torch must export in eval mode and give the mode back
    stats = bn.running_mean.clone()
    exported = {dynamo: from_torch(module, torch.randn(2, 3, 8, 8), dynamo=dynamo) for dynamo in (False, True)}
    assert module.training and all(m.training for m in module.modules())
    assert torch.equal(bn.running_mean, stats)          # no training-mode forward ran
    module.eval()
    return module, exported


@pytest.fixture(scope="module")
def torch_two_inputs():
    torch.manual_seed(1)
    module = TwoInputs().eval()
    example = {"features": torch.randn(1, 6), "extra": torch.randn(1, 3)}   # batch 1 still exports a dynamic batch
    return module, {dynamo: from_torch(module, example, dynamo=dynamo) for dynamo in (False, True)}


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_cnn_gradient_equals_autograd(torch_cnn, dynamo):
    module, exported = torch_cnn
    model = exported[dynamo]
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == 17 if not dynamo else opset >= 18
    assert [vi.name for vi in model.graph.input] == ["image"] and [vi.name for vi in model.graph.output] == ["output"]
    assert isinstance(dims(model.graph.input[0])[0], str) and isinstance(dims(model.graph.output[0])[0], str)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N_ROWS, 3, 8, 8, generator=g)
    weights = torch.randn(N_ROWS, 5, generator=g)
    with torch.no_grad():
        assert_close(forward(model, {"image": x.numpy()})[0], module(x))
    ours = onnxplain.Explainer(model, "gradient").explain(x.numpy(), target_weights=weights.numpy())
    assert_close(ours, autograd(module, x, weights))
    ours = onnxplain.Explainer(model, "gradient").explain(x.numpy(), target=2)
    assert_close(ours, autograd(module, x, torch.eye(5)[2].expand(N_ROWS, 5)))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_named_inputs_and_dict_outputs(torch_two_inputs, dynamo):
    module, exported = torch_two_inputs
    model = exported[dynamo]
    assert [vi.name for vi in model.graph.input] == ["features", "extra"]
    assert [vi.name for vi in model.graph.output] == ["logits", "aux"]
    assert all(isinstance(dims(vi)[0], str) for vi in list(model.graph.input) + list(model.graph.output))
    g = torch.Generator().manual_seed(4)
    x = {"features": torch.randn(N_ROWS, 6, generator=g), "extra": torch.randn(N_ROWS, 3, generator=g)}
    weights = torch.randn(N_ROWS, 4, generator=g)
    ex = onnxplain.Explainer(model, "gradient", output="logits")
    ours = ex.explain({k: v.numpy() for k, v in x.items()}, target_weights=weights.numpy())
    feats, extra = (v.clone().requires_grad_(True) for v in x.values())
    ref = torch.autograd.grad((module(feats, extra)["logits"] * weights).sum(), (feats, extra))
    assert set(ours) == {"features", "extra"}
    assert_close(ours["features"], ref[0])
    assert_close(ours["extra"], ref[1])


def test_torch_argument_errors():
    module = TwoInputs()
    with pytest.raises(ValueError, match="input_names"):
        from_torch(module, (torch.randn(1, 6), torch.randn(1, 3)), input_names=["only_one"])
    with pytest.raises(TypeError, match="nn.Module"):
        from_torch(lambda x: x, torch.randn(1, 6))


# ---------------------------------------------------------------------- Keras 3 (torch backend)
@pytest.fixture(scope="module")
def keras():
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras was imported with the {keras.backend.backend()!r} backend; these tests need torch")
    return keras


@pytest.fixture(scope="module")
def keras_cnn(keras):
    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, activation="relu"), L.BatchNormalization(),
                              L.MaxPooling2D(), L.Flatten(), L.Dense(6, activation="tanh"),
                              L.Dense(3, activation="softmax")])
    return model, from_keras(model)


@pytest.fixture(scope="module")
def keras_two_inputs(keras):
    keras.utils.set_random_seed(1)
    L = keras.layers
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    h = L.Concatenate()([L.Dense(5, activation="gelu")(a), L.Dense(2, activation="sigmoid")(b)])
    model = keras.Model({"a": a, "b": b}, {"p": L.Dense(2, name="p")(h), "q": L.Dense(1, name="q")(h)})
    return model, from_keras(model)


def test_keras_forward_equals_predict_and_gradient_equals_autograd(keras_cnn):
    model, onx = keras_cnn
    assert [vi.name for vi in onx.graph.input] == ["input"] and [vi.name for vi in onx.graph.output] == ["output"]
    assert isinstance(dims(onx.graph.input[0])[0], str) and isinstance(dims(onx.graph.output[0])[0], str)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((N_ROWS + 1, 8, 8, 3)).astype(np.float32)      # another batch size than exported
    assert_close(forward(onx, {"input": x})[0], model.predict(x, verbose=0))
    weights = rng.standard_normal((N_ROWS + 1, 3)).astype(np.float32)
    ours = onnxplain.Explainer(onx, "gradient").explain(x, target_weights=weights)
    assert_close(ours, autograd(model, torch.from_numpy(x), torch.from_numpy(weights)))


def test_keras_dict_inputs_and_outputs(keras_two_inputs):
    model, onx = keras_two_inputs
    assert [vi.name for vi in onx.graph.input] == ["a", "b"]
    assert [vi.name for vi in onx.graph.output] == ["p", "q"]
    rng = np.random.default_rng(6)
    x = {"a": rng.standard_normal((N_ROWS, 4)).astype(np.float32),
         "b": rng.standard_normal((N_ROWS, 3)).astype(np.float32)}
    predicted = model.predict(x, verbose=0)
    p, q = forward(onx, x)
    assert_close(p, predicted["p"])
    assert_close(q, predicted["q"])
    ours = onnxplain.Explainer(onx, "gradient", output="p").explain(x, target=1)
    xt = {k: torch.from_numpy(v).requires_grad_(True) for k, v in x.items()}
    ref = torch.autograd.grad(model(xt)["p"][:, 1].sum(), (xt["a"], xt["b"]))
    assert_close(ours["a"], ref[0])
    assert_close(ours["b"], ref[1])


def test_keras_with_another_backend_names_the_variable(keras, monkeypatch):
    """Keras imported with a backend whose export fails: the error says to set KERAS_BACKEND=torch.

    (Only the torch backend is installed here, so the other backend is simulated: Keras reports
    ``"jax"`` and its export raises, as it does when jax2onnx is missing.)
    """
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])

    def export(*args, **kwargs):
        raise ImportError("jax2onnx is not installed")
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    monkeypatch.setattr(model, "export", export)
    with pytest.raises(ModelError, match="KERAS_BACKEND=torch") as info:
        from_keras(model, np.zeros((1, 3), np.float32))
    assert "'jax' backend" in str(info.value) and "jax2onnx" in str(info.value)


def test_keras_model_never_called_needs_examples(keras):
    model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="example_inputs"):
        from_keras(model)
    onx = from_keras(model, np.zeros((1, 3), np.float32))
    assert dims(onx.graph.input[0])[1:] == [3]
    with pytest.raises(ModelError, match="fixed batch"):          # a batch baked into the graph is refused
        from_keras(model, input_signature=[keras.InputSpec(shape=(2, 3), dtype="float32")])


# ---------------------------------------------------------------------- scikit-learn
def sklearn_data(n_classes: int):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 5)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    if n_classes == 3:
        y = y + (X[:, 3] > 0.8)
    return X, y


def activation(name: str, z: np.ndarray) -> np.ndarray:
    return {"relu": lambda: np.maximum(z, 0), "tanh": lambda: np.tanh(z), "logistic": lambda: 1 / (1 + np.exp(-z)),
            "identity": lambda: z}[name]()


def activation_derivative(name: str, z: np.ndarray) -> np.ndarray:
    s = 1 / (1 + np.exp(-z))
    return {"relu": lambda: (z > 0).astype(float), "tanh": lambda: 1 - np.tanh(z) ** 2, "logistic": lambda: s * (1 - s),
            "identity": lambda: np.ones_like(z)}[name]()


def mlp_backward(mlp, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """d sum(weights * mlp.predict_proba(x)) / dx (of predict(x) for a regressor) from coefs_/intercepts_, float64."""
    h, hidden = x.astype(np.float64), []
    for w, b in zip(mlp.coefs_[:-1], mlp.intercepts_[:-1]):
        hidden.append(h @ w + b)
        h = activation(mlp.activation, hidden[-1])
    z = h @ mlp.coefs_[-1] + mlp.intercepts_[-1]
    if mlp.out_activation_ == "softmax":
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        dz = p * (weights - (weights * p).sum(1, keepdims=True))
    elif mlp.out_activation_ == "logistic":                  # binary: probabilities [1 - s, s]
        s = 1 / (1 + np.exp(-z))
        dz = (weights[:, 1:2] - weights[:, 0:1]) * s * (1 - s)
    else:                                                     # regression: the identity
        dz = weights.astype(np.float64)
    for i in range(len(mlp.coefs_) - 1, 0, -1):
        dz = (dz @ mlp.coefs_[i].T) * activation_derivative(mlp.activation, hidden[i - 1])
    return dz @ mlp.coefs_[0].T


MLPS = [("relu", 3, (8, 6)), ("tanh", 3, (8,)), ("logistic", 2, (7, 5))]


@pytest.mark.parametrize("activation,n_classes,hidden", MLPS, ids=[f"{a}-{c}cls" for a, c, _ in MLPS])
def test_sklearn_mlp_classifier_forward_and_gradient(activation, n_classes, hidden):
    from sklearn.neural_network import MLPClassifier
    X, y = sklearn_data(n_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")             # ConvergenceWarning: the fit need not converge
        mlp = MLPClassifier(hidden_layer_sizes=hidden, activation=activation, max_iter=200, learning_rate_init=0.01,
                            random_state=0).fit(X, y)
    onx = from_sklearn(mlp)
    assert [vi.name for vi in onx.graph.input] == ["X"] and dims(onx.graph.input[0]) == ["batch", 5]
    x = X[:N_ROWS + 2]
    label, proba = forward(onx, {"X": x})
    assert_close(proba, mlp.predict_proba(x))
    np.testing.assert_array_equal(label, mlp.predict(x))
    ex = onnxplain.Explainer(onx, "gradient")
    assert ex.output == "probabilities"             # the first float output, not the int64 label
    weights = np.random.default_rng(7).standard_normal((len(x), n_classes)).astype(np.float32)
    assert_close(ex.explain(x, target_weights=weights), mlp_backward(mlp, x, weights))
    onehot = np.eye(n_classes)[np.full(len(x), n_classes - 1)]
    assert_close(ex.explain(x, target=n_classes - 1), mlp_backward(mlp, x, onehot))
    # integrated gradients: a midpoint Riemann sum of the analytic gradient along the straight path from 0
    n_steps = 8
    attr, delta = onnxplain.Explainer(onx, "integrated_gradients").explain(
        x, target=1, n_steps=n_steps, method="riemann_middle", return_convergence_delta=True)
    onehot = np.eye(n_classes)[np.ones(len(x), int)]
    path = sum(mlp_backward(mlp, (k + 0.5) / n_steps * x, onehot) for k in range(n_steps)) / n_steps
    assert_close(attr, x * path)
    gap = mlp.predict_proba(x)[:, 1] - mlp.predict_proba(np.zeros_like(x))[:, 1]
    np.testing.assert_allclose(delta, attr.sum(1) - gap, atol=1e-5)


def test_sklearn_mlp_regressor_gradient():
    from sklearn.neural_network import MLPRegressor
    X, _ = sklearn_data(2)
    target = np.sin(X[:, 0]) + X[:, 1] * X[:, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPRegressor(hidden_layer_sizes=(8,), activation="tanh", max_iter=200, random_state=0).fit(X, target)
    onx = from_sklearn(mlp, 5)
    x = X[:N_ROWS]
    (pred,) = forward(onx, {"X": x})
    assert_close(pred.reshape(-1), mlp.predict(x))
    ours = onnxplain.Explainer(onx, "gradient").explain(x)
    assert_close(ours, mlp_backward(mlp, x, np.ones((N_ROWS, 1))))


def test_sklearn_pipeline_with_a_scaler_gets_gradients_through_it():
    """ai.onnx.ml Scaler (StandardScaler) in front of an MLP: d/dx = scale * d/dz."""
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    X, y = sklearn_data(2)
    X = X * np.array([1, 2, 3, 4, 5], np.float32) + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = make_pipeline(StandardScaler(), MLPClassifier((6,), max_iter=100, random_state=0)).fit(X, y)
    onx = from_sklearn(pipe)
    assert any(n.op_type == "Scaler" for n in onx.graph.node)
    x = X[:N_ROWS]
    weights = np.random.default_rng(3).standard_normal((len(x), 2)).astype(np.float32)
    scaler, mlp = pipe.steps[0][1], pipe.steps[1][1]
    ref = mlp_backward(mlp, scaler.transform(x), weights) / scaler.scale_
    assert_close(onnxplain.Explainer(onx, "gradient").explain(x, target_weights=weights), ref)


def brute_force_shapley(f, x: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Exact Shapley values of every feature from the definition (all 2**d coalitions)."""
    d = x.shape[1]
    phi = np.zeros(x.shape)
    for i in range(d):
        others = [j for j in range(d) if j != i]
        for size in range(d):
            w = factorial(size) * factorial(d - size - 1) / factorial(d)
            for s in itertools.combinations(others, size):
                keep = np.isin(np.arange(d), s)
                without = np.where(keep, x, base)
                with_i = np.where(keep | (np.arange(d) == i), x, base)
                phi[:, i] += w * (f(with_i) - f(without))
    return phi


@pytest.fixture(scope="module")
def forest():
    from sklearn.ensemble import RandomForestClassifier
    X, y = sklearn_data(3)
    clf = RandomForestClassifier(n_estimators=6, max_depth=4, random_state=0).fit(X, y)
    return clf, from_sklearn(clf), X[:4], X.mean(0)


def test_sklearn_random_forest_forward_and_perturbations(forest):
    clf, onx, x, base = forest
    label, proba = forward(onx, {"X": x})
    assert_close(proba, clf.predict_proba(x))
    np.testing.assert_array_equal(label, clf.predict(x))

    def f(v):
        return clf.predict_proba(np.asarray(v, np.float32))[:, 2]

    ex = onnxplain.Explainer(onx, "shapley_values")
    assert ex.output == "probabilities"
    assert_close(ex.explain(x, target=2, baselines=base), brute_force_shapley(f, x, base))
    ablation = np.stack([f(x) - f(np.where(np.arange(5) == i, base, x)) for i in range(5)], axis=1)
    assert_close(onnxplain.Explainer(onx, "feature_ablation").explain(x, target=2, baselines=base), ablation)


def test_sklearn_options_and_errors():
    from sklearn.linear_model import LogisticRegression
    X, y = sklearn_data(3)
    clf = LogisticRegression(max_iter=200).fit(X, y)
    assert [vi.name for vi in from_sklearn(clf, options={"zipmap": True}).graph.output][1] == "output_probability"
    onx = from_sklearn(clf, initial_types=None, input_name="features")
    assert [vi.name for vi in onx.graph.input] == ["features"]
    assert [vi.name for vi in onx.graph.output] == ["label", "probabilities"]
    with pytest.raises(ValueError, match="n_features"):
        from_sklearn(clf, 0)


def test_importing_onnxplain_imports_no_framework():
    frameworks = ('torch', 'keras', 'sklearn', 'skl2onnx', 'tensorflow', 'jax')
    code = ("import sys, onnxplain; from onnxplain import *; from_torch, from_keras, from_sklearn; "
            f"print(sorted(m for m in {frameworks} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
