"""compose and consistency_loss: flow composition on absolute grids and PSC's forward-backward
consistency loss (SPEC section 3, op 5). Backends: torch (reference)."""
from __future__ import annotations

import torch
from torch import nn

from . import _checks, _reference
from ._dispatch import Op, register_op

MODES = ("nearest", "bilinear")
COMPOSE = register_op(Op("compose", {"torch": _reference.compose}))
CONSISTENCY_LOSS = register_op(Op("consistency_loss", {"torch": _reference.consistency_loss}))


def _flows(op: str, **flows: torch.Tensor) -> list[torch.Tensor]:
    for name, f in flows.items():
        _checks.tensor(op, name, f, dims=4, last=2)
        _checks.nonempty_spatial(op, name, f[..., 0])
        _checks.finite(op, name, f)
    _checks.same_device(op, **flows)
    _checks.same_batch(op, **flows)
    return _checks.promote(*flows.values())


def compose(f_ab: torch.Tensor, f_bc: torch.Tensor, mode: str = "bilinear", *,
            backend: str | None = None) -> torch.Tensor:
    """F_ab o F_bc on absolute grids (N, h, w, 2): f_ab sampled at the positions f_bc (zeros outside,
    align_corners=True). Returns (N, h', w', 2) on f_bc's grid. mode "bilinear" or "nearest"."""
    _checks.choice("compose", "mode", mode, MODES)
    f_ab, f_bc = _flows("compose", f_ab=f_ab, f_bc=f_bc)
    _, impl = COMPOSE.select(backend, f_ab)
    return impl(f_ab, f_bc, mode)


def consistency_loss(fwd: torch.Tensor, bwd: torch.Tensor, mode: str = "nearest", *,
                     backend: str | None = None) -> torch.Tensor:
    """PSC's forward-backward consistency loss: masked MSE between compose(fwd, bwd) and the identity.

    fwd, bwd: absolute grids (N, h, w, 2) in the release convention (fwd on the sketch grid pointing into the
    photo, bwd the reverse). mode "nearest" reproduces the release (gradient to fwd only); "bilinear" is
    differentiable in both flows. Returns a scalar; see pscfast.ops._reference.consistency_loss for the mask.
    """
    _checks.choice("consistency_loss", "mode", mode, MODES)
    fwd, bwd = _flows("consistency_loss", fwd=fwd, bwd=bwd)
    _, impl = CONSISTENCY_LOSS.select(backend, fwd)
    return impl(fwd, bwd, mode)


class Compose(nn.Module):
    def __init__(self, mode: str = "bilinear", backend: str | None = None):
        super().__init__()
        self.mode, self.backend = mode, backend

    def forward(self, f_ab, f_bc):
        return compose(f_ab, f_bc, self.mode, backend=self.backend)


class ConsistencyLoss(nn.Module):
    def __init__(self, mode: str = "nearest", backend: str | None = None):
        super().__init__()
        self.mode, self.backend = mode, backend

    def forward(self, fwd, bwd):
        return consistency_loss(fwd, bwd, self.mode, backend=self.backend)
