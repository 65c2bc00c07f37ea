"""Every backward rule against the ONNX backend node tests shipped with the installed ``onnx``.

Each node test whose model takes and gives floats is judged by :mod:`node_oracle`: its backward graph, built
with onnxplain's rules (function bodies written out where an op has none), is held against central finite
differences of the model itself.  A wrong gradient fails; a refusal fails unless it is listed below with its
reason (the README's refused list); a test that cannot be judged is skipped with the reason it gives, which
must be one of the reasons known here, so a new way of failing to judge does not pass unseen.

The same verdicts check the classification of the rules: an op whose node tests are not affine in their
inputs needs a modified rule of its own for DeepLIFT (the plain gradient does not conserve the difference),
and an op declared linear must be affine in every node test of it.
"""
from __future__ import annotations

import fnmatch
import functools

import pytest

from node_oracle import judge, node_tests
from onnxplain.rules import COMPOUND, LINEAR
from onnxplain.rules.deeplift import RESCALE
from onnxplain.vjp import RULES

#: Node tests refused with a reason (glob over test names -> why); none is.
REFUSED: dict[str, str] = {}

#: Reasons a node test is not judged (prefixes of the oracle's skip details).
SKIP_REASONS = (
    "no float input or no float output",       # integer, boolean and string ops
    "sequence or optional inputs",             # sequences, optionals, and float8/bfloat16 data the oracle cannot feed
    "not the default domain",                  # training and preview domains
    "onnxruntime cannot run the model",        # ops or types onnxruntime lacks at the test's opset
    "random draws",
    "every float input sets the output's shape",
    "non-finite values",                       # -inf masks: no finite differences
    "the model is refused: upgrading the model from opset 8",   # Scan-8 changes rank when upgraded
    "no gradient path",
)

NAMES = sorted(node_tests())


@functools.lru_cache(maxsize=None)
def verdict(name: str):
    return judge(name)


def refusal_reason(name: str) -> str | None:
    return next((why for pattern, why in REFUSED.items() if fnmatch.fnmatch(name, pattern)), None)


@pytest.mark.parametrize("name", NAMES)
def test_the_gradient_of_every_node_test(name):
    v = verdict(name)
    if v.kind == "skipped":
        assert v.detail.startswith(SKIP_REASONS), f"{name} skipped for a reason not known here: {v.detail}"
        pytest.skip(v.detail)
    if v.kind == "refused":
        assert refusal_reason(name), f"{name} is refused and not listed in REFUSED: {v.detail}"
        pytest.skip(f"refused: {refusal_reason(name)}")
    assert v.kind == "right", f"{name}: {v.detail}"
    assert refusal_reason(name) is None, f"{name} is listed as refused but builds and is right: drop it from REFUSED"


def single_op_verdicts():
    """(op type, verdict) of every right verdict whose model is one op (repeated or not) of the default domain."""
    for name in NAMES:
        v = verdict(name)
        if v.kind == "right" and len(set(v.ops)) == 1:
            yield v.ops[0], name, v


def test_an_op_that_is_not_affine_has_a_modified_rule():
    """DeepLIFT through an op without a rule of its own uses its gradient, which conserves only where the op is
    affine: every op some node test shows nonlinear has a rule in the modified table (or holds a graph).  Ops
    without a rule of their own (Attention, RMSNormalization...) are written out as their function bodies,
    whose ops are held to the same."""
    missing = sorted({f"{op} ({name})" for op, name, v in single_op_verdicts()
                      if op in RULES and not v.affine and op not in RESCALE and op not in COMPOUND and not _cuts(op)})
    assert not missing, f"nonlinear ops without a DeepLIFT rule: {missing}"


def test_an_op_declared_linear_is_affine_in_its_node_tests():
    nonlinear = sorted({f"{op} ({name})" for op, name, v in single_op_verdicts() if op in LINEAR and not v.affine})
    assert not nonlinear, f"declared linear but not affine in a node test: {nonlinear}"
    judged = {op for op, _, _ in single_op_verdicts()}
    assert {"Add", "Pad", "DepthToSpace", "OneHot"} <= judged    # the check above is not vacuous


def _cuts(op: str) -> bool:
    return all(r.cuts for r in RULES[op])


def test_every_rule_is_linear_modified_compound_or_without_gradient():
    """Each op with a backward rule is declared linear (rules.LINEAR), has a modified rule (RESCALE), holds a
    graph (rules.COMPOUND), or passes no gradient at all; and is only one of the first three."""
    unclassified, twice = [], []
    for op in sorted(RULES):
        kinds = [k for k, table in (("linear", LINEAR), ("modified", RESCALE), ("compound", COMPOUND)) if op in table]
        if len(kinds) > 1:
            twice.append(f"{op}: {kinds}")
        elif not kinds and not _cuts(op):
            unclassified.append(op)
    assert not unclassified, f"ops with a gradient rule that are neither linear nor given a modified rule: {unclassified}"
    assert not twice, f"ops classified twice: {twice}"
