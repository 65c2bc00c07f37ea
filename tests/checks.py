"""Comparison helpers shared by the tests."""
import numpy as np
import torch


def assert_close(ours, ref, rtol: float, scale=None, what: str = "attributions"):
    """``|ours - ref| <= rtol * (|ref| + scale)``, ``scale`` defaulting to the largest |ref|."""
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    ours = np.asarray(ours)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != reference {ref.shape}"
    assert np.all(np.isfinite(ours)), f"{what}: non-finite values"
    scale = float(np.abs(ref).max()) if scale is None else float(scale)
    assert scale > 0, f"{what}: the reference is all zeros, the comparison would be vacuous"
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * scale, err_msg=what)
