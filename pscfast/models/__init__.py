"""PSC's model: ResNet encoder with conditional BN, MoCo v2 head, STN warp estimator, checkpoints."""
from pscfast.models.checkpoint import load_checkpoint, save_checkpoint
from pscfast.models.moco import MoCo
from pscfast.models.psc import ARCHS, PSCNet
from pscfast.models.resnet import PHOTO, SKETCH, ResNet, load_imagenet
from pscfast.models.stn import STN, upsample_flow

__all__ = ["ARCHS", "PHOTO", "SKETCH", "MoCo", "PSCNet", "ResNet", "STN", "load_checkpoint", "load_imagenet",
           "save_checkpoint", "upsample_flow"]
