"""SFNet's training loss (Lee et al., TPAMI 2020, eq. 4-12): mask consistency, flow consistency, smoothness,
as the authors' release computes them (its model.py, custom_loss.py and the masks of custom_dataset.py).

Flows are absolute grids (N, h, w, 2), (x, y), align_corners=True: ``phi_s`` lives on image s and points into
image t, ``phi_t`` the reverse. The displacement F^i = phi_i - identity is in normalised units (2 = the image
side; the paper does not state its unit). Masks (N, 1, H, W) in [0, 1] are brought to the flow grid as the
release's dataset does: resized with PIL's bilinear filter, foreground where the result exceeds 0.1.

Where the release's code and the paper's equations differ, the code is followed: the flow and smoothness
terms are normalised per image by its foreground cell count plus one and averaged over the batch; the
smoothness term takes central differences (f[j+1] - f[j-1]) / 2 of the zero-padded displacement, and its one
[-1, 0, 1] kernel spans both channels (out_channels 1), so the x and y components' differences are added
before the absolute value.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pscfast import ops
from pscfast.ops._reference import identity_grid

WEIGHTS = {"mask": 3.0, "flow": 16.0, "smooth": 0.5}  # lambda_mask, lambda_flow, lambda_smooth (section 4.1.1)
MASK_THRESHOLD = 0.1  # the release binarises its resized masks at this value


def to_grid(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 1, H, W) mask -> (N, 1, *size) binary mask on the flow grid: bilinear with antialiasing (PIL's
    bilinear resize, which the release's dataset applies), foreground above MASK_THRESHOLD."""
    if tuple(mask.shape[-2:]) != tuple(size):
        mask = F.interpolate(mask, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return (mask > MASK_THRESHOLD).to(mask.dtype)


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
    """(N, 1, 1, 1): each image's foreground cell count plus one (the release's eps = 1)."""
    return mask.sum(dim=(2, 3), keepdim=True) + 1


def flow_loss(phi_s: torch.Tensor, phi_t: torch.Tensor, m_s: torch.Tensor, m_t: torch.Tensor) -> torch.Tensor:
    """Eq. 10-11: sum over i of ||(F^i + W(F^j; F^i)) M^i||^2 / (|foreground of M^i| + 1) per image, averaged
    over the batch (zero when phi_t inverts phi_s on the foreground)."""
    m_s, m_t = to_grid(m_s, phi_s.shape[1:3]), to_grid(m_t, phi_t.shape[1:3])
    f_s, f_t = displacement(phi_s), displacement(phi_t)
    cyc_s = f_s + ops.warp(f_t, phi_s)
    cyc_t = f_t + ops.warp(f_s, phi_t)
    per_image = ((cyc_s * m_s) ** 2 / _fg(m_s)).sum() + ((cyc_t * m_t) ** 2 / _fg(m_t)).sum()
    return per_image / phi_s.shape[0]


def _tv(f: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The release's get_flow_smoothness: (|dF/dx| + |dF/dy|) M per cell, (N, 1, h, w), with dF the central
    difference (F[j+1] - F[j-1]) / 2 of the zero-padded displacement summed over its x and y components."""
    p = F.pad(f.sum(1, keepdim=True), (1, 1, 1, 1))
    dx = (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]).abs() / 2
    dy = (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]).abs() / 2
    return (dx + dy) * m


def smoothness_loss(phi_s: torch.Tensor, phi_t: torch.Tensor, m_s: torch.Tensor, m_t: torch.Tensor) -> torch.Tensor:
    """Eq. 12: sum over i of ||grad F^i M^i||_1 / (|foreground of M^i| + 1) per image, averaged over the
    batch, with the release's gradient (_tv)."""
    m_s, m_t = to_grid(m_s, phi_s.shape[1:3]), to_grid(m_t, phi_t.shape[1:3])
    per_image = (_tv(displacement(phi_s), m_s) / _fg(m_s)).sum() + (_tv(displacement(phi_t), m_t) / _fg(m_t)).sum()
    return per_image / phi_s.shape[0]


def sfnet_loss(phi_s: torch.Tensor, phi_t: torch.Tensor, m_s: torch.Tensor, m_t: torch.Tensor,
               weights: dict[str, float] = WEIGHTS) -> dict[str, torch.Tensor]:
    """Eq. 4: {"loss": weighted sum, "mask", "flow", "smooth": the unweighted terms}, each a mean over the
    batch as the release's loss (its terms divided by the batch size)."""
    m_s, m_t = to_grid(m_s, phi_s.shape[1:3]), to_grid(m_t, phi_t.shape[1:3])  # once: the terms keep them as they are
    terms = {"mask": mask_loss(phi_s, phi_t, m_s, m_t), "flow": flow_loss(phi_s, phi_t, m_s, m_t),
             "smooth": smoothness_loss(phi_s, phi_t, m_s, m_t)}
    return {"loss": sum(weights[k] * v for k, v in terms.items()), **terms}
