"""The forms of Conv's input cotangent (onnxplain.vjp.linalg.conv_input_grad_form) against PyTorch autograd.

Each form is held, on the layers that choose it and with the choice forced on
the layers that do not, against finite differences (float64, onnx.reference),
PyTorch autograd (float64) and onnxruntime (float32): strides 1, 2 and 3,
groups, depthwise, dilation, odd sizes, asymmetric pads, SAME padding, 1-D and
3-D, and a padding larger than the kernel reaches.
"""
from __future__ import annotations

import numpy as np
import pytest

import onnxplain.vjp.linalg as linalg
from onnxplain.vjp._common import phase_form_fits
from test_vjp_linalg import _conv
from vjp_harness import build_case_model, check_case, vjp_model

FORCED = [
    _conv("s1_pads", (2, 3, 5, 6), (4, 3, 3, 3), pads=[1, 1, 1, 1]),
    _conv("s1_dilated_asym", (1, 2, 7, 8), (3, 2, 3, 2), dilations=[2, 3], pads=[1, 2, 2, 0]),
    _conv("s1_groups", (2, 4, 5, 6), (6, 2, 3, 3), group=2, pads=[1, 0, 0, 1]),
    _conv("s1_depthwise", (2, 3, 6, 5), (3, 1, 3, 3), group=3, pads=[1, 1, 1, 1]),
    _conv("s2_odd", (2, 3, 7, 9), (4, 3, 3, 3), strides=[2, 2], pads=[1, 1, 1, 1]),
    _conv("s2_asym_pads", (2, 3, 6, 7), (4, 3, 3, 3), strides=[2, 2], pads=[1, 0, 0, 2]),
    _conv("s3_2_skip_rows", (1, 2, 8, 7), (3, 2, 2, 3), strides=[3, 2], pads=[0, 1, 2, 0]),
    _conv("s3_kernel_longer", (1, 2, 11, 10), (3, 2, 5, 4), strides=[3, 3], pads=[2, 1, 1, 2]),
    _conv("s2_dilated_other_axis", (1, 2, 7, 8), (3, 2, 3, 2), strides=[1, 2], dilations=[2, 1], pads=[1, 0, 2, 1]),
    _conv("s2_groups", (2, 4, 5, 6), (6, 2, 3, 3), group=2, strides=[2, 2], pads=[1, 1, 0, 0]),
    _conv("s2_depthwise_mult2", (1, 3, 5, 5), (6, 1, 2, 2), group=3, strides=[2, 2]),
    _conv("s2_same_upper", (1, 2, 7, 6), (3, 2, 3, 3), strides=[2, 2], auto_pad="SAME_UPPER"),
    _conv("s2_3_same_lower", (1, 2, 7, 6), (3, 2, 2, 4), strides=[2, 3], auto_pad="SAME_LOWER"),
    _conv("s1_pad_beyond_kernel", (1, 2, 4, 5), (3, 2, 2, 2), pads=[3, 0, 1, 3]),
    _conv("conv1d_s3", (2, 3, 10), (4, 3, 4), strides=[3], pads=[2, 1]),
    _conv("conv3d_s2_1_2", (1, 2, 5, 4, 5), (3, 2, 2, 3, 2), strides=[2, 1, 2], pads=[1, 0, 1, 0, 1, 1]),
    _conv("dyn_batch_s2", (2, 3, 7, 6), (4, 3, 3, 3), strides=[2, 2], pads=[1, 1, 0, 0], dynamic=True),
]


@pytest.fixture
def forced_conv_form(monkeypatch):
    """Make every Conv the Conv form can transpose take it, whatever the cost rule says."""
    def always(win, spatial, group, weight):
        return "conv" if weight is not None and phase_form_fits(win, spatial) else "conv_transpose"
    monkeypatch.setattr(linalg, "conv_input_grad_form", always)


def _graph(case):
    model, wrt, out = build_case_model(case)
    return vjp_model(model, wrt, out).graph


def _ops(case) -> list[str]:
    return [n.op_type for n in _graph(case).node]


@pytest.mark.parametrize("case", FORCED, ids=lambda c: c.name)
def test_conv_form_matches_autograd(case, forced_conv_form):
    ops = _ops(case)
    assert "ConvTranspose" not in ops and ops.count("Conv") == 2   # the forward and the cotangent's one Conv
    check_case(case)


WIDE = [   # layers the rule sends to the Conv form: stride 1, ungrouped, 32 channels or more into the Conv
    _conv("wide_s1", (2, 32, 5, 6), (8, 32, 3, 3), pads=[1, 1, 1, 1], bias=True),
    _conv("wide_s1_dilated_odd", (1, 33, 7, 5), (4, 33, 3, 2), dilations=[2, 1], pads=[2, 0, 1, 1]),
]
NARROW = [  # layers the rule leaves to ConvTranspose: few channels, or a stride
    _conv("narrow_image_s1", (2, 3, 6, 5), (8, 3, 3, 3), pads=[1, 1, 1, 1]),
    _conv("wide_s2", (1, 32, 7, 6), (4, 32, 3, 3), strides=[2, 2], pads=[1, 1, 1, 1]),
]
GROUPED = [  # grouped layers keep their grouped Conv (rows past every window crop the cotangent first)
    _conv("grouped_pad_beyond_kernel", (1, 4, 4, 5), (4, 2, 2, 2), group=2, pads=[3, 0, 1, 3]),
    _conv("wide_depthwise_s1", (1, 32, 5, 4), (32, 1, 3, 3), group=32, pads=[1, 1, 1, 1]),
]


@pytest.mark.parametrize("case", WIDE + NARROW + GROUPED, ids=lambda c: c.name)
def test_the_cost_rule_chooses_and_each_choice_matches_autograd(case):
    ops = _ops(case)
    assert ("ConvTranspose" in ops) == (case in NARROW)
    assert ("w_phases" in " ".join(i.name for i in _graph(case).initializer)) == (case in WIDE)
    check_case(case)


def test_a_weight_that_is_an_input_keeps_conv_transpose():
    """The Conv form needs the weight's values when the graph is built."""
    case = _conv("weight_attributed", (1, 32, 5, 5), (4, 32, 3, 3), pads=[1, 1, 1, 1], which="XW")
    assert "ConvTranspose" in _ops(case)
    check_case(case)


def test_phase_weight_against_the_definition():
    """Phase r of axis a holds the taps k = r + s t, flipped; channels swapped; zero taps past the kernel."""
    from onnxplain.vjp._common import phase_weight
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 5, 3))
    s, group = (2, 3), 1
    out = phase_weight(w, s, group)
    T = (3, 1)
    assert out.shape == (s[0] * s[1] * 3, 4) + T
    for r0 in range(s[0]):
        for r1 in range(s[1]):
            for c in range(3):
                for t0 in range(T[0]):
                    for t1 in range(T[1]):
                        k0, k1 = r0 + s[0] * (T[0] - 1 - t0), r1 + s[1] * (T[1] - 1 - t1)
                        want = w[:, c, k0, k1] if k0 < 5 and k1 < 3 else np.zeros(4)
                        np.testing.assert_array_equal(out[(r0 * s[1] + r1) * 3 + c, :, t0, t1], want)
