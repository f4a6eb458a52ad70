"""The local cost volume of PWC-Net (Sun et al., CVPR 2018), GLU-Net's local levels (Truong et al., CVPR 2020)
and FlowNetC (Dosovitskiy et al., ICCV 2015): every position of `a` against a window of displacements of
`b`, averaged over channels, as their correlation layers compute it.

Three ways to get it: shift and multiply (the plain-PyTorch port: one product and channel mean per
displacement), spatial-correlation-sampler (the compiled package FlowNetC's PyTorch port calls, then divides
by the channel count) and pscfast (`local_correlation` or its sampler-compatible entry, divided the same way).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pscfast import ops


def shift_and_multiply(a: torch.Tensor, b: torch.Tensor, radius: int, step: int = 1) -> torch.Tensor:
    """(N, (2 radius + 1)^2, H, W): channel k = (dy, dx) row-major, displacements -radius * step .. radius * step
    in steps of `step`; mean over channels of a * (b shifted), b read as 0 outside."""
    _, _, h, w = a.shape
    reach = radius * step
    b = F.pad(b, (reach,) * 4)
    offsets = range(0, 2 * reach + 1, step)
    return torch.cat([(a * b[:, :, dy:dy + h, dx:dx + w]).mean(1, keepdim=True) for dy in offsets for dx in offsets],
                     dim=1)


def pscfast_local(a: torch.Tensor, b: torch.Tensor, radius: int, step: int = 1) -> torch.Tensor:
    """shift_and_multiply through pscfast.ops.local_correlation (which sums over channels)."""
    return ops.local_correlation(a, b, max_displacement=radius, dilation_patch=step) / a.shape[1]


# the dtypes spatial-correlation-sampler 0.5.0 dispatches; any other aborts the process inside the extension
SAMPLER_DTYPES = {"cpu": (torch.float32, torch.float64), "cuda": (torch.float16, torch.float32, torch.float64)}


def sampler_missing(dtype: torch.dtype, device: str) -> str | None:
    """Why spatial-correlation-sampler cannot be timed here on (dtype, device), or None."""
    try:
        import spatial_correlation_sampler  # noqa: F401
    except ImportError as exc:
        return f"spatial-correlation-sampler is not installed ({exc}); bash bench/install_peers.sh installs it"
    if dtype not in SAMPLER_DTYPES.get(device, ()):
        return f"spatial-correlation-sampler has no {device} kernel for {str(dtype).replace('torch.', '')}"
    return None


def _sampler_call(sample, a, b, radius, step):
    # the sampler's positional order: kernel_size, patch_size, stride, padding, dilation, dilation_patch
    n, c, h, w = a.shape
    return sample(a, b, 1, 2 * radius + 1, 1, 0, 1, step).view(n, -1, h, w) / c


def sampler_local(a: torch.Tensor, b: torch.Tensor, radius: int, step: int = 1) -> torch.Tensor:
    """shift_and_multiply through spatial_correlation_sampler, as FlowNetC's PyTorch port calls it."""
    from spatial_correlation_sampler import spatial_correlation_sample

    return _sampler_call(spatial_correlation_sample, a, b, radius, step)


def pscfast_sampler_local(a: torch.Tensor, b: torch.Tensor, radius: int, step: int = 1) -> torch.Tensor:
    """The same call on pscfast's sampler-compatible entry: what a port changes is the import."""
    return _sampler_call(ops.spatial_correlation_sample, a, b, radius, step)
