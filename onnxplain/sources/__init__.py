"""Real inputs read from files: images (:mod:`.images`), text (:mod:`.text`) and tables (:mod:`.tables`).

Each module turns what a user has (photos, sentences, a CSV) into the model's input arrays, and
returns them as :class:`Rows`, together with what a picture needs to label them: the image as it
was shown to the model (before normalisation), the tokens' strings, the column names.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Rows:
    """Model inputs read from files, rows first, with the labels their pictures need.

    inputs: the model's input arrays by input name (each with its batch axis first).
    names: one label per row (the file name, the text, the CSV row).
    images: the images as the model saw them (resized and cropped, not normalised), uint8 ``H x W x 3``
        or ``H x W``, one per row; ``None`` for other inputs.
    tokens: the tokens' strings, one list per row; ``None`` for other inputs.
    feature_names: the columns' names of tabular rows; ``None`` for other inputs.
    """

    inputs: dict[str, np.ndarray]
    names: list[str]
    images: list | None = None
    tokens: list[list[str]] | None = None
    feature_names: list[str] | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)
