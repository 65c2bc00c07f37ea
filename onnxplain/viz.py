"""Pictures of attributions: heatmaps over images, highlighted tokens, bars of features.

    import onnxplain.viz as viz
    fig = viz.image_heatmap(attr[0], image=x[0], path="ig.png")          # one image
    fig = viz.image_grid(x[:4], {"integrated_gradients": ig, "saliency": sal}, path="grid.png")
    html = viz.token_html(tokens, scores, path="tokens.html")            # standalone HTML
    fig = viz.feature_bars(attr[0], feature_names=names, top=10, path="bars.png")

The figures are drawn with matplotlib (the optional extra ``onnxplain[viz]``),
imported only when a picture is asked for, on its Agg canvas: no display and
no pyplot state are needed, so drawing works in servers and threads.  Every
function returns the figure (or the HTML text) and writes it to ``path`` when
one is given.

Signed attributions use a diverging map centred on 0 (red positive, blue
negative); absolute ones a sequential map.  Over an image, each pixel's colour
is as opaque as its attribution is strong, so the image stays visible where
the attribution is weak.
"""
from __future__ import annotations

import html
import os

import numpy as np

from .errors import MissingExtraError
from .paths import check_output_path

REDUCTIONS = ("sum", "mean", "abs_sum", "max_abs")
SIGNS = ("auto", "signed", "absolute")
CHANNELS = ("auto", "first", "last")
DIVERGING = "RdBu_r"
SEQUENTIAL = "inferno"
PICTURE_SUFFIXES = {"image": (".png", ".svg", ".pdf"), "tabular": (".png", ".svg", ".pdf"),
                    "tokens": (".html", ".png", ".svg", ".pdf")}
_POSITIVE_RGB = (214, 39, 40)      # the diverging map's ends, used by the token HTML as well
_NEGATIVE_RGB = (33, 102, 172)
_COLOUR_CHANNELS = (1, 3, 4)
_BACKDROP_LOW, _BACKDROP_SPAN = 0.15, 0.55   # the image under a heatmap, dimmed so that light colours still show


# ---------------------------------------------------------------------- matplotlib, on demand
def _matplotlib():
    """The matplotlib modules the pictures need, or an error naming the extra that installs them."""
    try:
        from matplotlib import colors
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.cm import ScalarMappable
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingExtraError('pictures need matplotlib, which is not installed: pip install "onnxplain[viz]"') \
            from e
    return Figure, FigureCanvasAgg, colors, ScalarMappable


def require() -> None:
    """Raise :class:`~onnxplain.errors.MissingExtraError` now when matplotlib is missing (before long work)."""
    _matplotlib()


def _new_figure(width: float, height: float):
    Figure, FigureCanvasAgg, _, _ = _matplotlib()
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(figure, path) -> str:
    """Write ``figure`` to ``path`` (the format from its suffix: .png, .svg, .pdf) at the figure's own size."""
    path = os.fspath(path)
    check_output_path(path, what="path")
    figure.savefig(path, dpi=figure.dpi, facecolor="white")
    return path


# ---------------------------------------------------------------------- images
def reduce_channels(attributions, reduction: str = "sum", channels: str = "auto") -> np.ndarray:
    """One value per pixel: ``(H, W)`` from ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)``.

    ``reduction``: ``sum`` or ``mean`` over channels (signed), ``abs_sum`` (the
    sum of absolute values) or ``max_abs`` (the largest absolute value), both
    non-negative.  ``channels``: ``first``, ``last`` or ``auto`` (see
    :func:`channel_axis`).
    """
    a = np.asarray(attributions, dtype=np.float64)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    if a.ndim == 2:
        return np.abs(a) if reduction in ("abs_sum", "max_abs") else a
    axis = channel_axis(a.shape, channels, "attributions")
    if reduction == "sum":
        return a.sum(axis=axis)
    if reduction == "mean":
        return a.mean(axis=axis)
    if reduction == "abs_sum":
        return np.abs(a).sum(axis=axis)
    return np.abs(a).max(axis=axis)


def channel_axis(shape: tuple, channels: str = "auto", what: str = "image") -> int:
    """The channel axis (0 or 2) of one image shaped ``(C, H, W)`` or ``(H, W, C)``.

    ``auto`` takes the axis of size 1, 3 or 4 when only one of the two ends has
    such a size, and the first axis otherwise (ONNX's NCHW convention).
    """
    if channels not in CHANNELS:
        raise ValueError(f"channels must be one of {', '.join(CHANNELS)}, got {channels!r}")
    if len(shape) != 3:
        raise ValueError(f"{what} must be one image shaped (H, W), (C, H, W) or (H, W, C), got shape {tuple(shape)}")
    if channels == "first":
        return 0
    if channels == "last":
        return 2
    first, last = shape[0] in _COLOUR_CHANNELS, shape[2] in _COLOUR_CHANNELS
    return 2 if last and not first else 0


def _displayable(image, channels: str, size: tuple) -> tuple[np.ndarray, bool]:
    """``image`` as ``(H, W)`` grey levels or ``(H, W, 3)`` colours in [0, 1]; True when grey."""
    img = np.asarray(image)
    raw_pixels = img.dtype == np.uint8                 # 0..255: shown as they are, not stretched
    img = img / 255.0 if raw_pixels else img.astype(np.float64)
    if img.ndim == 3:
        axis = channel_axis(img.shape, channels)
        img = np.moveaxis(img, axis, -1)
        img = img[..., :3] if img.shape[-1] in (3, 4) else img.mean(axis=-1)
    elif img.ndim != 2:
        raise ValueError(f"image must be shaped (H, W), (C, H, W) or (H, W, C), got shape {img.shape}")
    if img.shape[:2] != tuple(size):
        raise ValueError(f"the image is {img.shape[0]}x{img.shape[1]} pixels but the attributions "
                         f"{size[0]}x{size[1]}")
    lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
    if not raw_pixels and (lo < 0 or hi > 1):          # normalised pixels (e.g. ImageNet mean/std): back to [0, 1]
        img = (img - lo) / ((hi - lo) or 1.0)
    return np.clip(img, 0.0, 1.0), img.ndim == 2


def _is_signed(values: np.ndarray, sign: str) -> bool:
    if sign not in SIGNS:
        raise ValueError(f"sign must be one of {', '.join(SIGNS)}, got {sign!r}")
    if sign == "auto":
        return bool(np.nanmin(values) < 0)
    return sign == "signed"


def _scale(values: np.ndarray, clip_percentile) -> float:
    """The largest magnitude shown at full colour: the ``clip_percentile``-th percentile of ``|values|``."""
    magnitude = np.abs(values[np.isfinite(values)])
    if magnitude.size == 0:
        return 1.0
    if clip_percentile is None:
        top = float(magnitude.max())
    elif not 0 < clip_percentile <= 100:
        raise ValueError(f"clip_percentile must be in (0, 100] or None, got {clip_percentile!r}")
    else:
        top = float(np.percentile(magnitude, clip_percentile))
    return top if top > 0 else (float(magnitude.max()) or 1.0)


class _Style:
    """How one set of heatmaps is coloured: signed or not, the scale, the colour map, the overlay's opacity."""

    def __init__(self, heats: np.ndarray, sign: str, clip_percentile, cmap, alpha: float):
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        _, _, colors, _ = _matplotlib()
        self.signed = _is_signed(heats, sign)
        self.vmax = _scale(heats, clip_percentile)
        self.alpha = alpha
        self.cmap = cmap or (DIVERGING if self.signed else SEQUENTIAL)
        self.norm = (colors.Normalize(-self.vmax, self.vmax) if self.signed else colors.Normalize(0.0, self.vmax))

    def values(self, heat: np.ndarray) -> np.ndarray:
        return heat if self.signed else np.abs(heat)

    def mappable(self):
        _, _, _, ScalarMappable = _matplotlib()
        return ScalarMappable(norm=self.norm, cmap=self.cmap)

    def draw(self, ax, heat: np.ndarray, image=None, grey: bool = True) -> None:
        """The heatmap on ``ax``: alone, or over ``image`` with opacity growing with |attribution|."""
        values = self.values(heat)
        ax.set_xticks([])
        ax.set_yticks([])
        if image is None:
            ax.imshow(values, cmap=self.cmap, norm=self.norm, interpolation="nearest")
            return
        ax.imshow(_BACKDROP_LOW + _BACKDROP_SPAN * image, cmap="gray" if grey else None, vmin=0.0, vmax=1.0,
                  interpolation="nearest")
        rgba = self.mappable().to_rgba(values)
        strength = np.clip(np.abs(values) / self.vmax, 0.0, 1.0)
        rgba[..., 3] = self.alpha * np.where(np.isfinite(values), strength, 0.0)
        ax.imshow(rgba, interpolation="nearest")

    def colorbar(self, fig, axes, orientation: str = "vertical"):
        bar = fig.colorbar(self.mappable(), ax=axes, orientation=orientation, shrink=0.9,
                           fraction=0.08 if orientation == "vertical" else 0.05, pad=0.02)
        bar.set_label("attribution" if self.signed else "|attribution|", fontsize=8)
        bar.ax.tick_params(labelsize=7)
        return bar


def image_heatmap(attributions, image=None, *, sign: str = "auto", reduction: str = "sum", channels: str = "auto",
                  clip_percentile: float | None = 99.0, alpha: float = 0.75, cmap: str | None = None,
                  title: str | None = None, colorbar: bool = True, size: float = 4.0, path=None):
    """A heatmap of one image's attributions, over the image when it is given.

    attributions: ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)`` (channels reduced by ``reduction``).
    image: the explained image (same layout rules; grey or RGB; uint8 pixels are
        shown as 0..255, other values outside [0, 1] are rescaled by their min and
        max), drawn underneath.
    sign: ``signed`` (diverging map centred on 0), ``absolute`` (|attributions|,
        sequential map) or ``auto`` (signed when any value is negative).
    clip_percentile: the scale ends at this percentile of |attributions|, so a
        few outliers do not wash the picture out (None: at the largest value).
    alpha: the overlay's opacity where the attribution is strongest.
    Returns the matplotlib figure; writes it to ``path`` when given.
    """
    heat = reduce_channels(attributions, reduction, channels)
    style = _Style(heat, sign, clip_percentile, cmap, alpha)
    fig = _new_figure(size * (1.25 if colorbar else 1.0), size)
    ax = fig.add_subplot()
    shown, grey = _displayable(image, channels, heat.shape) if image is not None else (None, True)
    style.draw(ax, heat, shown, grey)
    if title:
        ax.set_title(title, fontsize=10)
    if colorbar:
        style.colorbar(fig, ax)
    if path is not None:
        save(fig, path)
    return fig


def image_grid(images, attributions, *, row_labels=None, show_input: bool = True, shared_scale: bool = False,
               per_line: int | None = None, sign: str = "auto", reduction: str = "sum", channels: str = "auto",
               clip_percentile: float | None = 99.0, alpha: float = 0.75, cmap: str | None = None,
               cell: float = 2.2, path=None):
    """Several images (rows) and methods (columns) side by side.

    images: ``(N, C, H, W)``, ``(N, H, W, C)`` or ``(N, H, W)``.
    attributions: ``{method name: array shaped like images}`` (a bare array
        is one column called ``attributions``).
    Each heatmap has its own colour scale and colour bar, or with
    ``shared_scale=True`` each method's column shares one scale (so its rows
    compare in absolute terms) and one colour bar; ``show_input`` adds a first
    column with the images alone.  ``per_line`` puts that many images side by
    side on each line of the grid (default: one).
    The other options are :func:`image_heatmap`'s.  Returns the figure.
    """
    columns = attributions if isinstance(attributions, dict) else {"attributions": attributions}
    if not columns:
        raise ValueError("attributions must name at least one method")
    imgs = np.asarray(images)
    if imgs.ndim not in (3, 4):
        raise ValueError(f"images must be a batch shaped (N, H, W), (N, C, H, W) or (N, H, W, C), got {imgs.shape}")
    n = len(imgs)
    heats = {}
    for name, a in columns.items():
        a = np.asarray(a)
        if len(a) != n:
            raise ValueError(f"{name!r} has attributions for {len(a)} images, expected {n}")
        heats[name] = np.stack([reduce_channels(row, reduction, channels) for row in a])
    labels = list(row_labels) if row_labels is not None else [f"#{k}" for k in range(n)]
    if len(labels) != n:
        raise ValueError(f"row_labels has {len(labels)} entries for {n} images")
    per_line = min(n, int(per_line or 1))
    if per_line < 1:
        raise ValueError(f"per_line must be a positive int, got {per_line!r}")

    block = len(heats) + int(show_input)                    # the cells of one image: input, then each method
    lines = -(-n // per_line)
    bars = 0.0 if shared_scale else 0.75 * len(heats)       # room for a colour bar beside each heatmap
    fig = _new_figure((cell * block + bars) * per_line + 0.4, cell * lines + (0.9 if shared_scale else 0.4))
    grid = np.asarray(fig.subplots(lines, block * per_line, squeeze=False))
    cells = [grid[r // per_line, (r % per_line) * block:(r % per_line + 1) * block] for r in range(n)]
    for ax in grid.reshape(-1):
        ax.set_visible(False)                               # shown again below when an image fills it
    shown = [_displayable(img, channels, next(iter(heats.values())).shape[1:]) for img in imgs]
    for r in range(n):
        for ax in cells[r]:
            ax.set_visible(True)
        if show_input:
            img, grey = shown[r]
            cells[r][0].imshow(img, cmap="gray" if grey else None, vmin=0.0, vmax=1.0, interpolation="nearest")
            cells[r][0].set_xticks([])
            cells[r][0].set_yticks([])
        cells[r][0].set_ylabel(str(labels[r]), fontsize=8)
    titles = (["input"] if show_input else []) + list(heats)
    for b in range(per_line):
        for c, title in enumerate(titles):
            grid[0, b * block + c].set_title(title, fontsize=9)
    for c, (name, heat) in enumerate(heats.items(), start=int(show_input)):
        column = _Style(heat, sign, clip_percentile, cmap, alpha)
        for r in range(n):
            style = column if shared_scale else _Style(heat[r], "signed" if column.signed else "absolute",
                                                       clip_percentile, cmap, alpha)
            style.draw(cells[r][c], heat[r], *shown[r])
            if not shared_scale:
                style.colorbar(fig, cells[r][c])
        if shared_scale:
            column.colorbar(fig, [cells[r][c] for r in range(n)], orientation="horizontal")
    if path is not None:
        save(fig, path)
    return fig


# ---------------------------------------------------------------------- tokens
def token_html(tokens, scores, *, title: str | None = None, row_labels=None, clip_percentile: float | None = None,
               path=None) -> str:
    """Tokens highlighted by score, as a standalone HTML page (UTF-8, no scripts, no external files).

    tokens: one sequence of strings (word pieces as the tokenizer gives them),
        or one sequence per row.
    scores: one score per token, shaped like ``tokens`` (sum token attributions
        over the embedding axis first: ``attr.sum(-1)``).
    Positive scores are red, negative blue, with an intensity proportional to
    |score| on one scale for all rows (ending at ``clip_percentile`` of
    |scores|, default the largest); each token's score shows on hover, and a
    legend gives the scale.  Tokens and labels are HTML-escaped.
    """
    rows_tokens, rows_scores, labels, vmax = _scored_token_rows(tokens, scores, row_labels, clip_percentile)
    body = []
    if title:
        body.append(f"<h1>{html.escape(str(title))}</h1>")
    for toks, vals, label in zip(rows_tokens, rows_scores, labels):
        spans = "".join(_token_span(t, float(v), vmax) for t, v in zip(toks, vals))
        head = f'<span class="label">{html.escape(str(label))}</span>' if label is not None else ""
        body.append(f'<div class="row">{head}{spans}</div>')
    body.append(_token_legend(vmax))
    text = _HTML_PAGE.format(title=html.escape(str(title or "onnxplain token attributions")), body="\n".join(body))
    if path is not None:
        path = os.fspath(path)
        check_output_path(path, what="path")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return text


def _scored_token_rows(tokens, scores, row_labels, clip_percentile):
    """The rows of tokens and scores, their labels (checked against the rows) and the one colour scale of all rows."""
    rows_tokens, rows_scores = _token_rows(tokens, scores)
    labels = list(row_labels) if row_labels is not None else [None] * len(rows_tokens)
    if len(labels) != len(rows_tokens):
        raise ValueError(f"row_labels has {len(labels)} entries for {len(rows_tokens)} rows")
    flat = np.concatenate(rows_scores) if rows_scores else np.zeros(0)
    return rows_tokens, rows_scores, labels, _scale(flat, clip_percentile)


def _token_rows(tokens, scores) -> tuple[list[list[str]], list[np.ndarray]]:
    if isinstance(tokens, str):
        raise ValueError("tokens must be a sequence of strings (one per token), not one string")
    rows = list(tokens)
    nested = bool(rows) and not isinstance(rows[0], str)
    rows_tokens = [[str(t) for t in row] for row in rows] if nested else [[str(t) for t in rows]]
    rows_scores = [np.asarray(r, dtype=np.float64) for r in scores] if nested else [np.asarray(scores, np.float64)]
    if len(rows_scores) != len(rows_tokens) or any(r.ndim != 1 for r in rows_scores):
        raise ValueError(f"scores must have one value per token: {len(rows_tokens)} row(s) of tokens, "
                         f"scores shaped {np.shape(scores)} (for (batch, seq, hidden) attributions, sum over "
                         f"the last axis)")
    for r, (toks, vals) in enumerate(zip(rows_tokens, rows_scores)):
        if len(toks) != len(vals):
            raise ValueError(f"row {r}: {len(toks)} tokens but {len(vals)} scores")
    return rows_tokens, rows_scores


def _token_span(token: str, score: float, vmax: float) -> str:
    strength = min(1.0, abs(score) / vmax) if np.isfinite(score) else 0.0
    rgb = _POSITIVE_RGB if score >= 0 else _NEGATIVE_RGB
    ink = "#fff" if strength > 0.6 else "#111"
    shown = html.escape(token) if token.strip() else "&#9251;" * max(1, len(token))   # visible blanks
    return (f'<span class="tok" style="background:rgba({rgb[0]},{rgb[1]},{rgb[2]},{strength:.3f});color:{ink}" '
            f'title="{html.escape(token)}: {score:+.4g}">{shown}</span>')


def _token_legend(vmax: float) -> str:
    neg, pos = ",".join(map(str, _NEGATIVE_RGB)), ",".join(map(str, _POSITIVE_RGB))
    return ('<div class="legend"><span>' + f"{-vmax:+.3g}" + "</span>"
            f'<span class="bar" style="background:linear-gradient(to right,rgb({neg}),#fff,rgb({pos}))"></span>'
            f"<span>{vmax:+.3g}</span> <span class=\"note\">score (red: for the target, blue: against; "
            "hover a token for its value)</span></div>")


_HTML_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #111; }}
h1 {{ font-size: 1.2em; }}
.row {{ margin: 0.6em 0; line-height: 2.1; }}
.label {{ display: inline-block; min-width: 4em; color: #555; font-size: 0.85em; }}
.tok {{ font-family: ui-monospace, monospace; padding: 0.15em 0.2em; margin: 0 0.08em; border-radius: 0.25em;
        white-space: pre; }}
.legend {{ margin-top: 1.2em; font-size: 0.85em; display: flex; align-items: center; gap: 0.5em; }}
.bar {{ display: inline-block; width: 14em; height: 0.9em; border: 1px solid #ccc; }}
.note {{ color: #555; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""


def token_picture(tokens, scores, *, title: str | None = None, row_labels=None,
                  clip_percentile: float | None = None, width: float = 10.0, font_size: float = 11.0, path=None):
    """Tokens highlighted by score, as a picture (.png, .svg, .pdf): :func:`token_html` drawn with matplotlib.

    tokens, scores, row_labels, clip_percentile: as :func:`token_html` (one scale for all rows, red
    positive, blue negative, the box as strong as |score| is).  Each row's tokens are boxes of
    monospaced text, wrapped into lines ``width`` inches wide; a colour bar under them gives the scale.
    Returns the figure; writes it to ``path`` when given.
    """
    rows_tokens, rows_scores, labels, vmax = _scored_token_rows(tokens, scores, row_labels, clip_percentile)
    layout = _TokenLayout(width, font_size, any(label is not None for label in labels), bool(title))
    boxes = [layout.row(toks, vals) for toks, vals in zip(rows_tokens, rows_scores)]
    Figure, FigureCanvasAgg, colors, ScalarMappable = _matplotlib()
    from matplotlib.patches import FancyBboxPatch
    height = layout.y + _TokenLayout.LEGEND
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    if title:
        ax.text(_TokenLayout.MARGIN, 0.3, str(title), fontsize=font_size + 1, va="center", weight="bold")
    for label, row in zip(labels, boxes):
        if label is not None and row:
            ax.text(_TokenLayout.MARGIN, row[0][2], str(label), fontsize=font_size - 2, color="#555", va="center")
        for token, x, y, w, score in row:
            strength = min(1.0, abs(score) / vmax) if np.isfinite(score) else 0.0
            end = np.array(_POSITIVE_RGB if score >= 0 else _NEGATIVE_RGB) / 255.0
            face = 1.0 - strength * (1.0 - end)                  # the HTML's rgba over white
            ax.add_patch(FancyBboxPatch((x, y - layout.box / 2), w, layout.box, facecolor=face, edgecolor="none",
                                        boxstyle="round,pad=0,rounding_size=0.04"))
            ax.text(x + layout.pad, y, token, fontsize=font_size, family="monospace", va="center", ha="left",
                    color="#fff" if strength > 0.6 else "#111")
    cmap = colors.LinearSegmentedColormap.from_list(
        "onnxplain_tokens", [np.array(_NEGATIVE_RGB) / 255.0, (1.0, 1.0, 1.0), np.array(_POSITIVE_RGB) / 255.0])
    bar_axes = fig.add_axes((0.25, 0.5 / height, 0.5, 0.16 / height))
    bar = fig.colorbar(ScalarMappable(norm=colors.Normalize(-vmax, vmax), cmap=cmap), cax=bar_axes,
                       orientation="horizontal")
    bar.ax.tick_params(labelsize=7)
    bar.set_label("score (red: for the target, blue: against)", fontsize=8)
    if path is not None:
        save(fig, path)
    return fig


class _TokenLayout:
    """Where each token's box goes: left to right, wrapped at the picture's width, in inches from the top."""

    MARGIN, GAP, LABEL, ROW_GAP, LEGEND = 0.15, 0.05, 0.6, 0.18, 0.9
    CHAR = 0.602            # the advance of a monospaced character, in ems (DejaVu Sans Mono)

    def __init__(self, width: float, font_size: float, labelled: bool, titled: bool):
        self.char = self.CHAR * font_size / 72.0
        self.pad = 0.25 * self.char
        self.line = 1.9 * font_size / 72.0
        self.box = 1.45 * font_size / 72.0
        self.left = self.MARGIN + (self.LABEL if labelled else 0.0)
        self.right = width - self.MARGIN
        self.y = 0.6 if titled else self.MARGIN

    def row(self, tokens: list[str], scores: np.ndarray) -> list[tuple]:
        """(shown text, x, y of the line's middle, box width, score) for each token of one row."""
        placed, x, y = [], self.left, self.y + self.line / 2
        for token, score in zip(tokens, scores):
            shown = token if token.strip() else "\u2423" * max(1, len(token))    # visible blanks
            w = len(shown) * self.char + 2 * self.pad
            if x > self.left and x + w > self.right:
                x, y = self.left, y + self.line
            placed.append((shown, x, y, w, float(score)))
            x += w + self.GAP
        self.y = y + self.line / 2 + self.ROW_GAP
        return placed


# ---------------------------------------------------------------------- tabular
def feature_bars(scores, feature_names=None, *, top: int = 10, title: str | None = None, row_labels=None,
                 columns: int = 4, path=None):
    """A horizontal bar chart of the features with the largest |attribution|, signed.

    scores: one attribution per feature ``(F,)``, or one row per explained
        example ``(N, F)`` (a panel each, ``columns`` panels per line).
    feature_names: ``F`` names (default ``feature 0``, ``feature 1``, ...).
    top: how many features each panel shows, the largest |score| at the top;
        positive bars are red, negative blue, each labelled with its value.
    Returns the figure; writes it to ``path`` when given.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[None]
    if s.ndim != 2 or s.shape[1] == 0:
        raise ValueError(f"scores must be shaped (features,) or (rows, features), got {np.shape(scores)}")
    n, f = s.shape
    names = _checked_feature_names(feature_names, f, top)
    k = min(int(top), f)
    labels = list(row_labels) if row_labels is not None else ([None] if n == 1 else [f"#{r}" for r in range(n)])
    if len(labels) != n:
        raise ValueError(f"row_labels has {len(labels)} entries for {n} rows")
    n_cols = min(n, max(1, int(columns)))
    n_rows = -(-n // n_cols)
    longest = max(len(names[i]) for i in range(f))
    fig = _new_figure(n_cols * (3.2 + 0.07 * min(longest, 40)), n_rows * (0.6 + 0.28 * k) + (0.3 if title else 0))
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False)).reshape(-1)
    for r in range(n):
        _bar_panel(axes[r], s[r], names, k, labels[r])
    for ax in axes[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    if path is not None:
        save(fig, path)
    return fig


def _checked_feature_names(feature_names, features: int, top) -> list[str]:
    """The features' names (default ``feature k``), checked against their count, and ``top`` checked."""
    names = [str(x) for x in feature_names] if feature_names is not None else [f"feature {k}" for k in
                                                                               range(features)]
    if len(names) != features:
        raise ValueError(f"{len(names)} feature names for {features} features")
    if not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"top must be a positive int, got {top!r}")
    return names


def top_features(scores, top: int) -> np.ndarray:
    """Indices of the ``top`` largest |scores|, largest first (ties: the lower index first)."""
    s = np.asarray(scores, dtype=np.float64)
    return np.argsort(-np.abs(s), kind="stable")[:top]


def _bar_panel(ax, scores: np.ndarray, names: list[str], k: int, label) -> None:
    order = top_features(scores, k)
    values = scores[order]
    y = np.arange(len(order))[::-1]            # largest at the top
    colours = ["#%02x%02x%02x" % (_POSITIVE_RGB if v >= 0 else _NEGATIVE_RGB) for v in values]
    ax.barh(y, values, color=colours, height=0.7)
    ax.set_yticks(y, [names[i] for i in order], fontsize=8)
    ax.axvline(0.0, color="#444", linewidth=0.8)
    span = float(np.abs(values).max()) or 1.0
    lo, hi = min(0.0, float(values.min())), max(0.0, float(values.max()))
    margin = 0.45 * span                        # room for the value labels at the ends of the bars
    ax.set_xlim(lo - margin * (lo < 0), hi + margin * (hi > 0) + (margin if lo == hi == 0 else 0))
    for yy, v in zip(y, values):
        ax.annotate(f"{v:+.3g}", (v, yy), xytext=(3 if v >= 0 else -3, 0), textcoords="offset points",
                    ha="left" if v >= 0 else "right", va="center", fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("attribution", fontsize=8)
    if label is not None:
        ax.set_title(str(label), fontsize=9)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)

SUMMARY_MAP = "coolwarm"   # a feature's value, low (blue) to high (red), in the summary's dots


def feature_summary(scores, values, feature_names=None, *, top: int = 20, title: str | None = None,
                    cmap: str = SUMMARY_MAP, dot_size: float = 12.0, path=None):
    """A summary of many rows' attributions, one line of dots per feature (a beeswarm).

    scores: the attributions ``(N, F)``; values: the features' values ``(N, F)`` (the explained rows).
    Features are ordered by their mean |attribution|, the largest at the top; ``top`` of them are shown, and
    the others are left out and counted in the axis label (SHAP's beeswarm sums them on a last line instead).
    Each row is a dot at its attribution; dots that would overlap are spread vertically, more
    where more rows fall (a histogram of the line, stacked outwards from its centre), so the line's thickness
    shows the density.  A dot's colour is its feature's value, from the feature's 5th to 95th percentile
    (blue low, red high; grey when the feature is constant), with a colour bar.  The layout of SHAP's
    ``summary_plot`` (dot kind), drawn here with matplotlib.  Returns the figure; writes it to ``path``.
    """
    s, v = np.asarray(scores, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] == 0 or s.shape[0] == 0:
        raise ValueError(f"scores must be shaped (rows, features), got {np.shape(scores)}")
    if v.shape != s.shape:
        raise ValueError(f"values must be shaped like the scores {s.shape}, got {v.shape}")
    n, f = s.shape
    names = _checked_feature_names(feature_names, f, top)
    order = np.argsort(-np.abs(s).mean(axis=0), kind="stable")[:int(top)]
    _, _, colors, ScalarMappable = _matplotlib()
    longest = max(len(names[j]) for j in order)
    fig = _new_figure(6.0 + 0.07 * min(longest, 40), 1.2 + 0.42 * len(order) + (0.3 if title else 0))
    ax = fig.add_subplot()
    colour = ScalarMappable(norm=colors.Normalize(0.0, 1.0), cmap=cmap)
    lo, hi = float(np.nanmin(s[:, order])), float(np.nanmax(s[:, order]))
    for line, j in enumerate(order):
        y = len(order) - 1 - line                                  # the largest at the top
        offsets = swarm_offsets(s[:, j], lo, hi, height=0.8)
        shade = feature_shades(v[:, j])
        rgba = colour.to_rgba(np.nan_to_num(shade, nan=0.5))
        rgba[np.isnan(shade)] = (0.6, 0.6, 0.6, 1.0)
        ax.scatter(s[:, j], y + offsets, s=dot_size, c=rgba, linewidths=0, alpha=0.9, rasterized=True, zorder=3)
    ax.axvline(0.0, color="#777", linewidth=0.8, zorder=1)
    ax.set_yticks(np.arange(len(order))[::-1], [names[j] for j in order], fontsize=8)
    ax.set_ylim(-0.7, len(order) - 0.3)
    for y in range(len(order)):
        ax.axhline(y, color="#ddd", linewidth=0.6, linestyle=":", zorder=0)
    left = f" ({f - len(order)} feature(s) with smaller attributions not shown)" if f > len(order) else ""
    ax.set_xlabel(f"attribution (one dot per row, {n} rows){left}", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    bar = fig.colorbar(colour, ax=ax, fraction=0.05, pad=0.02, aspect=30, ticks=[0.0, 1.0])
    bar.ax.set_yticklabels(["low", "high"], fontsize=7)
    bar.set_label("feature value", fontsize=8)
    bar.outline.set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    if path is not None:
        save(fig, path)
    return fig


def swarm_offsets(x, lo: float, hi: float, height: float = 0.8, bins: int = 60) -> np.ndarray:
    """Vertical offsets spreading the dots at ``x`` over a line ``height`` tall: the range ``[lo, hi]`` is cut
    into ``bins``; the dots of one bin are stacked outwards from the centre (0, +1, -1, +2, ...), in the order
    of their ``x``, and every line is scaled by the fullest bin so the densest stack just fills the height."""
    x = np.asarray(x, dtype=np.float64)
    span = (hi - lo) or 1.0
    which = np.clip(((x - lo) / span * bins).astype(np.int64), 0, bins - 1)
    offsets = np.zeros(len(x))
    fullest = 1
    for b in np.unique(which):
        members = np.flatnonzero(which == b)
        members = members[np.argsort(x[members], kind="stable")]
        k = np.arange(len(members))
        offsets[members] = np.where(k % 2 == 1, (k + 1) // 2, -(k // 2))
        fullest = max(fullest, len(members))
    return offsets * (height / 2) / max(1.0, fullest / 2)


def feature_shades(values) -> np.ndarray:
    """A feature's values mapped to [0, 1] between their 5th and 95th percentiles (clipped), so a few extreme
    rows do not flatten the colours; NaN where the feature is constant (no low or high to show)."""
    v = np.asarray(values, dtype=np.float64)
    lo, hi = np.nanpercentile(v, 5), np.nanpercentile(v, 95)
    if hi <= lo:
        lo, hi = np.nanmin(v), np.nanmax(v)
    if hi <= lo:
        return np.full(v.shape, np.nan)
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0)


# ---------------------------------------------------------------------- an explainer's attributions
def picture_kind(explainer) -> str:
    """Which picture suits an explainer's attributions, from the attributed input of its model.

    ``image`` for a floating-point input of rank 4 (a batch of images, channels
    first or last), ``tokens`` for token ids attributed at their embedding,
    ``tabular`` for a floating-point input of rank 2 (rows of features).
    """
    spec = explainer.spec
    if not spec.single:
        raise ValueError(f"a picture shows one attributed input, and {', '.join(spec.wrt)} are attributed; "
                         f"choose one (inputs=[NAME], or --input NAME)")
    point = spec.points[0]
    inputs = {vi.name: vi for vi in spec.model.graph.input}
    if point.key not in inputs:
        raise ValueError(f"layer attributions ({point.key!r}) have no picture: pictures show the model's "
                         f"images, tokens or features")
    if not point.is_input:
        return "tokens"
    rank = len(inputs[point.key].type.tensor_type.shape.dim)
    if rank == 4:
        return "image"
    if rank == 2:
        return "tabular"
    raise ValueError(f"input {point.key!r} has rank {rank}: pictures are drawn for images (rank 4), token ids "
                     f"and tabular rows (rank 2)")


def check_picture_path(path, kind: str) -> str:
    """Fail before any work when ``path`` cannot hold a picture of ``kind`` (suffix, folder)."""
    path = os.fspath(path)
    suffixes = PICTURE_SUFFIXES[kind]
    if not path.lower().endswith(suffixes):
        other = " (tokens: highlighted text as an HTML page or a picture)" if kind == "tokens" else ""
        raise ValueError(f"a picture of {kind} attributions is written as {' or '.join(suffixes)}{other}, "
                         f"got {path!r}")
    check_output_path(path, what="--plot")
    return path


MAX_ROWS = 16


def draws_summary(rows: int, summary: bool | None = None, max_rows: int = MAX_ROWS) -> bool:
    """Whether tabular rows are drawn as one :func:`feature_summary` rather than a bar chart per row:
    ``summary`` when given, else when there are more than ``max_rows`` rows."""
    return bool(summary) if summary is not None else rows > int(max_rows)


def rows_first(values, axis: int | None) -> np.ndarray:
    """An input (or its attributions, which keep its layout) with its batch axis first: ``axis`` is the
    input's batch axis, ``None`` for an input without one (then it is one row)."""
    values = np.asarray(values)
    return values[None] if axis is None else np.moveaxis(values, axis, 0)


def _shown_instead(shown_images, attributions, rows: int, channels: str) -> tuple[np.ndarray, np.ndarray]:
    """The images to draw under the heatmaps (uint8 ``H x W x 3`` or ``H x W`` each, one per row), and the
    attributions with their channel axis last to match them."""
    shown = [np.asarray(img) for img in list(shown_images)[:rows]]
    if len(shown) != rows:
        raise ValueError(f"shown_images has {len(shown)} images for {rows} drawn rows")
    a = np.asarray(attributions)[:rows]
    if a.ndim == 4:
        a = np.moveaxis(a, 1 + channel_axis(a.shape[1:], channels, "attributions"), -1)
    for r, img in enumerate(shown):
        if img.shape[:2] != a.shape[1:3]:
            raise ValueError(f"shown image {r} is {img.shape[0]}x{img.shape[1]} pixels but its attributions "
                             f"{a.shape[1]}x{a.shape[2]}")
    return np.stack(shown), a


def plot_explanation(explainer, inputs, attributions, path, *, tokens=None, feature_names=None,
                     max_rows: int = MAX_ROWS, summary: bool | None = None, row_labels=None, shown_images=None,
                     **options):
    """Draw an explainer's attributions of ``inputs`` as the picture its model's input calls for.

    Images: :func:`image_grid` (the input, and the method's heatmap over it; ``shown_images``: the images
    to draw instead of the input tensor, e.g. the photos as the model saw them before normalisation, one
    uint8 ``H x W x 3`` or ``H x W`` array per row, :attr:`onnxplain.sources.Rows.images`);
    token ids: :func:`token_html` (``.html``) or :func:`token_picture` (``.png``, ``.svg``, ``.pdf``) with
    token scores summed over the embedding axis (``tokens``: the word pieces, one list per row; default the
    ids; the option ``token_positions``: a boolean ``(N, L)`` array, True at the positions drawn, e.g.
    not the padding, and then ``tokens`` lists only those);
    tabular rows: :func:`feature_bars` (``feature_names``), or with ``summary``
    :func:`feature_summary` of every row (``summary=None``: when there are
    more than ``max_rows`` rows).  At most ``max_rows`` rows are drawn
    otherwise.  ``row_labels`` name the rows (default ``#0``, ``#1``...; e.g. the file names).
    ``options`` go to the drawing function.
    Returns the figure (or the HTML text).
    """
    kind = picture_kind(explainer)
    check_picture_path(path, kind)
    key = explainer.spec.points[0].key
    a = attributions[key] if isinstance(attributions, dict) else np.asarray(attributions)
    x = inputs[key] if isinstance(inputs, dict) else np.asarray(inputs)
    x, a = rows_first(x, explainer.batch_axes.get(key, 0)), rows_first(a, explainer.batch_axes.get(key, 0))
    rows = min(len(a), int(max_rows))
    labels = [f"#{r}" for r in range(rows)] if row_labels is None else [str(v) for v in list(row_labels)[:rows]]
    if len(labels) != rows:
        raise ValueError(f"row_labels has {len(labels)} entries for {rows} drawn rows")
    if kind == "image":
        options.setdefault("per_line", 1 if rows <= 4 else 4)
        if shown_images is not None:
            x, a = _shown_instead(shown_images, a, rows, options.get("channels", "auto"))
            options["channels"] = "last"
        return image_grid(x[:rows], {explainer.method_name: a[:rows]}, row_labels=labels, path=path, **options)
    if kind == "tabular" and draws_summary(len(a), summary, max_rows):
        return feature_summary(a.reshape(len(a), -1), x.reshape(len(x), -1), feature_names, path=path,
                               title=f"{explainer.method_name} attributions of {explainer.output!r}", **options)
    if kind == "tabular":
        return feature_bars(a[:rows], feature_names, row_labels=labels, path=path, **options)
    scores = a[:rows].reshape(rows, x.shape[1], -1).sum(axis=-1) if a.ndim > 2 else a[:rows]
    words = [[str(int(i)) for i in row] for row in np.asarray(x)[:rows]] if tokens is None else list(tokens)[:rows]
    positions = options.pop("token_positions", None)
    if positions is not None:                       # e.g. padding left out
        shown = np.asarray(positions, dtype=bool)[:rows]
        scores = [row[keep] for row, keep in zip(scores, shown)]
        if tokens is None:
            words = [[w for w, keep in zip(row, kept) if keep] for row, kept in zip(words, shown)]
    draw = token_html if os.fspath(path).lower().endswith(".html") else token_picture
    return draw(words, scores, title=f"{explainer.method_name} attributions of {explainer.output!r}",
                row_labels=labels, path=path, **options)


# ---------------------------------------------------------------------- evaluation curves
CURVE_SUFFIXES = (".png", ".svg", ".pdf")


def flipping_curves(curves: dict, *, row_labels=None, max_rows: int = MAX_ROWS, title: str | None = None,
                    path=None):
    """The deletion and insertion curves (:func:`onnxplain.metrics.deletion` / ``insertion``), a panel each.

    curves: by name (``"deletion"``, ``"insertion"``), objects with ``fractions`` ``(K,)``, ``values``
        ``(N, K)`` and ``area`` ``(N,)`` (:class:`onnxplain.metrics.FlippingCurve`).
    Each panel draws the explained output against the fraction of features flipped: a thin line per row (the
    first ``max_rows``, labelled by ``row_labels``, default ``#0``, ``#1``...) and the mean over all rows
    as a thick black line, the area under each curve in the legend.  A good attribution makes the deletion
    curve fall fast (small area) and the insertion curve rise fast (large area).
    Returns the figure; writes it to ``path`` when given.
    """
    if not curves:
        raise ValueError("no curves to draw: give deletion and/or insertion curves")
    checked = {}
    for name, c in curves.items():
        fr, v, area = (np.asarray(c.fractions, np.float64), np.asarray(c.values, np.float64),
                       np.asarray(c.area, np.float64))
        if fr.ndim != 1 or v.ndim != 2 or v.shape[1] != fr.size or area.shape != (v.shape[0],):
            raise ValueError(f"curve {name!r}: expected fractions (K,), values (N, K) and area (N,), got "
                             f"{fr.shape}, {v.shape} and {area.shape}")
        checked[name] = (fr, v, area)
    n = next(iter(checked.values()))[1].shape[0]
    rows = min(n, int(max_rows))
    labels = [f"#{r}" for r in range(rows)] if row_labels is None else [str(v) for v in list(row_labels)[:rows]]
    if len(labels) != rows:
        raise ValueError(f"row_labels has {len(labels)} entries for {rows} drawn rows")
    fig = _new_figure(4.6 * len(checked) + (1.3 if rows > 1 else 0), 3.6 + (0.3 if title else 0))
    axes = np.asarray(fig.subplots(1, len(checked), squeeze=False)).reshape(-1)
    for ax, (name, (fr, v, area)) in zip(axes, checked.items()):
        _curve_panel(ax, name, fr, v, area, labels)
    if rows > 1:
        handles, texts = axes[-1].get_legend_handles_labels()
        fig.legend(handles[:rows], texts[:rows], loc="outside right upper", fontsize=7, frameon=False,
                   title="rows" + (f" (first {rows} of {n})" if rows < n else ""), title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    if path is not None:
        save(fig, path)
    return fig


def _curve_panel(ax, name: str, fractions: np.ndarray, values: np.ndarray, area: np.ndarray, labels) -> None:
    colours = _row_colours(len(labels))
    for r, label in enumerate(labels):
        ax.plot(fractions, values[r], color=colours[r], linewidth=1.0, alpha=0.8, label=label)
    mean = values.mean(axis=0)
    (line,) = ax.plot(fractions, mean, color="black", linewidth=2.2, label="mean")
    ax.legend([line], [f"mean of {len(values)} row(s), area {area.mean():.4g}"], fontsize=7, loc="best",
              frameon=False)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("fraction of features " + ("inserted" if name == "insertion" else "deleted")
                  + ", most relevant first", fontsize=8)
    ax.set_ylabel("explained output", fontsize=8)
    ax.set_title(name, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(color="#e5e5e5", linewidth=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _row_colours(n: int) -> list:
    import matplotlib
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(r % cmap.N) for r in range(n)]
