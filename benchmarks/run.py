"""Every benchmark in one process: onnxplain against Captum, and against its own forward floor.

    python benchmarks/run.py [--quick] [--repeats 5] [--out benchmarks/results]

Models (PyTorch, seeded weights, exported with ``onnxplain.from_torch``):

- ``cnn``: 3 convolutions 32/64/128 with ReLU and 2x2 MaxPool, 3x32x32 images,
  16 of them: integrated gradients (50 steps), DeepLIFT, SmoothGrad (10
  samples), occlusion (window 3x4x4, stride 2; Captum with
  ``perturbations_per_eval=64``), Shapley sampling over 16 patches (25
  permutations; Captum with ``perturbations_per_eval=64``), KernelSHAP and LIME over
  the 16 patches (100 coalitions), DeepLIFT-SHAP over 8 baselines (each image's top
  class), and the metrics of the saliency maps: infidelity (Gaussian noise, deviation
  0.003) and max-sensitivity (uniform noise, radius 0.02; saliency on both sides),
  10 perturbations a row, :mod:`onnxplain.metrics` against :mod:`captum.metrics`;
- ``mlp64``: an MLP on 64 features, 64 rows: integrated gradients, Shapley
  sampling (25 permutations), KernelSHAP and LIME (200 coalitions);
- ``bert``: a 2-layer BERT classifier (random weights), 8 sentences of 12
  tokens: integrated gradients at the word embeddings (Captum's
  ``LayerIntegratedGradients``);
- ``resnet18``: the standard ResNet-18 layout written here (random weights),
  3x64x64 images: integrated gradients, DeepLIFT.

Where SHAP is installed it is a second reference, its own column "SHAP / onnxplain" (empty
elsewhere): ``KernelExplainer`` for KernelSHAP (the same coalition count, one all-zero background
row, ``l1_reg=False``; over the CNN's patches through a function of the patches' on/off vector) and
``DeepExplainer`` for DeepLIFT-SHAP (the same 8 baselines as background, ``ranked_outputs=1``,
``check_additivity=False``: its MaxPool2d rule is not the rescale rule, its sums miss the outputs by
about 0.016 on this CNN).  The metrics have no floor, share inside session.run nor PyTorch forward
(empty cells; ``null`` in ``results.json``).  ``--only cnn:infidelity,mlp64/kernel`` re-measures
single rows.

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
FORWARD_ONLY = ("occlusion", "shapley_sampling", "kernel_shap", "lime", "infidelity")
#: the references timed besides Captum, each a column "<name> / onnxplain" (empty where not measured)
OTHERS = ("SHAP",)


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
    others: dict = field(default_factory=dict)   # more references by name ("SHAP"): functions () -> anything
    ours: object = None                 # a function () -> anything timed instead of the Explainer's call
                                        # (the metrics); then there is no floor nor share inside session.run
    ours_rows: int | None = None        # the rows ``ours`` runs through the model


def build_cases(quick: bool) -> list[Case]:
    import torch
    from captum.attr import (DeepLift, DeepLiftShap, GradientShap, IntegratedGradients, KernelShap,
                             LayerIntegratedGradients, Lime, NoiseTunnel, Occlusion, ShapleyValueSampling)

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
                          explainer(net, xt[:2], name), {"x": x}, target, net, 100 * n,
                          others=_shap_kernel_over_patches(net, x, target, patches[0, 0], 100)
                          if name == "kernel_shap" else {}))

    # DeepLIFT-SHAP over 8 baselines, for each image's top class (the only per-row output SHAP can pick)
    baselines = background[:8]
    top = [int(t) for t in net(xt).argmax(1)]
    cases.append(Case("cnn", "deeplift_shap", dict(baselines=baselines),
                      lambda: DeepLiftShap(net).attribute(xt, baselines=torch.from_numpy(baselines), target=top),
                      explainer(net, xt[:2], "deeplift_shap"), {"x": x}, top, net,
                      others=_shap_deep(net, xt, baselines)))

    # the evaluation metrics, of the same saliency maps (abs gradients), 10 perturbations of each image
    cases += _metric_cases(net, x, xt, target, explainer(net, xt[:2], "saliency"))

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
                          explainer(mlp, tt[:2], name), {"x": table}, 1, mlp, 200 * len(table),
                          others=_shap_kernel(mlp, table, 1, 200) if name == "kernel_shap" else {}))

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


def _metric_cases(net, x, xt, target, saliency) -> list[Case]:
    """Infidelity (Gaussian noise of deviation 0.003) and max-sensitivity (uniform noise of radius 0.02,
    saliency explaining each perturbed copy) of the saliency maps, 10 perturbations a row, onnxplain's
    :mod:`onnxplain.metrics` against :mod:`captum.metrics`; the onnxplain side's Explainer is ``saliency``."""
    import torch
    from captum import metrics

    from onnxplain.metrics import gaussian_perturbation, infidelity, sensitivity_max

    k, stdev, radius = 10, 0.003, 0.02
    attr_t = _saliency(net).attribute(xt, target=target).detach()
    attr = attr_t.numpy()

    def captum_noise(inputs):
        noise = torch.randn_like(inputs) * stdev
        return noise, inputs - noise

    return [
        Case("cnn", "infidelity", dict(n_perturb_samples=k),
             lambda: metrics.infidelity(net, captum_noise, xt, attr_t, target=target, n_perturb_samples=k),
             saliency, {"x": x}, target, net,
             ours_rows=len(x) * (k + 1),
             ours=lambda: infidelity(saliency, gaussian_perturbation(stdev, seed=0), x, attr, target=target,
                                     n_perturb_samples=k)),
        Case("cnn", "sensitivity_max", dict(n_perturb_samples=k),
             lambda: metrics.sensitivity_max(_saliency(net).attribute, xt, perturb_radius=radius,
                                             n_perturb_samples=k, target=target),
             saliency, {"x": x}, target, net,
             ours_rows=len(x) * (k + 1),
             ours=lambda: sensitivity_max(saliency, x, perturb_radius=radius, n_perturb_samples=k, target=target)),
    ]


def _shap_installed() -> bool:
    try:
        import shap  # noqa: F401
    except ImportError:
        return False
    return True


def _shap_kernel(net, x, target: int, n_samples: int) -> dict:
    """SHAP's KernelExplainer on the rows of ``x`` against one all-zero background row (Captum's and
    onnxplain's default baseline), ``n_samples`` coalitions, plain weighted least squares (``l1_reg=False``,
    as Captum and onnxplain fit; SHAP's default first selects 10 features); it calls the model through numpy."""
    if not _shap_installed():
        return {}
    import shap
    import torch

    def output(a):
        with torch.no_grad():
            return net(torch.from_numpy(np.asarray(a, dtype=np.float32)))[:, target].numpy()

    kernel = shap.KernelExplainer(output, np.zeros((1, x.shape[1]), np.float32))
    return {"SHAP": lambda: kernel.shap_values(x, nsamples=n_samples, silent=True, l1_reg=False)}


def _shap_kernel_over_patches(net, x, targets, patch_of_pixel, n_samples: int) -> dict:
    """SHAP's KernelExplainer over superpixels: per image a function of the patches' on/off vector (off:
    the patch's pixels 0, the baseline of the other columns), explained at all-on against all-off."""
    if not _shap_installed():
        return {}
    import shap
    import torch

    n_patches = int(patch_of_pixel.max()) + 1
    index = torch.from_numpy(patch_of_pixel.astype(np.int64))

    def kernel(row, t):
        def output(z):
            on = torch.from_numpy(np.asarray(z, dtype=np.float32))[:, index]     # (M, H, W)
            with torch.no_grad():
                return net(row * on[:, None]).numpy()[:, t]
        return shap.KernelExplainer(output, np.zeros((1, n_patches), np.float32))

    kernels = [kernel(torch.from_numpy(x[i]), targets[i]) for i in range(len(x))]
    on = np.ones((1, n_patches), np.float32)
    return {"SHAP": lambda: [k.shap_values(on, nsamples=n_samples, silent=True, l1_reg=False) for k in kernels]}


def _shap_deep(net, xt, baselines) -> dict:
    """SHAP's DeepExplainer (PyTorch) with ``baselines`` as background, for each row's top class
    (``ranked_outputs=1``).  On this CNN its sums miss the outputs by about 0.016 (its MaxPool2d rule is
    not DeepLIFT's rescale rule of Captum and onnxplain), past its own check: ``check_additivity=False``.
    It hooks the modules it runs, so it gets a copy of the network."""
    if not _shap_installed():
        return {}
    import copy

    import shap
    import torch

    deep = shap.DeepExplainer(copy.deepcopy(net), torch.from_numpy(baselines))
    return {"SHAP": lambda: deep.shap_values(xt, ranked_outputs=1, output_rank_order="max", check_additivity=False)}


# ---------------------------------------------------------------------- measuring
def measure(case: Case, repeats: int) -> dict:
    """Median times of onnxplain, Captum, the other references and the floor, interleaved; share outside
    session.run; peak memory.  A case with its own onnxplain function (``ours``: a metric) has no floor,
    no share inside session.run and no PyTorch forward: those figures are NaN."""
    import torch

    from onnxplain.profile import TimedCall, forward_floor, peak_added

    ex = case.explainer
    feeds = {k: v for k, v in case.inputs.items()}
    first = next(iter(feeds.values()))
    x = feeds if len(feeds) > 1 else first
    if case.ours is None:
        call = TimedCall(ex, x, case.target, case.params)
        cost = ex.estimate(x, case.target, **case.params)
    else:
        call = _timed(case.ours)
        cost = None

    def captum() -> float:
        with torch.no_grad() if case.method in FORWARD_ONLY else _null():
            return _timed(case.captum)()[0]

    others = {name: _timed(fn) for name, fn in case.others.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peak = peak_added(call)                     # the first call: the session's arena is made here
        case.captum()
        for other in others.values():
            other()
        times = {"onnxplain": [], "inside": [], "captum": [], "floor": [], "torch_forward": [],
                 **{name: [] for name in others}}
        for _ in range(repeats):
            call()                              # untimed: the first onnxruntime call after PyTorch's runs slow
            settle()
            wall, inside = call()
            times["onnxplain"].append(wall)
            times["inside"].append(inside)
            settle()
            if cost is not None:
                times["floor"].append(forward_floor(ex, ex.check_inputs(x), cost.rows, cost.rows_per_run,
                                                    repeats=1))
                settle()
            captum()                            # untimed, likewise after onnxruntime's
            settle()
            times["captum"].append(captum())
            settle()
            for name, other in others.items():  # each after an untimed call of its own, as Captum
                other()
                settle()
                times[name].append(other()[0])
                settle()
            if cost is not None:
                times["torch_forward"].append(torch_forward(case, cost.rows, case.captum_rows or cost.rows))
                settle()
    med = {k: statistics.median(v) if v else float("nan") for k, v in times.items()}
    ours = med["onnxplain"]
    return dict(model=case.model, method=case.method, rows=case.ours_rows if cost is None else cost.rows,
                runs=None if cost is None else cost.runs,
                onnxplain_s=ours, captum_s=med["captum"], floor_s=med["floor"],
                torch_forward_s=med["torch_forward"], forward_speedup=med["torch_forward"] / med["floor"],
                speedup=med["captum"] / ours, floor_ratio=ours / med["floor"],
                outside_share=float("nan") if cost is None else max(0.0, ours - med["inside"]) / ours,
                peak_mib=float("nan") if peak is None else peak / 2 ** 20,
                others_s={name: med.get(name) for name in OTHERS},
                others_speedup={name: med[name] / ours if name in med else None for name in OTHERS})


def _timed(fn):
    """``fn`` as a call returning (wall seconds, NaN: nothing timed inside session.run)."""
    def call():
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0, float("nan")
    return call


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
    others = " | ".join(f"{name} / onnxplain" for name in OTHERS)
    lines = [f"Measured on {info['cpu']}, {info['cores']} cores usable, onnxruntime {info['onnxruntime']}, "
             f"torch {info['torch']}; load average {info['load_average']:.1f} at the start, "
             f"{info['load_average_end']:.1f} at the end (a shared machine: ratios come from interleaved runs).",
             "",
             f"| model | method | rows | onnxplain (ms) | Captum / onnxplain | {others} | onnxplain / floor "
             "| outside session.run | peak memory, first call (MiB) | PyTorch forward / floor |",
             "|---|---|---:|---:|---:|" + "---:|" * len(OTHERS) + "---:|---:|---:|---:|"]
    for r in rows:
        cells = [r["model"], r["method"], str(r["rows"]), _cell(r["onnxplain_s"] * 1e3, "{:.1f}"),
                 _cell(r["speedup"], "{:.2f}x"),
                 *[_cell(r["others_speedup"].get(name), "{:.2f}x") for name in OTHERS],
                 _cell(r["floor_ratio"], "{:.2f}"), _cell(r["outside_share"], "{:.1%}"),
                 _cell(r["peak_mib"], "{:.0f}"), _cell(r["forward_speedup"], "{:.2f}x")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value, form: str) -> str:
    """A table cell: empty where the figure does not apply (None or NaN)."""
    return "" if value is None or value != value else form.format(value)


def _json_ready(value):
    """NaN (a figure that does not apply) as JSON's null, in nested dicts and lists."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


def _selected(case: Case, only: str | None) -> bool:
    """Whether ``--only`` keeps the case: any of its comma-separated texts found in "model/method" or
    "model:method"."""
    if not only:
        return True
    names = (f"{case.model}/{case.method}", f"{case.model}:{case.method}")
    return any(part and any(part in name for name in names) for part in only.split(","))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rows and steps (a smoke run)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per case, interleaved (default: 5)")
    p.add_argument("--only", metavar="NAME[,NAME]",
                   help="run only the cases whose 'model/method' (or 'model:method') contains one of these texts")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for results.json and results.md")
    args = p.parse_args(argv)

    import torch

    from onnxplain.runtime import usable_cores
    torch.set_num_threads(usable_cores())          # the same threads as onnxruntime's sessions
    info = machine()
    rows = []
    for case in build_cases(args.quick):
        if not _selected(case, args.only):
            continue
        r = measure(case, args.repeats)
        rows.append(r)
        others = "".join(f"  {name}/onnxplain {_cell(r['others_speedup'][name], '{:.2f}x'):>8}" for name in OTHERS)
        print(f"{r['model']:>9} {r['method']:<21} {r['onnxplain_s'] * 1e3:9.1f} ms  Captum/onnxplain "
              f"{r['speedup']:6.2f}x{others}  onnxplain/floor {_cell(r['floor_ratio'], '{:.2f}'):>5}  outside "
              f"{_cell(r['outside_share'], '{:.1%}'):>6}  peak {_cell(r['peak_mib'], '{:.0f}'):>6} MiB  "
              f"PyTorch forward/floor {_cell(r['forward_speedup'], '{:.2f}x'):>6}", flush=True)
    info["load_average_end"] = os.getloadavg()[0]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(_json_ready({"machine": info, "cases": rows}), f, indent=1)
    table = markdown(rows, info)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
