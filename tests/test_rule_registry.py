"""The tags of the standard rules against the override tables of the modified rules.

Each op of the standard table (:mod:`onnxplain.vjp.registry`) carries one tag: ``linear`` (the plain gradient
conserves differences, so no modified rule is needed), ``nonlinear`` (DeepLIFT needs a rule of its own),
``compound`` (holds a graph or a cell; the modified rules apply inside) or ``no-gradient`` (cuts the gradient
path).  Whether a tag is *true* of an op is held by the ONNX node tests (tests/test_node_tests.py: an op some
node test shows not affine has a DeepLIFT rule; an op tagged linear is affine in all its node tests); here the
tables are held to the tags:

* DeepLIFT (``rules.deeplift.RESCALE``) has a rule for every op tagged ``nonlinear``, for every opset range in
  which the standard rule changes; it has none for ops tagged ``linear`` or ``compound``; the ``no-gradient``
  ops it gives a rule are the float-valued step functions (a row and its reference may sit on different steps);
* epsilon-LRP (``rules.lrp.EPSILON``) overrides exactly the unary nonlinearities (tag ``nonlinear``, flagged
  ``unary``); the other nonlinear ops (products, Softmax, MaxPool, normalisations...) keep their gradient;
* guided backpropagation and deconvolution override unary nonlinearities only (ReLU).
"""
from __future__ import annotations

import pytest

from onnxplain import rules
from onnxplain.rules.deeplift import RESCALE
from onnxplain.rules.guided import DECONVOLUTION, GUIDED
from onnxplain.rules.lrp import EPSILON
from onnxplain.vjp import RULES, register
from onnxplain.vjp.registry import TAGS, tag_of, tagged

#: Ops tagged no-gradient that DeepLIFT still gives a rule: float outputs that step (piecewise constant maps).
STEP_FUNCTIONS = {"Floor", "Ceil", "Round", "Sign", "Hardmax"}


def test_every_op_has_exactly_one_tag():
    wrong = {op: sorted({str(r.tag) for r in rs}) for op, rs in RULES.items()
             if len({r.tag for r in rs}) != 1 or rs[0].tag not in TAGS}
    assert not wrong, f"ops without exactly one tag: {wrong}"
    by_tag = {t: set(tagged(t)) for t in TAGS}
    assert sum(len(ops) for ops in by_tag.values()) == len(RULES)
    assert set().union(*by_tag.values()) == set(RULES)
    assert all(r.cuts == (tag_of(op) == "no-gradient") for op, rs in RULES.items() for r in rs)


def test_the_views_of_rules_are_the_tags():
    assert set(rules.LINEAR) == set(tagged("linear"))
    assert set(rules.COMPOUND) == set(tagged("compound")) == {"If", "Loop", "Scan", "LSTM", "GRU", "RNN"}
    assert set(rules.NONLINEAR_UNARY) == set(tagged("nonlinear", unary=True))
    assert {"Relu", "Sigmoid", "Tanh", "Exp", "Gelu"} <= set(rules.NONLINEAR_UNARY)
    assert not {"Mul", "Softmax", "MaxPool", "Neg"} & set(rules.NONLINEAR_UNARY)


def test_every_nonlinear_op_has_a_deeplift_rule():
    missing = sorted(set(tagged("nonlinear")) - set(RESCALE))
    assert not missing, f"ops tagged nonlinear without a DeepLIFT rule: {missing}"


def test_deeplift_rules_cover_every_opset_range_of_the_standard_rule():
    """Where an op's standard rule changes with the opset (axes as an input from opset 18...), its DeepLIFT
    rule changes there too, and no standard rule applies at an opset where no DeepLIFT rule does."""
    gaps = []
    for op in tagged("nonlinear"):
        standard = sorted(r.since for r in RULES[op])
        modified = {r.since for r in RESCALE.get(op, ())}
        if modified and (min(modified) > standard[0] or not set(standard[1:]) <= modified):
            gaps.append(f"{op}: standard from {standard}, DeepLIFT from {sorted(modified)}")
    assert not gaps, gaps


def test_deeplift_has_no_rule_for_linear_or_compound_ops():
    """Today no linear or compound op has a DeepLIFT rule at all (not even one equal to the standard rule)."""
    extra = {op: tag_of(op) for op in RESCALE if tag_of(op) not in ("nonlinear", "no-gradient")}
    assert not extra, f"DeepLIFT rules for ops whose gradient needs none: {extra}"
    assert {op for op in RESCALE if tag_of(op) == "no-gradient"} == STEP_FUNCTIONS


def test_epsilon_lrp_overrides_exactly_the_unary_nonlinearities():
    assert set(EPSILON) == set(tagged("nonlinear", unary=True))
    assert set(EPSILON) <= set(tagged("nonlinear"))


def test_guided_rules_are_at_unary_nonlinearities():
    for table in (GUIDED, DECONVOLUTION):
        assert set(table) == {"Relu"} <= set(tagged("nonlinear", unary=True))


@pytest.mark.parametrize("table", [RESCALE, EPSILON, GUIDED, DECONVOLUTION],
                         ids=["deeplift", "lrp", "guided", "deconvolution"])
def test_override_tables_override_standard_rules_and_carry_no_tags(table):
    assert set(table) <= set(RULES)
    assert all(r.tag is None and not r.cuts for rs in table.values() for r in rs)


def test_register_refuses_a_missing_or_conflicting_tag():
    with pytest.raises(ValueError, match="needs a tag"):
        register("NotAnOp")(lambda ctx: [None])
    with pytest.raises(ValueError, match="tagged"):
        register("Relu", tag="linear", since=99)(lambda ctx: [None])
    with pytest.raises(ValueError, match="no tag"):
        register("Relu", tag="nonlinear", table={})(lambda ctx: [None])
    assert "NotAnOp" not in RULES and all(r.since != 99 for r in RULES["Relu"])
