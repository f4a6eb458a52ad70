"""What PSC's two training stages share: the data order, SGD with warm-up and cosine, AMP, DDP, exact resume.

SGD (momentum, weight decay), per-step linear warm-up then cosine, AMP on CUDA (bf16, or fp16 with a
gradient scaler), DistributedDataParallel under torchrun (gradients are all-reduced), checkpoints through
the ``on_epoch`` callback and exact resume at epoch boundaries (optimizer, schedule, scaler, RNG and the
stage's own extra state; the data order and augmentation draws of epoch e depend only on (seed, stage,
epoch, rank)). A learning rate that differs from the resumed checkpoint's is honoured: the schedule goes on
from the checkpoint's step, scaled to the new rate.

The stage trains the model it is given without changing its structure, modes or ``requires_grad`` flags
(pscfast.training.share): its parameters and batch-norm statistics are updated in place.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

from pscfast.data import resize
from pscfast.models import PSCNet
from pscfast.training.augment import AugmentConfig
from pscfast.training.config import TrainConfig
from pscfast.training.loop import TrainingLoop


def lr_lambda(total: int, warmup: int):
    """Linear warm-up over ``warmup`` steps, then cosine to 0 at ``total``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return f


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of TrainConfig.amp on this device (None: float32)."""
    if device.type != "cuda" or amp == "none":
        return None
    return torch.float16 if amp == "fp16" else torch.bfloat16


class PSCStage(TrainingLoop):
    """One stage of PSC on ``model``. A subclass sets ``number``, and ``build(model)`` returns the module to
    train (wrapped by DDP and channels-last here), its parameters, its learning rate and the modules whose
    tensors must stay finite."""

    number: int
    find_unused_parameters = False  # DDP: whether a step may leave some trained parameters without gradient

    def __init__(self, cfg: TrainConfig, model: PSCNet, data, device: torch.device, rank: int, world: int):
        self.cfg, self.model, self.device, self.rank, self.world = cfg, model, device, rank, world
        self.sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                          drop_last=True)
        loader = DataLoader(data, batch_size=cfg.batch_size, sampler=self.sampler, drop_last=True,
                            num_workers=cfg.workers, pin_memory=device.type == "cuda")
        steps = len(loader) if not cfg.max_steps_per_epoch else min(len(loader), cfg.max_steps_per_epoch)
        if steps == 0:
            raise ValueError(f"stage {self.number}: batch_size {cfg.batch_size} x {world} processes exceeds the "
                             f"{len(data)} training pairs")
        epochs = (cfg.epochs_encoder, cfg.epochs_estimator, cfg.epochs_refine)[self.number - 1]
        self.aug = AugmentConfig() if cfg.augment else AugmentConfig(flip_p=0.0, appearance=False, geometric=False)
        self.gen = torch.Generator(device=device)
        self.amp_dtype = amp_dtype(cfg.amp, device)
        net, params, lr, watched = self.build(model, data)
        if cfg.channels_last:
            net.to(memory_format=torch.channels_last)
        self.net = net
        if world > 1:
            self.net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None,
                           find_unused_parameters=self.find_unused_parameters)
        self.forward = self.compiled(self.net, cfg.compile_backend())
        opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_lambda(epochs * steps, max(1, round(cfg.warmup_epochs * steps))))
        super().__init__(name=f"stage {self.number}", loader=loader, steps_per_epoch=steps, epochs=epochs,
                         optimizer=opt, scheduler=sched, scheduler_interval="step", watched=watched, lr=lr,
                         progress=cfg.progress and rank == 0,
                         advice=f"Lower --lr, or --resume from a checkpoint in {cfg.out} (those saved so far are "
                                "finite)",
                         scaler=torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16))

    def build(self, model: PSCNet, data) -> tuple[nn.Module, list[nn.Parameter], float, dict[str, nn.Module]]:
        raise NotImplementedError

    def compiled(self, net: nn.Module, backend: str | None):
        """The callable a step runs: ``net`` itself, or compiled with ``backend``."""
        return net if backend is None else torch.compile(net, backend=backend)

    def begin_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.gen.manual_seed(hash((self.cfg.seed, self.number, epoch, self.rank)) % (2 ** 63))

    def images(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's photos and sketches on the device at the training resolution."""
        size = self.cfg.image_size
        photo = resize(batch["photo"].to(self.device, non_blocking=True), size)
        sketch = resize(batch["sketch"].to(self.device, non_blocking=True), size)
        if self.cfg.channels_last:
            photo = photo.contiguous(memory_format=torch.channels_last)
            sketch = sketch.contiguous(memory_format=torch.channels_last)
        return photo, sketch

    def autocast(self):
        return torch.autocast(self.device.type, self.amp_dtype, enabled=self.amp_dtype is not None)

    # ---------------------------------------------------------------- state
    def extra_state(self) -> dict:
        """State of the stage beyond the optimizer's, for its checkpoints."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what :meth:`extra_state` saved (``state`` is the whole training state)."""

    def state_dict(self, epoch: int) -> dict:
        return {"stage": self.number, "epoch": epoch, "step": self.step, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": torch.get_rng_state(), **self.extra_state()}

    def load_state_dict(self, state: dict) -> str | None:
        """Resume; returns a line to log when the configured lr replaces the checkpoint's, else None."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        self.load_extra_state(state)
        self.start_epoch, self.step = state["epoch"], state["step"]
        saved = self.scheduler.base_lrs[0]
        if saved == self.lr:
            return None
        # LambdaLR sets lr = base_lr * lambda(step): a new base rescales the rest of the schedule
        self.scheduler.base_lrs = [self.lr] * len(self.optimizer.param_groups)
        for group, f in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas):
            group["initial_lr"] = self.lr
            group["lr"] = self.lr * f(self.scheduler.last_epoch)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        return (f"stage {self.number}: resuming at step {self.step} with lr {self.lr:g} instead of the "
                f"checkpoint's {saved:g} (the warm-up/cosine schedule goes on, scaled to the new lr)")
