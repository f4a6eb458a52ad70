"""The authors' release's augmentation, one pair at a time on the textbook formulas: the specification of
:mod:`pscfast.training.augment`'s batched path (same draws, same outputs up to rounding) and its baseline."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pscfast.ops._reference import identity_grid, resize_grid
from pscfast.training.augment import (BLUR_SIZE, LUMA, AugmentConfig, _gaussian_taps, affine_matrix, apply_geometry,
                                      sample_appearance, sample_geometry, tps_points)

def _gray_reference(x: torch.Tensor) -> torch.Tensor:
    return (LUMA[0] * x[:, 0:1] + LUMA[1] * x[:, 1:2] + LUMA[2] * x[:, 2:3])


def shift_hue_reference(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by h (fraction of a turn) through HSV."""
    r, g_, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(maxc == r, ((g_ - b) / safe) % 6,
                      torch.where(maxc == g_, (b - r) / safe + 2, (r - g_) / safe + 4)) / 6
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue))
    hue = (hue + h.view(-1, 1, 1)) % 1.0
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1) + hue.unsqueeze(1) * 6) % 6
    f = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return maxc.unsqueeze(1) * (1 - sat.unsqueeze(1) * f)


def blur_reference(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur, 13x13 as two grouped 1-D convolutions, reflect padding."""
    n, c, h, w = x.shape
    k = _gaussian_taps(sigma, x.dtype).repeat_interleave(c, 0)
    y = F.pad(x.reshape(1, n * c, h, w), (BLUR_SIZE // 2,) * 4, mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, BLUR_SIZE), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, BLUR_SIZE, 1), groups=n * c)
    return y.view(n, c, h, w)


def apply_appearance_reference(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """:func:`apply_appearance` step by step on the textbook formulas."""
    v = lambda t: t.view(-1, 1, 1, 1).to(x.dtype)  # noqa: E731
    x = (x * v(p["brightness"])).clamp(0, 1)
    mean = _gray_reference(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (mean + v(p["contrast"]) * (x - mean)).clamp(0, 1)
    x = (_gray_reference(x) + v(p["saturation"]) * (x - _gray_reference(x))).clamp(0, 1)
    x = shift_hue_reference(x, p["hue"].to(x.dtype)).clamp(0, 1)
    x = torch.where(v(p["gray"]) > 0, _gray_reference(x).expand_as(x), x)
    if bool(p["blur"].any()):
        x = torch.where(v(p["blur"]) > 0, blur_reference(x, p["sigma"]), x)
    return x


def geometry_grid_reference(p: dict[str, torch.Tensor], h: int, w: int, dtype=torch.float32,
                            coarse: int = 64) -> torch.Tensor:
    """:func:`geometry_grid` with the spline solved and evaluated per image."""
    if max(h, w) > coarse:
        return resize_grid(geometry_grid_reference(p, coarse, coarse, dtype, coarse), (h, w))
    n, device = p["kind"].shape[0], p["kind"].device
    pts = identity_grid(n, h, w, dtype, device).reshape(n, h * w, 2)
    kind = p["kind"].view(n, 1, 1)
    tps = torch.where(kind >= 1, tps_points(pts, p["tps"]), pts)
    A = affine_matrix(p).to(dtype)
    aff = tps @ A[:, :, :2].transpose(1, 2) + A[:, :, 2].unsqueeze(1)
    return torch.where(kind != 1, aff, tps).view(n, h, w, 2)


def augment_pair_reference(photo: torch.Tensor, sketch: torch.Tensor, cfg: AugmentConfig = AugmentConfig(),
                           g=None):
    """:func:`augment_pair` on the reference formulas: the same draws, the same outputs up to rounding."""
    n, _, h, w = sketch.shape
    flip = (torch.rand(n, generator=g, device=photo.device) < cfg.flip_p).view(-1, 1, 1, 1)
    photo, sketch = torch.where(flip, photo.flip(-1), photo), torch.where(flip, sketch.flip(-1), sketch)
    if cfg.appearance:
        photo = apply_appearance_reference(photo, sample_appearance(n, cfg, g, photo.device))
        sketch = apply_appearance_reference(sketch, sample_appearance(n, cfg, g, photo.device))
    if not cfg.geometric:
        return photo, sketch, identity_grid(n, h, w, sketch.dtype, sketch.device)
    grid = geometry_grid_reference(sample_geometry(n, cfg, g, photo.device), h, w, sketch.dtype)
    return photo, apply_geometry(sketch, grid), grid


def augment_reference(photo: torch.Tensor, sketch: torch.Tensor, cfg: AugmentConfig = AugmentConfig(), g=None):
    """:func:`augment_pair` the release's way: parameters drawn and applied one pair at a time."""
    outs = [augment_pair_reference(photo[i:i + 1], sketch[i:i + 1], cfg, g) for i in range(photo.shape[0])]
    return tuple(torch.cat(t) for t in zip(*outs))
