"""Deployment: the Open Inference Protocol server and Triton model repositories.

``onnxplain.serve.server.serve`` (``onnxplain serve``) needs the optional extra
``pip install "onnxplain[serve]"`` (KServe's model server); importing this
package does not import it.  ``onnxplain.serve.triton`` (``onnxplain triton``)
needs nothing beyond onnxplain itself.
"""
from __future__ import annotations

from .extra import SERVE_EXTRA, require_serve_extra

__all__ = ["SERVE_EXTRA", "require_serve_extra", "serve"]


def serve(*args, **kwargs):
    """Serve explanations over the Open Inference Protocol; see :func:`onnxplain.serve.server.serve`."""
    from .server import serve as run
    return run(*args, **kwargs)
