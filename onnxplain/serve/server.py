"""KServe's model server, bound to one host, with a request size limit and protocol errors as 400s.

:func:`serve` builds one :class:`~onnxplain.Explainer` per served model, then runs
``kserve.ModelServer`` (REST and gRPC) until SIGTERM or SIGINT; in-flight
requests finish first.  Changes to KServe's defaults, and why:

- both servers listen on ``host`` (127.0.0.1 unless told otherwise; KServe
  listens on every interface);
- a REST body over ``max_request_bytes`` is refused with 413 from its
  ``Content-Length`` before it is read (or as soon as a chunked body passes the
  limit); gRPC messages have the same limit (RESOURCE_EXHAUSTED);
- malformed requests and unknown models are 400 / INVALID_ARGUMENT with a JSON
  ``error`` naming what was expected (KServe answers 422 and 404).

``serve(..., ui=True)`` adds the local page's routes (:mod:`onnxplain.serve.ui`) to the REST app;
:func:`view` (``onnxplain view``) serves REST only on loopback with the page and prints its URL.
"""
from __future__ import annotations

import os
import socket
import sys
from concurrent import futures

from .extra import require_serve_extra

require_serve_extra()

DEFAULT_MAX_REQUEST_BYTES = 64 << 20
GRACE_SECONDS = 30


def _import_kserve():
    """Import kserve without letting it parse this process's command line (it reads sys.argv on import)."""
    argv = sys.argv
    sys.argv = argv[:1]
    try:
        import kserve  # noqa: F401
        import kserve.model_server  # noqa: F401
    finally:
        sys.argv = argv


_import_kserve()

import orjson  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from grpc import aio  # noqa: E402
from kserve import ModelServer  # noqa: E402
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER  # noqa: E402
from kserve.errors import InvalidInput, ModelNotFound  # noqa: E402
from kserve.logging import logger  # noqa: E402
from kserve.protocol.dataplane import DataPlane  # noqa: E402
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc  # noqa: E402
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor  # noqa: E402
from kserve.protocol.grpc.server import GRPCServer  # noqa: E402
from kserve.protocol.grpc.servicer import InferenceServicer  # noqa: E402
from kserve.protocol.rest.server import RESTServer  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402

from ..options import EXPLAINER_KEYWORDS  # noqa: E402
from .model import ExplainerModel  # noqa: E402


def serve(models, method="saliency", *, names=None, host="127.0.0.1", http_port: int = 8000,
          grpc_port: int | None = 8001, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, ui: bool = False,
          image=None, tokenizer=None, max_length: int | None = None, on_start=None, **options) -> None:
    """Serve explanations over the Open Inference Protocol (REST and gRPC) until SIGTERM/SIGINT.

    ``models``: a model (path, bytes or ``onnx.ModelProto``) or a list of them;
    ``method``: a method name or a list of them: every model is served with every
    method.  ``names``: one per (model, method) pair, in that order (default: the
    file's stem, followed by ``-<method>`` when several methods are served).
    ``options``: the keywords of :class:`~onnxplain.Explainer` (``output``,
    ``inputs``, ``layer``, ``providers``, ``threads``, ``memory_budget``,
    ``noise_tunnel``, ``batch_axes``, ``batch_size``: :data:`EXPLAINER_KEYWORDS`)
    go to each Explainer; the others are method parameters every request starts
    from (``n_steps=32``...); a request overrides them with its parameter inputs or, for
    one-value parameters, its request-level ``parameters`` (``{"n_steps": 64}``).
    ``grpc_port=None`` serves REST only.  ``ui=True`` adds the local page (``GET /ui``, see
    :mod:`onnxplain.serve.ui`), which reads images with ``image`` (an ``ImageFormat`` or a preset's name)
    and texts with ``tokenizer`` (a ``tokenizer.json``, truncating to ``max_length`` tokens when given).
    ``on_start``: called once every Explainer is built, just before the servers start.  Blocks; returns
    when the server stops.
    """
    check_port(host, http_port, "http_port")
    if grpc_port is not None:
        check_port(host, grpc_port, "grpc_port")
        if grpc_port == http_port:
            raise ValueError(f"http_port and grpc_port are both {http_port}; REST and gRPC need a port each")
    served = explainer_models(models, method, names=names, **options)
    page = None
    if ui:
        from .ui import Page
        page = Page(served, image=image, tokenizer=tokenizer, max_length=max_length)
    server = ExplanationServer(host=host, http_port=http_port, grpc_port=grpc_port,
                               max_request_bytes=max_request_bytes, page=page)
    if on_start is not None:
        on_start()
    server.start(served)


def view(models, method="saliency", *, port: int = 8000, host: str = "127.0.0.1", image=None, tokenizer=None,
         max_length: int | None = None, open_browser: bool = False, **options) -> None:
    """Serve ``models`` with the page on ``http://host:port/ui`` (REST only) until SIGTERM/SIGINT.

    Every model is served with every ``method`` (a name or a list; served as ``<stem>-<method>`` when
    there are several, as :func:`serve` names them).  ``image``: the image format
    or preset (default ``"imagenet"``); ``tokenizer``: a ``tokenizer.json`` for text models;
    ``open_browser``: open the page in the default browser once the server listens.  ``options``: as
    for :func:`serve` (Explainer keywords, method parameters' defaults, names).  The page: see
    :mod:`onnxplain.serve.ui`.
    """
    from .ui import announce_when_listening
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"the page listens on loopback only (127.0.0.1, ::1 or localhost), got host {host!r}; "
                         f"use onnxplain serve --ui to choose another address")
    # the URL is printed once the server listens, after every Explainer is built
    serve(models, method, host=host, http_port=port, grpc_port=None, ui=True, image=image, tokenizer=tokenizer,
          max_length=max_length, on_start=lambda: announce_when_listening(host, port, open_browser), **options)


def check_port(host: str, port: int, what: str) -> None:
    """Fail early, before any Explainer is built, when ``host:port`` cannot be listened on."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"{what} must be a port number in 1..65535, got {port!r}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise OSError(e.errno, f"cannot listen on {host}:{port} ({what}): {e.strerror}; choose another "
                                   f"port") from None


def explainer_models(models, method, names=None, **options) -> list[ExplainerModel]:
    """One :class:`ExplainerModel` per (model, method) pair, each with its Explainer built now."""
    from ..api import Explainer
    from ..methods import canonical_name

    models = list(models) if isinstance(models, (list, tuple)) else [models]
    methods = [canonical_name(m) for m in ([method] if isinstance(method, str) else list(method))]
    if not models or not methods:
        raise ValueError("serve needs at least one model and one method")
    pairs = [(m, k) for m in models for k in methods]
    if names is None:
        names = [_default_name(m, i, k if len(methods) > 1 else None) for i, m in enumerate(models) for k in methods]
    names = [names] if isinstance(names, str) else list(names)
    if len(names) != len(pairs):
        raise ValueError(f"{len(names)} name(s) given for {len(pairs)} served (model, method) pair(s); "
                         f"give one name per model and method, in that order")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"served names must be unique, {twice} appear twice; give each model its own name")
    defaults = {k: options.pop(k) for k in list(options) if k not in EXPLAINER_KEYWORDS}
    served = []
    for name, (model, m) in zip(names, pairs):
        _check_name(name)
        served.append(ExplainerModel(name, Explainer(model, m, **options), defaults))
    return served


def _default_name(model, index: int, method: str | None) -> str:
    if isinstance(model, (str, os.PathLike)):
        stem = os.path.splitext(os.path.basename(os.fspath(model)))[0]
    else:
        stem = f"model{index}"
    return f"{stem}-{method}" if method else stem


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or name != name.strip():
        raise ValueError(f"a served model's name is a non-empty string without '/' or surrounding spaces, "
                         f"got {name!r}")


class ExplanationServer(ModelServer):
    """``kserve.ModelServer`` listening on ``host`` only, with a request size limit and 400s for bad requests."""

    def __init__(self, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int | None = 8001,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, grace_period: int = GRACE_SECONDS,
                 page=None):
        if not isinstance(max_request_bytes, int) or max_request_bytes <= 0:
            raise ValueError(f"max_request_bytes must be a positive number of bytes, got {max_request_bytes!r}")
        super().__init__(http_port=http_port, grpc_port=grpc_port or 0, enable_grpc=grpc_port is not None,
                         grace_period=grace_period, enable_latency_logging=False)
        self.host = host
        self.max_request_bytes = max_request_bytes
        self.page = page      # the local page's routes (onnxplain.serve.ui.Page), or None
        self.dataplane = ExplanationDataPlane(model_registry=self.registered_models)

    def start(self, models) -> None:
        """Register ``models`` and serve them until a stop signal (KServe's start, with our two servers)."""
        import asyncio

        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = LocalRESTServer(self.host, self.max_request_bytes, "kserve.model_server:app",
                                            self.dataplane, self.model_repository_extension, self.http_port,
                                            grace_period=self.grace_period, event_loop=self.event_loop,
                                            timeout_keep_alive=self.timeout_keep_alive, page=self.page)
        self.servers.append(self._rest_server.start())
        if self.enable_grpc:
            self._grpc_server = LocalGRPCServer(self.host, self.max_request_bytes, self.grpc_port, self.dataplane,
                                                self.model_repository_extension, grace_period=self.grace_period)
            self.servers.append(self._grpc_server.start(self.max_threads))
        self.setup_event_loop()
        self.register_signal_handler()
        logger.info("onnxplain serves %s on %s (http %s, grpc %s)", [m.name for m in models], self.host,
                    self.http_port, self.grpc_port if self.enable_grpc else "off")
        asyncio.run(self._serve())


class ExplanationDataPlane(DataPlane):
    """KServe's data plane, where an unknown model or a malformed binary body is the client's mistake (400)."""

    def get_model_from_registry(self, name: str):
        try:
            return super().get_model_from_registry(name)
        except ModelNotFound:
            raise self._unknown(name) from None

    async def get_model(self, name: str):
        try:
            return await super().get_model(name)
        except ModelNotFound:
            raise self._unknown(name) from None

    async def model_ready(self, model_name: str, disable_predictor_health_check: bool = False) -> bool:
        try:
            return await super().model_ready(model_name, disable_predictor_health_check)
        except ModelNotFound:
            raise self._unknown(model_name) from None

    def decode_inference_request(self, body, headers, model_name):
        if isinstance(body, bytes) and INFERENCE_CONTENT_LENGTH_HEADER not in headers:
            _check_json(body)     # a JSON body sent without a JSON content type: all of it is the header
            headers = {**headers, INFERENCE_CONTENT_LENGTH_HEADER: str(len(body))}
        try:
            return super().decode_inference_request(body, headers, model_name)
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, InvalidInput):
                raise
            raise InvalidInput(f"malformed inference request: expected a JSON header {{\"inputs\": [{{\"name\", "
                               f"\"shape\", \"datatype\", \"data\" or \"parameters\": {{\"binary_data_size\"}}}}]}} "
                               f"followed by each binary input's bytes: {type(e).__name__}: {e}") from e

    def _unknown(self, name: str) -> InvalidInput:
        served = sorted(self._model_registry.get_models())
        return InvalidInput(f"unknown model {name!r}; this server serves {served}")


def _check_json(body: bytes) -> None:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"malformed JSON: expected an inference request of the Open Inference Protocol, "
                           f"{{\"inputs\": [{{\"name\", \"shape\", \"datatype\", \"data\"}}]}}: {e}") from None


class RequestTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than the server's limit of {limit} bytes "
                              f"(onnxplain serve --max-request-bytes)")


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, from its Content-Length before reading it,
    or as soon as a body without one passes the limit."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            response = JSONResponse({"error": RequestTooLarge(self.limit).detail}, status_code=413,
                                    headers={"connection": "close"})
            return await response(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise RequestTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)


async def _too_large(_, exc: RequestTooLarge):
    return JSONResponse({"error": exc.detail}, status_code=413, headers={"connection": "close"})


async def _malformed(_, exc: RequestValidationError):
    details = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors()[:5])
    return JSONResponse({"error": f"malformed request: expected an inference request of the Open Inference "
                                  f"Protocol, a JSON object {{\"inputs\": [{{\"name\", \"shape\", \"datatype\", "
                                  f"\"data\"}}], \"outputs\": [...], \"parameters\": {{name: int, float, bool or "
                                  f"string}}}} ({details})"}, status_code=400)


class LocalRESTServer(RESTServer):
    """KServe's REST server on ``host``, behind :class:`BodyLimit`, with 400s for malformed bodies
    (and the local page's routes when given a :class:`onnxplain.serve.ui.Page`)."""

    def __init__(self, host: str, max_request_bytes: int, *args, page=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.host = host
        self.max_request_bytes = max_request_bytes
        self.page = page

    def _register_endpoints(self, app) -> None:
        super()._register_endpoints(app)
        if self.page is not None:
            self.page.register(app)

    def _add_middlewares(self, app) -> None:
        super()._add_middlewares(app)
        app.add_middleware(BodyLimit, limit=self.max_request_bytes)

    def _add_exception_handlers(self, app) -> None:
        super()._add_exception_handlers(app)
        app.add_exception_handler(RequestValidationError, _malformed)
        app.add_exception_handler(RequestTooLarge, _too_large)


class LocalGRPCServer(GRPCServer):
    """KServe's gRPC server (its servicer and interceptors) on ``host``, with the request size limit."""

    def __init__(self, host: str, max_request_bytes: int, *args, **kwargs):
        super().__init__(*args, kwargs={}, **kwargs)
        self.host = host
        self.max_request_bytes = max_request_bytes

    async def start(self, max_workers):
        servicer = InferenceServicer(self._data_plane, self._model_repository_extension)
        self._server = aio.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                                  interceptors=(ExceptionToStatusInterceptor(),),
                                  options=[("grpc.max_receive_message_length", self.max_request_bytes),
                                           ("grpc.max_send_message_length", -1)])
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        address = f"{self.host}:{self._port}" if ":" not in self.host else f"[{self.host}]:{self._port}"
        if self._server.add_insecure_port(address) == 0:
            raise OSError(f"cannot listen for gRPC on {address}")
        await self._server.start()
        await self._server.wait_for_termination()
