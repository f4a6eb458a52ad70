"""PSCNet: the encoder and the warp estimator of PSC, with ``predict_flow``."""
from __future__ import annotations

import torch
from torch import nn

from pscfast.models import resnet
from pscfast.models.resnet import PHOTO, SKETCH, ResNet
from pscfast.models.stn import STN, upsample_flow

ARCHS = tuple(resnet.ARCHS)  # the encoders PSCNet builds (the choices of TrainConfig.arch)


class PSCNet(nn.Module):
    """``PSCNet(arch="resnet18", shared_bn=False, backend=None)``: ``encoder`` (ResNet with conditional BN)
    and ``stn`` (warp estimator). ``backend`` picks the pscfast.ops backend of the correlation."""

    def __init__(self, arch: str = "resnet18", shared_bn: bool = False, backend: str | None = None):
        super().__init__()
        self.encoder = ResNet(arch, shared_bn)
        self.stn = STN(backend=backend)

    @property
    def arch(self) -> str:
        return self.encoder.arch

    @property
    def shared_bn(self) -> bool:
        return self.encoder.shared_bn

    def set_backend(self, backend: str | None) -> None:
        self.stn.backend = backend

    def flows(self, f_photo, f_sketch) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (layer2, layer3) of both images -> (fwd, bwd) 16x16 grids (fwd = stn(photo, sketch))."""
        return self.stn(f_photo, f_sketch), self.stn(f_sketch, f_photo)

    def predict_flow(self, photo: torch.Tensor, sketch: torch.Tensor, full_res: bool = False):
        """Normalised images (N, 3, H, W) -> (fwd, bwd) absolute grids (N, 16, 16, 2), (x, y), align_corners=True.

        fwd lives on the sketch grid and points into the photo (``warp(photo, fwd)`` looks like the sketch);
        bwd the reverse. ``full_res=True`` upsamples both to the image size (bilinear, align_corners=True).
        Runs under no_grad with the current train/eval mode (call ``.eval()`` first for inference).
        """
        if photo.shape != sketch.shape:
            raise ValueError(f"PSCNet.predict_flow: photo {tuple(photo.shape)} and sketch {tuple(sketch.shape)} "
                             "must have the same shape")
        with torch.no_grad():
            fwd, bwd = self.flows(self.encoder.features(photo, PHOTO), self.encoder.features(sketch, SKETCH))
        if full_res:
            fwd, bwd = upsample_flow(fwd, photo.shape[-1]), upsample_flow(bwd, photo.shape[-1])
        return fwd, bwd
