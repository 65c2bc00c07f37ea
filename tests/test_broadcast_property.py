"""Property: for any pair of broadcastable shapes, the walker undoes broadcasting exactly
(checked by finite differences and torch autograd through the harness)."""
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vjp_harness import Case, check_case


@st.composite
def broadcastable_shapes(draw):
    """Two shapes that numpy broadcasts: a common shape, each dim dropped to 1 at random, leading dims cut."""
    full = draw(st.lists(st.integers(1, 3), min_size=1, max_size=4))
    shapes = []
    for _ in range(2):
        dims = [1 if draw(st.booleans()) else d for d in full]
        shapes.append(tuple(dims[draw(st.integers(0, len(dims) - 1)):]))
    return shapes


OPS = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(broadcastable_shapes(), st.sampled_from(sorted(OPS)))
def test_binary_ops_undo_any_broadcast(shapes, op):
    a, c = shapes
    case = Case(f"{op}_{a}_{c}", op, [a, c], OPS[op], positive=op == "Div")
    check_case(case, ort_check=False)
