"""similarity_loss: PSC's weighted perceptual similarity (SPEC sections 1 and 3, op 3).
Backends: torch (reference)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import _checks, _reference
from ._dispatch import Op, register_op
from .correlation import _layers

SIMILARITY_LOSS = register_op(Op("similarity_loss", {"torch": _reference.similarity_loss}))


def similarity_loss(fw: Sequence[torch.Tensor], ft: Sequence[torch.Tensor], tau: float = 0.001, size: int = 16,
                    *, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position cross-entropy and weight of PSC's weighted perceptual similarity, one direction.

    Args:
        fw, ft: sequences of per-layer maps (N, C_l, H_l, W_l) of the warped and the target image; each is
            resized to size x size (bilinear, align_corners=False) and the layers are concatenated on channels.
        tau: softmax temperature (0.001 in the paper: logits up to ~1000).
        size: the grid side (16 in the paper; 32 and 64 for finer correspondence).

    Returns:
        (ce, weight), each (N, size^2); the direction's loss is (ce * weight).mean(). weight is detached.
    """
    op = "similarity_loss"
    fw, ft = _layers(op, "fw", fw), _layers(op, "ft", ft)
    if [f.shape[:2] for f in fw] != [f.shape[:2] for f in ft]:
        raise ValueError(f"pscfast.ops.{op}: fw and ft must have the same layers (batch and channels), got "
                         f"{[tuple(f.shape) for f in fw]} and {[tuple(f.shape) for f in ft]}")
    if not tau > 0:
        raise ValueError(f"pscfast.ops.{op}: tau must be positive, got {tau}")
    size = _checks.size_pair(op, "size", size)[0]
    _checks.same_device(op, **{f"fw[{i}]": f for i, f in enumerate(fw)}, **{f"ft[{i}]": f for i, f in enumerate(ft)})
    *tensors, = _checks.promote(*fw, *ft)
    fw, ft = tensors[: len(fw)], tensors[len(fw):]
    _, impl = SIMILARITY_LOSS.select(backend, fw[0])
    return impl(fw, ft, float(tau), size)


class SimilarityLoss(nn.Module):
    """``SimilarityLoss(tau, size)(fw, ft) -> (ce, weight)``."""

    def __init__(self, tau: float = 0.001, size: int = 16, backend: str | None = None):
        super().__init__()
        self.tau, self.size, self.backend = tau, size, backend

    def forward(self, fw, ft):
        return similarity_loss(fw, ft, self.tau, self.size, backend=self.backend)
