"""torchrun helpers: process-group setup (NCCL on GPUs, gloo on CPU) and rank queries. A single process
(no torchrun environment) needs no setup."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from pscfast._device import choose_device


def init(device: str) -> tuple[int, int, torch.device]:
    """Initialise the process group when launched by torchrun; returns (rank, world_size, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    chosen = choose_device(device, "train: device")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if chosen.type == "cuda" and chosen.index is None:  # one GPU per process under torchrun
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, chosen


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if active():
        x = x.detach().clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def barrier() -> None:
    if active():
        dist.barrier()


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch of all ranks, for CPU (gloo):
    torch's SyncBatchNorm runs on GPUs only. Per-channel sums are all-reduced with a differentiable
    all_reduce, so gradients flow to every rank's inputs as in SyncBatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce
        c = x.shape[1]
        count = torch.full((1,), x.numel() / c, dtype=x.dtype, device=x.device)
        # two passes (mean, then centred squares): E[x^2] - mean^2 cancels badly when |mean| >> std
        stats = all_reduce(torch.cat([x.sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = all_reduce(((x - mean.view(1, c, 1, 1)) ** 2).sum((0, 2, 3))) / n
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * n / (n - 1), self.momentum)
        y = (x - mean.view(1, c, 1, 1)) * torch.rsqrt(var.view(1, c, 1, 1) + self.eps)
        return y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)


def sync_batchnorm(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """BatchNorm -> SyncBatchNorm on GPUs, GlobalBatchNorm2d elsewhere, in place. The new batch norms hold
    the old ones' parameters and buffers themselves (as torch's convert_sync_batchnorm does), so a module
    sharing them (pscfast.training.share) sees every update."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is torch.nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            for key in (*child._parameters, *child._buffers):
                setattr(new, key, getattr(child, key))
            new.train(child.training)
            setattr(module, name, new)
        else:
            sync_batchnorm(child, device)
    return module
