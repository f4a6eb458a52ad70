"""PSC's warp estimator as the authors' release builds it: three residual blocks g4, g8, g16 on global
correlations (Lu, Wang, Fan, ICML 2023).

flow4  = identity + g4(corr(tgt, src))
flow8  = flow4 + g8(corr(tgt, src sampled at flow4))
flow16 = flow8 + g16(corr(tgt, src sampled at flow8))
Flows are absolute sampling grids (N, 16, 16, 2), (x, y), align_corners=True, living on the tgt grid and
pointing into src. Residuals add (they are not composed). Key names match the release
(``net_4x.{0..19}``, ``base_map``); 10.23 M parameters. ``start`` (not in the release) replaces the identity
of flow4 by a flow computed from src and tgt (pscfast.models.warm_start.MatchStart); it holds no weights.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pscfast import ops
from pscfast.ops._reference import identity_grid


def _block(ds: int, size: int, cin: int = 512) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, 512, ds, ds), nn.BatchNorm2d(512), nn.LeakyReLU(0.1)]
    c = 512
    for _ in range(5):
        layers += [nn.Conv2d(c, c // 2, 3, padding=1, bias=False), nn.BatchNorm2d(c // 2), nn.LeakyReLU(0.1)]
        c //= 2
    layers += [nn.Conv2d(c, 2, 3, padding=1), nn.Upsample(size=(size, size), mode="bilinear", align_corners=True)]
    return nn.Sequential(*layers)


class STN(nn.Module):
    """``STN(size=16, layers=2)(src, tgt) -> flow (N, size, size, 2)``; src/tgt are sequences of per-layer
    feature maps (layer2, layer3). ``backend`` chooses the pscfast.ops backend of the correlation; ``start``
    a module ``(src, tgt) -> flow`` that the residuals add to (None: the identity, as in the release)."""

    def __init__(self, size: int = 16, layers: int = 2, backend: str | None = None, start: nn.Module | None = None):
        super().__init__()
        self.size, self.backend, self.start = size, backend, start
        cin = layers * size * size
        self.net_4x, self.net_8x, self.net_16x = (_block(ds, size, cin) for ds in (4, 2, 1))
        self.register_buffer("base_map", identity_grid(1, size, size).clone())
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.normal_(mod.weight, 0.0, 1e-3)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)

    def _residual(self, net: nn.Sequential, corr: torch.Tensor) -> torch.Tensor:
        return net(corr).permute(0, 2, 3, 1)

    def forward(self, src: Sequence[torch.Tensor], tgt: Sequence[torch.Tensor]) -> torch.Tensor:
        corr = lambda grid: ops.correlation(src, tgt, grid, self.size, backend=self.backend)  # noqa: E731
        base = self.base_map if self.start is None else self.start(src, tgt)
        flow = base + self._residual(self.net_4x, corr(None))
        flow = flow + self._residual(self.net_8x, corr(flow))
        return flow + self._residual(self.net_16x, corr(flow))


def upsample_flow(flow: torch.Tensor, size: int | tuple[int, int] = 256) -> torch.Tensor:
    """(N, h, w, 2) absolute grid -> (N, H, W, 2) with (H, W) = size (an int: a square), bilinear,
    align_corners=True (the release's full-res flow)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    return F.interpolate(flow.permute(0, 3, 1, 2), size=size, mode="bilinear",
                         align_corners=True).permute(0, 2, 3, 1)
