"""feature_permutation against Captum's FeaturePermutation fed the same permutations of the rows."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import FeaturePermutation

import onnxplain
from models import export, mlp, pool_cnn
from onnxplain.methods.ablation import permutations


def _captum_with(perms, monkeypatch):
    """Captum's FeaturePermutation drawing ``perms`` (one per group, in group order) from torch.randperm."""
    queue = [torch.from_numpy(p) for p in perms]
    monkeypatch.setattr(torch, "randperm", lambda n, **kw: queue.pop(0))
    return queue


@pytest.mark.parametrize("grouped", [False, True])
def test_tabular_rows_shuffled_per_feature_as_captum_does(grouped, monkeypatch):
    net, row = mlp("relu")
    x = np.random.default_rng(0).standard_normal((7,) + row).astype(np.float32)
    mask = np.array([[0, 0, 1, 2, 2, 2]]) if grouped else None
    n_groups = 3 if grouped else row[0]
    got = onnxplain.Explainer(export(net, row), "feature_permutation").explain(x, target=2, feature_mask=mask, seed=5)
    queue = _captum_with(permutations(n_groups, len(x), 5), monkeypatch)
    want = FeaturePermutation(net).attribute(torch.from_numpy(x), target=2,
                                             feature_mask=None if mask is None else torch.from_numpy(mask))
    assert not queue    # Captum drew exactly one permutation per group
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_image_superpixels_with_per_row_targets(monkeypatch):
    net, row = pool_cnn()
    x = np.random.default_rng(1).random((5,) + row, dtype=np.float32)
    mask = (np.arange(row[1])[:, None] // 4 * 3 + np.arange(row[2])[None, :] // 3)[None, None]
    target = [0, 4, 2, 2, 1]
    ex = onnxplain.Explainer(export(net, row), "feature_permutation", memory_budget=20_000)   # several runs
    got = ex.explain(x, target=target, feature_mask=mask, seed=3)
    _captum_with(permutations(len(np.unique(mask)), len(x), 3), monkeypatch)
    want = FeaturePermutation(net).attribute(torch.from_numpy(x), target=target, feature_mask=torch.from_numpy(mask))
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert ex.estimate(x, target=target, feature_mask=mask).runs > 1


def test_permutations_are_never_the_identity_and_one_row_is_refused():
    perms = permutations(50, 2, 0)
    assert (perms == [1, 0]).all()          # of two rows, the only permutation that is not the identity
    assert all(sorted(p) == list(range(6)) for p in permutations(20, 6, 1))
    net, row = mlp("relu")
    with pytest.raises(ValueError, match="at least 2 rows"):
        onnxplain.Explainer(export(net, row), "feature_permutation").explain(np.zeros((1,) + row, np.float32),
                                                                             target=0)
