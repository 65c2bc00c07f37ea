"""Comparison helpers and references shared by the tests."""
import itertools
from math import factorial

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


def brute_force_shapley(f, x, base, labels, n_groups):
    """Shapley values of groups from the definition: all coalitions, weights |S|!(G-|S|-1)!/G!."""
    def value(coalition):
        keep = np.isin(labels, list(coalition))
        return f(np.where(keep, x, base))

    phi = np.zeros((x.shape[0], n_groups))
    for i in range(n_groups):
        others = [g for g in range(n_groups) if g != i]
        for size in range(n_groups):
            w = factorial(size) * factorial(n_groups - size - 1) / factorial(n_groups)
            for s in itertools.combinations(others, size):
                phi[:, i] += w * (value(s + (i,)) - value(s))
    return phi


def captum_noise(x: torch.Tensor, seed: int, samples: int, stdev: float) -> np.ndarray:
    """The standard-normal draws NoiseTunnel makes after ``torch.manual_seed(seed)``, as (S, N, *row).

    NoiseTunnel draws ``torch.normal(0, stdev_expanded)`` shaped ``(N*S, *row)`` and adds it to
    ``x.repeat_interleave(S, dim=0)``: the S samples of row n are contiguous.  ``stdev`` should be a
    power of two, so that ``stdev * (draw / stdev)`` is exactly Captum's draw in float32.
    """
    torch.manual_seed(seed)
    draw = torch.normal(0, torch.tensor(stdev).repeat((x.shape[0] * samples,) + tuple(x.shape[1:])))
    z = (draw / stdev).reshape((x.shape[0], samples) + tuple(x.shape[1:]))
    return z.transpose(0, 1).numpy().copy()


def array_at(address: int, dtype, shape) -> np.ndarray:
    """A copy of the array an IO binding was given by address (what onnxruntime would read there)."""
    import ctypes
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    return np.frombuffer((ctypes.c_char * size).from_address(address), dtype).reshape(shape).copy()


def fake_cuda_onnxruntime(monkeypatch, produce):
    """onnxruntime as on a machine with CUDA (there is no GPU here): its sessions have one input ``x`` and one
    output ``y`` (``produce(x)``, computed when outputs are copied back), and their IO bindings record what
    they are asked.  Returns the list of calls (bind_output, run, clear_inputs, clear_outputs) and the list
    of bindings made."""
    from onnxplain import runtime

    calls, made = [], []

    class Binding:
        def __init__(self):
            self.inputs, self.outputs = {}, []
            made.append(self)

        def bind_input(self, name, device, device_id, dtype, shape, address):
            self.inputs[name] = array_at(address, dtype, shape)

        def bind_output(self, name, device="cpu", *rest):
            calls.append(("bind_output", name, device))
            self.outputs.append(name)

        def clear_binding_inputs(self):
            calls.append(("clear_inputs",))
            self.inputs = {}

        def clear_binding_outputs(self):
            calls.append(("clear_outputs",))
            self.outputs = []

        def copy_outputs_to_cpu(self):
            return [produce(self.inputs["x"]) for _ in self.outputs]

    class Session:
        def __init__(self, *a, providers=None, **k):
            pass

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

        def get_inputs(self):
            return [type("I", (), {"name": "x"})()]

        def get_outputs(self):
            return [type("O", (), {"name": "y", "type": "tensor(float)"})()]

        def io_binding(self):
            return Binding()

        def run_with_iobinding(self, binding):
            calls.append(("run",))

        def run(self, *a, **k):
            raise AssertionError("the CUDA path must not use run()")

    monkeypatch.setattr(runtime.ort, "InferenceSession", Session)
    monkeypatch.setattr(runtime.ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    return calls, made


def assert_refused_before_running(ex, match: str, *args, **kwargs) -> None:
    """``ex.explain(*args, **kwargs)`` raises a ValueError matching ``match`` before its session runs."""
    import pytest

    ex.session.run = lambda *a, **k: pytest.fail("the session ran")
    try:
        with pytest.raises(ValueError, match=match):
            ex.explain(*args, **kwargs)
    finally:
        del ex.session.run


def stop_server(proc, seconds: float = 30) -> None:
    """Stop a server subprocess started by a module fixture: SIGTERM, then kill if it does not exit in time."""
    import signal
    import subprocess
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
