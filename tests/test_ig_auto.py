"""Integrated gradients with ``n_steps="auto"``, held against the exact integral of a ReLU MLP.

Along the straight path ``b + a (x - b)`` a ReLU network is affine between the points where a
pre-activation changes sign, so its gradient is constant on each segment and the integral is exact:
``IG = (x - b) * sum over segments of (length * gradient)`` (:func:`exact_ig`, numpy, float64).
"""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch

import onnxplain
from onnxplain.cli import main

from models import export

ROWS, TARGETS = 9, [3, 1, 4, 0, 2, 2, 0, 1, 3]


@pytest.fixture(scope="module")
def relu_mlp(tmp_path_factory):
    """A 7 -> 9 -> 5 ReLU MLP (odd sizes, dynamic batch), its layers as float64 arrays, inputs and baselines."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(7, 9), torch.nn.ReLU(), torch.nn.Linear(9, 5)).eval()
    path = tmp_path_factory.mktemp("ig_auto") / "mlp.onnx"
    path.write_bytes(export(net, (7,)))
    layers = [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
              for m in net if isinstance(m, torch.nn.Linear)]
    rng = np.random.default_rng(3)
    x = (2 * rng.normal(size=(ROWS, 7))).astype(np.float32)
    base = (0.3 * rng.normal(size=(ROWS, 7))).astype(np.float32)
    base[0] = 0.999 * x[0]   # a short path: most likely no kink at all (an easy row)
    return str(path), layers, x, base


def _segments(layers, x, b):
    """``(start, stop, jacobian of the output)`` of each affine piece of the network along ``b + a (x - b)``."""
    d, a, out = x - b, 0.0, []
    while a < 1.0:
        p, q, jac, stop = b.copy(), d.copy(), np.eye(len(x)), 1.0
        for i, (w, c) in enumerate(layers):
            p, q, jac = w @ p + c, w @ q, w @ jac
            if i == len(layers) - 1:
                break
            v = p + q * a
            on = (v > 1e-12) | ((np.abs(v) <= 1e-12) & (q > 0))   # the pattern just after a
            with np.errstate(divide="ignore", invalid="ignore"):
                roots = np.where(q != 0, -p / q, np.inf)
            later = roots[roots > a + 1e-14]
            stop = min(stop, later.min()) if later.size else stop
            p, q, jac = p * on, q * on, jac * on[:, None]
        out.append((a, stop, jac))
        a = stop
    return out


def exact_ig(layers, x, base, targets):
    rows = []
    for xi, bi, t in zip(x.astype(np.float64), base.astype(np.float64), targets):
        rows.append((xi - bi) * sum((stop - start) * jac[t] for start, stop, jac in _segments(layers, xi, bi)))
    return np.stack(rows)


def fixed_gauss_legendre(layers, x, base, targets, n):
    """The textbook n-node Gauss-Legendre IG with the exact gradient at each node."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    nodes, weights = (nodes + 1) / 2, weights / 2
    rows = []
    for xi, bi, t in zip(x.astype(np.float64), base.astype(np.float64), targets):
        grads = [_segments(layers, bi + a * (xi - bi), bi + a * (xi - bi))[0][2][t] for a in nodes]
        rows.append((xi - bi) * np.tensordot(weights, np.stack(grads), 1))
    return np.stack(rows)


def _relative_errors(attr, ref):
    return np.linalg.norm(attr - ref, axis=1) / np.linalg.norm(ref, axis=1)


def test_auto_reaches_target_delta_on_every_row_with_fewer_nodes_for_easy_rows(relu_mlp):
    model, layers, x, base = relu_mlp
    ref = exact_ig(layers, x, base, TARGETS)
    kinks = [len(_segments(layers, xi, bi)) - 1 for xi, bi in zip(x.astype(np.float64), base.astype(np.float64))]
    ex = onnxplain.Explainer(model, "ig")
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # every row converges: no warning
        attr, delta = ex.explain(x, target=TARGETS, baselines=base, n_steps="auto", target_delta=1e-2,
                                 max_steps=1024, return_convergence_delta=True)
    assert (_relative_errors(attr, ref) <= 1e-2).all()
    assert (delta.error <= 1e-2).all() and len(set(delta.steps.tolist())) > 2
    assert kinks[0] == 0 and delta.steps[0] == 16 and delta.steps.max() >= 64   # a row without kinks stops first
    gap = ref.sum(axis=1)   # the exact integral is complete: f(x) - f(b)
    np.testing.assert_allclose(delta, attr.sum(axis=1) - gap, atol=1e-4)


def test_rows_short_of_target_at_max_steps_warn_once_and_the_others_reach_it(relu_mlp):
    model, layers, x, base = relu_mlp
    ref = exact_ig(layers, x, base, TARGETS)
    ex = onnxplain.Explainer(model, "ig")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attr, delta = ex.explain(x, target=TARGETS, baselines=base, n_steps="auto", target_delta=1e-3,
                                 max_steps=1024, return_convergence_delta=True)
    short = np.flatnonzero(delta.error > 1e-3)
    reached = np.flatnonzero(delta.error <= 1e-3)
    assert reached.size and (_relative_errors(attr[reached], ref[reached]) <= 1e-3).all()
    assert (delta.steps[short] == 1024).all()
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if short.size:
        assert len(messages) == 1 and f"{short.size} row(s) did not reach target_delta=0.001" in messages[0]
        named = [int(r) for r in re.findall(r"(\d+) \(", messages[0])]
        assert named == short.tolist()
    else:
        assert not messages


def test_fixed_n_steps_is_the_fixed_gauss_legendre_rule(relu_mlp):
    model, layers, x, base = relu_mlp
    attr, delta = onnxplain.Explainer(model, "ig").explain(x, target=TARGETS, baselines=base, n_steps=20,
                                                           return_convergence_delta=True)
    np.testing.assert_allclose(attr, fixed_gauss_legendre(layers, x, base, TARGETS, 20), rtol=1e-4, atol=1e-5)
    assert type(delta) is np.ndarray    # no per-row steps: the call ran 20 nodes for every row


@pytest.mark.parametrize("params, message", [
    (dict(target_delta=0), "target_delta must be a positive number"),
    (dict(target_delta=-1e-3), "target_delta must be a positive number"),
    (dict(target_delta="small"), "target_delta must be a positive number"),
    (dict(target_delta=float("nan")), "target_delta must be a positive number"),
    (dict(max_steps=8), "max_steps must be an int of at least 16"),
    (dict(n_steps="adaptive"), 'n_steps must be a positive int or "auto"'),
])
def test_bad_tolerances_are_refused_before_anything_runs(relu_mlp, params, message, monkeypatch):
    model, _, x, base = relu_mlp
    ex = onnxplain.Explainer(model, "ig")
    monkeypatch.setattr(ex.session, "run", lambda *a, **k: pytest.fail("the session ran"))
    with pytest.raises(ValueError, match=re.escape(message)):
        ex.explain(x, target=TARGETS, **{"n_steps": "auto", **params})


def test_auto_under_a_noise_tunnel_or_as_a_graph_default_is_refused(relu_mlp, tmp_path):
    model, _, x, _ = relu_mlp
    with pytest.raises(ValueError, match="noise tunnel"):
        onnxplain.Explainer(model, "ig", noise_tunnel="smoothgrad").explain(x, target=1, n_steps="auto",
                                                                            nt_samples=2, seed=0)
    with pytest.raises(ValueError, match="chosen per call"):
        onnxplain.convert(model, str(tmp_path / "ig.onnx"), "ig", n_steps="auto")


def test_cli_integrates_to_a_tolerance(relu_mlp, tmp_path):
    model, layers, x, base = relu_mlp
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "attr.npy"
    assert main(["explain", model, str(tmp_path / "x.npy"), "-m", "ig", "--target", "1", "--param", "n_steps=auto",
                 "--target-delta", "0.01", "--max-steps", "1024", "--out", str(out)]) == 0
    zero = np.zeros_like(x)
    assert (_relative_errors(np.load(out), exact_ig(layers, x, zero, [1] * ROWS)) <= 1e-2).all()
