"""Training SFNet on photo-sketch pairs with foreground masks, and its PCK evaluation.

    python train/run.py --model sfnet                        # short CPU run on the synthetic benchmark
    python train/run.py --model sfnet --arch resnet101 --init psc.pt --lr 3e-5 --epochs 40 \
        --lr-decay-epoch 30 --batch-size 16 --data-root ...

Adam (the paper's betas) on the adaptation layers only; the backbone is frozen (random, ImageNet via
``--imagenet`` or a PSC checkpoint's encoder via ``--init``). The paper trains 40 epochs at lr 3e-5, divided
by 5 after 30 epochs, batch 16. The defaults (16 epochs of 6 steps at lr 1e-3 on the synthetic benchmark)
took 14 min on 2 CPU cores shared with other jobs (a few minutes on idle cores).
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from pscfast._device import choose_device
from pscfast.data import normalize, resize
from pscfast.losses.sfnet import WEIGHTS, sfnet_loss
from pscfast.models import load_checkpoint, load_imagenet, save_checkpoint
from pscfast.models._load import load_file
from pscfast.models.sfnet import BETA, SIGMA, SFNet
from pscfast.training.config import check_backend, check_types
from pscfast.training.outdir import OutputLock
from pscfast.training.pipeline import evaluate_pck, prepare_data
from pscfast.training.sfnet.data import MaskedPairs


@dataclass(frozen=True)
class SFNetConfig:
    arch: str = "resnet18"
    data_root: str = "runs/synthetic"    # generated there when it is the synthetic default and missing
    csv_dir: str | None = None
    out: str = "runs/sfnet"
    image_size: int = 256                # 16x16 flows (layer3)
    batch_size: int = 8
    epochs: int = 16
    max_steps_per_epoch: int | None = None
    lr: float = 1e-3                     # the paper: 3e-5 for 7k iterations
    lr_decay_epoch: int | None = None    # the paper: 30 (lr / 5 from then on)
    beta: float = BETA
    sigma: float = SIGMA
    w_mask: float = WEIGHTS["mask"]
    w_flow: float = WEIGHTS["flow"]
    w_smooth: float = WEIGHTS["smooth"]
    imagenet: str | None = None          # torchvision/MoCo ImageNet checkpoint for the backbone
    init: str | None = None              # PSC checkpoint whose encoder becomes the backbone
    backend: str | None = None
    eval_batch_size: int = 16
    eval_limit: int | None = None
    workers: int = 0
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self):
        check_types(self)
        for name in ("batch_size", "epochs", "lr", "beta", "sigma", "eval_batch_size"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SFNetConfig: {name} must be positive, got {getattr(self, name)!r}")
        for name in ("w_mask", "w_flow", "w_smooth", "workers"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"SFNetConfig: {name} must be non-negative, got {getattr(self, name)!r}")
        for name in ("max_steps_per_epoch", "lr_decay_epoch", "eval_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"SFNetConfig: {name} must be at least 1 or None, got {getattr(self, name)!r}")
        if self.image_size < 32:
            raise ValueError(f"SFNetConfig: image_size must be at least 32 (layer3 has stride 16), "
                             f"got {self.image_size}")
        check_backend(self)

    def weights(self) -> dict[str, float]:
        return {"mask": self.w_mask, "flow": self.w_flow, "smooth": self.w_smooth}


def build(cfg: SFNetConfig, device) -> SFNet:
    model = SFNet(cfg.arch, beta=cfg.beta, sigma=cfg.sigma, backend=cfg.backend)
    if cfg.imagenet:
        load_imagenet(model.encoder, cfg.imagenet)
    if cfg.init:
        model.encoder.load_state_dict(load_checkpoint(cfg.init, cfg.arch).encoder.state_dict())
    return model.to(device)


def load_sfnet(path: str, map_location="cpu") -> SFNet:
    """An SFNet checkpoint written by :func:`train`, in eval mode."""
    ckpt = load_file(path, "load_sfnet", map_location)
    if not isinstance(ckpt, dict) or ckpt.get("model_kind") != "sfnet":
        raise ValueError(f"load_sfnet: {path} is not an SFNet checkpoint (written by pscfast.training.sfnet.trainer)")
    model = SFNet(ckpt["arch"], beta=ckpt["beta"], sigma=ckpt["sigma"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


def train_step(model: SFNet, opt: torch.optim.Optimizer, batch: dict, image_size: int, weights: dict[str, float],
               device) -> dict[str, float]:
    """One Adam step on a batch of MaskedPairs items; returns the loss terms."""
    photo = normalize(resize(batch["photo"].to(device), image_size))
    sketch = normalize(resize(batch["sketch"].to(device), image_size))
    fwd, bwd = model(photo, sketch)
    # fwd lives on the sketch and points into the photo: the sketch is the paper's source image s.
    out = sfnet_loss(fwd, bwd, batch["sketch_mask"].to(device), batch["photo_mask"].to(device), weights)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    opt.step()
    return {k: float(v.detach()) for k, v in out.items()}


def train(cfg: SFNetConfig) -> dict:
    """Train, save ``<out>/final.pt``, evaluate PCK. Returns {"history": per-step losses, "pck", "model"}.
    Holds the output folder's lock for the run (pscfast.training.outdir)."""
    with OutputLock(cfg.out, "train"):
        return _train(cfg)


def _train(cfg: SFNetConfig) -> dict:
    device = choose_device(cfg.device, "train: device")
    torch.manual_seed(cfg.seed)
    root, csv_dir = prepare_data(cfg, rank=0)
    data = MaskedPairs(root, os.path.join(csv_dir, "train_pairs_ps.csv"))
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=cfg.workers,
                        generator=torch.Generator().manual_seed(cfg.seed))
    steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
    if steps == 0:
        raise ValueError(f"batch_size {cfg.batch_size} exceeds the {len(data)} training pairs")
    model = build(cfg, device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999))
    decay = cfg.lr_decay_epoch if cfg.lr_decay_epoch is not None else cfg.epochs
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [decay], gamma=0.2)
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.epochs * steps, desc="sfnet", dynamic_ncols=True)
    history = []
    for _ in range(cfg.epochs):
        for i, batch in enumerate(loader):
            if i >= steps:
                break
            t0 = time.perf_counter()
            losses = train_step(model, opt, batch, cfg.image_size, cfg.weights(), device)
            history.append({**losses, "step_time": time.perf_counter() - t0})
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()})
        sched.step()
    if bar is not None:
        bar.close()
    save_checkpoint(os.path.join(cfg.out, "final.pt"), model, model_kind="sfnet", beta=cfg.beta, sigma=cfg.sigma,
                    config=dataclasses.asdict(cfg))
    pck = evaluate_pck(cfg, model, root, csv_dir, device)
    return {"history": history, "pck": pck, "model": model}
