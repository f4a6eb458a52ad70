"""A warm start of PSC's warp estimator from the features' own matching (not in the paper).

PSC's STN starts every flow at the identity grid, and its residual blocks must learn to read the global
correlation before the flow leaves it. With ImageNet-pretrained features the correlation already holds much of
the match (docs/experiments.md), so :class:`MatchStart` gives the STN a first flow from it, the residual blocks
adding to it. For each target cell t, with c(t, s) the cosine similarity of the features of t and of source
cell s (each layer resized to the flow's grid, the chosen layers averaged) and s* = argmax_s c(t, s):

    m(t, s) = softmax_s(c(t, s) / temperature - |s - s*|^2 / (2 window^2))     (|.| in cells)
    flow(t) = sum_s m(t, s) position(s)

a windowed soft-argmax in the spirit of SFNet's kernel soft-argmax (Lee et al., CVPR 2019): the window keeps
a second, distant peak from pulling the expectation between the two, the softmax keeps sub-cell precision.
A 3x3 median of the flow (``median``) then replaces isolated wrong matches by their neighbours' (cells are
matched one by one, with nothing else to keep the flow smooth). It has no parameters, so a checkpoint's keys
are the same with and without it; the settings are stored beside the weights (pscfast.models.checkpoint).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pscfast.ops._reference import identity_grid, resize_features


@dataclass(frozen=True)
class MatchStartConfig:
    """The settings of :class:`MatchStart` (``layers``: indices into the encoder's dense features; None: all)."""
    temperature: float = 0.02
    window: float = 2.0
    layers: tuple[int, ...] | None = None
    median: bool = True

    def __post_init__(self):
        if not self.temperature > 0 or not self.window > 0:
            raise ValueError(f"pscfast.models.MatchStart: temperature and window must be positive, got "
                             f"{self.temperature!r} and {self.window!r}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
            if not self.layers:
                raise ValueError("pscfast.models.MatchStart: layers must name at least one layer (None: all)")

    def to_dict(self) -> dict:
        return {**asdict(self), "layers": None if self.layers is None else list(self.layers)}


def cosine_correlation(src: Sequence[torch.Tensor], tgt: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """(N, size^2 tgt cells, size^2 src cells): the cosine similarity of the features resized to size x size,
    averaged over the layers given."""
    score = 0
    for s, t in zip(src, tgt):
        s, t = (F.normalize(resize_features(x.float(), size).flatten(2), dim=1) for x in (s, t))
        score = score + t.transpose(1, 2) @ s
    return score / len(src)


def median_side(size) -> bool:
    """Whether ``size`` names a median filter: an odd side (1 leaves the flow as it is), or 0 for none."""
    return not isinstance(size, bool) and isinstance(size, int) and (size == 0 or (size > 0 and size % 2 == 1))


def median_filter(flow: torch.Tensor, size: int = 3) -> torch.Tensor:
    """size x size median (size odd) of each coordinate of a grid (N, h, w, 2), the border replicated."""
    n, h, w, _ = flow.shape
    r = size // 2
    x = F.pad(flow.permute(0, 3, 1, 2), (r, r, r, r), mode="replicate")
    patches = x.unfold(2, size, 1).unfold(3, size, 1).reshape(n, 2, h, w, size * size)
    return patches.median(-1).values.permute(0, 2, 3, 1)


class MatchStart(nn.Module):
    """``MatchStart(size=16, config=MatchStartConfig())(src, tgt) -> flow (N, size, size, 2)``: the first flow
    of the STN (module docstring); src/tgt as the STN takes them, the flow on the tgt grid pointing into src."""

    def __init__(self, size: int = 16, config: MatchStartConfig = MatchStartConfig()):
        super().__init__()
        self.size, self.config = size, config
        self.register_buffer("positions", identity_grid(1, size, size).reshape(size * size, 2).clone(),
                             persistent=False)

    def forward(self, src: Sequence[torch.Tensor], tgt: Sequence[torch.Tensor]) -> torch.Tensor:
        cfg, size = self.config, self.size
        if cfg.layers is not None:
            if max(cfg.layers) >= len(src) or min(cfg.layers) < -len(src):
                raise ValueError(f"pscfast.models.MatchStart: layers {cfg.layers} out of range for "
                                 f"{len(src)} feature layers")
            src, tgt = [src[i] for i in cfg.layers], [tgt[i] for i in cfg.layers]
        score = cosine_correlation(src, tgt, size)
        pos = self.positions.to(score.dtype)
        best = pos[score.argmax(-1)]  # (N, tgt, 2)
        # squared distance in cells: positions are spaced 2 / (size - 1) apart
        d2 = ((pos[None, None] - best[:, :, None]) ** 2).sum(-1) * ((size - 1) / 2) ** 2
        m = (score / cfg.temperature - d2 / (2 * cfg.window ** 2)).softmax(-1)
        flow = (m @ pos).view(-1, size, size, 2)
        return median_filter(flow, 3) if cfg.median else flow
