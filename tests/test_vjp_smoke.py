import numpy as np
import torch
import pytest
from vjp_harness import Case, check_case

CASES = [
    Case("gemm", "Gemm", [(3, 4), np.random.default_rng(1).standard_normal((5, 4)), np.random.default_rng(2).standard_normal(5)],
         lambda a, w, c: a @ w.T + c, attrs=dict(transB=1)),
    Case("add_bcast", "Add", [(3, 4), (4,)], lambda a, c: a + c),
    Case("mul_bcast", "Mul", [(3, 1, 4), (2, 1)], lambda a, c: a * c),
    Case("relu", "Relu", [(3, 4)], torch.relu, away_from=0.0),
]

@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case(case):
    check_case(case)
