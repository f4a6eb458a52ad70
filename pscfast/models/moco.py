"""MoCo v2 on photo-sketch pairs (stage 1 of PSC): key encoder, MLP heads and the negative queue.

The query encoder is the PSC encoder itself (passed in, shared); the key encoder is its momentum copy.
loss = CE([l_pos, l_neg] / T, label 0) with q, k the L2-normalised 128-d head outputs. When
torch.distributed is initialised, keys are computed with shuffle-BN and all-gathered before entering the queue.
"""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pscfast.models.resnet import ResNet


def _head(d: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, dim))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def _all_gather(x: torch.Tensor) -> torch.Tensor:
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


class MoCo(nn.Module):
    """``MoCo(encoder_q, dim=128, K=8192, m=0.999, T=0.07)``; ``forward(im_q, m_q, im_k, m_k) -> loss``
    with m_q / m_k the modalities (0 photo, 1 sketch) of the query and key images."""

    def __init__(self, encoder_q: ResNet, dim: int = 128, K: int = 8192, m: float = 0.999, T: float = 0.07):
        super().__init__()
        self.K, self.m, self.T = K, m, T
        self.encoder_q = encoder_q
        self.encoder_k = copy.deepcopy(encoder_q)
        self.fc_q = _head(encoder_q.out_dim, dim)
        self.fc_k = copy.deepcopy(self.fc_q)
        for p in (*self.encoder_k.parameters(), *self.fc_k.parameters()):
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(dim, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def key_modules(self):
        return (self.encoder_k, self.fc_k), (self.encoder_q, self.fc_q)

    @torch.no_grad()
    def momentum_update(self) -> None:
        for k_mod, q_mod in zip(*self.key_modules()):
            for pk, pq in zip(k_mod.parameters(), q_mod.parameters()):
                pk.mul_(self.m).add_(pq.detach(), alpha=1 - self.m)
            for bk, bq in zip(k_mod.buffers(), q_mod.buffers()):
                bk.copy_(bq)

    @torch.no_grad()
    def _keys(self, im_k: torch.Tensor, m_k: int) -> torch.Tensor:
        if not _distributed():
            return F.normalize(self.fc_k(self.encoder_k(im_k, m_k)), dim=1)
        # shuffle-BN: the key encoder's BN statistics come from a random other part of the global batch.
        n = im_k.shape[0]
        full = _all_gather(im_k)
        perm = torch.randperm(full.shape[0], device=full.device)
        dist.broadcast(perm, 0)
        rank = dist.get_rank()
        mine = perm.view(dist.get_world_size(), n)[rank]
        k = F.normalize(self.fc_k(self.encoder_k(full[mine], m_k)), dim=1)
        gathered = _all_gather(k)
        k_all = torch.empty_like(gathered)
        k_all[perm] = gathered
        return k_all[rank * n:(rank + 1) * n]

    @torch.no_grad()
    def _enqueue(self, k: torch.Tensor) -> None:
        if _distributed():
            k = _all_gather(k)
        n, ptr = k.shape[0], int(self.queue_ptr)
        if n > self.K:  # the wrapped indices would write several keys into one slot
            raise ValueError(f"MoCo: {n} keys per step (the global batch) do not fit the queue of K={self.K}; "
                             f"use a queue at least as long as the global batch")
        idx = (torch.arange(n, device=k.device) + ptr) % self.K
        self.queue[:, idx] = k.T.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + n) % self.K

    def forward(self, im_q: torch.Tensor, m_q: int, im_k: torch.Tensor, m_k: int) -> torch.Tensor:
        q = F.normalize(self.fc_q(self.encoder_q(im_q, m_q)), dim=1)
        with torch.no_grad():
            self.momentum_update()
            k = self._keys(im_k, m_k)
        l_pos = (q * k).sum(1, keepdim=True)
        l_neg = q @ self.queue.clone().detach().to(q.dtype)
        logits = torch.cat([l_pos, l_neg], dim=1) / self.T
        loss = F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
        self._enqueue(k)
        return loss
