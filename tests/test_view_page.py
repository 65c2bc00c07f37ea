"""`onnxplain view`: the local page in a real headless Chromium, against the server it came from.

The server (``python -m onnxplain view``) runs once for the module in its own process on a free loopback
port; Playwright drives Debian's Chromium (``/usr/bin/chromium``, never a downloaded browser).  The page
is used as a user would: pick a model, upload a PNG written here by Pillow, set a parameter, run; then
the numbers it received are held against :class:`onnxplain.Explainer` on a tensor computed here from
the PNG with numpy, and its picture (a screenshot) is checked for the heatmap.

Without Chromium or Playwright the module is skipped, unless ``ONNXPLAIN_REQUIRE_BROWSER=1`` (the CI
sets it) makes that a failure.
"""
from __future__ import annotations

import base64
import http.client
import importlib.util
import io
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import onnxruntime as ort
import pytest

import onnxplain

CHROMIUM = os.environ.get("ONNXPLAIN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _missing() -> str | None:
    if importlib.util.find_spec("kserve") is None:
        return 'the page is served by the protocol server: pip install "onnxplain[serve]"'
    if importlib.util.find_spec("PIL") is None:
        return "the page reads images with Pillow: pip install pillow"
    if importlib.util.find_spec("playwright") is None:
        return 'the browser test drives Chromium with Playwright: pip install "playwright>=1.40,<2"'
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set ONNXPLAIN_CHROMIUM)"
    return None


if _missing():
    if os.environ.get("ONNXPLAIN_REQUIRE_BROWSER") == "1":
        pytest.fail(f"ONNXPLAIN_REQUIRE_BROWSER=1 but {_missing()}", pytrace=False)
    pytest.skip(_missing(), allow_module_level=True)

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from torch import nn  # noqa: E402

from models import export  # noqa: E402
from checks import stop_server  # noqa: E402

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
SIDE = 31                      # the CNN's fixed image size (odd); imagenet's resize for it: round(31 * 256 / 224) = 35
PNG_W, PNG_H = 45, 35          # shorter side already 35: no resize; centre crop top 2, left 7
N_STEPS = 16
ROW = [0.5, -1.0, 2.0, 0.25, 3.0, -0.75, 1.5]
CORPUS = ["a fine and moving film", "a dull plot and weak acting", "moving music and fine acting", "dull and weak"]
SEQ = 12                       # the text model's fixed sequence length: typed texts are padded to it
TEXT = "a fine film with dull acting"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(11)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.features(x))


class TextClassifier(nn.Module):
    """Embedding, mean over the unmasked tokens, a linear head: input_ids and attention_mask (int64)."""

    def __init__(self, vocab: int):
        super().__init__()
        torch.manual_seed(13)
        self.emb = nn.Embedding(vocab, 6)
        self.head = nn.Sequential(nn.Tanh(), nn.Linear(6, 3))

    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).to(torch.float32)
        return self.head((self.emb(input_ids) * m).sum(1) / m.sum(1))


def train_tokenizer(path) -> None:
    """A word-level tokenizer trained on CORPUS: [CLS] words [SEP], [PAD] and [UNK]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    tok.save(str(path))


def export_text(model: nn.Module) -> bytes:
    model.eval()
    example = (torch.ones((2, SEQ), dtype=torch.int64), torch.ones((2, SEQ), dtype=torch.int64))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, buf, dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"},
                                        "logits": {0: "batch"}})
    return buf.getvalue()


def small_mlp():
    torch.manual_seed(12)
    return nn.Sequential(nn.Linear(7, 9), nn.Tanh(), nn.Linear(9, 3))


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("view")
    cnn, mlp = folder / "cnn.onnx", folder / "mlp.onnx"
    cnn.write_bytes(export(SmallCNN(), (3, SIDE, SIDE)))
    mlp.write_bytes(export(small_mlp(), (7,)))
    tokenizer, text = folder / "tokenizer.json", folder / "text.onnx"
    train_tokenizer(tokenizer)
    from tokenizers import Tokenizer
    text.write_bytes(export_text(TextClassifier(Tokenizer.from_file(str(tokenizer)).get_vocab_size())))
    rng = np.random.default_rng(5)
    grey = (rng.random((PNG_H, PNG_W)) * 120 + 60).astype(np.uint8)      # grey: any colour is the heatmap's
    grey[10:22, 18:30] = 230
    png = folder / "photo.png"
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(png)
    return {"cnn": str(cnn), "mlp": str(mlp), "png": str(png), "folder": folder, "text": str(text),
            "tokenizer": str(tokenizer)}


@pytest.fixture(scope="module")
def server(paths):
    """``python -m onnxplain view`` with two models x two methods on a free loopback port."""
    port = free_port()
    log = open(paths["folder"] / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "onnxplain", "view", paths["cnn"], paths["mlp"], paths["text"],
                             "--method", "integrated_gradients,saliency", "--preset", "imagenet",
                             "--tokenizer", paths["tokenizer"],
                             "--port", str(port), "--threads", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"onnxplain view exited with {proc.returncode}:\n{log.read()[-3000:]}")
        log.seek(0)
        if f"http://127.0.0.1:{port}/ui" in log.read():       # printed once the server listens
            break
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("onnxplain view did not print its URL in 90 s")
        time.sleep(0.1)
    yield {"port": port, "url": f"http://127.0.0.1:{port}/ui", "proc": proc}
    stop_server(proc)
    log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1180, "height": 860})
    page = context.new_page()
    page.goto(server["url"])
    page.wait_for_selector("body[data-ready=true]", timeout=15000)
    yield page
    context.close()


def request(server, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, json.loads(data) if data else None


def reference_image_tensor(png: str) -> np.ndarray:
    """The imagenet preset by hand: the 45x35 PNG needs no resize, crop 31x31 at (2, 7), scale, mean/std, NCHW."""
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)
    top, left = (PNG_H - SIDE) // 2, (PNG_W - SIDE) // 2
    x = (pixels[top:top + SIDE, left:left + SIDE] / 255.0 - MEAN) / STD
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def pick(page, model: str) -> None:
    """Choose a served model and wait until the form shows its input and parameters."""
    page.select_option("#model", model)
    page.wait_for_selector(f'#form[data-model="{model}"]', timeout=10000)


def received(page) -> dict:
    return json.loads(page.text_content("#result-data"))


def as_array(tensor: dict) -> np.ndarray:
    return np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])


def saturation(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb[..., :3].astype(np.int32)
    return rgb.max(-1) - rgb.min(-1)


# ---------------------------------------------------------------------- an image, end to end
def test_an_uploaded_image_gets_integrated_gradients_drawn_over_it(page, paths):
    pick(page, "cnn-integrated_gradients")
    page.fill("#param-n_steps", str(N_STEPS))
    page.set_input_files("#image-file", paths["png"])
    page.select_option("#target", "predicted")
    page.click("#run")
    page.wait_for_selector("#result[data-state=done]", timeout=30000)
    got = received(page)

    x = reference_image_tensor(paths["png"])
    sent = next(t for t in got["inputs"] if t["name"] == "x")
    np.testing.assert_allclose(as_array(sent), x, rtol=0, atol=2e-6)          # the page fed the model this tensor
    logits = ort.InferenceSession(paths["cnn"]).run(None, {"x": x})[0]
    assert got["target"] == int(np.argmax(logits[0]))                          # "predicted": the largest output
    ref = onnxplain.Explainer(paths["cnn"], "integrated_gradients").explain(x, got["target"], n_steps=N_STEPS)
    np.testing.assert_allclose(as_array(got["attributions"]), ref, rtol=1e-5, atol=1e-7)
    assert got["parameters"] == {"n_steps": N_STEPS}

    # the heatmap canvas, pixel by pixel, scaled to the largest |attribution|: the colour's strength follows
    # |attribution| (the PNG is grey, so any colour is the map's)
    page.select_option("#clip", "100")
    canvas = np.array(page.evaluate("""() => { const c = document.getElementById('heatmap');
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }"""),
        dtype=np.uint8).reshape(SIDE, SIDE, 4)
    heat = ref[0].sum(0)
    sat = saturation(canvas)
    strong, weak = np.abs(heat) >= 0.8 * np.abs(heat).max(), np.abs(heat) <= 0.02 * np.abs(heat).max()
    assert strong.any() and weak.any()
    assert sat[strong].min() > 60 and sat[weak].max() < 4
    top = np.unravel_index(np.argmax(heat), heat.shape)
    bottom = np.unravel_index(np.argmin(heat), heat.shape)
    assert canvas[top][0] > canvas[top][2] + 60           # the most positive pixel is red
    assert canvas[bottom][2] > canvas[bottom][0] + 60     # the most negative one blue

    # the screenshot a user sees: the heatmap's region is coloured, the input's beside it is plain grey
    page.screenshot(path="/tmp/view_page.png", full_page=True)        # the whole page, to look at
    regions = {}
    for name in ("heatmap", "input-canvas"):   # element screenshots: right wherever the page is scrolled
        shot = np.asarray(Image.open(io.BytesIO(page.locator(f"#{name}").screenshot())).convert("RGB"))
        regions[name] = shot[3:-3, 3:-3]
    assert regions["heatmap"].shape == regions["input-canvas"].shape and regions["heatmap"].size
    assert saturation(regions["input-canvas"]).max() < 8
    assert (saturation(regions["heatmap"]) > 25).mean() > 0.03
    assert np.abs(regions["heatmap"].astype(int) - regions["input-canvas"].astype(int)).mean() > 10


# ---------------------------------------------------------------------- a row of features
def test_a_typed_row_gets_saliency_bars(page, paths):
    pick(page, "mlp-saliency")
    page.fill("#row", ", ".join(map(str, ROW)))
    page.select_option("#target", "1")
    page.click("#run")
    page.wait_for_selector("#result[data-state=done]", timeout=30000)
    got = received(page)
    x = np.asarray([ROW], np.float32)
    ref = onnxplain.Explainer(paths["mlp"], "saliency").explain(x, 1)
    np.testing.assert_allclose(as_array(got["attributions"]), ref, rtol=1e-5, atol=1e-7)
    order = [int(f) for f in page.eval_on_selector_all("#bars .bar-row", "rows => rows.map(r => r.dataset.feature)")]
    assert order == list(np.argsort(-np.abs(ref[0]), kind="stable"))         # largest |attribution| first

    # a CSV header line and a row: the same numbers, the bars named by the header
    names = ["age", "income", "score", "rooms", "floor", "distance", "rating"]
    page.fill("#row", ",".join(names) + "\n" + ",".join(map(str, ROW)))
    page.click("#run")
    page.wait_for_function("JSON.parse(document.getElementById('result-data').textContent || 'null') !== null && "
                           "document.querySelector('#bars .bar-row .name').textContent.startsWith('" +
                           names[order[0]] + "')", timeout=30000)
    np.testing.assert_allclose(as_array(received(page)["attributions"]), ref, rtol=1e-5, atol=1e-7)
    shown = page.eval_on_selector_all("#bars .bar-row .name", "rows => rows.map(r => r.firstChild.textContent.trim())")
    assert shown == [names[k] for k in order]


# ---------------------------------------------------------------------- a typed text
def test_a_typed_text_gets_its_tokens_highlighted(page, paths):
    pick(page, "text-saliency")
    page.fill("#text", TEXT)
    page.select_option("#target", "2")
    page.click("#run")
    page.wait_for_selector("#result[data-state=done]", timeout=30000)
    got = received(page)
    from tokenizers import Tokenizer
    encoding = Tokenizer.from_file(paths["tokenizer"]).encode(TEXT)      # the tokenizer itself, padded here
    n = len(encoding.ids)
    ids = np.zeros((1, SEQ), np.int64)                                   # [PAD] is id 0
    ids[0, :n] = encoding.ids
    mask = (np.arange(SEQ) < n).astype(np.int64)[None]
    sent = {t["name"]: as_array(t) for t in got["inputs"]}
    np.testing.assert_array_equal(sent["input_ids"], ids)
    np.testing.assert_array_equal(sent["attention_mask"], mask)
    ref = onnxplain.Explainer(paths["text"], "saliency").explain({"input_ids": ids, "attention_mask": mask}, 2)
    np.testing.assert_allclose(as_array(got["attributions"]), ref, rtol=1e-5, atol=1e-7)
    spans = page.eval_on_selector_all("#tokens .tok", "s => s.map(t => [t.textContent, Number(t.dataset.score)])")
    assert [t for t, _ in spans] == encoding.tokens                       # [CLS] ... [SEP], padding left out
    np.testing.assert_allclose([v for _, v in spans], ref[0, :n].sum(-1), rtol=1e-5, atol=1e-7)


def test_a_bad_row_shows_the_servers_message_and_the_page_recovers(page):
    pick(page, "mlp-integrated_gradients")
    page.fill("#row", "1, 2, 3")
    page.click("#run")
    page.wait_for_selector("#result[data-state=error]", timeout=15000)
    assert "rows of 7 features" in page.text_content("#error") and "got 3 numbers" in page.text_content("#error")
    page.fill("#row", ", ".join(map(str, ROW)))
    page.click("#run")
    page.wait_for_selector("#result[data-state=done]", timeout=30000)
    assert not page.is_visible("#error")


# ---------------------------------------------------------------------- the routes, over plain HTTP
def test_the_model_list_describes_each_served_model(server):
    status, listed = request(server, "GET", "/ui/models")
    assert status == 200
    models = {m["name"]: m for m in listed["models"]}
    assert sorted(models) == ["cnn-integrated_gradients", "cnn-saliency", "mlp-integrated_gradients", "mlp-saliency",
                              "text-integrated_gradients", "text-saliency"]
    cnn = models["cnn-integrated_gradients"]
    assert (cnn["kind"], cnn["method"], cnn["why"]) == ("image", "integrated_gradients", None)
    assert cnn["image"]["crop"] == [SIDE, SIDE] and cnn["image"]["size"] == 35 and cnn["image"]["layout"] == "NCHW"
    params = {p["name"]: p for p in cnn["parameters"]}
    assert params["n_steps"]["datatype"] == "INT64" and params["n_steps"]["default"] == 50
    status, meta = request(server, "GET", "/v2/models/cnn-integrated_gradients")      # what the page reads
    assert set(params) <= {t["name"] for t in meta["inputs"]}
    assert models["mlp-saliency"]["kind"] == "tabular" and models["mlp-saliency"]["features"] == 7
    assert models["text-saliency"]["kind"] == "tokens" and models["text-saliency"]["tokenizer"] == "tokenizer.json"


def test_a_multipart_upload_gives_the_same_tensor_as_base64_json(server, paths):
    png = pathlib.Path(paths["png"]).read_bytes()
    boundary = "onnxplain-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"photo.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    status, multipart = request(server, "POST", "/ui/prepare/cnn-saliency", body,
                                {"content-type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200, multipart
    status, as_json = request(server, "POST", "/ui/prepare/cnn-saliency",
                              json.dumps({"image": base64.b64encode(png).decode()}),
                              {"content-type": "application/json"})
    assert status == 200
    x = reference_image_tensor(paths["png"])
    for prepared in (multipart, as_json):
        np.testing.assert_allclose(as_array(prepared["inputs"][0]), x, rtol=0, atol=2e-6)
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(as_json["display"]["image"].split(",", 1)[1]))))
    np.testing.assert_array_equal(shown, np.asarray(Image.open(paths["png"]).convert("RGB"))[2:33, 7:38])


@pytest.mark.parametrize("path,body,expected", [
    ("/ui/prepare/cnn-saliency", {"image": base64.b64encode(b"GIF89a? not really").decode()}, "not an image"),
    ("/ui/prepare/cnn-saliency", {"image": "%%% not base64"}, "not base64"),
    ("/ui/prepare/cnn-saliency", {"text": "a text for an image model"}, "takes an image file"),
    ("/ui/prepare/mlp-saliency", {"row": "1, 2, x"}, "numbers separated by commas"),
    ("/ui/prepare/mlp-saliency", {"row": "1, 2, 3, 4, 5"}, "rows of 7 features"),
    ("/ui/prepare/no-such-model", {"row": "1"}, "unknown model 'no-such-model'"),
])
def test_bad_uploads_are_400s_with_a_clear_error_and_the_server_stays_up(server, path, body, expected):
    status, answer = request(server, "POST", path, json.dumps(body), {"content-type": "application/json"})
    assert status == 400 and expected in answer["error"], answer
    assert request(server, "GET", "/ui/models")[0] == 200
    assert server["proc"].poll() is None


def test_a_body_that_is_not_json_is_a_400(server):
    status, answer = request(server, "POST", "/ui/prepare/mlp-saliency", b"\x00\x01", {"content-type": "text/plain"})
    assert status == 400 and "expected a JSON object" in answer["error"]


# ---------------------------------------------------------------------- serve --ui, and the flags' checks
def test_serve_ui_passes_the_page_and_its_inputs_to_serve(paths, monkeypatch):
    """The command line's wiring only (the page itself is served above by view, which calls the same serve)."""
    import types

    from onnxplain.cli import main
    from onnxplain.sources.images import image_format
    calls = []
    fake = types.ModuleType("onnxplain.serve.server")
    fake.serve = lambda *args, **kwargs: calls.append((args, kwargs))
    monkeypatch.setitem(sys.modules, "onnxplain.serve.server", fake)     # kserve is not imported in this process
    assert main(["serve", paths["mlp"], "--method", "saliency", "--ui", "--preset", "none", "--size", "40",
                 "--tokenizer", paths["tokenizer"], "--http-port", "8123"]) == 0
    (args, kwargs), = calls
    assert args == ([paths["mlp"]], ["saliency"]) and kwargs["ui"] is True and kwargs["http_port"] == 8123
    assert kwargs["image"] == image_format("none", size=40) and kwargs["tokenizer"] == paths["tokenizer"]


def test_the_pages_flags_without_ui_are_refused_before_anything_runs(paths, capsys):
    from onnxplain.cli import main
    assert main(["serve", paths["mlp"], "--method", "saliency", "--preset", "imagenet",
                 "--tokenizer", paths["tokenizer"]]) == 2
    assert "--preset, --tokenizer set how the page reads its inputs: add --ui" in capsys.readouterr().err


def test_an_image_of_another_size_than_a_fixed_model_takes_is_refused_naming_both(paths):
    """In process (the page's reader, without a server): the "none" preset does not resize, so a 20x20 PNG
    cannot feed the 31x31 model."""
    import types

    from onnxplain.serve.protocol import Interface
    from onnxplain.serve.ui import Page, UploadError
    served = types.SimpleNamespace(name="cnn", interface=Interface(onnxplain.Explainer(paths["cnn"], "saliency")))
    page = Page([served], image="none")
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(buf, format="PNG")
    with pytest.raises(UploadError, match=r"shape \(\?, 3, 31, 31\) but the images make \(1, 3, 20, 20\)"):
        page.prepare("cnn", {"image": buf.getvalue()})
    exact = io.BytesIO()
    Image.fromarray(np.full((SIDE, SIDE, 3), 51, np.uint8)).save(exact, format="PNG")
    x = as_array(page.prepare("cnn", {"image": exact.getvalue()})["inputs"][0])
    np.testing.assert_allclose(x, np.full((1, 3, SIDE, SIDE), 51 / 255), rtol=1e-6)       # scaled, nothing else
