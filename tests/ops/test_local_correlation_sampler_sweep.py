"""spatial_correlation_sampler's parameter sweep, ported (C. Pinard's Pytorch-Correlation-extension: check.py and
grad_check.py run its SpatialCorrelationSampler over kernel_size, patch_size, stride, padding, dilation and
dilation_patch and compare the forward and both gradients at numpy's assert_allclose tolerance, rtol 1e-7 in
float64, and gradcheck the op).

The oracle is written here from the package's documented semantics, not from pscfast's reference: for each
patch offset the second map is shifted by (py - (PH - 1) // 2, px - (PW - 1) // 2) * dilation_patch (zeros where
it leaves the map), multiplied by the first map and summed over channels, then the zero-padded product map is
summed over the dilated kernel window at each strided output position. Cases: the sweep's odd and even
patches on square arguments, (h, w) pairs drawn from the same values, cpp and torch backends, Triton (in the
interpreter on CPU) on a few tiny cases.
"""
import itertools
import random

import pytest
import torch
import torch.nn.functional as F

from pscfast.ops import SpatialCorrelationSampler, spatial_correlation_sample
from tests.utils import require

# check.py's and grad_check.py's argument values, each swept: (kernel_size, patch_size, stride, padding,
# dilation, dilation_patch); check.py's default input is (1, 10, 10, 10), grad_check.py's (2, 2, 10, 10)
KERNEL, PATCH, STRIDE, PADDING, DILATION, DILATION_PATCH = (1, 2, 3), (1, 2, 3, 4, 5), (1, 2), (0, 1, 5), (1, 2), (1, 2)
SQUARE = list(itertools.product(KERNEL, PATCH, STRIDE, PADDING, DILATION, DILATION_PATCH))


def _rectangular(count: int, seed: int = 0) -> list[tuple]:
    """(h, w) pairs of the sweep's values, each argument drawn independently for h and w."""
    rng = random.Random(seed)
    axes = (KERNEL, PATCH, STRIDE, PADDING, DILATION, DILATION_PATCH)
    return [tuple((rng.choice(axis), rng.choice(axis)) for axis in axes) for _ in range(count)]


RECTANGULAR = _rectangular(40)
SHAPE = (1, 10, 10, 10)  # check.py
RTOL = 1e-7  # numpy.testing.assert_allclose's default, check.py's comparison


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _shift(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[..., y, x] = t[..., y + dy, x + dx], 0 where that leaves t."""
    H, W = t.shape[-2:]
    out = torch.zeros_like(t)
    if abs(dy) >= H or abs(dx) >= W:
        return out
    out[..., max(0, -dy):H - max(0, dy), max(0, -dx):W - max(0, dx)] = \
        t[..., max(0, dy):H - max(0, -dy), max(0, dx):W - max(0, -dx)]
    return out


def sampler_oracle(input1, input2, kernel_size=1, patch_size=1, stride=1, padding=0, dilation=1, dilation_patch=1):
    """spatial_correlation_sample's documented result (N, PH, PW, H', W'), in plain PyTorch."""
    (kh, kw), (ph, pw), (sh, sw), (padh, padw), (dh, dw), (dph, dpw) = map(
        _pair, (kernel_size, patch_size, stride, padding, dilation, dilation_patch))
    _, _, H, W = input1.shape
    oh = (H + 2 * padh - ((kh - 1) * dh + 1)) // sh + 1
    ow = (W + 2 * padw - ((kw - 1) * dw + 1)) // sw + 1
    rows = []
    for i in range(ph):
        row = []
        for j in range(pw):
            u, v = (i - (ph - 1) // 2) * dph, (j - (pw - 1) // 2) * dpw
            product = F.pad((input1 * _shift(input2, u, v)).sum(1), (padw, padw, padh, padh))
            total = 0
            for ki in range(kh):
                for kj in range(kw):
                    y, x = ki * dh, kj * dw
                    total = total + product[:, y:y + (oh - 1) * sh + 1:sh, x:x + (ow - 1) * sw + 1:sw]
            row.append(total)
        rows.append(torch.stack(row, 1))
    return torch.stack(rows, 1)


def _fits(args, shape) -> bool:
    """The dilated kernel fits the padded input (the sampler's output size is positive)."""
    k, _, _, pad, dil, _ = map(_pair, args)
    return all(dil[d] * (k[d] - 1) + 1 <= shape[2 + d] + 2 * pad[d] for d in range(2))


def _check(backend, args, shape, seed, gradients=True):
    gen = torch.Generator().manual_seed(seed)
    a, b = (torch.randn(shape, dtype=torch.float64, generator=gen).requires_grad_() for _ in range(2))
    ours = SpatialCorrelationSampler(*args, backend=backend)(a, b)
    expected = sampler_oracle(a, b, *args)
    assert ours.shape == expected.shape, args
    torch.testing.assert_close(ours, expected, rtol=RTOL, atol=0, msg=lambda m: f"forward {args}: {m}")
    if gradients:
        gout = torch.randn(expected.shape, dtype=torch.float64, generator=gen)
        got = torch.autograd.grad(ours, (a, b), gout)
        exp = torch.autograd.grad(expected, (a, b), gout)
        for name, g, e in zip(("input1", "input2"), got, exp):
            torch.testing.assert_close(g, e, rtol=RTOL, atol=0, msg=lambda m: f"gradient of {name} {args}: {m}")


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("kernel_size", KERNEL)
def test_square_sweep(backend, kernel_size):
    require("local_correlation", backend, "cpu", torch.float64)
    for i, args in enumerate(a for a in SQUARE if a[0] == kernel_size):
        if _fits(args, SHAPE):
            _check(backend, args, SHAPE, seed=i)


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_rectangular_sweep(backend):
    """(h, w) pairs on a 9 x 11 input (odd, non-square: an h/w mix-up cannot pass)."""
    require("local_correlation", backend, "cpu", torch.float64)
    shape = (2, 3, 9, 11)
    for i, args in enumerate(RECTANGULAR):
        if _fits(args, shape):
            _check(backend, args, shape, seed=i)


# grad_check.py's default case (kernel 3, patch 3, stride 2, padding 1, dilation 2, dilation_patch 2 on
# (2, 2, 10, 10)), an even patch, and a rectangular one
GRADCHECK = [(3, 3, 2, 1, 2, 2), (1, 4, 1, 0, 1, 2), ((1, 2), (4, 3), (2, 1), (0, 1), (1, 2), (2, 1))]


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("args", GRADCHECK, ids=["grad_check-default", "even-patch", "rectangular"])
def test_gradcheck(backend, args):
    require("local_correlation", backend, "cpu", torch.float64)
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(2, 2, 10, 10, dtype=torch.float64, generator=gen).requires_grad_() for _ in range(2))
    fn = lambda x, y: spatial_correlation_sample(x, y, *args, backend=backend)  # noqa: E731
    # the torch backend is autograd's derivative of the reference: the fast (one random direction) check suffices
    assert torch.autograd.gradcheck(fn, (a, b), fast_mode=backend == "torch")


@pytest.mark.parametrize("args", [(1, 3), (2, 4, 2, 1, 1, 2), ((1, 3), (2, 3), (1, 2), (1, 0), (2, 1), (1, 2))],
                         ids=["pwc", "even-k2-s2-p1-dp2", "rectangular"])
def test_triton_tiny(device, args):
    require("local_correlation", "triton", device, torch.float64)
    gen = torch.Generator().manual_seed(1)
    a, b = (torch.randn(1, 2, 5, 6, dtype=torch.float64, generator=gen).to(device).requires_grad_()
            for _ in range(2))
    ours = spatial_correlation_sample(a, b, *args, backend="triton")
    expected = sampler_oracle(a, b, *args)
    torch.testing.assert_close(ours, expected, rtol=RTOL, atol=0)
    gout = torch.randn(expected.shape, dtype=torch.float64, generator=gen).to(device)
    for g, e in zip(torch.autograd.grad(ours, (a, b), gout), torch.autograd.grad(expected, (a, b), gout)):
        torch.testing.assert_close(g, e, rtol=RTOL, atol=0)


def test_oracle_known_values():
    """The oracle itself on hand-checked values: ones of C = 2 channels, kernel 1, patch 2 (offsets 0 and +1):
    2 where the partner is inside, 0 in the last row/column; a 3 x 3 kernel window with padding 1 sums 2 over
    the window's in-image taps: 8 at a corner (4 taps), 18 inside (9)."""
    a = torch.ones(1, 2, 3, 4, dtype=torch.float64)
    out = sampler_oracle(a, a, 1, 2)
    assert out.shape == (1, 2, 2, 3, 4)
    assert torch.equal(out[0, 0, 0], torch.full((3, 4), 2.0, dtype=torch.float64))
    assert torch.equal(out[0, 1, 1, :, -1], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(out[0, 1, 1, -1], torch.zeros(4, dtype=torch.float64))
    window = sampler_oracle(a, a, 3, 1, 1, 1)
    assert window[0, 0, 0, 0, 0] == 8 and window[0, 0, 0, 1, 1] == 18
