"""SFNet (Lee et al., TPAMI 2020): adaptation layers on a frozen ResNet, two correlations multiplied
element-wise, kernel soft argmax in both directions.

Feature levels: the paper's conv4-23 and conv5-3 of ResNet-101 are pscfast's ``layer3`` (stride 16) and
``layer4`` (stride 32). At 256x256 that is 16x16 and 8x8; layer4 is upsampled to 16x16 (bilinear, as the
paper's footnote 1), so the correlation and the flows are 16x16, the grid of PSCNet's flows, and the same
PCK evaluation applies. (layer2/layer3 would give 32x32 flows from shallower, less semantic features.)

Each adaptation layer is two residual blocks ``x = x + ReLU(BN(conv_k(x)))`` (k = 5 on layer3, 3 on layer4,
zero padding), randomly initialised; the backbone is frozen and always in eval mode (the paper trains the
adaptation layers only). Photos go through the backbone's photo batch norms, sketches through its sketch ones.

Correlations are in pscfast.ops.correlation's layout: ``corr[n, t, i, j]`` with channel t = row-major target
position and spatial (i, j) = source position. ``fwd`` lives on the sketch grid and points into the photo
(source = sketch, target = photo), ``bwd`` the reverse; both are absolute grids (N, h, w, 2), (x, y),
normalised with align_corners=True, as PSCNet's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pscfast import ops
from pscfast.models.resnet import PHOTO, SKETCH, ResNet
from pscfast.models.stn import upsample_flow

BETA, SIGMA = 50.0, 5.0  # the paper's kernel soft argmax temperature and Gaussian std (feature cells)


class AdaptationLayer(nn.Module):
    """Two residual blocks ``x + ReLU(BN(Conv_k(x)))`` keeping (N, C, H, W)."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2),
                          nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
            for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


class SFNet(nn.Module):
    """``SFNet(arch="resnet18", shared_bn=False, beta=50, sigma=5, backend=None)``.

    ``encoder`` is a pscfast.models.ResNet (frozen; load ImageNet or PSC weights into it), ``adapt3`` and
    ``adapt4`` the trainable adaptation layers. ``backend`` picks the pscfast.ops backend of the correlation
    and of the kernel soft argmax.
    """

    def __init__(self, arch: str = "resnet18", shared_bn: bool = False, beta: float = BETA, sigma: float = SIGMA,
                 backend: str | None = None):
        super().__init__()
        self.encoder = ResNet(arch, shared_bn)
        self.encoder.requires_grad_(False)
        c3 = self.encoder.feature_dims[1]
        self.adapt3, self.adapt4 = AdaptationLayer(c3, 5), AdaptationLayer(self.encoder.out_dim, 3)
        self.beta, self.sigma, self.backend = beta, sigma, backend

    @property
    def arch(self) -> str:
        return self.encoder.arch

    @property
    def shared_bn(self) -> bool:
        return self.encoder.shared_bn

    def train(self, mode: bool = True) -> "SFNet":
        super().train(mode)
        self.encoder.eval()  # frozen backbone: batch-norm statistics stay fixed
        return self

    def features(self, x: torch.Tensor, modality: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images (N, 3, H, W) -> adapted, L2-normalised (layer3, layer4 upsampled to layer3's
        size) features, each (N, C, H/16, W/16)."""
        with torch.no_grad():
            l3 = self.encoder.features(x, modality)[1]
            l4 = l3
            for block in self.encoder.layer4:
                l4 = block(l4, modality)
        a3 = self.adapt3(l3)
        a4 = F.interpolate(self.adapt4(l4), size=a3.shape[-2:], mode="bilinear", align_corners=True)
        return F.normalize(a3, dim=1), F.normalize(a4, dim=1)

    def correlation(self, f_src, f_tgt) -> torch.Tensor:
        """Per-level cosine correlations multiplied element-wise: (N, Ht*Wt, Hs, Ws) (channel = target)."""
        h, w = f_src[0].shape[-2:]
        if h != w:
            raise ValueError(f"SFNet: square feature maps expected (square images), got {h}x{w}")
        corr = ops.correlation(list(f_src), list(f_tgt), size=h, backend=self.backend)
        return corr[:, : h * w] * corr[:, h * w:]

    def flows(self, f_photo, f_sketch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Adapted features of both images -> (fwd, bwd, corr) with corr the fwd correlation (target =
        photo); bwd's correlation is its transpose."""
        corr = self.correlation(f_sketch, f_photo)
        n, t, h, w = corr.shape
        corr_t = corr.flatten(2).transpose(1, 2).reshape(n, t, h, w)
        # SFNet's code L2-normalises the product (its L2normalize, epsilon 1e-6) before the soft argmax
        fwd = ops.kernel_soft_argmax(corr, self.beta, self.sigma, normalize="sfnet", backend=self.backend)
        bwd = ops.kernel_soft_argmax(corr_t, self.beta, self.sigma, normalize="sfnet", backend=self.backend)
        return fwd, bwd, corr

    def forward(self, photo: torch.Tensor, sketch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images (N, 3, H, W) -> (fwd, bwd) grids (N, H/16, W/16, 2), differentiable in the
        adaptation layers."""
        if photo.shape != sketch.shape:
            raise ValueError(f"SFNet: photo {tuple(photo.shape)} and sketch {tuple(sketch.shape)} must have the "
                             "same shape")
        fwd, bwd, _ = self.flows(self.features(photo, PHOTO), self.features(sketch, SKETCH))
        return fwd, bwd

    def predict_flow(self, photo: torch.Tensor, sketch: torch.Tensor, full_res: bool = False):
        """As PSCNet.predict_flow: normalised images -> (fwd, bwd) absolute grids (N, H/16, W/16, 2) (16x16
        at 256x256) under no_grad; ``full_res=True`` upsamples them to the image size."""
        with torch.no_grad():
            fwd, bwd = self(photo, sketch)
        if full_res:
            fwd, bwd = upsample_flow(fwd, photo.shape[-1]), upsample_flow(bwd, photo.shape[-1])
        return fwd, bwd
