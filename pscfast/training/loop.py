"""The training loop every trainer of the package runs: PSC's two stages and SFNet.

A trainer subclasses :class:`TrainingLoop`, builds its data loader, optimizer and schedule, and defines
``losses(batch)``; the loop does the rest: epochs from ``start_epoch`` (resume), at most ``steps_per_epoch``
batches each, the optimizer step (through a gradient scaler under fp16 AMP), the schedule per step or per
epoch, losses averaged over the ranks of a distributed run, a progress bar, a ``log`` callback per step and an
``on_epoch`` callback (checkpoints, evaluation) after each epoch.

Divergence stops the run at the step where it shows, naming the trainer and the step: a non-finite loss, or
a non-finite parameter or buffer of the watched (trained) modules, checked after every step (PSC's STN can
overflow its BN running variance while the loss is still finite), so that no checkpoint of a diverged model
is ever written. Every rank stops at the same step.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from pscfast.training import distributed as dist_utils


class TrainingLoop:
    """``run(log, on_epoch)`` over ``loader``; subclasses define ``losses(batch) -> {"loss": ..., ...}``
    (``loss`` is optimised, the other terms are reported) and may define ``begin_epoch(epoch)``.

    name: starts every message ("stage 2", "sfnet"). scheduler_interval: "step" or "epoch".
    watched: {name prefix: module} whose parameters and buffers must stay finite. lr: the configured rate,
    named when the run diverges, with ``advice`` (what the user can do about it).
    """

    def __init__(self, *, name: str, loader, steps_per_epoch: int, epochs: int, optimizer: torch.optim.Optimizer,
                 scheduler, scheduler_interval: str, watched: dict[str, nn.Module], lr: float, progress: bool,
                 advice: str = "Lower --lr", scaler: torch.amp.GradScaler | None = None):
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"{name}: scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}")
        self.name, self.loader, self.steps_per_epoch, self.epochs = name, loader, steps_per_epoch, epochs
        self.optimizer, self.scheduler, self.scheduler_interval = optimizer, scheduler, scheduler_interval
        self.watched, self.lr, self.progress, self.advice, self.scaler = watched, lr, progress, advice, scaler
        self.start_epoch, self.step = 0, 0

    def losses(self, batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def begin_epoch(self, epoch: int) -> None:
        """Called before each epoch's first batch (sampler epochs, augmentation seeds)."""

    # ---------------------------------------------------------------- one step
    def train_step(self, batch) -> dict[str, float]:
        """One optimizer step; returns the loss terms, averaged over the ranks."""
        try:
            out = self.losses(batch)
        except ValueError as exc:  # e.g. an op refusing the non-finite flows of a diverging model: say where
            raise ValueError(f"{self.name}, step {self.step + 1}: {exc}") from exc
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            out["loss"].backward()
            self.optimizer.step()
        else:
            self.scaler.scale(out["loss"]).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if self.scheduler_interval == "step":
            self.scheduler.step()
        self.step += 1
        losses = {k: float(dist_utils.all_reduce_mean(v.detach())) for k, v in out.items()}
        if not math.isfinite(losses["loss"]):  # rank-averaged: every rank stops at the same step
            self._diverged(f"the loss is {losses['loss']} ({losses})")
        self._check_finite()
        return losses

    def _check_finite(self) -> None:
        """Stop when a watched parameter or buffer is no longer finite. Each tensor's min and max (they
        propagate NaN and are +-inf when any value is: one read, no boolean temporary, no overflow on finite
        values), one sync. Measured on one thread of a shared 2-core CPU: 29 ms for stage 1's R18 MoCo (23 M
        values, 3% of its 1.0 s step at batch 8, 128x128), 12 ms for the STN (10 M; 0.3% of a 3.3 s step)."""
        watched = [(prefix + name, t.detach()) for prefix, module in self.watched.items()
                   for name, t in (*module.named_parameters(), *module.named_buffers())
                   if t.is_floating_point() and t.numel()]
        bad = ~torch.stack([torch.stack(torch.aminmax(t)) for _, t in watched]).isfinite().all(1)
        if dist_utils.active():  # the BN buffers can differ between ranks: every rank stops if one must
            bad = dist_utils.all_reduce_mean(bad.float()) > 0
        if bool(bad.any()):
            names = [name for (name, _), b in zip(watched, bad.tolist()) if b]
            self._diverged(f"{len(names)} tensor(s) hold non-finite values after the update "
                           f"({', '.join(names[:3])}{' ...' if len(names) > 3 else ''})")

    def _diverged(self, what: str):
        raise FloatingPointError(f"{self.name}, step {self.step}: {what}; training diverged at lr {self.lr:g}. "
                                 f"{self.advice}")

    # ---------------------------------------------------------------- the loop
    def run(self, log: Callable[[int, dict], None] | None = None,
            on_epoch: Callable[["TrainingLoop", int], None] | None = None) -> list[dict[str, float]]:
        """Train from ``start_epoch`` to ``epochs``; returns the per-step losses (rank-averaged).

        log(step, values): the losses, the learning rate and the step's seconds, after every step.
        on_epoch(trainer, epochs_done): after every epoch."""
        history = []
        bar = _progress(self.progress, (self.epochs - self.start_epoch) * self.steps_per_epoch, self.name)
        try:  # the bar ends its line even when a step raises: the error message starts on its own
            for epoch in range(self.start_epoch, self.epochs):
                self.begin_epoch(epoch)
                for i, batch in enumerate(self.loader):
                    if i >= self.steps_per_epoch:
                        break
                    t0 = time.perf_counter()
                    losses = self.train_step(batch)
                    history.append(losses)
                    if log is not None:
                        log(self.step, {**losses, "lr": self.optimizer.param_groups[0]["lr"],
                                        "step_time": time.perf_counter() - t0})
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()})
                if self.scheduler_interval == "epoch":
                    self.scheduler.step()
                if on_epoch is not None:
                    on_epoch(self, epoch + 1)
        finally:
            if bar is not None:
                bar.close()
        return history


def _progress(enabled: bool, total: int, desc: str):
    return tqdm(total=total, desc=desc, dynamic_ncols=True) if enabled else None
