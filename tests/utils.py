"""Helpers shared by the tests: tolerances by dtype, backend lists, input makers."""
from __future__ import annotations

import pytest
import torch

import pscfast.ops  # noqa: F401
from pscfast.ops._dispatch import OPS

# dtype -> (rtol, atol); an op overrides this only with a comment that says why.
TOL = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (8e-3, 8e-3),
}


def assert_close(actual, expected, dtype=None, scale=1.0, msg=""):
    """Compare with the dtype's tolerance, atol scaled by `scale` (e.g. the magnitude of a summed gradient)."""
    rtol, atol = TOL[dtype or expected.dtype]
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=rtol, atol=atol * scale, msg=msg or None)


BACKENDS = ("torch", "cpp", "triton")


def require(op: str, backend: str, device: str, dtype: torch.dtype) -> None:
    """Skip (with the dispatcher's reason) when `backend` cannot run `op` here. A missing compiled kernel
    is caught separately: tests/test_build.py fails when the extension lacks its CPU kernels."""
    why = OPS[op].reason(backend, torch.device(device), dtype)
    if why:
        pytest.skip(f"{backend}: {why}")


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values with transposed strides in the last two dimensions."""
    out = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not out.is_contiguous() or t.shape[-1] == 1 or t.shape[-2] == 1
    return out


def identity_grid(n: int, h: int, w: int, align_corners: bool = True, dtype=torch.float32, device="cpu"):
    """The grid that samples every pixel of an h x w image at its own centre (grid_sample's convention)."""
    if align_corners:
        ys = torch.linspace(-1, 1, h, dtype=dtype, device=device)
        xs = torch.linspace(-1, 1, w, dtype=dtype, device=device)
    else:
        ys = (2 * torch.arange(h, dtype=dtype, device=device) + 1) / h - 1
        xs = (2 * torch.arange(w, dtype=dtype, device=device) + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1).expand(n, h, w, 2).contiguous()
