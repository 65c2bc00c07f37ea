"""Modified chain rules, as override tables over the standard VJP rules.

A modified-rule method builds its backward pass with ``backward(...,
overrides=TABLE)``; the standard table in :mod:`onnxplain.vjp` is never edited.
Rules that need reference activations (DeepLIFT) read them through
``ctx.ref``: a :class:`Partner` that maps a tensor of the expanded batch
``[inputs; references]`` to the same tensor with its two halves swapped, so each
row meets its own reference row elementwise.

The tables: :data:`onnxplain.rules.deeplift.RESCALE` (DeepLIFT, assembled from the rule families
``rescale.py``, ``rescale_fused.py``, ``rescale_products.py``, ``rescale_sampling.py``, ``rescale_spectral.py``,
whose shared helpers are in ``rescale_common.py``), :data:`onnxplain.rules.lrp.EPSILON` (epsilon-LRP) and
:mod:`onnxplain.rules.guided` (guided backpropagation, deconvolution).  Which ops they must cover follows from the
tags of the standard rules (:mod:`onnxplain.vjp.registry`), viewed below.
"""
from __future__ import annotations

import onnx

from ..vjp import RULES
from ..vjp.registry import tagged

# Views of the tags of the standard rules (:mod:`onnxplain.vjp.registry`); the tags are the one classification.

#: Unary elementwise nonlinearities (tag ``nonlinear``, flagged ``unary``): the ops the unary modified rules
#: replace (Rescale's ``Δy / Δz``, ε-LRP's ``y / (z + eps s(z))``).
NONLINEAR_UNARY = tagged("nonlinear", unary=True)

#: Ops affine in their float inputs jointly, or that move, copy or select elements at places that do not depend
#: on the input (tag ``linear``): the plain gradient conserves the difference exactly (``Δy = J Δx``), so DeepLIFT
#: and the other modified rules need no rule of their own.  Ops tagged ``nonlinear`` have a rule in DeepLIFT's
#: table (``rules.deeplift.RESCALE``); tests hold every tag to that, and each linear op to being affine in the ONNX
#: node tests.
LINEAR = tagged("linear")

#: Ops that hold a graph or a cell of other ops (tag ``compound``): the modified rules apply to the ops inside.
COMPOUND = tagged("compound")


class Partner:
    """``partner(t)``: the second half of ``t``'s rows stacked on the first half (cached per tensor).

    The expanded batch is ``[inputs; references]``; a tensor whose axis 0 folds
    more than the batch (attention windows, heads) keeps that order, so each
    tensor is split at half of its *own* first axis.
    """

    stacked = True   # input and reference rows are halves of one tensor

    def __init__(self, b):
        self.b = b
        self._cache: dict[str, str] = {}

    def half(self, t: str) -> str:
        """``[rows of t / 2]`` (1-D int64)."""
        b = self.b
        return b.div(b.op("Slice", b.shape_of(t), b.ints([0]), b.ints([1])), b.ints([2]))

    def __call__(self, t: str) -> str:
        if t not in self._cache:
            b, h = self.b, self.half(t)
            top = b.op("Slice", t, b.ints([0]), h, b.ints([0]))
            bottom = b.op("Slice", t, h, b.add(h, h), b.ints([0]))
            self._cache[t] = b.op("Concat", bottom, top, axis=0)
            b.set_type(self._cache[t], b.elem_type(t), b.shape(t))
        return self._cache[t]

    def bottom_offset(self, t: str) -> str:
        """Flat-index offset of the second half of ``t`` (1-D int64 [size / 2])."""
        b = self.b
        return b.div(b.reshape(b.op("Size", t), b.ints([1])), b.ints([2]))

    @staticmethod
    def paired(b, pairs: dict, shared) -> "PairedPartner":
        """The partner map of a region whose references run apart from its inputs (a loop's reference
        iterations): :class:`PairedPartner` over ``pairs``."""
        return PairedPartner(b, pairs, shared)


class PairedPartner:
    """``partner(t)`` when the inputs and the references run through two copies of the forward pass
    (``batch_size``): the same tensor in the other copy.  Tensors both copies share (weights,
    unbatched inputs, constants) are their own partners; a tensor a rule computed from forward tensors
    is partnered by the same nodes replayed on their partners (memoised).  Rules that index into the
    stacked halves of one tensor (MaxPool's cross-max) cannot work on separate copies and say so."""

    stacked = False  # input and reference rows are tensors of their own

    def __init__(self, b, pairs: dict, shared):
        self.b = b
        self.pairs = dict(pairs)
        self.shared = set(shared)

    def __call__(self, t: str) -> str:
        if t not in self.pairs:
            self.pairs[t] = t if t in self.shared else self._replay(t)
        return self.pairs[t]

    def _replay(self, t: str) -> str:
        """The nodes that computed ``t`` (after the forward copies), emitted again on the partners of their
        inputs; ``t`` itself when none of its inputs has a partner of its own."""
        node = next((n for n in reversed(self.b.nodes) if t in n.output), None)
        if node is None and any(init.name == t for init in self.b.initializers):
            return t          # a constant a rule made: the same in both copies
        if node is None or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                               for a in node.attribute):
            raise self._unsupported(t)
        inputs = [self(i) if i else i for i in node.input]
        if inputs == list(node.input):
            return t          # computed from shared tensors only: the same in both copies
        outputs = [self.b.fresh(f"{o}__partner") if o else "" for o in node.output]
        self.b.nodes.append(onnx.helper.make_node(node.op_type, inputs, outputs, domain=node.domain,
                                                  name=self.b.fresh(f"{node.name or node.op_type}__partner")))
        self.b.nodes[-1].attribute.extend(node.attribute)
        for o, p in zip(node.output, outputs):
            if o:
                self.b.set_type(p, self.b.elem_type(o), self.b.shape(o))
                self.pairs[o] = p
        return self.pairs[t]

    def half(self, t: str) -> str:
        raise self._unsupported(t)

    bottom_offset = half
    paired = staticmethod(Partner.paired)

    @staticmethod
    def _unsupported(t: str) -> Exception:
        from ..errors import UnsupportedOperatorError
        return UnsupportedOperatorError([], f"DeepLIFT's rule at tensor {t!r} needs the inputs and their references "
                                            f"stacked in one batch, but with batch_size they run through separate "
                                            f"copies of the forward pass; explain this model without batch_size")


def standard_rule(op_type: str, opset: int):
    """The standard rule of ``op_type`` (for fallbacks inside modified rules)."""
    for r in RULES.get(op_type, []):
        if r.since <= opset:
            return r
    return None
