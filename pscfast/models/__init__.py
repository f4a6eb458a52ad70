"""PSC's model: ResNet or EfficientNet-Lite0 encoder with conditional BN, MoCo v2 head, STN warp estimator,
checkpoints."""
from pscfast.models.checkpoint import load_checkpoint, save_checkpoint
from pscfast.models.efficientnet import EfficientNetLite0
from pscfast.models.moco import MoCo
from pscfast.models.psc import ARCHS, PSCNet, build_encoder, imagenet_file, load_imagenet
from pscfast.models.resnet import PHOTO, SKETCH, ResNet
from pscfast.models.stn import STN, upsample_flow
from pscfast.models.warm_start import MatchStart, MatchStartConfig

__all__ = ["ARCHS", "PHOTO", "SKETCH", "EfficientNetLite0", "MatchStart", "MatchStartConfig", "MoCo", "PSCNet",
           "ResNet", "STN", "build_encoder", "imagenet_file", "load_checkpoint", "load_imagenet", "save_checkpoint",
           "upsample_flow"]
