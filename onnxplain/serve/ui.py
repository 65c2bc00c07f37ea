"""The local page (``onnxplain view``, ``onnxplain serve --ui``): pick a model, give it an image, a text or
a row of features, see the attribution.

Three routes join the protocol server's REST app:

- ``GET /ui``: the page, one HTML file with its script and style inline (``page/index.html``; it loads
  nothing from the network);
- ``GET /ui/models``: what the page needs to know of each served model (:meth:`Page.models`): its
  method, the kind of picture its attributions call for (:func:`onnxplain.viz.picture_kind`), the image
  format or tokenizer its inputs are read with, and the method's parameters as the request inputs the
  protocol metadata lists, with their declarations' defaults and descriptions;
- ``POST /ui/prepare/<model>``: an uploaded image (multipart ``image`` field, or JSON ``{"image": base64 or
  a data URL}``), a text (``text``) or a row of numbers (``row``: ``"0.5, 1, 2"``, or a CSV header line and one row, read by
  :func:`onnxplain.sources.tables.read_csv`) turned into the model's
  input tensors, as the inputs of a protocol request, plus what the page draws them over: the image as
  the model saw it (a PNG data URL) or the tokens' strings.  Images and texts are read by the functions
  the command line uses (:func:`onnxplain.sources.images.read_images`,
  :func:`onnxplain.sources.text.read_texts`).

The page then asks the protocol endpoint itself (``POST /v2/models/<model>/infer``) for the attribution,
with the method's parameters as request inputs, and draws it in the browser.  A bad upload or an unknown
model is a 400 with a JSON ``error`` naming what was expected; the server keeps serving.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import io
import os
import re
import threading
import time
from importlib import resources

import numpy as np

from .protocol import DATATYPES

PAGE_FILE = "index.html"
_NUMBER_SEPARATORS = re.compile(r"[,;\s]+")
_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=-]+)*;base64,", re.IGNORECASE)


class UploadError(ValueError):
    """An upload the page cannot turn into the model's inputs; the message names what was expected."""


def page_html() -> str:
    """The page's HTML (shipped as package data of ``onnxplain.serve``)."""
    return resources.files("onnxplain.serve").joinpath("page", PAGE_FILE).read_text(encoding="utf-8")


# ---------------------------------------------------------------------- one served model, as the page sees it
class PageModel:
    """How the page feeds one served model: the kind of its attributed input and how that input is read.

    ``image``: an :class:`onnxplain.sources.images.ImageFormat` or a preset's name (images; default
    ``"imagenet"``, the command line's); ``tokenizer``: a ``tokenizers.Tokenizer`` (texts).  A model the
    page cannot feed (several attributed inputs, layer attributions, other inputs beside a picture's) is
    listed with ``why`` instead of a kind, and served as usual over the protocol.
    """

    def __init__(self, served, image=None, tokenizer=None, tokenizer_name: str | None = None,
                 max_length: int | None = None):
        from ..viz import picture_kind

        self.name = served.name
        self.interface = served.interface
        explainer = self.interface.explainer
        self.explainer = explainer
        graph = explainer.model.graph
        inits = {i.name for i in graph.initializer}
        self.input_infos = {vi.name: vi for vi in graph.input if vi.name not in inits}
        self.tokenizer, self.tokenizer_name, self.max_length = tokenizer, tokenizer_name, max_length
        self.format = None
        self.kind, self.why = None, None
        try:
            self.kind = picture_kind(explainer)
        except ValueError as e:
            self.why = str(e)
            return
        self.key = explainer.spec.points[0].key
        others = [k for k in self.input_infos if k != self.key]
        if self.kind == "tokens":
            if tokenizer is None:
                self.why = "a text model: start the page with a tokenizer (--tokenizer tokenizer.json) to type text"
        elif others:
            self.why = (f"the page fills the {self.kind} input {self.key!r} only, and this model also takes "
                        f"{others}; send those in a protocol request (POST /v2/models/{self.name}/infer)")
        elif self.kind == "image":
            from ..sources.images import format_for_model, image_format
            fmt = image_format(image or "imagenet") if isinstance(image, str) or image is None else image
            self.format = format_for_model(fmt, self.input_infos[self.key])   # a mismatch fails at start-up

    @property
    def usable(self) -> bool:
        return self.why is None

    def describe(self) -> dict:
        """The model as ``GET /ui/models`` lists it."""
        ex = self.explainer
        out = self.interface.explained
        info = {"name": self.name, "method": ex.method_name, "kind": self.kind, "why": self.why,
                "output": out.as_dict(), "inputs": [t.as_dict() for t in self.interface.model_inputs],
                "attributions": [t.name for t in self.interface.attributions],
                "parameters": self.parameters(), "image": None, "tokenizer": None, "features": None}
        if self.kind is not None and self.why is None:
            info["attributed"] = self.key
        if self.format is not None:
            info["image"] = _format_dict(self.format)
        if self.kind == "tokens" and self.tokenizer is not None:
            info["tokenizer"] = self.tokenizer_name
        if self.kind == "tabular":
            dims = self.input_infos[self.key].type.tensor_type.shape.dim
            info["features"] = dims[1].dim_value if dims[1].HasField("dim_value") else None
        return info

    def parameters(self) -> list[dict]:
        """The method's parameters as request inputs (name, datatype, shape: the protocol metadata's),
        with their declared kind, choices, description and the default a request starts from."""
        declared = {p.name: p for p in self.explainer.method.parameters}
        defaults = {**self.explainer.method.defaults, **self.interface.defaults}
        listed = []
        for p in self.interface.parameters:
            param = declared[p.keyword]
            default = defaults.get(p.keyword)
            listed.append({**p.tensor.as_dict(), "keyword": p.keyword, "form": p.kind, "kind": param.kind,
                           "choices": list(param.choices), "doc": param.doc,
                           "default": default if _plain(default) else None})
        return listed

    # ------------------------------------------------------------------ uploads -> tensors
    def prepare(self, upload: dict) -> dict:
        """The model's input tensors (protocol request inputs) for an upload, and what the page draws."""
        if not self.usable:
            raise UploadError(f"model {self.name!r} cannot be fed from the page: {self.why}")
        wanted = {"image": "image", "tokens": "text", "tabular": "row"}[self.kind]
        given = [k for k in ("image", "text", "row") if upload.get(k) not in (None, b"", "")]
        if given != [wanted]:
            what = {"image": "an image file (PNG, JPEG...)", "text": "a text", "row": "a row of numbers"}[wanted]
            raise UploadError(f"model {self.name!r} takes {what} in the field {wanted!r}; got "
                              f"{given or 'nothing'}")
        return getattr(self, f"_prepare_{self.kind}")(upload[wanted])

    def _prepare_image(self, data) -> dict:
        from PIL import Image, UnidentifiedImageError

        from ..sources.images import check_tensor_shape, read_images
        raw = _image_bytes(data)
        try:
            with Image.open(io.BytesIO(raw)) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise UploadError(f"the upload is not an image Pillow can read (PNG, JPEG, BMP, GIF, WebP...): "
                              f"{e}") from None
        rows = read_images([raw], self.format, self.key)
        check_tensor_shape(rows.inputs[self.key].shape, self.input_infos[self.key])   # a size the model fixes
        shown = rows.images[0]
        return {"inputs": _tensors(rows.inputs, self.input_infos),
                "display": {"image": _png_data_url(shown), "width": int(shown.shape[1]),
                            "height": int(shown.shape[0]), "layout": self.format.layout}}

    def _prepare_tokens(self, text) -> dict:
        from ..sources.text import read_texts
        if not isinstance(text, str):
            raise UploadError(f"the text must be a string, got {type(text).__name__}")
        rows = read_texts([text], self.tokenizer, self.input_infos, max_length=self.max_length)
        where = np.flatnonzero(rows.extra["mask"][0])
        return {"inputs": _tensors(rows.inputs, self.input_infos),
                "display": {"tokens": list(rows.tokens[0]), "positions": where.tolist()}}

    def _prepare_tabular(self, row) -> dict:
        if isinstance(row, str) and "\n" in row.strip():
            return self._prepare_csv(row.strip())
        values = _numbers(row)
        vi = self.input_infos[self.key]
        dims = vi.type.tensor_type.shape.dim
        if dims[1].HasField("dim_value") and dims[1].dim_value != len(values):
            raise UploadError(f"model {self.name!r} takes rows of {dims[1].dim_value} features (input "
                              f"{self.key!r} of shape [-1, {dims[1].dim_value}]), got {len(values)} numbers")
        from onnx import helper
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        x = np.asarray(values, dtype=np.float64).astype(dtype)[None]
        return {"inputs": _tensors({self.key: x}, self.input_infos),
                "display": {"values": values, "features": None}}

    def _prepare_csv(self, text: str) -> dict:
        """A header line and one row, read as a CSV file (by :func:`onnxplain.sources.tables.read_csv`)."""
        import tempfile

        from ..sources.tables import read_csv
        with tempfile.TemporaryDirectory(prefix="onnxplain-page-") as folder:
            path = os.path.join(folder, "row.csv")
            with open(path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
            rows = read_csv(path, input_name=self.key, model_input=self.input_infos[self.key])
        if len(rows) != 1:
            raise UploadError(f"the page explains one row: give a header line and one line of numbers, got "
                              f"{len(rows)} rows")
        x = rows.inputs[self.key]
        return {"inputs": _tensors({self.key: x}, self.input_infos),
                "display": {"values": [float(str(v)) for v in x[0]],      # as typed: 0.7, not 0.69999998
                            "features": list(rows.feature_names)}}


def _plain(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str)) or (
        isinstance(value, tuple) and all(isinstance(v, int) for v in value))


def _format_dict(fmt) -> dict:
    from dataclasses import fields
    values = {f.name: getattr(fmt, f.name) for f in fields(fmt) if f.name != "explicit"}
    values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}
    return {**values, "describe": fmt.describe()}


def _image_bytes(data) -> bytes:
    """An upload's image bytes: raw bytes (multipart), or base64 text with or without a data-URL head."""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if not isinstance(data, str):
        raise UploadError(f"the image must be a file (multipart) or base64 text (JSON), got "
                          f"{type(data).__name__}")
    text = _DATA_URL.sub("", data.strip(), count=1)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UploadError("the image must be base64 text (optionally a data: URL), and this is not base64") \
            from None


def _numbers(row) -> list[float]:
    """A row of features typed as text (``"0.5, 1, 2"``: commas, semicolons or blanks) or a JSON list."""
    if isinstance(row, str):
        parts = [p for p in _NUMBER_SEPARATORS.split(row.strip()) if p]
    elif isinstance(row, list):
        parts = row
    else:
        raise UploadError(f"a row is numbers separated by commas or a JSON list, got {type(row).__name__}")
    try:
        values = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise UploadError(f"a row is numbers separated by commas (e.g. 0.5, 1, 2), got {row!r}") from None
    if not values or not np.isfinite(values).all():
        raise UploadError(f"a row needs at least one finite number, got {row!r}")
    return values


def _tensors(arrays: dict, infos: dict) -> list[dict]:
    """Arrays as the inputs of a protocol request (JSON: name, shape, datatype, flat data)."""
    out = []
    for name, a in arrays.items():
        datatype = DATATYPES[infos[name].type.tensor_type.elem_type]
        a = np.ascontiguousarray(a)
        out.append({"name": name, "shape": list(a.shape), "datatype": datatype, "data": a.reshape(-1).tolist()})
    return out


def _png_data_url(image: np.ndarray) -> str:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------------- the page's routes
class Page:
    """The page's view of the served models, and its three routes on the REST app.

    ``image``: the image format (an ``ImageFormat`` or a preset's name) every image model is read with
    (checked against each model's input now); ``tokenizer``: a ``tokenizer.json`` path (or a loaded
    ``tokenizers.Tokenizer``) for the text models; ``max_length``: truncate texts to this many tokens.
    """

    def __init__(self, served, image=None, tokenizer=None, max_length: int | None = None):
        name = None
        if isinstance(tokenizer, (str, os.PathLike)):
            from ..sources.text import load_tokenizer
            name = os.path.basename(os.fspath(tokenizer))
            tokenizer = load_tokenizer(tokenizer)
        elif tokenizer is not None:
            name = "tokenizer"
        self.models = {m.name: PageModel(m, image, tokenizer, name, max_length) for m in served}

    def describe(self) -> dict:
        return {"models": [m.describe() for m in self.models.values()]}

    def prepare(self, name: str, upload: dict) -> dict:
        if name not in self.models:
            raise UploadError(f"unknown model {name!r}; this server serves {sorted(self.models)}")
        try:
            return self.models[name].prepare(upload)
        except UploadError:
            raise
        except ValueError as e:     # the readers' checks (a size the model does not take, a text too long...)
            raise UploadError(str(e)) from e

    def register(self, app) -> None:
        """Add ``GET /ui``, ``GET /ui/models`` and ``POST /ui/prepare/{model}`` to the (FastAPI) app, as plain
        Starlette routes: they take the request itself, outside the protocol's request models."""
        from starlette.responses import HTMLResponse, JSONResponse

        html = page_html()

        async def page(request):
            return HTMLResponse(html, headers={"cache-control": "no-store"})

        async def models(request):
            return JSONResponse(self.describe())

        async def prepare(request):
            try:
                upload = await _upload(request)
                loop = asyncio.get_running_loop()
                name = request.path_params["model"]
                return JSONResponse(await loop.run_in_executor(None, self.prepare, name, upload))
            except UploadError as e:
                return JSONResponse({"error": str(e)}, status_code=400)

        app.add_route("/ui", page, methods=["GET"], include_in_schema=False)
        app.add_route("/ui/", page, methods=["GET"], include_in_schema=False)
        app.add_route("/ui/models", models, methods=["GET"], include_in_schema=False)
        app.add_route("/ui/prepare/{model}", prepare, methods=["POST"], include_in_schema=False)


async def _upload(request) -> dict:
    """The fields of a prepare request: multipart form data (a file in ``image``) or a JSON object."""
    import orjson

    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form()
        upload = {}
        for key in ("image", "text", "row"):
            value = form.get(key)
            upload[key] = await value.read() if hasattr(value, "read") else value
        return upload
    body = await request.body()
    try:
        upload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UploadError('expected a JSON object {"image": base64} or {"text": "..."} or {"row": "1, 2, 3"}, '
                          'or multipart form data with one of these fields') from None
    if not isinstance(upload, dict):
        raise UploadError(f'expected a JSON object such as {{"text": "..."}}, got {type(upload).__name__}')
    return upload


# ---------------------------------------------------------------------- onnxplain view: the URL, once listening
def page_url(host: str, port: int) -> str:
    return f"http://{host if ':' not in host else f'[{host}]'}:{port}/ui"


def announce_when_listening(host: str, port: int, open_browser: bool = False,
                            timeout: float = 300.0) -> threading.Thread:
    """A daemon thread that waits until ``host:port`` accepts connections, then prints the page's URL
    (and opens it in the default browser when asked)."""
    import socket

    url = page_url(host, port)

    def wait():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((host, port), timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            return
        print(f"onnxplain view: open {url}", flush=True)
        if open_browser:
            import webbrowser
            webbrowser.open(url)

    thread = threading.Thread(target=wait, name="onnxplain-view-url", daemon=True)
    thread.start()
    return thread
