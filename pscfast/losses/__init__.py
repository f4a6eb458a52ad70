"""The training objectives of the models: PSC's stage-2 loss (weighted perceptual similarity and
forward-backward consistency), the known-warp loss of its STN, and SFNet's (mask consistency, flow consistency,
smoothness)."""
from pscfast.losses.psc import known_warp_loss, similarity, stage2_loss
from pscfast.losses.sfnet import flow_loss, mask_loss, sfnet_loss, smoothness_loss

__all__ = ["flow_loss", "known_warp_loss", "mask_loss", "sfnet_loss", "similarity", "smoothness_loss", "stage2_loss"]
