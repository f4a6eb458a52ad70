"""PyTorch's grid_sample tests (test/test_nn.py: test_grid_sample, test_grid_sample_large,
test_grid_sample_nearest_neighbor_rounding_mode_consistency), ported to warp: the cases that apply to its
modes (bilinear, nearest), paddings (zeros, border) and 2-D inputs, with their values and tolerances.

warp with out_size=None is grid_sample on 2-D inputs; PyTorch's cases that do not apply: bicubic, reflection,
3-D inputs, non-finite grids (warp refuses them with a ValueError) and empty grids (warp refuses an empty
spatial size; an empty batch and empty channels are kept).
"""
import itertools
import random

import pytest
import torch
import torch.nn.functional as F

from pscfast.ops import warp
from tests.utils import BACKENDS, require

MODES = [(m, p, a) for m in ("bilinear", "nearest") for p in ("zeros", "border") for a in (True, False)]
IDS = [f"{m}-{p}-{'align' if a else 'noalign'}" for m, p, a in MODES]

# test_grid_sample's known input: arange(1, 11) as (1, 1, 2, 5), sampled at these points
KNOWN_GRID = [[[-0.9, -4.1], [0, 0.2000], [1, -1], [-0.333, 1e-6], [0.5, 1.0]],
              [[-1.0, -0.5], [0, 0.3333], [1, -1], [-0.200, 1e-6], [1.5, 0.5]]]
GROUND_TRUTH = {
    ("bilinear", "zeros", True): [[0.0000, 6.0000000000, 5.0000, 4.8340, 9.0000],
                                  [2.2500, 6.3332500450, 5.0000, 5.1000, 0.0000]],
    ("bilinear", "zeros", False): [[0.0000, 6.5000000000, 1.2500, 4.6675000191, 4.6250],
                                   [0.5000, 7.1665000916, 1.2500, 5.0000000000, 0.0000]],
    ("bilinear", "border", True): [[1.2000, 6.0000000000, 5.0000, 4.8340, 9.0000],
                                   [2.2500, 6.3332500450, 5.0000, 5.1000, 8.7500]],
    ("bilinear", "border", False): [[1.0000, 6.5000000000, 5.0000, 4.6675000191, 9.2500],
                                    [1.0000, 7.1665000916, 5.0000, 5.0000000000, 10.0000]],
    ("nearest", "zeros", True): [[0., 8., 5., 7., 9.], [1., 8., 5., 8., 0.]],
    ("nearest", "zeros", False): [[0., 8., 5., 7., 0.], [1., 8., 5., 8., 0.]],
    ("nearest", "border", True): [[1., 8., 5., 7., 9.], [1., 8., 5., 8., 10.]],
    ("nearest", "border", False): [[1., 8., 5., 7., 9.], [1., 8., 5., 8., 10.]],
}

# test_grid_sample's gradient edge cases: d(sum)/d(grid) on arange(0, 5) expanded to (1, 1, 5, 5) (zero
# strides) at points on and near the border
EDGE_GRID = [[[1.0, 1.0], [1.0, -1.0], [0.8, 0.8], [0.8, -0.8]],
             [[-1.0, -1.0], [-1.0, 1.0], [-0.8, -0.8], [-0.8, 0.8]]]
_ZERO = [[[-0., -0.], [-0., 0.], [-0., -0.], [-0., 0.]], [[0., 0.], [0., 0.], [0., 0.], [0., 0.]]]
EDGE_GRADIENT = {
    ("bilinear", "zeros", True): [[[-8., -8.], [-8., 0.], [2., 0.], [2., 0.]],
                                  [[2., 0.], [2., 0.], [2., 0.], [2., 0.]]],
    ("bilinear", "zeros", False): [[[-5., -5.], [-5., 5.], [-10., -10.], [-10., 10.]],
                                   [[0., 0.], [0., 0.], [0., 0.], [0., 0.]]],
    ("bilinear", "border", True): [[[-0., -0.], [-0., 0.], [2., 0.], [2., 0.]],
                                   [[0., 0.], [0., 0.], [2., 0.], [2., 0.]]],
    ("bilinear", "border", False): _ZERO,
    **{("nearest", p, a): _ZERO for p in ("zeros", "border") for a in (True, False)},
}


@pytest.mark.parametrize("mode, padding, align", MODES, ids=IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_known_values(device, backend, mode, padding, align):
    require("warp", backend, device, torch.float32)
    x = torch.arange(1., 11, device=device).view(1, 1, 2, 5)
    grid = torch.tensor(KNOWN_GRID, device=device).view(1, 2, 5, 2)
    out = warp(x, grid, None, mode, padding, align, backend=backend)
    expected = torch.tensor(GROUND_TRUTH[mode, padding, align], device=device).view(1, 1, 2, 5)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode, padding, align", MODES, ids=IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_edge_cases(device, backend, mode, padding, align):
    require("warp", backend, device, torch.float32)
    expected = torch.tensor(EDGE_GRADIENT[mode, padding, align], device=device).view(1, 2, 4, 2)
    for input_requires_grad in (False, True):
        x = torch.arange(0., 5, device=device).expand((1, 1, 5, 5)).requires_grad_(input_requires_grad)
        grid = torch.tensor(EDGE_GRID, device=device).view(1, 2, 4, 2).requires_grad_()
        warp(x, grid, None, mode, padding, align, backend=backend).sum().backward()
        torch.testing.assert_close(grid.grad, expected, atol=1e-5, rtol=0,
                                   msg=lambda m: f"input_requires_grad={input_requires_grad}: {m}")


@pytest.mark.parametrize("mode, padding, align", MODES, ids=IDS)
@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_gradcheck(backend, mode, padding, align):
    """test_grid_sample's gradcheck: float64, a randn grid (mostly outside [-1, 1] at these sizes), with and
    without the image gradient."""
    require("warp", backend, "cpu", torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, generator=gen)
    grid = torch.randn(2, 3, 4, 2, dtype=torch.float64, generator=gen).requires_grad_()
    for input_requires_grad in (False, True):
        x.requires_grad_(input_requires_grad)
        fn = lambda inp, grd: warp(inp, grd, None, mode, padding, align, backend=backend)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, grid))


# test_grid_sample's test_shape: the grid made contiguous in each of these dimension orders, the image
# transposed in (N, C); same-size, larger, smaller and 1x1 inputs, an empty batch and empty channels
GRID_ORDERS = [(0, 1, 2, 3), (0, 3, 1, 2), (3, 0, 1, 2), (0, 2, 1, 3)]


def _grid_in_order(shape, order, gen, dtype):
    """A (N, H, W, 2) grid whose permute(order) is contiguous."""
    data = torch.randn([shape[d] for d in order], dtype=dtype, generator=gen)
    grid = data.permute([order.index(d) for d in range(4)])
    assert grid.permute(order).is_contiguous()
    return grid


def _shapes(seed):
    """(N, C, IH, IW, H, W) as test_shape draws them (its random ranges, seeded)."""
    rng = random.Random(seed)
    r = rng.randint
    n, c, ih, iw = r(2, 8), r(2, 8), r(2, 8), r(2, 8)
    return [(n, c, ih, iw, ih, iw),
            (r(2, 8), r(2, 8), ih, iw, r(ih + 1, 12), r(iw + 1, 12)),
            (r(2, 8), r(2, 8), ih, iw, r(2, ih), r(2, iw)),
            (r(2, 8), r(2, 8), 1, 1, r(2, 5), r(2, 5)),
            (r(2, 8), 0, ih, iw, r(3, ih + 2), r(3, iw + 2)),
            (0, r(2, 8), ih, iw, r(3, ih + 2), r(3, iw + 2))]


def _compare(backend, mode, padding, align, x, grid, gen, input_requires_grad):
    x = x.detach().requires_grad_(input_requires_grad)
    grid = grid.detach().requires_grad_()
    out = warp(x, grid, None, mode, padding, align, backend=backend)
    xr, gr = x.detach().requires_grad_(input_requires_grad), grid.detach().requires_grad_()
    expected = F.grid_sample(xr, gr, mode=mode, padding_mode=padding, align_corners=align)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected)
    gout = torch.randn(out.shape, dtype=out.dtype, generator=gen)
    out.backward(gout)
    expected.backward(gout)
    if input_requires_grad:
        torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(grid.grad, gr.grad, atol=5e-5, rtol=0)  # test_shape's grid tolerance


@pytest.mark.parametrize("mode, padding, align", MODES, ids=IDS)
@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_shapes_and_memory_orders(device, backend, mode, padding, align):
    """Forward and both gradients against grid_sample in float64 (its default dtype in test_grid_sample), for
    every grid memory order, a (C, N)-transposed image, and a zero-stride image (expanded from one row)."""
    require("warp", backend, device, torch.float64)
    gen = torch.Generator().manual_seed(len(IDS) * BACKENDS.index(backend) + MODES.index((mode, padding, align)))
    shapes = _shapes(seed=MODES.index((mode, padding, align)))
    if backend == "triton" and device == "cpu":
        shapes, orders = shapes[:1] + shapes[-1:], GRID_ORDERS[1:2]  # the interpreter is slow: a few cases
    else:
        orders = GRID_ORDERS
    for (n, c, ih, iw, h, w), order in itertools.product(shapes, orders):
        grid = _grid_in_order((n, h, w, 2), order, gen, torch.float64).to(device)
        x = torch.randn(c, n, ih, iw, dtype=torch.float64, generator=gen).transpose(0, 1).to(device)
        expanded = torch.randn(n, c, 1, iw, dtype=torch.float64, generator=gen).to(device).expand(n, c, ih, iw)
        for image, input_requires_grad in itertools.product((x, expanded), (False, True)):
            _compare(backend, mode, padding, align, image, grid, gen, input_requires_grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_image(device, backend):
    require("warp", backend, device, torch.float32)
    x = torch.randn(2, 5, 6, 7, device=device).contiguous(memory_format=torch.channels_last)
    grid = torch.rand(2, 4, 3, 2, device=device) * 2.4 - 1.2
    torch.testing.assert_close(warp(x, grid, backend=backend), F.grid_sample(x, grid, align_corners=True))


def test_empty_grid_is_refused():
    """test_shape's empty grid (H = 0): grid_sample returns an empty output; warp refuses an empty spatial size
    with a clear error instead."""
    with pytest.raises(ValueError, match="grid has an empty spatial size"):
        warp(torch.randn(2, 3, 4, 4), torch.randn(2, 0, 5, 2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_coordinates(device, backend):
    """test_grid_sample_large: coordinates of 6.8e7 on a 480 x 640 image (gh-35202; 48 x 64 in the Triton
    interpreter) and an affine grid of scale -1e20 (gh-24823) sample zeros, and their backward runs (zero
    gradient to the image)."""
    require("warp", backend, device, torch.float32)
    size = (48, 64) if backend == "triton" and device == "cpu" else (480, 640)  # the interpreter is slow
    x = torch.rand(1, 1, *size, device=device, requires_grad=True)
    coords = torch.tensor([[-10059144, 67680944], [67680944, 67680944]], dtype=torch.float, device=device)
    out = warp(x, coords.view(1, 1, 2, 2), None, "bilinear", "zeros", False, backend=backend)
    torch.testing.assert_close(out, torch.zeros(1, 1, 1, 2, device=device))
    out.backward(torch.ones_like(out))
    assert not x.grad.any()

    theta = torch.tensor([[[-1.0e+20, 0.0, 0.0], [0.0, -1.0e+20, 0.0]]], device=device)
    img = torch.zeros((1, 1, 4, 4), device=device, requires_grad=True)
    grid = F.affine_grid(theta, img.size(), align_corners=False)
    out = warp(img, grid, None, "bilinear", "zeros", False, backend=backend)
    torch.testing.assert_close(out, torch.zeros(1, 1, 4, 4, device=device))
    out.backward(torch.ones_like(out))
    assert not img.grad.any()


@pytest.mark.parametrize("padding, align", list(itertools.product(("zeros", "border"), (True, False))))
@pytest.mark.parametrize("backend", BACKENDS)
def test_nearest_rounding_is_the_same_along_x_and_y(device, backend, padding, align):
    """test_grid_sample_nearest_neighbor_rounding_mode_consistency (its 2-D part): queries at x.0 and x.5
    pixel positions (up to the float error of their normalisation) along x and, transposed, along y give
    bitwise the same values, and those of grid_sample."""
    require("warp", backend, device, torch.float32)
    size, other, step = 10, 9, 0.1
    pixels = torch.arange(0, size - 1 + step, step, dtype=torch.float32, device=device)
    queries = 2 * pixels / (size - 1) - 1 if align else (pixels * 2 + 1) / size - 1
    fixed = torch.full_like(queries, 0.5)
    data = torch.rand(size, device=device)
    x_image = data.reshape(1, size).repeat(1, 1, other, 1)  # (1, 1, other, size)
    grid_x = torch.stack((queries, fixed), dim=1).view(1, 1, -1, 2)
    along_x = warp(x_image, grid_x, None, "nearest", padding, align, backend=backend)
    along_y = warp(x_image.transpose(3, 2), grid_x.flip(-1), None, "nearest", padding, align, backend=backend)
    torch.testing.assert_close(along_x, along_y, atol=0, rtol=0)
    expected = F.grid_sample(x_image, grid_x, mode="nearest", padding_mode=padding, align_corners=align)
    torch.testing.assert_close(along_x, expected, atol=0, rtol=0)
