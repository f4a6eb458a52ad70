"""Refinement of the warp estimator's 16x16 flow to finer grids (not in the paper): residual steps on local cost
volumes, in the manner of PWC-Net's estimator (Sun et al., CVPR 2018).

One :class:`RefineLevel` takes an absolute grid (N, h, w, 2) that lives on the tgt grid and points into src
(the STN's convention, align_corners=True) and returns one of ``size`` x ``size``:

    up   = the flow upsampled to size x size (bilinear, align_corners=True: exact for affine flows)
    cost = per feature stride s: local_correlation(tgt_s, warp(src_s, up)) of the L2-normalised maps resized to
           size x size, (2 d + 1)^2 cosines per position (displacements up to d cells of the size grid)
    fine = up + net(cost) * 2 / (size - 1)

so the network's output is a displacement in cells of the finer grid. Its last convolution starts at zero:
an untrained level returns the upsampled flow. :class:`Refinement` chains the levels (e.g. 32, then 64).

With ``match_temperature`` set, a level starts from its cost volume's own match, as the STN starts from
:class:`pscfast.models.warm_start.MatchStart`: with c(p, k) the cosine of displacement k (averaged over the
strides) and k* = argmax_k c(p, k), the windowed soft-argmax

    offset(p) = sum_k softmax_k(c(p, k) / match_temperature - |k - k*|^2 / (2 match_window^2)) k   (cells)

(its ``match_median`` x ``match_median`` median when that is 3 or more) is added before the network's residual:
fine = up + (offset + net(cost)) * 2 / (size - 1). It has no parameters: the settings live in ``config``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pscfast import ops
from pscfast.models.stn import upsample_flow
from pscfast.models.warm_start import median_filter, median_side


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class RefineLevel(nn.Module):
    """``RefineLevel(size, strides, max_displacement, width, backend)(flow, src, tgt)``: src and tgt map each
    stride of ``strides`` to the encoder's features there (N, C_s, H_s, W_s); returns (N, size, size, 2).

    The network: 3x3 convolutions (cost volume -> width -> width -> width // 2 -> 2), leaky ReLU between them.
    ``match_temperature`` (None: off), ``match_window`` (cells) and ``match_median`` (the side of the median
    filter on its displacements; 0: none): the local match start (module docstring)."""

    def __init__(self, size: int = 32, strides: Sequence[int] = (4,), max_displacement: int = 4, width: int = 64,
                 backend: str | None = None, match_temperature: float | None = None, match_window: float = 1.0,
                 match_median: int = 0):
        super().__init__()
        if size < 2 or not strides or max_displacement < 1 or width < 2:
            raise ValueError(f"pscfast.models.RefineLevel: needs size >= 2, at least one stride, "
                             f"max_displacement >= 1 and width >= 2; got size={size}, strides={tuple(strides)}, "
                             f"max_displacement={max_displacement}, width={width}")
        if (match_temperature is not None and not match_temperature > 0) or not match_window > 0:
            raise ValueError(f"pscfast.models.RefineLevel: match_temperature (or None) and match_window must be "
                             f"positive, got {match_temperature!r} and {match_window!r}")
        if not median_side(match_median):
            raise ValueError(f"pscfast.models.RefineLevel: match_median must be an odd side, or 0 for none, got "
                             f"{match_median!r}")
        self.size, self.strides, self.max_displacement = size, tuple(strides), max_displacement
        self.width, self.backend = width, backend
        self.match_temperature, self.match_window, self.match_median = match_temperature, match_window, match_median
        k = torch.arange(2 * max_displacement + 1, dtype=torch.float32) - max_displacement
        # (x, y) of displacement index py * (2 d + 1) + px, local_correlation's order
        self.register_buffer("displacements", torch.stack(torch.meshgrid(k, k, indexing="ij")[::-1], -1).reshape(-1, 2),
                             persistent=False)
        cin = len(self.strides) * (2 * max_displacement + 1) ** 2
        layers: list[nn.Module] = []
        for cout in (width, width, width // 2):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.1)]
            cin = cout
        layers.append(nn.Conv2d(cin, 2, 3, padding=1))
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)

    @property
    def config(self) -> dict:
        """The constructor's arguments (a checkpoint records them to rebuild the level); the match start's only
        when it is on, so levels without it record what they did before it existed."""
        config = {"size": self.size, "strides": list(self.strides), "max_displacement": self.max_displacement,
                  "width": self.width}
        if self.match_temperature is not None:
            config.update(match_temperature=self.match_temperature, match_window=self.match_window,
                          match_median=self.match_median)
        return config

    def cost(self, up: torch.Tensor, src: Mapping[int, torch.Tensor], tgt: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """The cost volumes of every stride, concatenated: (N, len(strides) * (2 d + 1)^2, size, size)."""
        out = []
        for s in self.strides:
            t = F.normalize(_resize(tgt[s].to(up.dtype), self.size), dim=1)
            # sampled at the native resolution (zeros outside the image), then normalised
            w = F.normalize(ops.warp(src[s].to(up.dtype), up, padding_mode="zeros", backend=self.backend), dim=1)
            out.append(ops.local_correlation(t, w, max_displacement=self.max_displacement, backend=self.backend))
        return torch.cat(out, 1)

    def match_offsets(self, cost: torch.Tensor) -> torch.Tensor:
        """The local match start of a cost volume (what :meth:`cost` returns): (N, size, size, 2) displacements
        (x, y) in cells of the level's grid (module docstring)."""
        n, _, h, w = cost.shape
        c = cost.float().view(n, len(self.strides), -1, h, w).mean(1)  # (N, K, h, w) cosines
        disp = self.displacements
        best = disp[c.argmax(1)]  # (N, h, w, 2)
        d2 = ((disp[:, None, None] - best[:, None]) ** 2).sum(-1)  # (N, K, h, w)
        m = (c / self.match_temperature - d2 / (2 * self.match_window ** 2)).softmax(1)
        offsets = torch.einsum("nkhw,kc->nhwc", m, disp)
        return median_filter(offsets, self.match_median) if self.match_median > 1 else offsets

    def forward(self, flow: torch.Tensor, src: Mapping[int, torch.Tensor],
                tgt: Mapping[int, torch.Tensor]) -> torch.Tensor:
        # at least float32: a bf16 grid resolves 1/128 near 1, a quarter of a cell at 64x64
        up = upsample_flow(flow.to(torch.promote_types(flow.dtype, torch.float32)), self.size)
        cost = self.cost(up, src, tgt)
        step = self.net(cost).permute(0, 2, 3, 1)
        if self.match_temperature is not None:
            step = self.match_offsets(cost) + step
        return up + step * (2 / (self.size - 1))

    def extra_repr(self) -> str:
        match = "" if self.match_temperature is None else (
            f", match_temperature={self.match_temperature}, match_window={self.match_window}, "
            f"match_median={self.match_median}")
        return f"size={self.size}, strides={self.strides}, max_displacement={self.max_displacement}{match}"


class Refinement(nn.Module):
    """The levels in order, each refining the previous one's flow; no levels: the flow is returned as it is.
    ``levels``: the keyword arguments of each :class:`RefineLevel` (what ``config`` returns)."""

    def __init__(self, levels: Sequence[Mapping] = (), backend: str | None = None):
        super().__init__()
        self.levels = nn.ModuleList(RefineLevel(**dict(level), backend=backend) for level in levels)
        sizes = [level.size for level in self.levels]
        if sizes != sorted(set(sizes)):
            raise ValueError(f"pscfast.models.Refinement: the levels' sizes must increase, got {sizes}")

    @property
    def config(self) -> list[dict]:
        return [level.config for level in self.levels]

    @property
    def strides(self) -> tuple[int, ...]:
        """The encoder strides the levels read."""
        return tuple(sorted({s for level in self.levels for s in level.strides}))

    @property
    def size(self) -> int | None:
        """The size of the flow the last level returns (None without levels)."""
        return self.levels[-1].size if len(self.levels) else None

    def set_backend(self, backend: str | None) -> None:
        for level in self.levels:
            level.backend = backend

    def forward(self, flow: torch.Tensor, src: Mapping[int, torch.Tensor],
                tgt: Mapping[int, torch.Tensor]) -> torch.Tensor:
        for level in self.levels:
            flow = level(flow, src, tgt)
        return flow
