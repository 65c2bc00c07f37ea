"""A small zoo of PyTorch models for the Captum comparisons, and their ONNX export.

Every builder returns ``(model, row_shape)``: a float32 model in eval mode whose
weights come from a fixed seed, and the shape of one input row.  The sizes are
small on purpose: the whole zoo is exported and explained in seconds.
"""
from __future__ import annotations

import io
import warnings

import torch
from torch import nn


def export(model: nn.Module, row_shape: tuple, opset: int = 17) -> bytes:
    """ONNX bytes of ``model`` (TorchScript exporter), batch dimension 0 dynamic."""
    model.eval()
    example = torch.randn((2,) + tuple(row_shape), generator=torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return buf.getvalue()


def _seeded(seed: int):
    torch.manual_seed(seed)


def _randomize_batchnorm(model: nn.Module, seed: int) -> None:
    """Non-trivial running statistics and affine parameters (a fresh BatchNorm is the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(1.0 + 0.3 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))


# ---------------------------------------------------------------------- MLPs
ACTIVATIONS = {
    "relu": lambda: nn.ReLU(),
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "prelu": lambda: nn.PReLU(8, init=0.2),
    "elu": lambda: nn.ELU(alpha=0.7),
    "selu": lambda: nn.SELU(),
    "sigmoid": lambda: nn.Sigmoid(),
    "tanh": lambda: nn.Tanh(),
    "softplus": lambda: nn.Softplus(beta=1.5),
    "hardsigmoid": lambda: nn.Hardsigmoid(),
    "hardswish": lambda: nn.Hardswish(),
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": lambda: nn.SiLU(),
}


class MLP(nn.Module):
    def __init__(self, act: str, head: str | None = None, d_in: int = 6, hidden: int = 8, d_out: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = ACTIVATIONS[act]()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = ACTIVATIONS[act]()
        self.fc3 = nn.Linear(hidden, d_out)
        self.head = head

    def forward(self, x):
        y = self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))
        if self.head == "softmax":
            return torch.softmax(y, dim=1)
        if self.head == "log_softmax":
            return torch.log_softmax(y, dim=1)
        return y


def mlp(act: str, head: str | None = None, seed: int = 0):
    _seeded(seed)
    model = MLP(act, head)
    if act in ("hardsigmoid", "hardswish"):
        # spread the pre-activations over the non-constant part and both flat parts (|z| > 3)
        with torch.no_grad():
            model.fc1.weight.mul_(6.0)
            model.fc2.weight.mul_(6.0)
    return model.eval(), (6,)


# ---------------------------------------------------------------------- CNNs
class PoolCNN(nn.Module):
    """MaxPool with padding and ceil_mode, AvgPool without counting the padding, BatchNorm, global pooling."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.pool1 = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.bn = nn.BatchNorm2d(6)          # after a pool: stays a BatchNormalization node in the export
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.pool2 = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.pool1(self.conv1(x))
        x = torch.relu(self.bn(x))
        x = self.pool2(torch.relu(self.conv2(x)))
        return self.fc(self.flat(self.gap(x)))


class ConvBNCNN(nn.Module):
    """Conv -> BatchNorm -> ReLU (folded into the conv by the exporter), MaxPool, Flatten, Linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
            nn.MaxPool2d(2, stride=2),
            nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
            nn.AvgPool2d(2, stride=2, count_include_pad=False),
        )
        self.flat = nn.Flatten()
        self.fc = nn.Linear(6 * 2 * 2, 4)

    def forward(self, x):
        return self.fc(self.flat(self.features(x)))


def pool_cnn(seed: int = 1):
    _seeded(seed)
    model = PoolCNN()
    _randomize_batchnorm(model, seed)
    return model.eval(), (3, 10, 9)


def conv_bn_cnn(seed: int = 2):
    _seeded(seed)
    model = ConvBNCNN()
    _randomize_batchnorm(model, seed)
    return model.eval(), (2, 8, 8)


# ---------------------------------------------------------------------- residual nets
class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.proj = None
        if stride != 1 or c_in != c_out:
            self.proj = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))           # functional relus (Captum #1082)
        y = self.bn2(self.conv2(y))
        skip = x if self.proj is None else self.proj(x)
        return torch.relu(y + skip)


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.block1 = Block(6, 8, stride=2)   # 13x11 -> 7x6, strided 1x1 projection on the skip
        self.block2 = Block(8, 8, stride=1)   # identity skip
        self.block3 = Block(8, 12, stride=2)  # 7x6 -> 4x3
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(x.mean(dim=(2, 3)))


def resnet(seed: int = 3):
    _seeded(seed)
    model = ResNet()
    _randomize_batchnorm(model, seed)
    return model.eval(), (3, 13, 11)


# ---------------------------------------------------------------------- depthwise and grouped convs
class GroupedCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)              # depthwise
        self.pw = nn.Conv2d(4, 8, 1)                                    # pointwise
        self.dw2 = nn.Conv2d(8, 16, 3, stride=2, groups=8)              # depthwise, channel multiplier 2
        self.grouped = nn.Conv2d(16, 8, 3, padding=1, groups=2, bias=False)   # grouped
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.pw(torch.relu(self.dw(x))))
        x = torch.tanh(self.dw2(x))
        x = nn.functional.relu6(self.grouped(x))
        return self.fc(x.mean(dim=(2, 3)))


def grouped_cnn(seed: int = 4):
    _seeded(seed)
    return GroupedCNN().eval(), (4, 9, 9)


# ---------------------------------------------------------------------- transformer encoder
class Encoder(nn.Module):
    def __init__(self, norm_first: bool, activation: str = "relu"):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0,
                                           activation=activation, batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(x).mean(dim=1))


def encoder(norm_first: bool, activation: str = "relu", seed: int = 5):
    _seeded(seed)
    return Encoder(norm_first, activation).eval(), (5, 16)


# ---------------------------------------------------------------------- a float input and an integer mask
class MaskedTabular(nn.Module):
    """Tabular rows with an integer mask of the features present (an input that is not attributed)."""

    def __init__(self, d_in: int = 7, hidden: int = 9, d_out: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x, mask):
        return self.fc2(torch.relu(self.fc1(x * mask.to(x.dtype))))


def masked_tabular(seed: int = 6):
    """``(model, example)``: the example is a dict of named batch-first tensors, odd sizes, for from_torch."""
    _seeded(seed)
    example = {"x": torch.randn(3, 7), "mask": (torch.rand(3, 7) > 0.3).to(torch.int64)}
    return MaskedTabular().eval(), example


class TwoInputs(nn.Module):
    """Two float inputs of different widths (e.g. numeric features and an embedding), joined by a Linear."""

    def __init__(self, d_a: int = 5, d_b: int = 3, hidden: int = 6, d_out: int = 2):
        super().__init__()
        self.fc_a = nn.Linear(d_a, hidden)
        self.fc_b = nn.Linear(d_b, hidden)
        self.head = nn.Linear(hidden, d_out)

    def forward(self, a, b):
        return self.head(torch.tanh(self.fc_a(a) + self.fc_b(b)))


def two_inputs(seed: int = 7):
    """``(model, example)`` as :func:`masked_tabular`."""
    _seeded(seed)
    return TwoInputs().eval(), {"a": torch.randn(3, 5), "b": torch.randn(3, 3)}
