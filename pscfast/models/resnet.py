"""ResNet-18/50/101 encoder of PSC: replicate padding, conditional batch norm by modality, dense features.

Every 3x3 conv and the 7x7 stem pad with ``padding_mode="replicate"``; every batch norm is a pair
(``norms.0`` photo, ``norms.1`` sketch) chosen by the ``modality`` argument of ``forward`` (one modality per
call). ``shared_bn=True`` makes both entries the same module, which is what the authors' release does by
accident; the state-dict layout is the same either way. Bottlenecks are v1.5 (stride on the 3x3 conv).
Key names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.{0,1}``), so
torchvision/MoCo ImageNet weights load with :func:`load_imagenet`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pscfast.models._load import load_file

PHOTO, SKETCH = 0, 1
ARCHS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet50": ("bottleneck", (3, 4, 6, 3)),
         "resnet101": ("bottleneck", (3, 4, 23, 3))}


class CondBatchNorm2d(nn.Module):
    """A pair of BatchNorm2d selected by modality (0 photo, 1 sketch); ``shared=True``: one BN for both."""

    def __init__(self, channels: int, shared: bool = False):
        super().__init__()
        bn = nn.BatchNorm2d(channels)
        self.norms = nn.ModuleList([bn, bn if shared else nn.BatchNorm2d(channels)])

    @property
    def shared(self) -> bool:
        return self.norms[0] is self.norms[1]

    def forward(self, x: torch.Tensor, modality: int) -> torch.Tensor:
        return self.norms[modality](x)


class ReplicateConv2d(nn.Conv2d):
    """``nn.Conv2d(..., padding_mode="replicate")`` that torch.compile can train. Under compile the padding is
    built from edge slices: inductor's channels-last layouts make aten's replication_pad2d_backward return
    strides that its meta function does not predict, and the compiled backward fails (torch 2.11-2.14).
    Eager calls use the aten padding; both give the same values."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__(cin, cout, kernel_size, stride, padding, bias=False, padding_mode="replicate")

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            return super()._conv_forward(x, weight, bias)
        return F.conv2d(replicate_pad(x, self.padding), weight, bias, self.stride, 0, self.dilation, self.groups)


def replicate_pad(x: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """``F.pad(x, (pw, pw, ph, ph), mode="replicate")`` from slices, expands and concatenations."""
    ph, pw = pad
    if ph:
        x = torch.cat([x[:, :, :1].expand(-1, -1, ph, -1), x, x[:, :, -1:].expand(-1, -1, ph, -1)], dim=2)
    if pw:
        x = torch.cat([x[..., :1].expand(-1, -1, -1, pw), x, x[..., -1:].expand(-1, -1, -1, pw)], dim=3)
    return x


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return ReplicateConv2d(cin, cout, 3, stride, 1)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, shared_bn: bool):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = conv3x3(cin, width, stride), CondBatchNorm2d(width, shared_bn)
        self.conv2, self.bn2 = conv3x3(width, cout), CondBatchNorm2d(cout, shared_bn)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, cout, stride, shared_bn)

    def forward(self, x: torch.Tensor, m: int) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x), m))
        out = self.bn2(self.conv2(out), m)
        return self.relu(out + _shortcut(self.downsample, x, m))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, shared_bn: bool):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), CondBatchNorm2d(width, shared_bn)
        self.conv2, self.bn2 = conv3x3(width, width, stride), CondBatchNorm2d(width, shared_bn)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), CondBatchNorm2d(cout, shared_bn)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, cout, stride, shared_bn)

    def forward(self, x: torch.Tensor, m: int) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x), m))
        out = self.relu(self.bn2(self.conv2(out), m))
        out = self.bn3(self.conv3(out), m)
        return self.relu(out + _shortcut(self.downsample, x, m))


def _downsample(cin: int, cout: int, stride: int, shared_bn: bool) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), CondBatchNorm2d(cout, shared_bn))


def _shortcut(downsample: nn.Sequential | None, x: torch.Tensor, m: int) -> torch.Tensor:
    return x if downsample is None else downsample[1](downsample[0](x), m)


def check_strides(encoder: str, available: Sequence[int], strides: Sequence[int]) -> None:
    """Refuse a request for feature maps at strides the encoder does not have (or at none)."""
    if not strides or any(s not in available for s in strides):
        raise ValueError(f"pscfast.models.{encoder}.features: strides must be a non-empty sequence of "
                         f"{', '.join(map(str, available))}, got {tuple(strides)!r}")


class ResNet(nn.Module):
    """``ResNet(arch, shared_bn)``; ``features(x, modality) -> (layer2, layer3)`` post-ReLU maps at stride 8
    and 16 ((N,128,32,32) and (N,256,16,16) for R18 at 256x256); ``features(x, modality, strides)`` any of the
    stem (stride 2, before the max-pool), layer1 (4), layer2 (8), layer3 (16), layer4 (32);
    ``forward(x, modality) -> (N, out_dim)`` the global-pooled layer4 feature (MoCo's input)."""

    def __init__(self, arch: str = "resnet18", shared_bn: bool = False):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"pscfast.models.ResNet: arch must be one of {sorted(ARCHS)}, got {arch!r}")
        kind, depths = ARCHS[arch]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.arch, self.shared_bn = arch, shared_bn
        self.conv1 = ReplicateConv2d(3, 64, 7, 2, 3)
        self.bn1 = CondBatchNorm2d(64, shared_bn)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, layers = 64, []
        for i, (width, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, width, 2 if (j == 0 and i > 0) else 1, shared_bn))
                cin = width * block.expansion
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_dim = cin
        self.strides = (2, 4, 8, 16, 32)
        widths = (64, 128, 256, 512)  # layer1-4, at strides 4-32
        self.stride_dims = {2: 64, **{4 * 2 ** i: width * block.expansion for i, width in enumerate(widths)}}
        self.feature_dims = (self.stride_dims[8], self.stride_dims[16])
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _run(layer: nn.Sequential, x: torch.Tensor, m: int) -> torch.Tensor:
        for blk in layer:
            x = blk(x, m)
        return x

    def _check(self, x: torch.Tensor, modality: int) -> None:
        if modality not in (PHOTO, SKETCH):
            raise ValueError(f"pscfast.models.ResNet: modality must be 0 (photo) or 1 (sketch), got {modality!r}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"pscfast.models.ResNet: expected images (N, 3, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"pscfast.models.ResNet: expected floating-point images normalised with ImageNet's mean "
                            f"and std (pscfast.data.normalize of [0, 1] images), got {x.dtype}")

    def features(self, x: torch.Tensor, modality: int, strides: Sequence[int] = (8, 16)) -> tuple[torch.Tensor, ...]:
        """The maps at ``strides`` (each one of ``self.strides``), in that order; the layers run only as deep as
        the largest stride asks."""
        self._check(x, modality)
        check_strides("ResNet", self.strides, strides)
        out = {2: self.relu(self.bn1(self.conv1(x), modality))}
        x = self.maxpool(out[2])
        for stride, layer in zip(self.strides[1:], (self.layer1, self.layer2, self.layer3, self.layer4)):
            if stride > max(strides):
                break
            x = out[stride] = self._run(layer, x, modality)
        return tuple(out[s] for s in strides)

    def forward(self, x: torch.Tensor, modality: int) -> torch.Tensor:
        return self.features(x, modality, (32,))[0].mean(dim=(2, 3))


def imagenet_to_cbn(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map plain torchvision ResNet keys (``bn1.weight``, ``layer1.0.downsample.1.bias``, ...) or a MoCo
    checkpoint (``module.encoder_q.`` prefix) to this encoder's keys, copying each BN into both
    ``norms.0`` and ``norms.1``. ``fc.*`` is dropped (the encoder has no classifier)."""
    if "state_dict" in state:
        state = state["state_dict"]
    out = {}
    for key, value in state.items():
        for prefix in ("module.encoder_q.", "encoder_q.", "module."):
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        if key.startswith(("fc.", "encoder_k.", "queue")) or ".encoder_k." in key:
            continue
        head, _, leaf = key.rpartition(".")
        is_bn = head == "bn1" or ".bn" in f".{head}" or head.endswith("downsample.1")
        if is_bn and leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            out[f"{head}.norms.0.{leaf}"] = value
            out[f"{head}.norms.1.{leaf}"] = value.clone()
        else:
            out[key] = value
    return out


def load_imagenet(encoder: ResNet, path: str) -> None:
    """Initialise ``encoder`` from a local torchvision- or MoCo-format ImageNet checkpoint (strict)."""
    state = load_file(path, "pscfast.models.load_imagenet")
    encoder.load_state_dict(imagenet_to_cbn(state), strict=True)
