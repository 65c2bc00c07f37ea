"""The ``serve`` extra: the packages the protocol server needs, and the install that brings them."""
from __future__ import annotations

import importlib.util

SERVE_EXTRA = 'pip install "onnxplain[serve]"'


def require_serve_extra() -> None:
    """Raise ImportError naming the install that fixes it when the server's packages are missing."""
    missing = [m for m in ("kserve", "fastapi", "grpc") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"onnxplain serve needs {', '.join(missing)}, which are not installed: {SERVE_EXTRA}")
