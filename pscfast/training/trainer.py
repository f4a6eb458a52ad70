"""PSC's two training stages: MoCo v2 on photo-sketch pairs (encoder), then the STN with the encoder frozen.

One loop (:class:`Stage`) serves both: SGD (momentum, weight decay), per-step linear warm-up then cosine,
AMP on CUDA (bf16, or fp16 with a gradient scaler), DistributedDataParallel under torchrun (gradients are
all-reduced; SyncBatchNorm in the STN; shuffle-BN and all-gather in MoCo), checkpoints every
``save_every`` epochs and exact resume at epoch boundaries (model, optimizer, schedule, scaler, MoCo queue,
RNG; the data order and augmentation draws of epoch e depend only on (seed, stage, epoch, rank)).
"""
from __future__ import annotations

import math
import os
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

from pscfast import ops
from pscfast.data import normalize
from pscfast.models import PHOTO, SKETCH, MoCo, PSCNet, load_imagenet, save_checkpoint
from pscfast.training import distributed as dist_utils
from pscfast.training.augment import AugmentConfig, augment_images, augment_pair, augment_reference
from pscfast.training.config import TrainConfig
from pscfast.training.losses import known_warp_loss, known_warps, stage2_loss


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def lr_lambda(total: int, warmup: int):
    """Linear warm-up over ``warmup`` steps, then cosine to 0 at ``total``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return f


class FlowPair(nn.Module):
    """fwd = stn(photo, sketch), bwd = stn(sketch, photo), and with ``known = (src, tgt)`` also stn(src, tgt) for
    the known-warp supervision, in one forward (one DDP call per step). ``f_photo=None`` skips fwd and bwd."""

    def __init__(self, stn: nn.Module):
        super().__init__()
        self.stn = stn

    def forward(self, f_photo, f_sketch, known=None):
        flows = None if f_photo is None else (self.stn(f_photo, f_sketch), self.stn(f_sketch, f_photo))
        return flows if known is None else (flows, self.stn(*known))


class Stage:
    """One training stage. ``step_fn(batch, step) -> dict of losses`` (``loss`` is optimised)."""

    def __init__(self, cfg: TrainConfig, stage: int, model: PSCNet, loader_data, device, rank: int, world: int):
        self.cfg, self.stage, self.model, self.device, self.rank, self.world = cfg, stage, model, device, rank, world
        self.sampler = DistributedSampler(loader_data, num_replicas=world, rank=rank, shuffle=True,
                                          seed=cfg.seed, drop_last=True)
        self.loader = DataLoader(loader_data, batch_size=cfg.batch_size, sampler=self.sampler, drop_last=True,
                                 num_workers=cfg.workers, pin_memory=device.type == "cuda")
        self.steps_per_epoch = len(self.loader)
        if cfg.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.max_steps_per_epoch)
        if self.steps_per_epoch == 0:
            raise ValueError(f"stage {stage}: batch_size {cfg.batch_size} x {world} processes exceeds the "
                             f"{len(loader_data)} training pairs")
        self.epochs = cfg.epochs_encoder if stage == 1 else cfg.epochs_estimator
        self.aug = AugmentConfig() if cfg.augment else AugmentConfig(flip_p=0.0, appearance=False, geometric=False)
        self.gen = torch.Generator(device=device)
        self.amp_dtype = _amp_dtype(cfg.amp, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.start_epoch, self.step = 0, 0
        if stage == 1:
            if cfg.moco_k >= len(loader_data) and self.epochs > 1 and rank == 0:
                # after one epoch a queue of >= N keys holds an older key of every pair: the query's own too
                warnings.warn(f"stage 1: the MoCo queue (moco_k={cfg.moco_k}) is not shorter than the "
                              f"{len(loader_data)} training pairs, so after the first epoch it holds keys of "
                              f"each query's own pair as negatives; set moco_k below {len(loader_data)}",
                              stacklevel=2)
            model.encoder.train()
            self.moco = MoCo(model.encoder, cfg.moco_dim, cfg.moco_k, cfg.moco_m, cfg.moco_t).to(device)
            self.net = self.moco
            params = [p for p in self.moco.parameters() if p.requires_grad]
            lr = cfg.lr_encoder
        else:
            self.moco = None
            model.encoder.requires_grad_(False)
            model.encoder.train(cfg.encoder_train_mode)
            stn = dist_utils.sync_batchnorm(model.stn, device) if world > 1 else model.stn
            model.stn = stn
            self.net = FlowPair(stn)
            params = list(stn.parameters())
            lr = cfg.lr_estimator
        if cfg.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if world > 1:
            # stage 1: each conditional BN uses one modality per call, so the other pair member is unused.
            self.net = DDP(self.net, device_ids=[device.index] if device.type == "cuda" else None,
                           find_unused_parameters=stage == 1)
        self.forward = self.net
        backend = cfg.compile_backend()
        if backend and stage == 1:
            # the encoders only: the queue update mutates a buffer that the loss's backward reads, which a
            # compiled MoCo forward (AOTAutograd saves the buffer, not the clone) turns into a version error
            for encoder in (self.moco.encoder_q, self.moco.encoder_k):
                encoder.compile(backend=backend)
        elif backend:
            self.forward = torch.compile(self.net, backend=backend)
        self.opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        total = self.epochs * self.steps_per_epoch
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lr_lambda(total, max(1, round(cfg.warmup_epochs * self.steps_per_epoch))))

    # ---------------------------------------------------------------- steps
    def _images(self, batch):
        size = self.cfg.image_size
        photo = resize(batch["photo"].to(self.device, non_blocking=True), size)
        sketch = resize(batch["sketch"].to(self.device, non_blocking=True), size)
        if self.cfg.channels_last:
            photo, sketch = photo.contiguous(memory_format=torch.channels_last), sketch.contiguous(
                memory_format=torch.channels_last)
        return photo, sketch

    def step_encoder(self, batch) -> dict[str, torch.Tensor]:
        photo, sketch = self._images(batch)
        views = [(normalize(augment_images(photo, self.aug, self.gen)), PHOTO),
                 (normalize(augment_images(sketch, self.aug, self.gen)), SKETCH)]
        (q, m_q), (k, m_k) = views if self.step % 2 == 0 else views[::-1]  # roles swap every iteration
        with torch.autocast(self.device.type, self.amp_dtype, enabled=self.amp_dtype is not None):
            loss = self.forward(q, m_q, k, m_k)
        return {"loss": loss}

    def step_estimator(self, batch) -> dict[str, torch.Tensor]:
        cfg, enc = self.cfg, self.model.encoder
        augment = augment_reference if cfg.augment_loop else augment_pair
        photo, sketch, _ = augment(*self._images(batch), self.aug, self.gen)
        photo, sketch = normalize(photo), normalize(sketch)
        pair = cfg.sim_weight > 0 or cfg.con_weight > 0 or not cfg.warp_weight  # PSC's losses on the pairs
        with torch.autocast(self.device.type, self.amp_dtype, enabled=self.amp_dtype is not None):
            known = self._known_warps(photo, sketch) if cfg.warp_weight else None
            with torch.no_grad():
                f_photo, f_sketch = (enc.features(photo, PHOTO), enc.features(sketch, SKETCH)) if pair else (None, None)
            out = self.forward(f_photo, f_sketch, None if known is None else known[:2])
            flows, pred = (out, None) if known is None else out
            losses = self._pair_losses(photo, sketch, f_photo, f_sketch, *flows) if pair else {}
        if known is not None:
            warp = known_warp_loss(pred.float(), known[2])
            losses = {**losses, "loss": losses.get("loss", 0) + cfg.warp_weight * warp, "warp": warp.detach()}
        return losses

    def _pair_losses(self, photo, sketch, f_photo, f_sketch, fwd, bwd) -> dict[str, torch.Tensor]:
        """PSC's stage-2 losses of the predicted flows (weighted similarity and consistency)."""
        cfg, enc = self.cfg, self.model.encoder
        size = tuple(photo.shape[-2:])
        # re-encode the warped images: gradients reach the flows through the frozen encoder
        w_photo = ops.warp(photo, fwd.to(photo.dtype), out_size=size, padding_mode="border", backend=cfg.backend)
        w_sketch = ops.warp(sketch, bwd.to(photo.dtype), out_size=size, padding_mode="border", backend=cfg.backend)
        fw_photo, fw_sketch = enc.features(w_photo, PHOTO), enc.features(w_sketch, SKETCH)
        f = lambda fs: [t.float() for t in fs]  # noqa: E731  (losses in fp32)
        return stage2_loss(f(fw_photo), f(f_sketch), f(fw_sketch), f(f_photo), fwd.float(), bwd.float(),
                           cfg.sim_weight, cfg.con_weight, cfg.tau, cfg.backend)

    def _known_warps(self, photo: torch.Tensor, sketch: torch.Tensor):
        """losses.known_warps of the photos (photo BN) and the sketches (sketch BN), one batch: (src, tgt, grids)."""
        enc = self.model.encoder
        (src_p, tgt_p, grid_p), (src_s, tgt_s, grid_s) = (known_warps(enc, x, m, AugmentConfig(), self.gen)
                                                          for x, m in ((photo, PHOTO), (sketch, SKETCH)))
        return ([torch.cat(t) for t in zip(src_p, src_s)], [torch.cat(t) for t in zip(tgt_p, tgt_s)],
                torch.cat([grid_p, grid_s]))

    def train_step(self, batch) -> dict[str, float]:
        out = self.step_encoder(batch) if self.stage == 1 else self.step_estimator(batch)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(out["loss"]).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.step += 1
        losses = {k: float(dist_utils.all_reduce_mean(v.detach())) for k, v in out.items()}
        if not math.isfinite(losses["loss"]):  # rank-averaged: every rank stops at the same step
            lr = self.cfg.lr_encoder if self.stage == 1 else self.cfg.lr_estimator
            raise FloatingPointError(
                f"stage {self.stage}, step {self.step}: the loss is {losses['loss']} ({losses}); training "
                f"diverged at lr {lr:g}. Lower --lr, or --resume from the last checkpoint in {self.cfg.out}")
        return losses

    # ---------------------------------------------------------------- state
    def state_dict(self, epoch: int) -> dict:
        state = {"stage": self.stage, "epoch": epoch, "step": self.step, "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                 "rng": torch.get_rng_state()}
        if self.moco is not None:
            state["moco"] = {k: v for k, v in self.moco.state_dict().items() if not k.startswith("encoder_q.")}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        if self.moco is not None and "moco" in state:
            self.moco.load_state_dict(state["moco"], strict=False)
        self.start_epoch, self.step = state["epoch"], state["step"]

    # ---------------------------------------------------------------- loop
    def run(self, log=None, on_epoch=None) -> list[dict[str, float]]:
        """Train from ``start_epoch`` to ``epochs``; returns the per-step losses (rank-averaged)."""
        history = []
        bar = _progress(self.cfg.progress and self.rank == 0, (self.epochs - self.start_epoch) * self.steps_per_epoch,
                        f"stage {self.stage}")
        for epoch in range(self.start_epoch, self.epochs):
            self.sampler.set_epoch(epoch)
            self.gen.manual_seed(hash((self.cfg.seed, self.stage, epoch, self.rank)) % (2 ** 63))
            for i, batch in enumerate(self.loader):
                if i >= self.steps_per_epoch:
                    break
                t0 = time.perf_counter()
                losses = self.train_step(batch)
                history.append(losses)
                if log is not None:
                    log(self.stage, self.step, {**losses, "lr": self.sched.get_last_lr()[0],
                                                "step_time": time.perf_counter() - t0})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()})
            if on_epoch is not None:
                on_epoch(self, epoch + 1)
        if bar is not None:
            bar.close()
        return history


def _amp_dtype(amp: str, device: torch.device):
    if device.type != "cuda" or amp == "none":
        return None
    if amp not in ("auto", "bf16", "fp16"):
        raise ValueError(f"amp must be auto, bf16, fp16 or none, got {amp!r}")
    return torch.float16 if amp == "fp16" else torch.bfloat16


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, dynamic_ncols=True)


def build_model(cfg: TrainConfig, device) -> PSCNet:
    model = PSCNet(cfg.arch, cfg.shared_bn, backend=cfg.backend)
    if (cfg.pretrained or cfg.imagenet) and not (cfg.init or cfg.resume):
        load_imagenet(model.encoder, cfg.imagenet)
    if cfg.init:
        from pscfast.models import load_checkpoint
        model.load_state_dict(load_checkpoint(cfg.init, cfg.arch, cfg.shared_bn).state_dict())
    return model.to(device)


def checkpoint_path(cfg: TrainConfig, stage: int, epoch: int | None = None) -> str:
    name = f"stage{stage}_last.pt" if epoch is None else f"stage{stage}_epoch{epoch:04d}.pt"
    return os.path.join(cfg.out, name)


def save_stage(cfg: TrainConfig, stage: Stage, epoch: int, rank: int) -> None:
    if rank != 0:
        return
    extra = {"training": stage.state_dict(epoch), "config": cfg.__dict__}
    save_checkpoint(checkpoint_path(cfg, stage.stage), stage.model, **extra)
    if epoch % cfg.save_every == 0 and epoch != stage.epochs:
        save_checkpoint(checkpoint_path(cfg, stage.stage, epoch), stage.model, **extra)
