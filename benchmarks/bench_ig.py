"""Integrated gradients and DeepLIFT: onnxplain vs Captum vs plain forward passes, in one run.

    python benchmarks/bench_ig.py [--batch 8] [--n-steps 50] [--repeats 7] [--threads N] [--json out.json]

The same small CNN (3x32x32 input, three convolutions, 10 classes, seeded
weights) is explained in PyTorch by Captum's ``IntegratedGradients`` and, after
export to ONNX, by ``onnxplain.Explainer(..., "integrated_gradients")``, with the
same settings (``n_steps``, Gauss-Legendre, zero baseline, one target per row,
every step in one run).  The reference is the cost of ``n_steps`` plain forward
passes of the same batch in onnxruntime: computing a gradient costs about two
forward passes, so a ratio near 2 is the floor.

PyTorch and onnxruntime get the same number of threads.  Warm-up runs are not
timed; each figure is the median of ``--repeats`` timed runs.  Not a test: it
prints a table (and writes JSON with ``--json``).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np


def build_torch_model(seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )
    return model.eval()


def export(model) -> bytes:
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 3, 32, 32),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return buf.getvalue()


def timeit_interleaved(fns: dict, repeats: int, warmup: int) -> dict:
    """Median and min seconds of each function, timed round-robin so that background load hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(v), min(v), v) for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--n-steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count(), help="threads for both PyTorch and onnxruntime (default: usable cores)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import torch
    from captum.attr import IntegratedGradients

    import onnxplain

    torch.set_num_threads(args.threads)
    model = build_torch_model()
    onnx_bytes = export(model)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    target = [int(t) for t in rng.integers(0, 10, size=args.batch)]
    xt = torch.from_numpy(x)

    # onnxplain: graph and session built once (not timed), each call only feeds them
    ex = onnxplain.Explainer(onnx_bytes, method="integrated_gradients", providers=["CPUExecutionProvider"],
                             threads=args.threads)   # the same threads as torch

    def run_onnxplain():
        return ex.explain(x, target=target, n_steps=args.n_steps, method="gausslegendre")

    ig = IntegratedGradients(model)

    def run_captum():
        return ig.attribute(xt, target=target, n_steps=args.n_steps, method="gausslegendre")

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.log_severity_level = 3
    fwd = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
    expanded = np.repeat(x, args.n_steps, axis=0)

    def run_forwards():
        for _ in range(args.n_steps):
            fwd.run(None, {"x": x})

    def run_one_big_forward():
        fwd.run(None, {"x": expanded})

    def run_torch_forwards():
        with torch.no_grad():
            for _ in range(args.n_steps):
                model(xt)

    # the two implementations must agree before their times mean anything
    a_ours = run_onnxplain()
    a_captum = run_captum().detach().numpy()
    scale = float(np.abs(a_captum).max())
    max_diff = float(np.abs(a_ours - a_captum).max())
    agree = max_diff <= 1e-3 * scale + 1e-6

    fns = {f"onnxplain IG ({args.n_steps} steps, one session)": run_onnxplain,
           f"Captum IntegratedGradients ({args.n_steps} steps)": run_captum,
           f"onnxruntime: {args.n_steps} forward passes of the batch": run_forwards,
           f"onnxruntime: 1 forward pass of {args.n_steps}x{args.batch} rows": run_one_big_forward,
           f"PyTorch: {args.n_steps} forward passes of the batch (no_grad)": run_torch_forwards}
    timed = timeit_interleaved(fns, args.repeats, args.warmup)
    rows = [{"what": k, "median_s": m, "min_s": lo, "times_s": v} for k, (m, lo, v) in timed.items()]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    ours = rows[0]["median_s"]
    fwd50 = rows[2]["median_s"]
    print(f"IG on a small CNN: batch {args.batch} x 3x32x32, 10 classes, {args.n_steps} steps (gausslegendre), "
          f"zero baseline")
    print(f"threads: {args.threads} (torch {torch.get_num_threads()}, onnxruntime intra-op {args.threads}); "
          f"median of {args.repeats} interleaved runs after {args.warmup} warm-up runs; "
          f"load average {load:.2f} (other processes on the machine skew the numbers)")
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
          f"python {platform.python_version()}, {platform.machine()}")
    print(f"attributions agree with Captum: {'yes' if agree else 'NO'} (max |diff| {max_diff:.2e}, "
          f"max |attr| {scale:.2e})")
    print()
    header = ("", "ms / batch", "(min)", "ms / image", "x onnxplain", f"x {args.n_steps} fwd")
    table = [[r["what"], f"{r['median_s'] * 1e3:.1f}", f"{r['min_s'] * 1e3:.1f}", f"{r['median_s'] * 1e3 / args.batch:.2f}",
              f"{r['median_s'] / ours:.2f}", f"{r['median_s'] / fwd50:.2f}"] for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *table)]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    for row in table:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    print()
    print(f"Captum / onnxplain: {rows[1]['median_s'] / ours:.2f}x;  "
          f"onnxplain / {args.n_steps} onnxruntime forward passes: {ours / fwd50:.2f}x (about 2 is the floor)")
    extra = {"deeplift": bench_deeplift(model, onnx_bytes, x, target, args),
             "transformer": bench_transformer(args),
             "lstm": bench_lstm(args)}
    agree = agree and all(section["agree"] for section in extra.values())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": args.batch, "n_steps": args.n_steps, "threads": args.threads, "repeats": args.repeats,
                       "agree": agree, "max_abs_diff": max_diff, "rows": rows, "load_average": load, **extra,
                       "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__}}, f, indent=2)
    return 0 if agree else 1


def compare_section(title: str, ours, theirs, reference, args) -> dict:
    """Time two implementations of one method (interleaved), check they agree, print one line."""
    a, b = np.asarray(ours()), np.asarray(reference(theirs()))
    scale = float(np.abs(b).max())
    diff = float(np.abs(a - b).max())
    agree = diff <= 1e-3 * scale + 1e-6
    timed = timeit_interleaved({"onnxplain": ours, "Captum": theirs}, args.repeats, args.warmup)
    t_ours, t_theirs = timed["onnxplain"][0], timed["Captum"][0]
    print(f"{title}: onnxplain {t_ours * 1e3:.1f} ms, Captum {t_theirs * 1e3:.1f} ms, Captum / onnxplain "
          f"{t_theirs / t_ours:.2f}x; agree: {'yes' if agree else 'NO'} (max |diff| {diff:.1e}, max |attr| "
          f"{scale:.1e})")
    return {"onnxplain_s": t_ours, "captum_s": t_theirs, "agree": agree, "max_abs_diff": diff}


def bench_deeplift(model, onnx_bytes, x, target, args) -> dict:
    """DeepLIFT (Rescale) on the same CNN and batch: its ReLUs are modules, so Captum's rules apply."""
    import torch
    from captum.attr import DeepLift

    import onnxplain
    ex = onnxplain.Explainer(onnx_bytes, "deeplift", providers=["CPUExecutionProvider"], threads=args.threads)
    base = np.zeros_like(x)
    xt, bt = torch.from_numpy(x), torch.from_numpy(base)
    dl = DeepLift(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compare_section(f"DeepLIFT on the same CNN, batch {args.batch}",
                               lambda: ex.explain(x, target=target, baselines=base),
                               lambda: dl.attribute(xt, bt, target=target),
                               lambda t: t.detach().numpy(), args)


def bench_transformer(args) -> dict:
    """IG at the word embeddings of a tiny random BERT classifier: LayerIntegratedGradients vs onnxplain."""
    import torch
    from captum.attr import LayerIntegratedGradients
    from transformers import BertConfig, BertForSequenceClassification

    import onnxplain
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2)
    bert = BertForSequenceClassification(config).eval()

    class Logits(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, input_ids, attention_mask):
            return self.net(input_ids=input_ids, attention_mask=attention_mask).logits

    net = Logits(bert).eval()
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 100, size=(args.batch, 12)).astype(np.int64)
    mask = np.ones_like(ids)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(ids), torch.from_numpy(mask)), buf, dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"},
                                        "logits": {0: "b"}})
    ex = onnxplain.Explainer(buf.getvalue(), "integrated_gradients", providers=["CPUExecutionProvider"],
                             threads=args.threads)
    lig = LayerIntegratedGradients(net, bert.bert.embeddings.word_embeddings)
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    return compare_section(f"IG at the word embeddings of a 2-layer BERT, batch {args.batch} x 12 tokens, "
                           f"{args.n_steps} steps",
                           lambda: ex.explain({"input_ids": ids, "attention_mask": mask}, target=1, baselines=0,
                                              n_steps=args.n_steps),
                           lambda: lig.attribute(ids_t, baselines=torch.zeros_like(ids_t),
                                                 additional_forward_args=(mask_t,), target=1, n_steps=args.n_steps),
                           lambda t: t.detach().numpy(), args)


def bench_lstm(args) -> dict:
    """IG on an LSTM classifier (batch first, 32 steps of 16 features, hidden 32, 5 classes): Captum
    differentiates PyTorch's fused LSTM; onnxplain the exported LSTM node through its Scan expansion."""
    import torch
    from captum.attr import IntegratedGradients
    from torch import nn

    import onnxplain

    class LSTMClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lstm = nn.LSTM(16, 32, batch_first=True)
            self.head = nn.Linear(32, 5)

        def forward(self, x):
            y, _ = self.lstm(x)
            return self.head(y[:, -1])

    net = LSTMClassifier().eval()
    x = np.random.default_rng(2).standard_normal((args.batch, 32, 16)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onx = onnxplain.from_torch(net, torch.from_numpy(x[:2]))
    ex = onnxplain.Explainer(onx, "integrated_gradients", providers=["CPUExecutionProvider"], threads=args.threads)
    ig = IntegratedGradients(net)
    xt = torch.from_numpy(x)
    return compare_section(f"IG on an LSTM classifier, batch {args.batch} x 32 steps x 16 features, hidden 32, "
                           f"{args.n_steps} steps",
                           lambda: ex.explain(x, target=1, n_steps=args.n_steps),
                           lambda: ig.attribute(xt, target=1, n_steps=args.n_steps),
                           lambda t: t.detach().numpy(), args)


if __name__ == "__main__":
    sys.exit(main())
