"""Batched on-device augmentation of PSC training, with the release's parameter ranges.

Images are (N, 3, H, W) in [0, 1] (before ImageNet normalisation). Appearance: colour jitter (brightness,
contrast, saturation 0.4, hue 0.1, kornia-style), grayscale p=0.2, Gaussian blur 13x13 sigma U(0.1, 2)
p=0.5. Geometry: per image one of affine (rotation and shear U(-pi/8, pi/8), per-axis scale U(0.5, 1.5),
translation U(-0.5, 0.5)), TPS (4x4 control grid jittered U(-0.25, 0.25)) or affine-then-TPS, chosen
uniformly. All parameters of a batch are drawn at once (``sample_*``) and applied in one pass (``apply_*``);
the release draws and applies them one image at a time in a Python loop (:mod:`pscfast.training.augment_reference`,
on the plain formulas, is that loop and this module's specification).

The batched path updates a few buffers in place (five scratch planes serve the hue rotation and the later
steps' temporaries), combines the three channel planes elementwise instead of reducing over the channels,
blurs with banded matrix products on tiles (two 1-D passes, one read of the image each), evaluates the warps
on a coarse lattice with one TPS solve for the batch, and flips the sketch by mirroring its sampling grid.
On the CPU, grayscale, blur and the photo's flip touch the selected images only. Off the CPU the same ops
run on the whole batch with an identity for the unselected images (a one-tap blur kernel, a ``where``), so
nothing synchronises with the host. (On a GPU that allows TF32 matrix products, the blur rounds to TF32.)

Geometric convention: the returned grid (N, H, W, 2) is an absolute sampling grid ((x, y), align_corners=True):
``out = grid_sample(image, grid, padding_mode="border", align_corners=True)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pscfast.ops._reference import identity_grid

BLUR_SIZE = 13
TILE = 32  # outputs per matrix product of the blur: 44 taps' work for 13, in one read of the image
LUMA = (0.299, 0.587, 0.114)


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


def _check(fn: str, colour: bool, **images: torch.Tensor) -> None:
    """Batches of images (N, C, H, W), floating, with three channels where colour is set, and one N."""
    for name, x in images.items():
        if x.dim() != 4 or not x.is_floating_point() or (colour and x.shape[1] != 3):
            raise ValueError(f"pscfast.training.augment.{fn}: {name} must be a floating-point batch of "
                             f"{'RGB ' if colour else ''}images (N, {3 if colour else 'C'}, H, W), got shape "
                             f"{tuple(x.shape)} and dtype {x.dtype}")
    if len({x.shape[0] for x in images.values()}) > 1:
        raise ValueError(f"pscfast.training.augment.{fn}: {' and '.join(images)} must hold the same number of "
                         f"images, got {', '.join(str(x.shape[0]) for x in images.values())}")


def _selected(mask: torch.Tensor) -> torch.Tensor | None:
    """Indices of the images whose augmentation is on, or None off the CPU: there the indices would cost a host
    synchronisation, and the whole batch goes through the op with the identity for the others."""
    return mask.nonzero().squeeze(1) if mask.device.type == "cpu" else None


# ---------------------------------------------------------------- appearance
def sample_appearance(n: int, cfg: AugmentConfig, g=None, device=None) -> dict[str, torch.Tensor]:
    return {"brightness": _u(n, 1 - cfg.brightness, 1 + cfg.brightness, g, device),
            "contrast": _u(n, 1 - cfg.contrast, 1 + cfg.contrast, g, device),
            "saturation": _u(n, 1 - cfg.saturation, 1 + cfg.saturation, g, device),
            "hue": _u(n, -cfg.hue, cfg.hue, g, device),
            "gray": torch.rand(n, generator=g, device=device) < cfg.grayscale_p,
            "blur": torch.rand(n, generator=g, device=device) < cfg.blur_p,
            "sigma": _u(n, *cfg.blur_sigma, g, device)}


def _luma(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 3, ...) -> (N, ...) gray level, from the three channel planes."""
    r, g, b = x.unbind(1)
    return torch.mul(r, LUMA[0], out=out).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2])


def _shift_hue_(x: torch.Tensor, h: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of x (N, 3, H, W) in [0, 1] by h (N,) turns through HSV, in place; planes (5, N, H, W)
    is scratch.

    With v = max, d = max - min and the hue H in sixths of a turn, HSV -> RGB gives channel c =
    v - d clamp(min(k, 4 - k), 0, 1), k = (n_c + 6 h + H) mod 6, n = (5, 3, 1) (kornia), that is
    min + d clamp(D - 1, 0, 1) where D is the distance from k to 2 modulo 6. Taking k - 5 modulo 6 in
    [-6, 6) as u = H + o_c, with the per-image offset o_c in [-5, 1) and H in [-1, 5], D = ||u| - 3|. No
    remainder over the pixels, no reduction over the channels and no data-dependent selection (where): those
    are the slow CPU kernels of the textbook formula."""
    r, g, b = x.unbind(1)
    maxc, minc, delta, other, hue = planes.unbind(0)
    torch.maximum(torch.maximum(r, g, out=maxc), b, out=maxc)
    torch.minimum(torch.minimum(r, g, out=minc), b, out=minc)
    torch.sub(maxc, minc, out=delta)
    # d H: r max -> g - b (in [-d, d]); g max -> 2 d + b - r; b max -> 4 d + r - g; the first maximum wins a tie.
    # sign(max - c) is exactly 1 where c is not the maximum and 0 where it is: the products select exactly.
    torch.sub(maxc, g, out=other).sign_()
    torch.mul(r, 2, out=hue).sub_(g).sub_(b).add_(delta, alpha=2)  # (b max) - (g max)
    hue.mul_(other).add_(b).sub_(r).add_(delta, alpha=2)  # g max ? 2 d + b - r : 4 d + r - g
    torch.sub(maxc, r, out=other).sign_()
    hue.sub_(g).add_(b).mul_(other).add_(g).sub_(b)  # r max ? g - b : the above
    hue.div_(delta).nan_to_num_(0.0)  # 0 / 0 on gray pixels, whose colour no hue changes
    n_c = torch.arange(5, 0, -2, dtype=x.dtype, device=x.device)
    offsets = (6 * h.to(x.dtype).view(-1, 1) + n_c).remainder_(6).sub_(5).view(-1, 3, 1, 1)
    torch.add(hue.unsqueeze(1), offsets, out=x)
    x.abs_().sub_(3).abs_().sub_(1).clamp_(0, 1)
    return torch.addcmul(minc.unsqueeze(1), delta.unsqueeze(1), x, out=x)


def _gaussian_taps(sigma: torch.Tensor, dtype) -> torch.Tensor:
    """(N,) -> (N, 13) normalised Gaussian taps."""
    r = torch.arange(BLUR_SIZE, device=sigma.device, dtype=dtype) - BLUR_SIZE // 2
    k = torch.exp(-(r.view(1, -1) ** 2) / (2 * sigma.view(-1, 1).to(dtype) ** 2))
    return k / k.sum(1, keepdim=True)


def _blur_taps(sigma: torch.Tensor, dtype) -> torch.Tensor:
    """The Gaussian taps without those under 2^-64: against pixels in [0, 1] and a centre tap >= 1/13 they are
    below the sum's rounding, and their products can be subnormal numbers, which CPUs multiply ~100x slower
    (sigma near 0.44 makes the outer taps subnormal themselves)."""
    k = _gaussian_taps(sigma, dtype)
    return k.masked_fill_(k < 2.0 ** -64, 0.0)


def _carve(buf: torch.Tensor, *shapes) -> list[torch.Tensor]:
    """Contiguous tensors of the given shapes at consecutive offsets of buf's storage while it lasts, new ones
    after: the temporaries of a later step reuse the planes of an earlier one."""
    flat, out, at = buf.view(-1), [], 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(flat[at:at + size].view(shape) if at + size <= flat.numel() else buf.new_empty(shape))
        at += size
    return out


def _band(taps: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 13) taps -> (N, size + 12, size) banded Toeplitz matrices: column j holds the taps in rows j..j+12,
    so a window of size + 12 padded samples times the matrix is size filtered samples."""
    lag = torch.arange(size + BLUR_SIZE - 1, device=taps.device).view(-1, 1) - torch.arange(size, device=taps.device)
    inside = (lag >= 0) & (lag < BLUR_SIZE)
    return torch.where(inside, taps[:, lag.clamp(0, BLUR_SIZE - 1)], torch.zeros((), dtype=taps.dtype,
                                                                                  device=taps.device))


def _blur(x: torch.Tensor, taps: torch.Tensor, out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of x (N, C, H, W) with per-image taps (N, 13), reflect padding, into out (which
    may be x); rows (N, C, H + 12, W) holds the intermediate.

    Each 1-D pass is a few batched matrix products: a tile of TILE outputs is a window of TILE + 12 padded
    samples times a banded matrix, read in place, so a pass reads the image once instead of once per tap."""
    n, c, h, w = x.shape
    r = BLUR_SIZE // 2
    band = _band(taps, TILE).repeat_interleave(c, 0)
    for j in range(0, w, TILE):  # along rows, into the middle of the row-padded buffer
        t = min(TILE, w - j)
        lo, hi = j - r, j + t + r
        window = x[..., max(lo, 0):min(hi, w)]
        if lo < 0 or hi > w:  # a border tile: its window reflects about the first or last column
            window = F.pad(window, (max(-lo, 0), max(hi - w, 0), 0, 0), mode="reflect")
        torch.bmm(window.reshape(n * c, h, t + 2 * r), band[:, :t + 2 * r, :t],
                  out=rows[:, :, r:r + h, j:j + t].view(n * c, h, t))
    rows[:, :, :r] = rows[:, :, r + 1:2 * r + 1].flip(2)
    rows[:, :, r + h:] = rows[:, :, h - 1:h + r - 1].flip(2)
    band_t = band.transpose(1, 2)
    for i in range(0, h, TILE):  # along columns: the transposed band times a window of padded rows
        t = min(TILE, h - i)
        torch.bmm(band_t[:, :t, :t + 2 * r], rows[:, :, i:i + t + 2 * r].view(n * c, t + 2 * r, w),
                  out=out[:, :, i:i + t].view(n * c, t, w))
    return out


def _gray_(x: torch.Tensor, on: torch.Tensor, scratch: torch.Tensor) -> None:
    idx = _selected(on)
    if idx is None:
        torch.where(on.view(-1, 1, 1, 1), _luma(x, out=scratch[0]).unsqueeze(1), x, out=x)
    elif idx.numel():
        sel, gray = _carve(scratch, (idx.numel(), *x.shape[1:]), (idx.numel(), *x.shape[2:]))
        _luma(torch.index_select(x, 0, idx, out=sel), out=gray)
        x.index_copy_(0, idx, gray.unsqueeze(1).expand_as(sel))


def _blur_(x: torch.Tensor, on: torch.Tensor, sigma: torch.Tensor, scratch: torch.Tensor) -> None:
    n, c, h, w = x.shape
    pad = BLUR_SIZE - 1
    idx = _selected(on)
    if min(h, w) <= pad // 2 and (idx is None or idx.numel()):
        raise ValueError(f"pscfast.training.augment: the {BLUR_SIZE}-tap blur reflects {pad // 2} pixels at the "
                         f"borders and needs images of at least {pad // 2 + 1} x {pad // 2 + 1}, got {h} x {w}")
    if idx is None:
        taps = _blur_taps(sigma, x.dtype)
        identity = torch.zeros_like(taps)
        identity[:, BLUR_SIZE // 2] = 1
        _blur(x, torch.where(on.view(-1, 1), taps, identity), x, *_carve(scratch, (n, c, h + pad, w)))
    elif idx.numel():
        k = idx.numel()
        sel, rows = _carve(scratch, (k, c, h, w), (k, c, h + pad, w))
        torch.index_select(x, 0, idx, out=sel)
        x.index_copy_(0, idx, _blur(sel, _blur_taps(sigma.index_select(0, idx), x.dtype), sel, rows))


def _flip_(x: torch.Tensor, on: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    idx = _selected(on)
    if idx is None:
        return torch.where(on.view(-1, 1, 1, 1), x.flip(-1), x)
    if idx.numel():
        sel, = _carve(scratch, (idx.numel(), *x.shape[1:]))
        x.index_copy_(0, idx, torch.index_select(x, 0, idx, out=sel).flip(-1))
    return x


def _scratch(x: torch.Tensor) -> torch.Tensor:
    """Five planes (5, N, H, W) of scratch for :func:`_appearance` of x and for the steps after it."""
    n, _, h, w = x.shape
    return torch.empty((5, n, h, w), dtype=x.dtype, device=x.device)


def _appearance(x: torch.Tensor, p: dict[str, torch.Tensor], planes: torch.Tensor) -> torch.Tensor:
    v = lambda t: t.to(x.dtype).view(-1, 1, 1, 1)  # noqa: E731
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    torch.mul(x, v(p["brightness"]), out=out).clamp_(0, 1)
    # contrast: blend with the image's mean gray level (the gray level of the channel means)
    c = v(p["contrast"])
    mean = _luma(out.mean((2, 3), keepdim=True)).unsqueeze(1)
    out.mul_(c).add_((1 - c) * mean).clamp_(0, 1)
    # saturation: blend with the pixel's gray level
    s = v(p["saturation"])
    gray = _luma(out, out=planes[0]).unsqueeze(1).mul_(1 - s)
    torch.addcmul(gray, out, s, out=out).clamp_(0, 1)
    _shift_hue_(out, p["hue"], planes)
    _gray_(out, p["gray"], planes)
    _blur_(out, p["blur"], p["sigma"], planes)
    return out


def apply_appearance(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Colour jitter (brightness, contrast, saturation, hue, each clamped to [0, 1]), then grayscale and blur
    where drawn, of a batch x (N, 3, H, W) with the parameters p of :func:`sample_appearance`. A new tensor."""
    _check("apply_appearance", True, x=x)
    return _appearance(x, p, _scratch(x))


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
    """U(|a_i - b_j|) = r^2 log r^2 for points a (..., P, 2) and b (..., Q, 2): (..., P, Q)."""
    dx = a[..., :, None, 0] - b[..., None, :, 0]
    dy = a[..., :, None, 1] - b[..., None, :, 1]
    d2 = dx * dx + dy * dy
    return d2 * torch.log(d2.clamp_min(1e-12))


def _tps_system(dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4x4 control points (16, 2) and the TPS system matrix L (19, 19) through them."""
    ctrl = identity_grid(1, 4, 4, dtype, device).reshape(16, 2)
    P = torch.cat([torch.ones(16, 1, dtype=dtype, device=device), ctrl], -1)
    L = torch.zeros(19, 19, dtype=dtype, device=device)
    L[:16, :16], L[:16, 16:], L[16:, :16] = _tps_kernel(ctrl, ctrl), P, P.T
    return ctrl, L


def tps_points(points: torch.Tensor, jitter: torch.Tensor) -> torch.Tensor:
    """Thin-plate spline through the 4x4 control grid c_k -> c_k + jitter_k, evaluated at points (N, P, 2)."""
    n = jitter.shape[0]
    ctrl, L = _tps_system(points.dtype, points.device)
    rhs = torch.cat([ctrl + jitter.to(points.dtype), torch.zeros(n, 3, 2, dtype=points.dtype, device=points.device)], 1)
    coef = torch.linalg.solve(L, rhs)
    Pp = torch.cat([torch.ones_like(points[..., :1]), points], -1)
    return _tps_kernel(points, ctrl) @ coef[:, :16] + Pp @ coef[:, 16:]


def _lattice_warp(p: dict[str, torch.Tensor], h: int, w: int, dtype) -> torch.Tensor:
    """The drawn warps evaluated on the h x w lattice of align_corners=True positions: (N, h, w, 2).

    Every image shares the control points and the lattice, so the TPS system is solved once for all the
    images' targets, and the spline's basis at the lattice is computed once."""
    n, device = p["kind"].shape[0], p["kind"].device
    pts = identity_grid(1, h, w, dtype, device).reshape(h * w, 2)
    ctrl, L = _tps_system(dtype, device)
    rhs = torch.cat([ctrl.unsqueeze(1) + p["tps"].to(dtype).transpose(0, 1),
                     torch.zeros(3, n, 2, dtype=dtype, device=device)]).view(19, 2 * n)
    coef = torch.linalg.solve_ex(L, rhs)[0]  # L is invertible: no error check, which would synchronise a GPU
    basis = torch.cat([_tps_kernel(pts, ctrl), torch.ones(h * w, 1, dtype=dtype, device=device), pts], 1)
    tps = (basis @ coef).view(h * w, n, 2).transpose(0, 1)
    kind = p["kind"].view(n, 1, 1)
    src = torch.where(kind >= 1, tps, pts)
    A = affine_matrix(p).to(dtype)
    aff = torch.baddbmm(A[:, :, 2].unsqueeze(1), src, A[:, :, :2].transpose(1, 2))
    return torch.where(kind != 1, aff, tps).view(n, h, w, 2)


def _resize_grid(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners=True) of a grid (N, h, w, 2) to (N, *size, 2), one axis at a time: the
    columns on the small grid, channels first (F.interpolate's channels-last kernel is slow for 2 channels);
    then the rows, with each row's (x, y) pairs as one channel, whose width resizes to itself exactly. The
    result is written in the grid layout, with no full-size transpose."""
    n, h, w, _ = grid.shape
    H, W = size
    if (h, w) == (H, W):
        return grid
    cols = F.interpolate(grid.permute(0, 3, 1, 2).contiguous(), size=(h, W), mode="bilinear", align_corners=True)
    cols = cols.permute(0, 2, 3, 1).reshape(n, 1, h, 2 * W)
    return F.interpolate(cols, size=(H, 2 * W), mode="bilinear", align_corners=True).view(n, H, W, 2)


def _lattice_size(h: int, w: int, coarse: int) -> tuple[int, int]:
    return (coarse, coarse) if max(h, w) > coarse else (h, w)


def geometry_grid(p: dict[str, torch.Tensor], h: int, w: int, dtype=torch.float32, coarse: int = 64) -> torch.Tensor:
    """Sampling grids (N, h, w, 2) of the drawn warps: affine, TPS, or the affine warp followed by the TPS
    warp (sampling position = affine(tps(p))). The smooth map is evaluated on a coarse x coarse lattice and
    resized bilinearly (align_corners=True; exact for affine, < 1e-3 off for TPS)."""
    return _resize_grid(_lattice_warp(p, *_lattice_size(h, w, coarse), dtype), (h, w))


def apply_geometry(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def _apply_mirrored(x: torch.Tensor, grid: torch.Tensor, mirror: torch.Tensor) -> torch.Tensor:
    """apply_geometry of the horizontally flipped x where mirror is set: the flipped image read at (x, y) is
    the image at (-x, y), so the grid's x is negated there for the call and restored after (exactly)."""
    sign = torch.where(mirror, -1.0, 1.0).to(grid.dtype).view(-1, 1, 1)
    grid[..., 0].mul_(sign)
    out = apply_geometry(x, grid)
    grid[..., 0].mul_(sign)
    return out


# ---------------------------------------------------------------- entry points
def augment_pair(photo: torch.Tensor, sketch: torch.Tensor, cfg: AugmentConfig = AugmentConfig(), g=None):
    """Stage-2 augmentation of a batch of pairs: pair flip, appearance on both, a random warp of the sketch.

    Returns (photo, sketch, grid): grid (N, H, W, 2) maps the augmented sketch back into the flipped,
    un-warped sketch (identity when ``cfg.geometric`` is False)."""
    _check("augment_pair", cfg.appearance, photo=photo, sketch=sketch)
    n, _, h, w = sketch.shape
    flip = torch.rand(n, generator=g, device=photo.device) < cfg.flip_p
    # the appearance ops commute with a horizontal flip (pointwise, or a symmetric blur with symmetric
    # padding), so the pair is flipped after them: the photo in place, the sketch inside its warp
    if cfg.appearance:
        planes = _scratch(photo)
        photo = _appearance(photo, sample_appearance(n, cfg, g, photo.device), planes)
        sketch = _appearance(sketch, sample_appearance(n, cfg, g, photo.device),
                             planes if sketch.shape == photo.shape else _scratch(sketch))
    else:  # copies that the flip may change in place
        planes = photo.new_empty(0)
        photo = photo.clone(memory_format=torch.contiguous_format)
        sketch = sketch.clone(memory_format=torch.contiguous_format) if not cfg.geometric else sketch
    photo = _flip_(photo, flip, planes)
    if not cfg.geometric:
        return photo, _flip_(sketch, flip, planes), identity_grid(n, h, w, sketch.dtype, sketch.device)
    del planes
    grid = geometry_grid(sample_geometry(n, cfg, g, photo.device), h, w, sketch.dtype)
    return photo, _apply_mirrored(sketch, grid, flip), grid


def augment_images(x: torch.Tensor, cfg: AugmentConfig = AugmentConfig(), g=None) -> torch.Tensor:
    """Stage-1 (MoCo) view of a batch: appearance and a random warp per image."""
    _check("augment_images", cfg.appearance, x=x)
    n, _, h, w = x.shape
    if cfg.appearance:
        x = apply_appearance(x, sample_appearance(n, cfg, g, x.device))
    if cfg.geometric:
        x = apply_geometry(x, geometry_grid(sample_geometry(n, cfg, g, x.device), h, w, x.dtype))
    return x
