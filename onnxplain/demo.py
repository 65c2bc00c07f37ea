"""The embedded demo: a small CNN, four sample images, integrated gradients and saliency.

    result = onnxplain.demo.run_demo(n_steps=50)
    print(result.summary())
    result.write("onnxplain-demo")        # a PNG per method and report.md (needs onnxplain[viz])

``onnxplain demo`` runs exactly this.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from importlib import resources

import numpy as np

from .report import markdown_table, text_table

DEMO_CLASSES = ("horizontal", "vertical", "diagonal", "square")
DEMO_METHODS = ("integrated_gradients", "saliency")
DEFAULT_OUTPUT = "onnxplain-demo"
REPORT = "report.md"


def demo_files() -> dict[str, str]:
    """Paths of the embedded demo model (``model``), its sample images (``inputs``) and their ``labels``."""
    folder = resources.files("onnxplain") / "data"
    paths = {"model": folder / "demo_cnn.onnx", "inputs": folder / "demo_inputs.npy",
             "labels": folder / "demo_labels.npy"}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"the embedded demo files are missing ({', '.join(missing)}); reinstall onnxplain")
    return {k: str(v) for k, v in paths.items()}


def check_output_folder(folder) -> str:
    """Fail before the demo runs when ``folder`` cannot take its pictures (a file is in the way, no parent)."""
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"the demo's output folder {folder!r} exists and is not a folder")
    parent = os.path.dirname(os.path.abspath(folder))
    if not os.path.isdir(parent):
        raise ValueError(f"cannot create the demo's output folder {folder!r}: {parent!r} does not exist")
    return folder


def class_index(text, n_classes: int = len(DEMO_CLASSES)) -> int:
    """A demo class given by name (``square``) or index (``3``)."""
    key = str(text).strip().lower()
    if key in DEMO_CLASSES:
        return DEMO_CLASSES.index(key)
    try:
        t = int(key)
    except ValueError:
        raise ValueError(f"the target must be a class index 0..{n_classes - 1} or one of "
                         f"{', '.join(DEMO_CLASSES)}, got {text!r}") from None
    if not 0 <= t < n_classes:
        raise ValueError(f"target {t} is out of range: the demo model has {n_classes} classes (0..{n_classes - 1})")
    return t


def class_name(k) -> str:
    """``"3 square"`` for class 3."""
    k = int(k)
    return f"{k} {DEMO_CLASSES[k]}" if 0 <= k < len(DEMO_CLASSES) else str(k)


@dataclass
class DemoResult:
    """The demo's inputs, predictions and attributions, with the numbers that check them."""

    inputs: np.ndarray             # (4, 1, 16, 16)
    labels: np.ndarray
    logits: np.ndarray             # f(x)
    targets: np.ndarray            # the explained class of each sample
    attributions: dict             # method name -> array shaped like inputs
    delta: np.ndarray              # integrated gradients' completeness residual per sample
    gap: np.ndarray                # f(x) - f(0) at the target
    n_steps: int
    integration: str
    build_seconds: float
    ig_seconds: float

    @property
    def predicted(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    def table(self) -> tuple[list[str], list[list[str]]]:
        """The per-sample numbers: header and rows."""
        ig, sal = self.attributions["integrated_gradients"], self.attributions["saliency"]
        n = len(self.inputs)
        sums = ig.reshape(n, -1).sum(axis=1, dtype=np.float64)
        header = ["sample", "label", "predicted", "target", "sum(IG)", "f(x)-f(0)", "delta", "saliency peak"]
        rows = []
        for k in range(n):
            peak = np.unravel_index(int(np.argmax(sal[k].reshape(-1))), sal[k].shape)
            rows.append([str(k), class_name(self.labels[k]), class_name(self.predicted[k]),
                         class_name(self.targets[k]), f"{sums[k]:.5f}", f"{self.gap[k]:.5f}",
                         f"{self.delta[k]:+.2e}", "(" + ", ".join(str(int(i)) for i in peak[-2:]) + ")"])
        return header, rows

    def _setup(self) -> str:
        shape = "x".join(str(d) for d in self.inputs.shape[1:])
        return (f"the embedded CNN ({shape} images of strokes, classes {', '.join(DEMO_CLASSES)}); "
                f"integrated gradients: {self.integration}, {self.n_steps} steps, baseline 0; saliency: |gradient|")

    def _timing(self) -> str:
        return (f"explanation graphs built once in {self.build_seconds:.2f} s; {len(self.inputs)} samples x "
                f"{self.n_steps} steps of integrated gradients in {self.ig_seconds * 1000:.1f} ms")

    def summary(self) -> str:
        """The text summary printed by ``onnxplain demo``."""
        return "\n".join([f"onnxplain demo: {self._setup()}", "", text_table(*self.table()), "", self._timing(),
                          _DELTA_NOTE])

    def save_npz(self, path) -> str:
        """Inputs, labels, logits, targets, both methods' attributions and delta, in one ``.npz``."""
        np.savez(path, inputs=self.inputs, labels=self.labels, logits=self.logits, targets=self.targets,
                 delta=self.delta, **self.attributions)
        return f"wrote {os.fspath(path)}: inputs, labels, logits, targets, {', '.join(self.attributions)}, delta"

    def write(self, folder=DEFAULT_OUTPUT) -> list[str]:
        """A PNG per method (the samples, each under its heatmap) and ``report.md`` into ``folder``."""
        from . import viz
        viz.require()
        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        labels = [f"{k}: {DEMO_CLASSES[int(t)]}" for k, t in enumerate(self.targets)]
        pictures = []
        for name, attr in self.attributions.items():
            path = os.path.join(folder, f"{name}.png")
            viz.image_grid(self.inputs, {name: attr}, row_labels=labels, path=path)
            pictures.append(path)
        report = os.path.join(folder, REPORT)
        with open(report, "w", encoding="utf-8") as f:
            f.write(self.report([os.path.basename(p) for p in pictures]))
        return pictures + [report]

    def report(self, pictures: list[str]) -> str:
        """The Markdown report: the setup, the numbers, and the pictures (file names relative to the report)."""
        lines = ["# onnxplain demo", "", self._setup()[0].upper() + self._setup()[1:] + ".", "",
                 markdown_table(*self.table()), "", self._timing() + ".", "", _DELTA_NOTE + ".", ""]
        for picture in pictures:
            name = os.path.splitext(picture)[0]
            lines += [f"## {name}", "", f"Each sample (left) and its {name} attributions for its target (right).",
                      "", f"![{name}]({picture})", ""]
        return "\n".join(lines)


_DELTA_NOTE = "delta = sum(IG) - (f(x) - f(0)): the completeness residual, small when the integration is accurate"


def run_demo(target=None, n_steps: int = 50, integration: str = "gausslegendre") -> DemoResult:
    """Explain the four sample images with integrated gradients and saliency.

    target: a class (index or name) explained for every sample; default each
    sample's predicted class.
    """
    from .api import Explainer
    from .methods.integrated_gradients import quadrature

    quadrature(n_steps, integration)                 # bad values fail before anything is built
    files = demo_files()
    x = np.load(files["inputs"], allow_pickle=False)
    labels = np.load(files["labels"], allow_pickle=False)
    n = len(x)

    t0 = time.perf_counter()
    ig = Explainer(files["model"], method="integrated_gradients")
    sal = Explainer(files["model"], method="saliency")
    build = time.perf_counter() - t0

    f_x = ig.forward(x)[ig.output]
    f_0 = ig.forward(np.zeros_like(x))[ig.output]
    targets = f_x.argmax(axis=1) if target is None else np.full(n, class_index(target, f_x.shape[1]))
    t0 = time.perf_counter()
    attr, delta = ig.explain(x, target=targets.tolist(), n_steps=n_steps, method=integration,
                             return_convergence_delta=True)
    seconds = time.perf_counter() - t0
    rows = np.arange(n)
    return DemoResult(inputs=x, labels=labels, logits=f_x, targets=targets,
                      attributions={"integrated_gradients": attr, "saliency": sal.explain(x, target=targets.tolist())},
                      delta=np.asarray(delta), gap=f_x[rows, targets] - f_0[rows, targets], n_steps=n_steps,
                      integration=integration, build_seconds=build, ig_seconds=seconds)
