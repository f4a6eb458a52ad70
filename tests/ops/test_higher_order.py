"""Second derivatives: every backend's backward is itself differentiable (create_graph=True), with the
plain PyTorch reference's values; a gradient penalty never sees a silent zero."""
import pytest
import torch
import torch.nn.functional as F

from pscfast.ops import (compose, compose_displacement, consistency_loss, local_correlation, truncated_flow_loss,
                         warp)

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


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def _grid(device, *shape):
    return torch.rand(*shape, 2, dtype=torch.float64, device=device) * 1.8 - 0.9


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("args", [dict(max_displacement=1), dict(kernel_size=(2, 1), patch_size=(2, 3), stride=(2, 1),
                                                                   padding=(1, 0), dilation_patch=(1, 2))],
                         ids=["pwc", "rectangular-even"])
def test_local_correlation_gradgradcheck(device, backend, args):
    require("local_correlation", backend, device, torch.float64)
    a, b = _leaves(*torch.randn(2, 1, 2, 4, 3, dtype=torch.float64, device=device))
    fn = lambda a, b: local_correlation(a, b, **args, backend=backend)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (a, b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compose_gradgradcheck(device, backend):
    require("compose", backend, device, torch.float64)
    f_ab, f_bc = _leaves(_grid(device, 1, 3, 4), _grid(device, 1, 2, 3))
    assert torch.autograd.gradgradcheck(lambda f, g: compose(f, g, backend=backend), (f_ab, f_bc))
    nearest = lambda f: compose(f, f_bc.detach(), "nearest", backend=backend)  # noqa: E731
    assert torch.autograd.gradgradcheck(nearest, (f_ab,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_consistency_loss_gradgradcheck(device, backend):
    require("consistency_loss", backend, device, torch.float64)
    fwd, bwd = _leaves(_grid(device, 1, 3, 4), _grid(device, 1, 3, 4))
    assert torch.autograd.gradgradcheck(lambda f, b: consistency_loss(f, b, "bilinear", backend=backend),
                                        (fwd, bwd))
    nearest = lambda f: consistency_loss(f, bwd.detach(), "nearest", backend=backend)  # noqa: E731
    assert torch.autograd.gradgradcheck(nearest, (fwd,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compose_displacement_gradgradcheck(device, backend):
    require("compose_displacement", backend, device, torch.float64)
    f_ab = 1.5 * torch.randn(1, 2, 3, 4, dtype=torch.float64, device=device)
    f_bc = 1.5 * torch.randn(1, 2, 4, 3, dtype=torch.float64, device=device)
    m_ab = torch.rand(1, 1, 3, 4, dtype=torch.float64, device=device)
    m_bc = torch.rand(1, 1, 4, 3, dtype=torch.float64, device=device)
    fn = lambda *t: compose_displacement(*t, backend=backend)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, _leaves(f_ab, f_bc, m_ab, m_bc))


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_flow_loss_gradgradcheck(device, backend):
    """pred at distances 0..6 from target, T = 3: both sides of the truncation."""
    require("truncated_flow_loss", backend, device, torch.float64)
    pred, target = (2 * torch.randn(1, 2, 3, 4, dtype=torch.float64, device=device) for _ in range(2))
    mask = torch.rand(1, 1, 3, 4, dtype=torch.float64, device=device)
    fn = lambda p, t, m: truncated_flow_loss(p, t, m, T=3.0, backend=backend)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, _leaves(pred, target, mask))


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_flow_loss_hessian_vector_product(device, backend):
    """d2/dpred2 of sum m ||p - t||^2 is 2 m inside the truncation and 0 where the error is truncated: the
    Hessian-vector product with a vector of ones is 2 m (1 inside, 0 outside) per coordinate."""
    require("truncated_flow_loss", backend, device, torch.float64)
    target = torch.zeros(2, 2, 3, 5, dtype=torch.float64, device=device)
    pred = torch.randn(2, 2, 3, 5, dtype=torch.float64, device=device)
    pred[:, :, 1] += 10  # row 1: |p - t| > T = 5, truncated
    mask = torch.rand(2, 1, 3, 5, dtype=torch.float64, device=device)
    pred.requires_grad_()
    gp, = torch.autograd.grad(truncated_flow_loss(pred, target, mask, T=5.0, backend=backend), pred,
                              create_graph=True)
    hv, = torch.autograd.grad(gp.sum(), pred)
    inside = (pred.detach().pow(2).sum(1, keepdim=True) <= 25).to(pred.dtype)
    assert inside[:, :, 1].sum() == 0 and inside[:, :, [0, 2]].all()
    torch.testing.assert_close(hv, (2 * mask * inside).expand_as(pred), rtol=0, atol=1e-12)
