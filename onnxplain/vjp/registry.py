"""The registry of backward rules: :class:`Rule`, the standard table :data:`RULES` and :func:`register`.

Every op in the standard table carries one **tag**, what its gradient means for the modified rules:

* ``"linear"``: affine in its float inputs jointly, or it moves, copies or selects elements at places that do
  not depend on the input.  The plain gradient conserves differences exactly (``Δy = J Δx``), so DeepLIFT and
  the other modified rules need no rule of their own;
* ``"nonlinear"``: the plain gradient does not conserve differences; DeepLIFT has an override
  (:data:`onnxplain.rules.deeplift.RESCALE`).  Those flagged ``unary`` are one-input elementwise maps
  ``y = f(x)`` (other inputs, if any, parameterise ``f``): the unary modified rules (Rescale, ε-LRP) apply;
* ``"compound"``: holds a graph or a cell of other ops (If, Loop, Scan, LSTM, GRU, RNN): the modified rules
  apply to the ops inside;
* ``"no-gradient"``: the op passes no gradient (integer or boolean outputs, random draws, piecewise constant
  maps), so a gradient path through it is cut.

Override tables of the modified rules (``table=...``) hold rules without tags: the tag is the standard op's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

#: The tags of the standard rules (module docstring).
TAGS = ("linear", "nonlinear", "compound", "no-gradient")


@dataclass(frozen=True)
class Rule:
    fn: Callable
    broadcast: bool = False
    since: int = 1  # first opset of the default domain this rule applies to
    tag: str | None = None  # one of TAGS in the standard table; None in override tables
    unary: bool = False  # a one-input elementwise map of its first input (other inputs parameterise it)

    @property
    def cuts(self) -> bool:
        """The op passes no gradient at all: a path through it carries none."""
        return self.tag == "no-gradient"


#: The standard rules: op type (``domain.op`` outside the default domain) -> rules, newest ``since`` first.
RULES: dict[str, list[Rule]] = {}


def register(*op_types: str, tag: str | None = None, broadcast: bool = False, since: int = 1, unary: bool = False,
             table: dict | None = None):
    """Decorator: register ``fn`` as the rule of ``op_types`` (from opset ``since`` on).

    A rule of the standard table needs its ``tag`` (one of :data:`TAGS`), the same for every opset range of
    an op; ``unary`` flags one-input elementwise maps.  ``table``: an override table of a modified-rule
    method instead of the standard one (no tag there)."""
    if table is None:
        if tag not in TAGS:
            raise ValueError(f"the rule of {op_types} needs a tag, one of {TAGS}; got {tag!r}")
        for op in op_types:
            known = {r.tag for r in RULES.get(op, ())}
            if known - {tag}:
                raise ValueError(f"{op} is tagged {sorted(known)} already; its rule from opset {since} says {tag!r}")
    elif tag is not None:
        raise ValueError("rules of an override table carry no tag (the standard op's tag applies)")
    target = RULES if table is None else table

    def deco(fn):
        for op in op_types:
            rules = target.setdefault(op, [])
            rules.append(Rule(fn, broadcast, since, tag, unary))
            rules.sort(key=lambda r: -r.since)
        return fn
    return deco


def tag_of(op_type: str) -> str | None:
    """The tag of ``op_type`` in the standard table (None when it has no rule)."""
    rules = RULES.get(op_type)
    return rules[0].tag if rules else None


def tagged(tag: str, unary: bool | None = None) -> tuple[str, ...]:
    """The op types of the standard table tagged ``tag`` (and whose ``unary`` flag is ``unary``, unless None),
    sorted.  Read it after importing :mod:`onnxplain.vjp`, which registers the rules."""
    if tag not in TAGS:
        raise ValueError(f"unknown tag {tag!r}; the tags are {TAGS}")
    return tuple(sorted(op for op, rules in RULES.items()
                        if rules[0].tag == tag and (unary is None or any(r.unary for r in rules) == unary)))


def zero(*op_types: str) -> None:
    """Ops whose outputs carry no gradient (comparisons, shapes, random draws...): tagged ``no-gradient``."""
    register(*op_types, tag="no-gradient")(lambda ctx: [None] * len(ctx.x))


def identity(*op_types: str) -> None:
    """Ops that pass their first input's cotangent through unchanged: tagged ``linear``."""
    register(*op_types, tag="linear")(lambda ctx: [ctx.dy[0]] + [None] * (len(ctx.x) - 1))


def elementwise(op_type: str, derivative: Callable, *, tag: str) -> None:
    """Unary elementwise ops: ``dx = dy * derivative(ctx, x, y)`` (flagged ``unary``)."""
    @register(op_type, tag=tag, unary=True)
    def rule(ctx):
        d = derivative(ctx, ctx.x[0], ctx.y[0])
        return [ctx.b.mul(ctx.dy[0], d)] + [None] * (len(ctx.x) - 1)
    rule.__name__ = f"vjp_{op_type.lower()}"
