"""A whole dataset streamed through explain_dataset within a memory budget, killed and resumed.

    python benchmarks/bench_dataset.py                     # 20,000 rows of a small CNN, 256 MiB budget
    python benchmarks/bench_dataset.py --rows 2000 --method integrated_gradients --n-steps 16

Writes the rows (3x32x32 float32) to a .npy file, then:
1. one uninterrupted run (memmapped input, .npy output) in this process: rows per second, and the peak
   resident memory over the resident memory before the call, sampled every millisecond, against the budget
   (anonymous memory: the pages of the memmapped input and of the page cache are the kernel's to drop, they
   are shown apart);
2. the same run in a subprocess killed with SIGKILL halfway, then started again: the time the second start
   takes, the rows it computes, its overhead over those rows at the rate of step 1, and whether its output is
   byte-identical to the uninterrupted run's.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir))

import onnxplain  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def memory() -> tuple[int, int]:
    """(resident bytes, of which file-backed or shared) of this process."""
    with open("/proc/self/statm") as f:
        fields = f.read().split()
    return int(fields[1]) * PAGE, int(fields[2]) * PAGE


def peak_during(call):
    """Run ``call``; return its result and the peak (resident, anonymous) bytes over their values before it."""
    top_rss, top_anon, stop = [0], [0], threading.Event()

    def watch():
        while not stop.is_set():
            rss, shared = memory()
            top_rss[0], top_anon[0] = max(top_rss[0], rss), max(top_anon[0], rss - shared)
            time.sleep(0.001)

    rss0, shared0 = memory()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = call()
    finally:
        stop.set()
        watcher.join()
    return result, top_rss[0] - rss0, top_anon[0] - (rss0 - shared0)


def export_cnn(path: str) -> None:
    import torch
    from torch import nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(32, 10)).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def run(args, out: str, progress: bool = False):
    ex = onnxplain.Explainer(args.model, args.method, memory_budget=args.budget)
    x = np.load(args.data, mmap_mode="r")
    labels = np.load(args.labels, mmap_mode="r")
    params = {"n_steps": args.n_steps} if args.method == "integrated_gradients" else {}
    return ex.explain_dataset(x, out, target=labels, batch_size=args.batch_size, progress=progress, **params)


def child(args) -> None:
    run(args, args.out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--method", default="deeplift")
    p.add_argument("--n-steps", type=int, default=16)
    p.add_argument("--budget", default="256MiB")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--folder", help="where to put the data and outputs (default: a temporary folder)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--labels", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    folder = args.folder or tempfile.mkdtemp(prefix="onnxplain-bench-")
    os.makedirs(folder, exist_ok=True)
    args.model, args.data, args.labels = (os.path.join(folder, n) for n in ("cnn.onnx", "x.npy", "labels.npy"))
    export_cnn(args.model)
    rng = np.random.default_rng(0)
    x = np.lib.format.open_memmap(args.data, mode="w+", dtype=np.float32, shape=(args.rows, 3, 32, 32))
    for start in range(0, args.rows, 2000):
        x[start:start + 2000] = rng.standard_normal((min(2000, args.rows - start), 3, 32, 32), dtype=np.float32)
    x.flush()
    del x
    np.save(args.labels, rng.integers(0, 10, args.rows))
    budget = onnxplain.Explainer(args.model, args.method, memory_budget=args.budget).memory_budget

    whole = os.path.join(folder, "whole.npy")
    result, rss, anon = peak_during(lambda: run(args, whole, progress=sys.stderr.isatty()))
    rate = result.rows / result.seconds
    print(f"{args.method}, {args.rows} rows of 3x32x32, budget {budget / 2**20:.0f} MiB, "
          f"{result.batches} batches")
    print(f"uninterrupted: {result.seconds:.1f} s, {rate:.0f} rows/s")
    print(f"peak memory over the call's start: {anon / 2**20:.0f} MiB anonymous ({anon / budget:.2f}x the "
          f"budget), {rss / 2**20:.0f} MiB resident with the memmapped input's pages")

    cut = os.path.join(folder, "cut.npy")
    command = [sys.executable, os.path.abspath(__file__), "--child", "--model", args.model, "--data", args.data,
               "--labels", args.labels, "--out", cut, "--method", args.method, "--n-steps", str(args.n_steps),
               "--budget", str(args.budget)] + (["--batch-size", str(args.batch_size)] if args.batch_size else [])
    proc = subprocess.Popen(command)
    manifest = cut + ".manifest.json"
    while proc.poll() is None:
        try:
            with open(manifest) as f:
                done = json.load(f)["done"]
            if len(done) >= result.batches // 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(manifest) as f:
        done_rows = sum(b - a for a, b in json.load(f)["done"].values())
    t0 = time.perf_counter()
    subprocess.run(command, check=True)
    resumed = time.perf_counter() - t0
    remaining = args.rows - done_rows
    same = open(cut, "rb").read() == open(whole, "rb").read()
    print(f"killed (SIGKILL) after {done_rows} rows on disk; started again: {resumed:.1f} s for the "
          f"{remaining} remaining rows ({resumed - remaining / rate:.1f} s over their time at the uninterrupted "
          f"rate, a new interpreter included); output byte-identical to the uninterrupted run: {same}")


if __name__ == "__main__":
    main()
