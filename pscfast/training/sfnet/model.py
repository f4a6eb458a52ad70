"""The SFNet a run trains (random adaptation layers on a random, ImageNet or PSC backbone) and the SFNet a
checkpoint of such a run holds."""
from __future__ import annotations

from pscfast.models import load_checkpoint, load_imagenet
from pscfast.models._load import load_file
from pscfast.models.sfnet import SFNet
from pscfast.training.sfnet.config import SFNetConfig

KIND = "sfnet"  # the checkpoint's model_kind


def build(cfg: SFNetConfig, device) -> SFNet:
    """``cfg.imagenet``'s or ``cfg.init``'s (a PSC checkpoint's encoder) backbone under new adaptation layers."""
    model = SFNet(cfg.arch, beta=cfg.beta, sigma=cfg.sigma, backend=cfg.backend)
    if cfg.imagenet:
        load_imagenet(model.encoder, cfg.imagenet)
    if cfg.init:
        model.encoder.load_state_dict(load_checkpoint(cfg.init, cfg.arch).encoder.state_dict())
    return model.to(device)


def load_sfnet(path: str, map_location="cpu") -> SFNet:
    """The SFNet of a checkpoint written by ``train/run.py --model sfnet``, in eval mode."""
    ckpt = load_file(path, "load_sfnet", map_location)
    if not isinstance(ckpt, dict) or ckpt.get("model_kind") != KIND:
        raise ValueError(f"load_sfnet: {path} is not an SFNet checkpoint (written by train/run.py --model sfnet)")
    model = SFNet(ckpt["arch"], beta=ckpt["beta"], sigma=ckpt["sigma"])
    model.load_state_dict(ckpt["model"])
    return model.eval()
