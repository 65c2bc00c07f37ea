"""Modified chain rules, as override tables over the standard VJP rules.

A modified-rule method builds its backward pass with ``backward(...,
overrides=TABLE)``; the standard table in :mod:`onnxplain.vjp` is never edited.
Rules that need reference activations (DeepLIFT) read them through
``ctx.ref``: a :class:`Partner` that maps a tensor of the expanded batch
``[inputs; references]`` to the same tensor with its two halves swapped, so each
row meets its own reference row elementwise.
"""
from __future__ import annotations

#: Unary elementwise nonlinearities: the ops the modified rules replace.
NONLINEAR_UNARY = ("Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "Tanh", "Softplus",
                   "Softsign", "HardSigmoid", "HardSwish", "Clip", "Erf", "Gelu", "Exp", "Log", "Sqrt",
                   "Reciprocal", "Abs", "Sin", "Cos", "ThresholdedRelu", "Mish")


class Partner:
    """``partner(t)``: rows ``[H, 2H)`` of ``t`` stacked on rows ``[0, H)`` (cached per tensor)."""

    def __init__(self, b, half: str):
        self.b, self.half = b, half
        self._cache: dict[str, str] = {}

    def __call__(self, t: str) -> str:
        if t not in self._cache:
            b, h = self.b, self.half
            top = b.op("Slice", t, b.ints([0]), h, b.ints([0]))
            bottom = b.op("Slice", t, h, b.add(h, h), b.ints([0]))
            self._cache[t] = b.op("Concat", bottom, top, axis=0)
        return self._cache[t]

    def bottom_offset(self, t: str) -> str:
        """Elements in the first half of ``t`` (int64 scalar-shaped [1]): flat-index offset of the second half."""
        b = self.b
        row_shape = b.op("Slice", b.shape_of(t), b.ints([1]), b.ints([1 << 62]))
        return b.mul(b.op("ReduceProd", row_shape, keepdims=1), self.half)


def standard_rule(op_type: str, opset: int):
    """The standard rule of ``op_type`` (for fallbacks inside modified rules)."""
    from ..vjp import RULES
    for r in RULES.get(op_type, []):
        if r.since <= opset:
            return r
    return None
