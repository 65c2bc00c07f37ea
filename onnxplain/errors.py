"""The errors onnxplain raises on purpose."""
from __future__ import annotations


class OnnxplainError(Exception):
    """Base class of onnxplain's own errors."""


class UnsupportedOperatorError(OnnxplainError, NotImplementedError):
    """A node on the path from the attributed inputs to the output has no backward rule."""

    def __init__(self, nodes, message: str | None = None):
        self.nodes = list(nodes)
        self.op_types = sorted({n.op_type for n in self.nodes})
        if message is None:
            listed = ", ".join(f"{n.op_type} (node {n.name or n.output[0]!r})" for n in self.nodes[:10])
            more = f" and {len(self.nodes) - 10} more" if len(self.nodes) > 10 else ""
            message = (f"no backward rule for {listed}{more}. Gradient and modified-rule methods cannot "
                       f"explain this model; the perturbation methods (occlusion, feature_ablation, "
                       f"shapley_sampling) need only the forward pass and work on any ONNX model.")
        super().__init__(message)

    @classmethod
    def unknown_rank(cls, tensor: str) -> "UnsupportedOperatorError":
        return cls([], f"the rank of tensor {tensor!r} is unknown after shape inference, so its broadcast "
                       f"cannot be undone; export the model with static ranks")


class ModelError(OnnxplainError, ValueError):
    """The model could not be read, checked or normalised."""


class RunError(OnnxplainError, RuntimeError):
    """onnxruntime failed inside an explanation graph's own nodes (not the model's): the message names the node."""


class MissingExtraError(OnnxplainError, ImportError):
    """A feature needs an optional extra that is not installed; the message names the ``pip install``."""


def one_line(e: BaseException) -> str:
    """An error as one line: its message with line breaks folded (an OSError as "reason: 'file'")."""
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename and e.strerror:
        text = f"{e.strerror}: {e.filename!r}"
    return " ".join(text.split())


class NoGradientPathError(OnnxplainError, ValueError):
    """A tensor to attribute reaches the explained output only through steps that pass no gradient
    (a Cast to an integer type, Floor, ArgMax, a comparison, a Shape...): gradient and modified-rule
    methods would give it all-zero attributions."""

    def __init__(self, tensor: str, output: str, node, what: str = "input"):
        self.tensor, self.output, self.node = tensor, output, node
        name = node.name or node.output[0]
        super().__init__(f"{what} {tensor!r} reaches output {output!r} only through {node.op_type} (node {name!r}), "
                         f"which passes no gradient, so gradient and modified-rule methods would attribute "
                         f"nothing to it. Use a perturbation method (occlusion, feature_ablation, "
                         f"shapley_sampling, shapley_values): they need only the forward pass.")
