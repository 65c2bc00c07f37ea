"""Small vision architectures, written out here (torchvision is not a dependency).

Each builder returns ``(model, row_shape)``: a float32 module in eval mode with
seeded random weights, and the shape of one input row.  The layers follow the
published designs (ResNet basic blocks, MobileNetV3 inverted residuals with
squeeze-excitation, EfficientNet MBConv, ConvNeXt blocks, ViT, Swin windowed
attention) at toy sizes, so every model is exported and explained in seconds.

:func:`export_torchscript` and :func:`export_dynamo` export a module with each
of PyTorch's exporters, batch dimension dynamic.
"""
from __future__ import annotations

import io
import warnings

import torch
from torch import nn


# ---------------------------------------------------------------------- exporters
def example_input(row_shape: tuple, rows: int = 2) -> torch.Tensor:
    return torch.randn((rows,) + tuple(row_shape), generator=torch.Generator().manual_seed(0))


def export_torchscript(model: nn.Module, row_shape: tuple, opset: int = 17) -> bytes:
    """ONNX bytes from the TorchScript exporter (``dynamo=False``), batch dimension 0 dynamic."""
    model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example_input(row_shape),), buf, dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return buf.getvalue()


def export_dynamo(model: nn.Module, row_shape: tuple, dynamic: bool = True) -> bytes:
    """ONNX bytes from the default (``dynamo=True``) exporter, batch dimension 0 dynamic unless ``dynamic=False``."""
    model.eval()
    shapes = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example_input(row_shape, 3),), dynamo=True, input_names=["x"],
                                    output_names=["y"], dynamic_shapes=shapes, verbose=False)
    return program.model_proto.SerializeToString()


EXPORTERS = {"torchscript": export_torchscript, "dynamo": export_dynamo}


def _randomize_norms(model: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and affine parameters of every norm layer (fresh ones are the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))


def _he_init(model: nn.Module, seed: int) -> None:
    """He (fan-in) normal weights for every conv and linear layer: PyTorch's default init shrinks the
    signal at each of MobileNet's and EfficientNet's many layers, leaving an output that hardly depends
    on the input (its attributions would all be ~1e-5)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)


# ---------------------------------------------------------------------- ResNet
class BasicBlock(nn.Module):
    """conv3x3 (strided) -> BN -> ReLU -> conv3x3 -> BN, plus the (projected) skip, -> ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()        # one module per use: Captum's DeepLift hooks modules
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    def __init__(self, n_classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        self.layer1 = BasicBlock(8, 8, 1)
        self.layer2 = BasicBlock(8, 16, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, n_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet(seed: int = 0):
    torch.manual_seed(seed)
    model = ResNet()
    _randomize_norms(model, seed)
    return model.eval(), (3, 16, 16)


# ---------------------------------------------------------------------- MobileNetV3
class SqueezeExcite(nn.Module):
    """x * gate(mean(x)): pooled channels -> 1x1 conv -> act -> 1x1 conv -> gate."""

    def __init__(self, c: int, squeezed: int, act=nn.ReLU, gate=nn.Hardsigmoid):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeezed, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(squeezed, c, 1)
        self.gate = gate()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


def _conv_bn(c_in, c_out, k, stride=1, groups=1, act=None):
    layers = [nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand -> depthwise kxk (strided) -> squeeze-excitation -> 1x1 project, residual when shapes allow."""

    def __init__(self, c_in, c_exp, c_out, k, stride, act, se_act=nn.ReLU, se_gate=nn.Hardsigmoid):
        super().__init__()
        self.expand = _conv_bn(c_in, c_exp, 1, act=act) if c_exp != c_in else nn.Identity()
        self.dw = _conv_bn(c_exp, c_exp, k, stride, groups=c_exp, act=act)
        self.se = SqueezeExcite(c_exp, max(4, c_exp // 4), se_act, se_gate)
        self.project = _conv_bn(c_exp, c_out, 1)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.residual else y


class MobileNetV3(nn.Module):
    def __init__(self, n_classes: int = 5):
        super().__init__()
        self.stem = _conv_bn(3, 8, 3, 2, act=nn.Hardswish)
        self.blocks = nn.Sequential(
            InvertedResidual(8, 8, 8, 3, 1, nn.ReLU),              # no expansion, residual
            InvertedResidual(8, 24, 12, 5, 2, nn.Hardswish),       # expand, 5x5 strided depthwise
            InvertedResidual(12, 24, 12, 3, 1, nn.Hardswish),      # residual
        )
        self.head = _conv_bn(12, 32, 1, act=nn.Hardswish)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(32, 24), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(24, n_classes))

    def forward(self, x):
        x = self.pool(self.head(self.blocks(self.stem(x))))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v3(seed: int = 1):
    torch.manual_seed(seed)
    model = MobileNetV3()
    _he_init(model, seed)
    _randomize_norms(model, seed)
    return model.eval(), (3, 16, 16)


# ---------------------------------------------------------------------- EfficientNet
class MBConv(nn.Module):
    """EfficientNet's MBConv: expand (SiLU) -> depthwise (SiLU) -> SE (SiLU, sigmoid gate) -> project."""

    def __init__(self, c_in, ratio, c_out, k, stride):
        super().__init__()
        c_exp = c_in * ratio
        self.expand = _conv_bn(c_in, c_exp, 1, act=nn.SiLU) if ratio != 1 else nn.Identity()
        self.dw = _conv_bn(c_exp, c_exp, k, stride, groups=c_exp, act=nn.SiLU)
        self.se = SqueezeExcite(c_exp, max(2, c_in // 4), nn.SiLU, nn.Sigmoid)
        self.project = _conv_bn(c_exp, c_out, 1)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.residual else y    # (stochastic depth is the identity in eval mode)


class EfficientNet(nn.Module):
    def __init__(self, n_classes: int = 5):
        super().__init__()
        self.stem = _conv_bn(3, 8, 3, 2, act=nn.SiLU)
        self.blocks = nn.Sequential(MBConv(8, 1, 8, 3, 1), MBConv(8, 4, 12, 5, 2), MBConv(12, 4, 12, 3, 1))
        self.head = _conv_bn(12, 32, 1, act=nn.SiLU)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, n_classes)

    def forward(self, x):
        x = self.pool(self.head(self.blocks(self.stem(x))))
        return self.fc(torch.flatten(x, 1))


def efficientnet(seed: int = 2):
    torch.manual_seed(seed)
    model = EfficientNet()
    _he_init(model, seed)
    _randomize_norms(model, seed)
    return model.eval(), (3, 16, 16)


# ---------------------------------------------------------------------- ConvNeXt
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (permute to NHWC and back)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """depthwise 7x7 -> NHWC LayerNorm -> Linear 4x -> GELU -> Linear -> layer scale -> NCHW, plus the input."""

    def __init__(self, c: int, layer_scale: float = 0.5):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.fc1 = nn.Linear(c, 4 * c)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(layer_scale * (1 + 0.2 * torch.randn(c)))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.fc2(self.act(self.fc1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, n_classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, 4), LayerNorm2d(16, eps=1e-6))
        self.stage1 = ConvNeXtBlock(16)
        self.down = nn.Sequential(LayerNorm2d(16, eps=1e-6), nn.Conv2d(16, 24, 2, 2))
        self.stage2 = ConvNeXtBlock(24)
        self.norm = nn.LayerNorm(24, eps=1e-6)
        self.fc = nn.Linear(24, n_classes)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.fc(self.norm(x.mean(dim=(2, 3))))


def convnext(seed: int = 3):
    torch.manual_seed(seed)
    model = ConvNeXt()
    _randomize_norms(model, seed)
    return model.eval(), (3, 16, 16)


# ---------------------------------------------------------------------- ViT
class Attention(nn.Module):
    """Multi-head self-attention written out: qkv projection, scaled dot products, softmax, output projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, d = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(-1, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(-1, n, d))


class ViTBlock(nn.Module):
    """Pre-norm: x + attn(LN(x)); x + MLP(LN(x)) with GELU.  ``torch_mha`` picks nn.MultiheadAttention."""

    def __init__(self, dim: int, heads: int, torch_mha: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.torch_mha = torch_mha
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True) if torch_mha else Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        h = self.norm1(x)
        h = self.attn(h, h, h, need_weights=False)[0] if self.torch_mha else self.attn(h)
        x = x + h
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, n_classes: int = 5, dim: int = 16, patch: int = 4, image: int = 16):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(0.5 * torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.5 * torch.randn(1, 1 + (image // patch) ** 2, dim))
        self.blocks = nn.Sequential(ViTBlock(dim, 2, torch_mha=True), ViTBlock(dim, 2, torch_mha=False))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)                     # (B, patches, dim)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit(seed: int = 4):
    torch.manual_seed(seed)
    model = ViT()
    _randomize_norms(model, seed)
    return model.eval(), (3, 16, 16)


# ---------------------------------------------------------------------- Swin
def window_partition(x, ws: int):
    """(B, H, W, C) -> (B * windows, ws * ws, C)."""
    _, h, w, c = x.shape
    x = x.reshape(-1, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows, ws: int, h: int, w: int):
    """(B * windows, ws * ws, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def relative_position_index(ws: int) -> torch.Tensor:
    """(ws*ws, ws*ws) index into the ((2 ws - 1)^2, heads) bias table, as in Swin."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def shifted_window_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    """(windows, ws*ws, ws*ws): -100 between tokens that came from different regions before the roll."""
    region = torch.zeros(1, h, w, 1)
    label = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            region[:, hs, wsl, :] = label
            label += 1
    win = window_partition(region, ws).squeeze(-1)
    mask = win[:, None, :] - win[:, :, None]
    return torch.where(mask != 0, torch.tensor(-100.0), torch.tensor(0.0))


class WindowAttention(nn.Module):
    """Attention inside each window, plus a relative position bias gathered from a learned table."""

    def __init__(self, dim: int, ws: int, heads: int):
        super().__init__()
        self.ws, self.heads, self.scale = ws, heads, (dim // heads) ** -0.5
        self.table = nn.Parameter(0.5 * torch.randn((2 * ws - 1) ** 2, heads))
        self.register_buffer("index", relative_position_index(ws).reshape(-1), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        n, d = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(-1, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.table[self.index].reshape(n, n, self.heads).permute(2, 0, 1)
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.reshape(-1, windows, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.reshape(-1, self.heads, n, n)
        attn = torch.softmax(attn, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(-1, n, d))


class SwinBlock(nn.Module):
    """x + W-MSA(LN(x)) on (shifted) windows, then x + MLP(LN(x)); tokens laid out (B, H*W, C)."""

    def __init__(self, dim: int, res: int, ws: int, heads: int, shift: int):
        super().__init__()
        self.res, self.ws, self.shift = res, ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, ws, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        mask = shifted_window_mask(res, res, ws, shift) if shift else None
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x):
        r, c = self.res, x.shape[2]
        h = self.norm1(x).reshape(-1, r, r, c)
        if self.shift:
            h = torch.roll(h, shifts=(-self.shift, -self.shift), dims=(1, 2))
        h = window_reverse(self.attn(window_partition(h, self.ws), self.mask), self.ws, r, r)
        if self.shift:
            h = torch.roll(h, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + h.reshape(-1, r * r, c)
        return x + self.mlp(self.norm2(x))


class Swin(nn.Module):
    def __init__(self, n_classes: int = 5, dim: int = 16, image: int = 16, patch: int = 2, ws: int = 4):
        super().__init__()
        res = image // patch
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.patch_norm = nn.LayerNorm(dim)
        self.blocks = nn.Sequential(SwinBlock(dim, res, ws, 2, 0), SwinBlock(dim, res, ws, 2, ws // 2))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x):
        x = self.patch_norm(self.patch(x).flatten(2).transpose(1, 2))    # (B, H*W, dim)
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


def swin(seed: int = 5):
    torch.manual_seed(seed)
    model = Swin()
    _randomize_norms(model, seed)
    return model.eval(), (3, 16, 16)


# ---------------------------------------------------------------------- U-Net-style: norms and resampling
class UNet(nn.Module):
    """GroupNorm and InstanceNorm (exported as InstanceNormalization), bilinear and nearest upsampling
    (Resize), a skip concatenation, and a classification head so that Captum can explain it."""

    def __init__(self, n_classes: int = 5):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU())
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.InstanceNorm2d(16, affine=True), nn.ReLU())
        self.lateral = nn.Conv2d(16, 8, 1)
        self.side = nn.Conv2d(16, 8, 1)
        self.fuse = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.ReLU())
        self.fc = nn.Linear(8, n_classes)

    def forward(self, x):
        skip = self.enc(x)
        deep = self.down(skip)
        up = self.lateral(nn.functional.interpolate(deep, scale_factor=2, mode="bilinear", align_corners=False))
        y = self.fuse(torch.cat([up, skip], dim=1))
        y = y + nn.functional.interpolate(self.side(deep), scale_factor=2, mode="nearest")
        return self.fc(y.mean(dim=(2, 3)))


def unet(seed: int = 6):
    torch.manual_seed(seed)
    model = UNet()
    _randomize_norms(model, seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.InstanceNorm2d):
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.weight.shape))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape))
    return model.eval(), (3, 8, 8)


MODELS = {
    "resnet": resnet,
    "mobilenet_v3": mobilenet_v3,
    "efficientnet": efficientnet,
    "convnext": convnext,
    "vit": vit,
    "swin": swin,
    "unet_norms_resize": unet,
}


# ---------------------------------------------------------------------- dynamic image sizes
class DetectorNeck(nn.Module):
    """A detector neck at toy size: a strided conv backbone (three levels), a top-down FPN whose
    coarsest level is upsampled bilinearly to the next level's size (``size=skip.shape[-2:]``, as
    YOLO/FPN necks do for odd sizes) and then by nearest x2 (cropped to the finest level), a DB-style
    bilinear (align_corners) map back to the image size, and pooled class scores.  Every Resize sees
    sizes known only at run time when height and width are exported as dynamic."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(8, 10, 3, stride=2, padding=1)
        self.lat1, self.lat2, self.lat3 = nn.Conv2d(6, 5, 1), nn.Conv2d(8, 5, 1), nn.Conv2d(10, 5, 1)
        self.head = nn.Conv2d(5, classes, 3, padding=1)

    def forward(self, x):
        f1 = torch.relu(self.c1(x))
        f2 = torch.relu(self.c2(f1))
        f3 = torch.relu(self.c3(f2))
        p2 = self.lat2(f2) + nn.functional.interpolate(self.lat3(f3), size=f2.shape[-2:], mode="bilinear",
                                                       align_corners=False)
        up = nn.functional.interpolate(p2, scale_factor=2.0, mode="nearest")
        p1 = self.lat1(f1) + up[:, :, :f1.shape[2], :f1.shape[3]]
        full = nn.functional.interpolate(p2, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return self.head(torch.tanh(p1 + full)).mean(dim=(2, 3))


def detector_neck(seed: int = 7):
    torch.manual_seed(seed)
    return DetectorNeck().eval(), (3, 37, 45)
