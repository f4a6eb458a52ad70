"""Batched on-device augmentation of PSC training (SPEC section 1), with the release's parameter ranges.

Images are (N, 3, H, W) in [0, 1] (before ImageNet normalisation). Appearance: colour jitter (brightness,
contrast, saturation 0.4, hue 0.1, kornia-style), grayscale p=0.2, Gaussian blur 13x13 sigma U(0.1, 2)
p=0.5. Geometry: per image one of affine (rotation and shear U(-pi/8, pi/8), per-axis scale U(0.5, 1.5),
translation U(-0.5, 0.5)), TPS (4x4 control grid jittered U(-0.25, 0.25)) or affine-then-TPS, chosen
uniformly. All parameters of a batch are drawn at once (``sample_*``) and applied in one pass (``apply_*``);
the release draws and applies them one image at a time in a Python loop (:func:`augment_reference` here).

Geometric convention: the returned grid (N, H, W, 2) is an absolute sampling grid ((x, y), align_corners=True):
``out = grid_sample(image, grid, padding_mode="border", align_corners=True)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pscfast.ops._reference import identity_grid, resize_grid

BLUR_SIZE = 13


@dataclass(frozen=True)
class AugmentConfig:
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    flip_p: float = 0.5
    angle: float = math.pi / 8
    shear: float = math.pi / 8
    scale: tuple[float, float] = (0.5, 1.5)
    translate: float = 0.5
    tps_jitter: float = 0.25
    appearance: bool = True
    geometric: bool = True


def _u(n: int, lo: float, hi: float, g, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


# ---------------------------------------------------------------- appearance
def sample_appearance(n: int, cfg: AugmentConfig, g=None, device=None) -> dict[str, torch.Tensor]:
    return {"brightness": _u(n, 1 - cfg.brightness, 1 + cfg.brightness, g, device),
            "contrast": _u(n, 1 - cfg.contrast, 1 + cfg.contrast, g, device),
            "saturation": _u(n, 1 - cfg.saturation, 1 + cfg.saturation, g, device),
            "hue": _u(n, -cfg.hue, cfg.hue, g, device),
            "gray": torch.rand(n, generator=g, device=device) < cfg.grayscale_p,
            "blur": torch.rand(n, generator=g, device=device) < cfg.blur_p,
            "sigma": _u(n, *cfg.blur_sigma, g, device)}


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _shift_hue(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
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


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur, 13x13 separable, reflect padding."""
    n, c, h, w = x.shape
    r = torch.arange(BLUR_SIZE, device=x.device, dtype=x.dtype) - BLUR_SIZE // 2
    k = torch.exp(-(r.view(1, -1) ** 2) / (2 * sigma.view(-1, 1).to(x.dtype) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)
    y = F.pad(x.reshape(1, n * c, h, w), (BLUR_SIZE // 2,) * 4, mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, BLUR_SIZE), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, BLUR_SIZE, 1), groups=n * c)
    return y.view(n, c, h, w)


def apply_appearance(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    v = lambda t: t.view(-1, 1, 1, 1).to(x.dtype)  # noqa: E731
    x = (x * v(p["brightness"])).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (mean + v(p["contrast"]) * (x - mean)).clamp(0, 1)
    x = (_gray(x) + v(p["saturation"]) * (x - _gray(x))).clamp(0, 1)
    x = _shift_hue(x, p["hue"].to(x.dtype)).clamp(0, 1)
    x = torch.where(v(p["gray"]) > 0, _gray(x).expand_as(x), x)
    if bool(p["blur"].any()):
        x = torch.where(v(p["blur"]) > 0, _blur(x, p["sigma"]), x)
    return x


# ---------------------------------------------------------------- geometry
def sample_geometry(n: int, cfg: AugmentConfig, g=None, device=None) -> dict[str, torch.Tensor]:
    return {"kind": torch.randint(0, 3, (n,), generator=g, device=device),  # 0 affine, 1 TPS, 2 affine+TPS
            "angle": _u(n, -cfg.angle, cfg.angle, g, device), "shear": _u(n, -cfg.shear, cfg.shear, g, device),
            "scale": _u(2 * n, *cfg.scale, g, device).view(n, 2),
            "translate": _u(2 * n, -cfg.translate, cfg.translate, g, device).view(n, 2),
            "tps": _u(32 * n, -cfg.tps_jitter, cfg.tps_jitter, g, device).view(n, 16, 2)}


def affine_matrix(p: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N, 2, 3) rotation @ shear @ scale, plus translation, on normalised coordinates."""
    c, s, sh = p["angle"].cos(), p["angle"].sin(), p["shear"].tan()
    o, z = torch.ones_like(c), torch.zeros_like(c)
    rot = torch.stack([c, -s, s, c], -1).view(-1, 2, 2)
    shear = torch.stack([o, sh, z, o], -1).view(-1, 2, 2)
    lin = rot @ shear @ torch.diag_embed(p["scale"])
    return torch.cat([lin, p["translate"].unsqueeze(-1)], dim=2)


def _tps_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d2 = ((a.unsqueeze(-2) - b.unsqueeze(-3)) ** 2).sum(-1)
    return d2 * torch.log(d2.clamp_min(1e-12))


def tps_points(points: torch.Tensor, jitter: torch.Tensor) -> torch.Tensor:
    """Thin-plate spline through the 4x4 control grid c_k -> c_k + jitter_k, evaluated at points (N, P, 2)."""
    n = jitter.shape[0]
    ctrl = identity_grid(1, 4, 4, points.dtype, points.device).reshape(1, 16, 2).expand(n, 16, 2)
    ones = torch.ones(n, 16, 1, dtype=points.dtype, device=points.device)
    P = torch.cat([ones, ctrl], -1)
    L = torch.zeros(n, 19, 19, dtype=points.dtype, device=points.device)
    L[:, :16, :16], L[:, :16, 16:], L[:, 16:, :16] = _tps_kernel(ctrl, ctrl), P, P.transpose(1, 2)
    rhs = torch.cat([ctrl + jitter.to(points.dtype), torch.zeros(n, 3, 2, dtype=points.dtype, device=points.device)], 1)
    coef = torch.linalg.solve(L, rhs)
    Pp = torch.cat([torch.ones_like(points[..., :1]), points], -1)
    return _tps_kernel(points, ctrl) @ coef[:, :16] + Pp @ coef[:, 16:]


def geometry_grid(p: dict[str, torch.Tensor], h: int, w: int, dtype=torch.float32, coarse: int = 64) -> torch.Tensor:
    """Sampling grids (N, h, w, 2) of the drawn warps: affine, TPS, or the affine warp followed by the TPS
    warp (sampling position = affine(tps(p))). The smooth map is evaluated on a coarse x coarse lattice and
    resized bilinearly (align_corners=True; exact for affine, < 1e-3 off for TPS)."""
    if max(h, w) > coarse:
        return resize_grid(geometry_grid(p, coarse, coarse, dtype, coarse), (h, w))
    n, device = p["kind"].shape[0], p["kind"].device
    pts = identity_grid(n, h, w, dtype, device).reshape(n, h * w, 2)
    kind = p["kind"].view(n, 1, 1)
    tps = torch.where(kind >= 1, tps_points(pts, p["tps"]), pts)
    A = affine_matrix(p).to(dtype)
    aff = tps @ A[:, :, :2].transpose(1, 2) + A[:, :, 2].unsqueeze(1)
    return torch.where(kind != 1, aff, tps).view(n, h, w, 2)


def apply_geometry(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=True)


# ---------------------------------------------------------------- entry points
def augment_pair(photo: torch.Tensor, sketch: torch.Tensor, cfg: AugmentConfig = AugmentConfig(), g=None):
    """Stage-2 augmentation of a batch of pairs: pair flip, appearance on both, a random warp of the sketch.

    Returns (photo, sketch, grid): grid (N, H, W, 2) maps the augmented sketch back into the flipped,
    un-warped sketch (identity when ``cfg.geometric`` is False)."""
    n, _, h, w = sketch.shape
    flip = (torch.rand(n, generator=g, device=photo.device) < cfg.flip_p).view(-1, 1, 1, 1)
    photo, sketch = torch.where(flip, photo.flip(-1), photo), torch.where(flip, sketch.flip(-1), sketch)
    if cfg.appearance:
        photo = apply_appearance(photo, sample_appearance(n, cfg, g, photo.device))
        sketch = apply_appearance(sketch, sample_appearance(n, cfg, g, photo.device))
    if not cfg.geometric:
        return photo, sketch, identity_grid(n, h, w, sketch.dtype, sketch.device)
    grid = geometry_grid(sample_geometry(n, cfg, g, photo.device), h, w, sketch.dtype)
    return photo, apply_geometry(sketch, grid), grid


def augment_images(x: torch.Tensor, cfg: AugmentConfig = AugmentConfig(), g=None) -> torch.Tensor:
    """Stage-1 (MoCo) view of a batch: appearance and a random warp per image."""
    n, _, h, w = x.shape
    if cfg.appearance:
        x = apply_appearance(x, sample_appearance(n, cfg, g, x.device))
    if cfg.geometric:
        x = apply_geometry(x, geometry_grid(sample_geometry(n, cfg, g, x.device), h, w, x.dtype))
    return x


def augment_reference(photo: torch.Tensor, sketch: torch.Tensor, cfg: AugmentConfig = AugmentConfig(), g=None):
    """:func:`augment_pair` the release's way: parameters drawn and applied one pair at a time."""
    outs = [augment_pair(photo[i:i + 1], sketch[i:i + 1], cfg, g) for i in range(photo.shape[0])]
    return tuple(torch.cat(t) for t in zip(*outs))
