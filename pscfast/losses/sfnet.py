"""SFNet's training loss (Lee et al., TPAMI 2020, eq. 4-12): mask consistency, flow consistency, smoothness.

Flows are absolute grids (N, h, w, 2), (x, y), align_corners=True: ``phi_s`` lives on image s and points into
image t, ``phi_t`` the reverse. The displacement F^i = phi_i - identity is in normalised units (2 = the image
side; the paper does not state its unit). Masks (N, 1, H, W) in [0, 1] are
area-averaged to the flow grid, so boundary cells carry their foreground fraction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pscfast import ops
from pscfast.ops._reference import identity_grid

WEIGHTS = {"mask": 3.0, "flow": 16.0, "smooth": 0.5}  # lambda_mask, lambda_flow, lambda_smooth (section 4.1.1)


def to_grid(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 1, H, W) mask -> (N, 1, *size) foreground fraction per flow cell (area average)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.adaptive_avg_pool2d(mask, size)


def displacement(phi: torch.Tensor) -> torch.Tensor:
    """Absolute grid (N, h, w, 2) -> displacement F = phi - p as (N, 2, h, w), normalised units."""
    ident = identity_grid(*phi.shape[:3], dtype=phi.dtype, device=phi.device)
    return (phi - ident).permute(0, 3, 1, 2)


def mask_loss(phi_s: torch.Tensor, phi_t: torch.Tensor, m_s: torch.Tensor, m_t: torch.Tensor) -> torch.Tensor:
    """Eq. 9: sum over i of mean_p (M^i - W(M^j; F^i))^2, the other image's mask warped by the flow (bilinear,
    zero outside)."""
    m_s, m_t = to_grid(m_s, phi_s.shape[1:3]), to_grid(m_t, phi_t.shape[1:3])
    est_s = ops.warp(m_t, phi_s)
    est_t = ops.warp(m_s, phi_t)
    return ((m_s - est_s) ** 2).mean() + ((m_t - est_t) ** 2).mean()


def _fg(mask: torch.Tensor) -> torch.Tensor:
    return mask.sum().clamp_min(1.0)


def flow_loss(phi_s: torch.Tensor, phi_t: torch.Tensor, m_s: torch.Tensor, m_t: torch.Tensor) -> torch.Tensor:
    """Eq. 10-11: sum over i of ||(F^i + W(F^j; F^i)) M^i||^2 / |foreground of M^i| (zero when phi_t inverts
    phi_s on the foreground)."""
    m_s, m_t = to_grid(m_s, phi_s.shape[1:3]), to_grid(m_t, phi_t.shape[1:3])
    f_s, f_t = displacement(phi_s), displacement(phi_t)
    cyc_s = f_s + ops.warp(f_t, phi_s)
    cyc_t = f_t + ops.warp(f_s, phi_t)
    return ((cyc_s * m_s) ** 2).sum() / _fg(m_s) + ((cyc_t * m_t) ** 2).sum() / _fg(m_t)


def _tv(f: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """sum_p ||grad F(p) M(p)||_1 with forward differences (the mask taken at the difference's first cell)."""
    dx = (f[..., :, 1:] - f[..., :, :-1]).abs() * m[..., :, :-1]
    dy = (f[..., 1:, :] - f[..., :-1, :]).abs() * m[..., :-1, :]
    return dx.sum() + dy.sum()


def smoothness_loss(phi_s: torch.Tensor, phi_t: torch.Tensor, m_s: torch.Tensor, m_t: torch.Tensor) -> torch.Tensor:
    """Eq. 12: sum over i of ||grad F^i M^i||_1 / |foreground of M^i|."""
    m_s, m_t = to_grid(m_s, phi_s.shape[1:3]), to_grid(m_t, phi_t.shape[1:3])
    return _tv(displacement(phi_s), m_s) / _fg(m_s) + _tv(displacement(phi_t), m_t) / _fg(m_t)


def sfnet_loss(phi_s: torch.Tensor, phi_t: torch.Tensor, m_s: torch.Tensor, m_t: torch.Tensor,
               weights: dict[str, float] = WEIGHTS) -> dict[str, torch.Tensor]:
    """Eq. 4: {"loss": weighted sum, "mask", "flow", "smooth": the unweighted terms}."""
    terms = {"mask": mask_loss(phi_s, phi_t, m_s, m_t), "flow": flow_loss(phi_s, phi_t, m_s, m_t),
             "smooth": smoothness_loss(phi_s, phi_t, m_s, m_t)}
    return {"loss": sum(weights[k] * v for k, v in terms.items()), **terms}
