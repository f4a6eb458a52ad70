"""Second derivatives: every backend's backward is itself differentiable (create_graph=True), with the
plain PyTorch reference's values; a gradient penalty never sees a silent zero."""
import pytest
import torch
import torch.nn.functional as F

from pscfast.ops import warp

from ..utils import BACKENDS, require


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pad", ["zeros", "border"])
def test_warp_gradgradcheck(device, backend, pad):
    require("warp", backend, device, torch.float64)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    grid = (torch.rand(1, 3, 3, 2, dtype=torch.float64, device=device) * 1.8 - 0.9).requires_grad_()
    fn = lambda x, g: warp(x, g, (4, 3), padding_mode=pad, backend=backend)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x, grid))


@pytest.mark.parametrize("backend", BACKENDS)
def test_warp_gradient_penalty_matches_grid_sample(device, backend):
    """The penalty d/dgrid |d out/dx|^2 of grid_sample users: the same value through warp."""
    require("warp", backend, device, torch.float64)
    x0 = torch.randn(2, 3, 6, 7, dtype=torch.float64, device=device)
    g0 = torch.rand(2, 5, 4, 2, dtype=torch.float64, device=device) * 1.8 - 0.9

    def penalty_grad(sample):
        x, g = x0.clone().requires_grad_(), g0.clone().requires_grad_()
        out = sample(x, g)
        gx, = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        gx.pow(2).sum().backward()
        return g.grad

    got = penalty_grad(lambda x, g: warp(x, g, backend=backend))
    expected = penalty_grad(lambda x, g: F.grid_sample(x, g, align_corners=True))
    assert expected.abs().sum() > 0
    torch.testing.assert_close(got, expected)
