"""Deployment: the Open Inference Protocol server and Triton model repositories.

``onnxplain.serve.server.serve`` (``onnxplain serve``) and
``onnxplain.serve.server.view`` (``onnxplain view``: the local page of
:mod:`onnxplain.serve.ui`) need the optional extra
``pip install "onnxplain[serve]"`` (KServe's model server); importing this
package does not import it.  ``onnxplain.serve.triton`` (``onnxplain triton``)
needs nothing beyond onnxplain itself.
"""
from __future__ import annotations

from .extra import SERVE_EXTRA, require_serve_extra

__all__ = ["SERVE_EXTRA", "require_serve_extra", "serve", "view"]


def serve(*args, **kwargs):
    """Serve explanations over the Open Inference Protocol; see :func:`onnxplain.serve.server.serve`."""
    from .server import serve as run
    return run(*args, **kwargs)


def view(*args, **kwargs):
    """Serve models with the local page on loopback (``onnxplain view``); see :func:`onnxplain.serve.server.view`."""
    from .server import view as run
    return run(*args, **kwargs)
