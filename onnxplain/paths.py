"""Checks of the paths a command will write, made before any work (shared by :mod:`onnxplain.files` and
:mod:`onnxplain.viz`)."""
from __future__ import annotations

import os


def check_output_path(path, suffixes: tuple[str, ...] | None = None, why: str = "", what: str = "--out") -> None:
    """Fail before any work when ``path`` cannot be written: a suffix not in ``suffixes`` (None: any), a
    missing folder, a folder."""
    if not path:
        return
    path = os.fspath(path)
    if suffixes is not None and not path.endswith(tuple(suffixes)):
        reason = f" ({why})" if why else ""
        raise ValueError(f"{what} must end with {' or '.join(suffixes)}{reason}, got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {path!r}: folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"cannot write {path!r}: it is a folder")
