"""Deployment: the Open Inference Protocol server and Triton model repositories.

``onnxplain.serve.server.serve`` (``onnxplain serve``) needs the optional extra
``pip install "onnxplain[serve]"`` (KServe's model server); importing this
package does not import it.  ``onnxplain.serve.triton`` (``onnxplain triton``)
needs nothing beyond onnxplain itself.
"""
from __future__ import annotations

import importlib.util

SERVE_EXTRA = 'pip install "onnxplain[serve]"'


def require_serve_extra() -> None:
    """Raise ImportError naming the install that fixes it when the server's packages are missing."""
    missing = [m for m in ("kserve", "fastapi", "grpc") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"onnxplain serve needs {', '.join(missing)}, which are not installed: {SERVE_EXTRA}")


def serve(*args, **kwargs):
    """Serve explanations over the Open Inference Protocol; see :func:`onnxplain.serve.server.serve`."""
    from .server import serve as run
    return run(*args, **kwargs)
