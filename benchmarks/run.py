"""Every benchmark in one process: onnxplain against Captum, and against its own forward floor.

    python benchmarks/run.py [--quick] [--repeats 5] [--out benchmarks/results]

Models (PyTorch, seeded weights, exported with ``onnxplain.from_torch``):

- ``cnn``: 3 convolutions 32/64/128 with ReLU and 2x2 MaxPool, 3x32x32 images,
  16 of them: integrated gradients (50 steps), DeepLIFT, SmoothGrad (10
  samples), occlusion (window 3x4x4, stride 2; Captum with
  ``perturbations_per_eval=64``), Shapley sampling over 16 patches (25
  permutations; Captum with ``perturbations_per_eval=64``);
- ``mlp64``: an MLP on 64 features, 64 rows: integrated gradients, Shapley
  sampling (25 permutations);
- ``bert``: a 2-layer BERT classifier (random weights), 8 sentences of 12
  tokens: integrated gradients at the word embeddings (Captum's
  ``LayerIntegratedGradients``);
- ``resnet18``: the standard ResNet-18 layout written here (random weights),
  3x64x64 images: integrated gradients, DeepLIFT.

For each case it reports Captum's time over onnxplain's (speed-up), onnxplain's
time over its *floor* (onnxruntime's plain forward over the same expanded
batch, cut into the same runs: :func:`onnxplain.profile.forward_floor`), the
share of onnxplain's time outside ``session.run``, the resident memory
onnxplain's first call adds at its peak (onnxruntime's arena included), and
PyTorch's plain forward over the floor's rows, cut as Captum's call cuts them,
against the floor: how much faster onnxruntime's forward is, so that a method can
beat Captum by about that much times Captum's own floor ratio over onnxplain's.
The calls of a case are interleaved (onnxplain, floor, Captum, PyTorch's forward,
onnxplain, ...), each library's timed calls after an untimed one of its own (the
first call after the other library's runs slowly: caches, memory) and a short
pause between calls (no library's idle threads still spin in the next call);
each figure is a median, so a loaded machine slows all of them alike; the
load average is recorded.  PyTorch gets as many threads as onnxruntime.  Writes
``results.json`` and ``results.md`` into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
#: the methods whose Captum calls need no autograd
FORWARD_ONLY = ("occlusion", "shapley_sampling", "kernel_shap", "lime")


# ---------------------------------------------------------------------- models
def cnn():
    from torch import nn
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(128 * 4 * 4, 10))


def mlp64():
    from torch import nn
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 3))


def resnet18():
    """ResNet-18 (He et al. 2016): 7x7/2 stem, 3x3/2 max pool, 4 stages of 2 basic blocks, 10 classes."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.relu1 = nn.ReLU()
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.relu2 = nn.ReLU()        # a module per use: Captum's DeepLift needs distinct ReLUs
            self.down = None
            if stride != 1 or c_in != c_out:
                self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

        def forward(self, x):
            y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
            return self.relu2(y + (x if self.down is None else self.down(x)))

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    c = 64
    for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(c, width, stride), Block(width, width, 1)]
        c = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10)]
    return nn.Sequential(*layers)


def bert():
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=32, num_labels=2)
    net = BertForSequenceClassification(config).eval()

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, input_ids, attention_mask):
            return self.net(input_ids=input_ids, attention_mask=attention_mask).logits

    return Logits().eval(), net.bert.embeddings.word_embeddings


# ---------------------------------------------------------------------- cases
@dataclass
class Case:
    """One method on one model: onnxplain's call and Captum's, on the same rows."""

    model: str
    method: str
    params: dict
    captum: object                      # a function () -> attributions (a torch tensor)
    explainer: object
    inputs: dict
    target: object
    net: object = None                  # the PyTorch model, called on the inputs' tensors in order
    captum_rows: int | None = None      # rows per forward pass of Captum's call (None: all at once)
    result: dict = field(default_factory=dict)


def build_cases(quick: bool) -> list[Case]:
    import torch
    from captum.attr import (DeepLift, GradientShap, IntegratedGradients, KernelShap, LayerIntegratedGradients, Lime,
                             NoiseTunnel, Occlusion, ShapleyValueSampling)

    import onnxplain

    rng = np.random.default_rng(0)
    cases = []
    steps = 10 if quick else 50

    def explainer(net, example, method, **kw):
        onx = onnxplain.from_torch(net, example, **kw)
        return onnxplain.Explainer(onx, method)

    def images(n, size):
        """n images 3 x size x size, as numpy and torch, and a class to explain for each."""
        x = rng.random((n, 3, size, size), dtype=np.float32)
        return x, torch.from_numpy(x), [int(t) for t in rng.integers(0, 10, n)]

    def ig_and_deeplift(model, net, x, xt, target):
        return [Case(model, "integrated_gradients", dict(n_steps=steps),
                     lambda: IntegratedGradients(net).attribute(xt, target=target, n_steps=steps),
                     explainer(net, xt[:2], "integrated_gradients"), {"x": x}, target, net),
                Case(model, "deeplift", {}, lambda: DeepLift(net).attribute(xt, target=target),
                     explainer(net, xt[:2], "deeplift"), {"x": x}, target, net)]

    # the CNN of the issue: 16 images 3x32x32
    torch.manual_seed(0)
    net = cnn().eval()
    n = 4 if quick else 16
    x, xt, target = images(n, 32)
    noise = rng.standard_normal((10, n, 3, 32, 32)).astype(np.float32)
    background = rng.random((16, 3, 32, 32), dtype=np.float32)   # GradientSHAP's background set
    patches = np.repeat(np.repeat(np.arange(16).reshape(4, 4), 8, 0), 8, 1)[None, None]   # 16 patches of 8x8
    cases += ig_and_deeplift("cnn", net, x, xt, target)
    cases += [
        Case("cnn", "smoothgrad", dict(nt_samples=10, stdevs=0.1, noise=noise),
             lambda: NoiseTunnel(_saliency(net)).attribute(xt, nt_type="smoothgrad", nt_samples=10, stdevs=0.1,
                                                          target=target),
             explainer(net, xt[:2], "smoothgrad"), {"x": x}, target, net),
        Case("cnn", "gradient_shap", dict(baselines=background, n_samples=20, stdevs=0.1, seed=0),
             lambda: GradientShap(net).attribute(xt, baselines=torch.from_numpy(background), n_samples=20, stdevs=0.1,
                                                 target=target),
             explainer(net, xt[:2], "gradient_shap"), {"x": x}, target, net),
        Case("cnn", "occlusion", dict(sliding_window_shapes=(3, 4, 4), strides=2),
             lambda: Occlusion(net).attribute(xt, (3, 4, 4), strides=2, target=target, perturbations_per_eval=64),
             explainer(net, xt[:2], "occlusion"), {"x": x}, target, net, 64 * n),
        Case("cnn", "shapley_sampling", dict(n_samples=25, feature_mask=patches, seed=0),
             lambda: ShapleyValueSampling(net).attribute(xt, target=target, n_samples=25,
                                                         feature_mask=torch.from_numpy(patches),
                                                         perturbations_per_eval=64),
             explainer(net, xt[:2], "shapley_sampling"), {"x": x}, target, net, 64 * n),
    ]
    for name, captum_class in (("kernel_shap", KernelShap), ("lime", Lime)):   # the 16 patches as superpixels
        cases.append(Case("cnn", name, dict(n_samples=100, feature_mask=patches, seed=0),
                          _per_row(captum_class(net), xt, target, feature_mask=torch.from_numpy(patches),
                                   n_samples=100, perturbations_per_eval=100),
                          explainer(net, xt[:2], name), {"x": x}, target, net, 100 * n))

    # an MLP on 64 features, 64 rows
    torch.manual_seed(1)
    mlp = mlp64().eval()
    table = rng.standard_normal((64, 64)).astype(np.float32)
    tt = torch.from_numpy(table)
    cases += [
        Case("mlp64", "integrated_gradients", dict(n_steps=steps),
             lambda: IntegratedGradients(mlp).attribute(tt, target=1, n_steps=steps),
             explainer(mlp, tt[:2], "integrated_gradients"), {"x": table}, 1, mlp),
        Case("mlp64", "shapley_sampling", dict(n_samples=25, seed=0),
             lambda: ShapleyValueSampling(mlp).attribute(tt, target=1, n_samples=25, perturbations_per_eval=64),
             explainer(mlp, tt[:2], "shapley_sampling"), {"x": table}, 1, mlp, 64 * len(table)),
    ]
    for name, captum_class in (("kernel_shap", KernelShap), ("lime", Lime)):
        cases.append(Case("mlp64", name, dict(n_samples=200, seed=0),
                          _per_row(captum_class(mlp), tt, 1, n_samples=200, perturbations_per_eval=200),
                          explainer(mlp, tt[:2], name), {"x": table}, 1, mlp, 200 * len(table)))

    # a 2-layer BERT at its word embeddings
    torch.manual_seed(2)
    net_b, embeddings = bert()
    ids = rng.integers(1, 100, size=(8, 12)).astype(np.int64)
    mask = np.ones_like(ids)
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    ex_b = explainer(net_b, {"input_ids": ids_t[:2], "attention_mask": mask_t[:2]}, "integrated_gradients")
    cases.append(Case("bert", "integrated_gradients", dict(n_steps=steps, baselines=0),
                      lambda: LayerIntegratedGradients(net_b, embeddings).attribute(
                          ids_t, baselines=torch.zeros_like(ids_t), additional_forward_args=(mask_t,), target=1,
                          n_steps=steps),
                      ex_b, {"input_ids": ids, "attention_mask": mask}, 1, net_b))

    # ResNet-18 on 3x64x64 images
    torch.manual_seed(3)
    res = resnet18().eval()
    for m in res.modules():
        if isinstance(m, torch.nn.BatchNorm2d):      # statistics of a trained net, not the identity
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    cases += ig_and_deeplift("resnet18", res, *images(2 if quick else 4, 64))
    return cases


def _per_row(attribution, x, target, **kw):
    """Captum's Lime and KernelShap attribute one example per call (a batch is one interpretable sample)."""
    targets = target if isinstance(target, list) else [target] * len(x)
    return lambda: [attribution.attribute(x[i:i + 1], target=targets[i], **kw) for i in range(len(x))]


def _saliency(net):
    from captum.attr import Saliency
    return Saliency(net)


# ---------------------------------------------------------------------- measuring
def measure(case: Case, repeats: int) -> dict:
    """Median times of onnxplain, Captum and the floor, interleaved; share outside session.run; peak memory."""
    import torch

    from onnxplain.profile import TimedCall, forward_floor, peak_added

    ex = case.explainer
    feeds = {k: v for k, v in case.inputs.items()}
    first = next(iter(feeds.values()))
    x = feeds if len(feeds) > 1 else first
    call = TimedCall(ex, x, case.target, case.params)
    cost = ex.estimate(x, case.target, **case.params)

    def captum() -> float:
        t0 = time.perf_counter()
        with torch.no_grad() if case.method in FORWARD_ONLY else _null():
            case.captum()
        return time.perf_counter() - t0

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peak = peak_added(call)                     # the first call: the session's arena is made here
        case.captum()
        times = {"onnxplain": [], "inside": [], "captum": [], "floor": [], "torch_forward": []}
        for _ in range(repeats):
            call()                              # untimed: the first onnxruntime call after PyTorch's runs slow
            settle()
            wall, inside = call()
            times["onnxplain"].append(wall)
            times["inside"].append(inside)
            settle()
            times["floor"].append(forward_floor(ex, ex.check_inputs(x), cost.rows, cost.rows_per_run, repeats=1))
            settle()
            captum()                            # untimed, likewise after onnxruntime's
            settle()
            times["captum"].append(captum())
            settle()
            times["torch_forward"].append(torch_forward(case, cost.rows, case.captum_rows or cost.rows))
            settle()
    med = {k: statistics.median(v) for k, v in times.items()}
    return dict(model=case.model, method=case.method, rows=cost.rows, runs=cost.runs,
                onnxplain_s=med["onnxplain"], captum_s=med["captum"], floor_s=med["floor"],
                torch_forward_s=med["torch_forward"], forward_speedup=med["torch_forward"] / med["floor"],
                speedup=med["captum"] / med["onnxplain"], floor_ratio=med["onnxplain"] / med["floor"],
                outside_share=max(0.0, med["onnxplain"] - med["inside"]) / med["onnxplain"],
                peak_mib=float("nan") if peak is None else peak / 2 ** 20)


def settle(seconds: float = 0.05) -> None:
    """A pause between timed calls: threads one library leaves spinning after its call (PyTorch's OpenMP
    pool) must not take the cores from the next call, of the other library.  Short: after some 0.1 s
    idle this machine's cores are slow to come back (a 12 ms call took 31 ms after 0.2 s asleep)."""
    time.sleep(seconds)


def torch_forward(case: Case, rows: int, rows_per_run: int) -> float:
    """Seconds of PyTorch's plain forward (no autograd) over the rows of the floor, cut as Captum's call
    cuts them: the speed-up a method can have over Captum is about this over the floor, times Captum's
    own floor ratio."""
    import torch

    n = len(next(iter(case.inputs.values())))
    reps = -(-max(1, rows_per_run) // n)
    big = [torch.from_numpy(np.ascontiguousarray(np.concatenate([v] * reps)[:rows_per_run]))
           for v in case.inputs.values()]
    sizes = [rows_per_run] * (rows // max(1, rows_per_run)) + ([rows % rows_per_run] if rows % rows_per_run else [])
    t0 = time.perf_counter()
    with torch.no_grad():
        for size in sizes:
            case.net(*[t[:size] for t in big])
    return time.perf_counter() - t0


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def machine() -> dict:
    """What the numbers were measured on."""
    import onnxruntime
    import torch

    from onnxplain.runtime import usable_cores
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return dict(cpu=cpu, cores=usable_cores(), python=platform.python_version(), onnxruntime=onnxruntime.__version__,
                torch=torch.__version__, load_average=os.getloadavg()[0])


def markdown(rows: list[dict], info: dict) -> str:
    lines = [f"Measured on {info['cpu']}, {info['cores']} cores usable, onnxruntime {info['onnxruntime']}, "
             f"torch {info['torch']}; load average {info['load_average']:.1f} at the start, "
             f"{info['load_average_end']:.1f} at the end (a shared machine: ratios come from interleaved runs).",
             "",
             "| model | method | rows | onnxplain (ms) | Captum / onnxplain | onnxplain / floor | outside session.run "
             "| peak memory, first call (MiB) | PyTorch forward / floor |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['rows']} | {r['onnxplain_s'] * 1e3:.1f} | "
                     f"{r['speedup']:.2f}x | {r['floor_ratio']:.2f} | {r['outside_share']:.1%} | {r['peak_mib']:.0f} | "
                     f"{r['forward_speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rows and steps (a smoke run)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per case, interleaved (default: 5)")
    p.add_argument("--only", help="run only the cases whose 'model/method' contains this text")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for results.json and results.md")
    args = p.parse_args(argv)

    import torch

    from onnxplain.runtime import usable_cores
    torch.set_num_threads(usable_cores())          # the same threads as onnxruntime's sessions
    info = machine()
    rows = []
    for case in build_cases(args.quick):
        if args.only and args.only not in f"{case.model}/{case.method}":
            continue
        r = measure(case, args.repeats)
        rows.append(r)
        print(f"{r['model']:>9} {r['method']:<21} {r['onnxplain_s'] * 1e3:9.1f} ms  Captum/onnxplain "
              f"{r['speedup']:6.2f}x  onnxplain/floor {r['floor_ratio']:5.2f}  outside {r['outside_share']:6.1%}  "
              f"peak {r['peak_mib']:6.0f} MiB  PyTorch forward/floor {r['forward_speedup']:5.2f}x", flush=True)
    info["load_average_end"] = os.getloadavg()[0]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"machine": info, "cases": rows}, f, indent=1)
    table = markdown(rows, info)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
