"""Make the embedded demo model and its sample inputs (onnxplain/data/).

    python benchmarks/make_demo_model.py            # writes onnxplain/data/demo_cnn.onnx, demo_*.npy
    python benchmarks/make_demo_model.py --check    # rebuilds in memory and compares with the files

The model is a small CNN on 1x16x16 grayscale images,
conv(1->8, 3x3) - relu - maxpool(2) - conv(8->16, 3x3) - relu - global average pool - linear(16->4),
trained for a few hundred steps on a synthetic task with four classes of strokes:

    0 horizontal bar   1 vertical bar   2 diagonal bar   3 hollow square

so its attributions have something to show: the pixels of the stroke.  Everything is seeded and
runs on one thread with deterministic algorithms, so the same torch version writes the same bytes.
Export: TorchScript exporter (dynamo=False), opset 17, batch dimension dynamic.  Only Conv, Relu,
MaxPool, GlobalAveragePool, Flatten and Gemm appear in the graph.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, os.pardir, "onnxplain", "data")
CLASSES = ("horizontal", "vertical", "diagonal", "square")
SIZE = 16
ALLOWED_OPS = {"Conv", "Relu", "MaxPool", "GlobalAveragePool", "ReduceMean", "Flatten", "Reshape", "Gemm"}


# ---------------------------------------------------------------------- synthetic data
def stroke(kind: int, rng: np.random.Generator) -> np.ndarray:
    """One clean 16x16 image of class ``kind`` at a random place and length."""
    img = np.zeros((SIZE, SIZE), dtype=np.float32)
    length = int(rng.integers(6, 12))
    if kind == 0:       # horizontal bar
        r, c = int(rng.integers(2, SIZE - 2)), int(rng.integers(0, SIZE - length))
        img[r, c:c + length] = 1.0
    elif kind == 1:     # vertical bar
        r, c = int(rng.integers(0, SIZE - length)), int(rng.integers(2, SIZE - 2))
        img[r:r + length, c] = 1.0
    elif kind == 2:     # diagonal bar (down-right)
        r, c = int(rng.integers(0, SIZE - length)), int(rng.integers(0, SIZE - length))
        for i in range(length):
            img[r + i, c + i] = 1.0
    else:               # hollow square
        side = int(rng.integers(5, 10))
        r, c = int(rng.integers(0, SIZE - side)), int(rng.integers(0, SIZE - side))
        img[r, c:c + side] = img[r + side - 1, c:c + side] = 1.0
        img[r:r + side, c] = img[r:r + side, c + side - 1] = 1.0
    return img


def dataset(n: int, seed: int, noise: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), size=n)
    images = np.stack([stroke(int(k), rng) for k in labels])
    images = images + noise * rng.standard_normal(images.shape).astype(np.float32)
    return images[:, None].astype(np.float32), labels.astype(np.int64)


# ---------------------------------------------------------------------- model
def build_model():
    import torch
    from torch import nn

    class DemoCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, len(CLASSES))

        def forward(self, x):
            x = self.pool(torch.relu(self.conv1(x)))
            x = torch.relu(self.conv2(x))
            return self.fc(torch.flatten(self.gap(x), 1))

    return DemoCNN()


def train(seed: int = 0, steps: int = 400, batch: int = 64):
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model = build_model()
    images, labels = dataset(steps * batch, seed=seed + 1)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        x, y = x_all[step * batch:(step + 1) * batch], y_all[step * batch:(step + 1) * batch]
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    # Round the weights so that the file does not depend on the last bits of the optimiser's arithmetic.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.round(p * 2 ** 12) / 2 ** 12)
    return model


def export(model) -> bytes:
    import onnx
    import torch

    buf = io.BytesIO()
    example = torch.zeros(2, 1, SIZE, SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    m = onnx.load_from_string(buf.getvalue())
    m.producer_name, m.producer_version = "onnxplain-demo", "1"
    m.doc_string = "onnxplain demo CNN: 1x16x16 strokes -> logits of (horizontal, vertical, diagonal, square)"
    for node in m.graph.node:
        node.doc_string = ""
    ops = {n.op_type for n in m.graph.node}
    if not ops <= ALLOWED_OPS:
        raise SystemExit(f"the exported graph uses ops outside {sorted(ALLOWED_OPS)}: {sorted(ops - ALLOWED_OPS)}")
    onnx.checker.check_model(m)
    return m.SerializeToString(deterministic=True)


def samples() -> tuple[np.ndarray, np.ndarray]:
    """One noisy example per class, in class order."""
    rng = np.random.default_rng(12345)
    images = np.stack([stroke(k, rng) for k in range(len(CLASSES))])
    images = images + 0.1 * rng.standard_normal(images.shape).astype(np.float32)
    return images[:, None].astype(np.float32), np.arange(len(CLASSES), dtype=np.int64)


def outputs() -> dict[str, bytes]:
    model = train()
    x, y = samples()
    files = {"demo_cnn.onnx": export(model)}
    for name, arr in (("demo_inputs.npy", x), ("demo_labels.npy", y)):
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        files[name] = buf.getvalue()
    return files


def accuracy(model_bytes: bytes) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    x, y = dataset(2000, seed=999)
    pred = sess.run(None, {"image": x})[0].argmax(axis=1)
    return float((pred == y).mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing")
    ap.add_argument("--out", default=DATA, help="folder to write to (default: onnxplain/data)")
    args = ap.parse_args(argv)
    files = outputs()
    print(f"held-out accuracy of the demo model: {accuracy(files['demo_cnn.onnx']):.3f}")
    status = 0
    for name, data in files.items():
        path = os.path.join(args.out, name)
        digest = hashlib.sha256(data).hexdigest()[:16]
        if args.check:
            same = os.path.isfile(path) and open(path, "rb").read() == data
            print(f"{name:18s} {len(data):7d} bytes  sha256 {digest}  {'same' if same else 'DIFFERS'}")
            status |= 0 if same else 1
        else:
            os.makedirs(args.out, exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
            print(f"{name:18s} {len(data):7d} bytes  sha256 {digest}  -> {os.path.relpath(path)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
