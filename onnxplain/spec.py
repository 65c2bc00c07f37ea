"""What an explanation graph is built for: the explained output, the tensors that get attributions, and
the model inputs that take baselines, pass through or have no batch axis."""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx


@dataclass
class Point:
    """A tensor that gets attributions.

    ``key`` names it to the user (an input's name, or the layer tensor's);
    ``tensor`` is the graph tensor attributed (the input itself, the output of
    the embedding Gather a token input feeds, or a layer); ``carrier`` is the
    model input whose value it *is* (None for layers and token embeddings).
    """

    key: str
    tensor: str
    carrier: str | None = None

    @property
    def is_input(self) -> bool:
        return self.carrier is not None and self.carrier == self.tensor


@dataclass
class Spec:
    """The model-side facts a method builds its graph from."""

    model: onnx.ModelProto           # normalised
    output: str                      # the explained output
    points: list[Point]              # what gets attributions
    carriers: list[str]              # model inputs that take baselines (differ between input and reference rows)
    passthrough: list[str] = field(default_factory=list)  # other model inputs, fed unchanged to every row
    unbatched: list[str] = field(default_factory=list)    # model inputs without a batch axis, fed as they are
    batch_size: int | None = None    # most rows the model may see in one forward pass (None: no limit)
    layer: str | None = None         # the layer= given or found (Grad-CAM's: its map's activation)

    @property
    def wrt(self) -> list[str]:
        """The keys of the attributed points (input names in the common case)."""
        return [p.key for p in self.points]

    @property
    def single(self) -> bool:
        return len(self.points) == 1

    def point_of(self, carrier: str) -> Point | None:
        """The point that *is* input ``carrier`` (None when the input only carries a layer or an embedding)."""
        return next((p for p in self.points if p.is_input and p.carrier == carrier), None)

    def param(self, base: str, x: str) -> str:
        """Name of a per-input graph parameter: ``base`` alone, or ``base_<input>`` with several carriers."""
        return base if len(self.carriers) <= 1 else f"{base}_{x}"

    def attribution_name(self, key: str) -> str:
        return "attributions" if self.single else f"attributions_{key}"
