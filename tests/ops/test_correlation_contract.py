"""correlation: the coordinate contract (identity grid, a known shift), a deterministic backward, Module ==
function, bad input. Comparisons with the reference are in test_correlation.py."""
import importlib
import re

import pytest
import torch

from pscfast.ops import Correlation, _reference, correlation
from tests.ops.test_correlation import _inputs, _run
from tests.utils import BACKENDS, assert_close, identity_grid, require

correlation_module = importlib.import_module("pscfast.ops.correlation")  # the name `correlation` is the function


@pytest.mark.parametrize("backend", BACKENDS)
def test_identity_grid_equals_plain(device, backend):
    """Maps already size x size: sampling at the identity grid is the plain correlation (resize = identity)."""
    require("correlation", backend, device, torch.float64)
    size = 7
    src, tgt, _ = _inputs([(3, size, size, 9, 5), (2, size, size, size, size)], 2, size, torch.float64, device)
    plain = correlation(src, tgt, None, size, backend=backend)
    warped = correlation(src, tgt, identity_grid(2, size, size, True, torch.float64, device), size, backend=backend)
    torch.testing.assert_close(warped, plain, rtol=0, atol=1e-12)
    # and the plain correlation of size x size maps is the raw dot product
    s, t = src[1].flatten(2), tgt[1].flatten(2)
    torch.testing.assert_close(plain[:, size * size:].flatten(2), t.transpose(1, 2) @ s, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_known_shift(device, backend):
    """A grid shifted by one pixel in x reads src one column to the right (zeros past the edge)."""
    require("correlation", backend, device, torch.float64)
    size = 6
    src, tgt, _ = _inputs([(3, size, size, size, size)], 1, size, torch.float64, device)
    grid = identity_grid(1, size, size, True, torch.float64, device)
    shifted = grid + torch.tensor([2.0 / (size - 1), 0.0], dtype=torch.float64, device=device)
    out = correlation(src, tgt, shifted, size, backend=backend).view(1, size * size, size, size)
    plain = correlation(src, tgt, None, size, backend=backend).view(1, size * size, size, size)
    torch.testing.assert_close(out[..., :-1], plain[..., 1:], rtol=0, atol=1e-12)
    assert out[..., -1].abs().max() < 1e-12  # past the edge: zeros padding


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_is_deterministic(device, backend):
    require("correlation", backend, device, torch.float32)
    size = 5
    src, tgt, grid = _inputs([(40, 12, 12, 9, 9), (8, 6, 6, 5, 5)], 2, size, torch.float32, device)
    gout = torch.randn(2, 2 * size * size, size, size, device=device)
    for g in (None, grid):
        first = _run(correlation, src, tgt, g, size, gout, backend=backend)
        second = _run(correlation, src, tgt, g, size, gout, backend=backend)
        assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("backend", BACKENDS)
def test_rectangular_size_keeps_both_sides(device, backend):
    """size=(h, w) is an h x w grid (16x24 maps give a 16x24 correlation, not 16x16), and its transposed
    layout is the same correlation transposed: the width is never dropped."""
    require("correlation", backend, device, torch.float64)
    src, tgt, _ = _inputs([(3, 16, 24, 16, 24)], 1, (16, 24), torch.float64, device)
    out = correlation(src, tgt, None, (16, 24), backend=backend)
    assert out.shape == (1, 16 * 24, 16, 24)
    flipped = correlation([src[0].transpose(2, 3)], [tgt[0].transpose(2, 3)], None, (24, 16), backend=backend)
    expected = out.view(1, 16, 24, 16, 24).permute(0, 2, 1, 4, 3).reshape(1, 24 * 16, 24, 16)
    torch.testing.assert_close(flipped, expected, rtol=0, atol=1e-12)


def test_module_equals_function():
    src, tgt, grid = _inputs([(3, 8, 8, 6, 6)], 2, 4, torch.float32, "cpu")
    m = Correlation(4)
    assert torch.equal(m(src, tgt, grid), correlation(src, tgt, grid, 4))
    assert "size=4" in repr(m)
    m = Correlation((4, 3), (2, 5))
    assert torch.equal(m(src, tgt), correlation(src, tgt, None, (4, 3), (2, 5)))
    assert "size=(4, 3), target_size=(2, 5)" in repr(m)


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda s, t, g: correlation(s, [t[0][:1]], g, 4), ValueError, "must share the batch size"),
        (lambda s, t, g: correlation(s + [s[0][:1]], t + [t[0][:1]], None, 4), ValueError,
         "must share the batch size"),
        (lambda s, t, g: correlation(s, [t[0][:, :2]], g, 4), ValueError, "must share the batch size and the channel"),
        (lambda s, t, g: correlation(s, t + t, g, 4), ValueError, "src has 1 layers but tgt has 2"),
        (lambda s, t, g: correlation([], [], g, 4), TypeError, "src must be a non-empty sequence"),
        (lambda s, t, g: correlation(s, [], g, 4), TypeError, "tgt must be a non-empty sequence"),
        (lambda s, t, g: correlation(s, t, g[..., :1], 4), ValueError, "grid must have size 2"),
        (lambda s, t, g: correlation(s, t, g[:, :3], 4), ValueError, "grid must be (N, hs, ws, 2) = (2, 4, 4, 2)"),
        (lambda s, t, g: correlation(s, t, g[:1], 4), ValueError, "grid must be (N, hs, ws, 2)"),
        (lambda s, t, g: correlation(s, t, g, (4, 3)), ValueError, "grid must be (N, hs, ws, 2) = (2, 4, 3, 2)"),
        (lambda s, t, g: correlation(s, t, g * float("nan"), 4), ValueError, "grid contains NaN"),
        (lambda s, t, g: correlation([s[0][0]], t, g, 4), ValueError, "src[0] must have 4 dimensions"),
        (lambda s, t, g: correlation(s, [t[0].long()], g, 4), TypeError, "tgt[0] must be a floating-point"),
        (lambda s, t, g: correlation(s, [t[0][:, :, :0]], g, 4), ValueError, "tgt[0] has an empty spatial size"),
        (lambda s, t, g: correlation([s[0][:, :0]], [t[0][:, :0]], g, 4), ValueError, "src[0] has no channels"),
        (lambda s, t, g: correlation(s, t, g, 0), ValueError, "size must be"),
        (lambda s, t, g: correlation(s, t, g, "4"), ValueError, "size must be a positive int or a (height, width)"),
        (lambda s, t, g: correlation(s, t, g, (4, 4, 4)), ValueError, "size must be a positive int"),
        (lambda s, t, g: correlation(s, t, g, (4.5, 4)), ValueError, "size must be a positive int"),
        (lambda s, t, g: correlation(s, t, g, True), ValueError, "size must be a positive int"),
        (lambda s, t, g: correlation(s, t, g, 4, (0, 3)), ValueError, "target_size must be a positive int"),
        (lambda s, t, g: correlation(s, t, None, 4, "3x3"), ValueError, "target_size must be a positive int"),
        (lambda s, t, g: correlation(s, t, None, (1 << 16, 1 << 15)), ValueError, "size .* positions; at most"),
        (lambda s, t, g: correlation(s, t, g.to("meta"), 4), ValueError, "one device"),
    ],
)
def test_bad_input(make, error, words):
    src, tgt, grid = [torch.randn(2, 3, 6, 6)], [torch.randn(2, 3, 5, 5)], torch.rand(2, 4, 4, 2) * 2 - 1
    with pytest.raises(error, match=re.sub(r"([()\[\]])", r"\\\1", words)):  # brackets literal, `.*` a pattern
        make(src, tgt, grid)


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda s, t: correlation(s, [t[0][:1]], None, 4), ValueError, "must share the batch size"),
        (lambda s, t: correlation(s, [t[0][:, :2]], None, 4), ValueError, "must share the batch size and the channel"),
        (lambda s, t: correlation(s, t + t, None, 4), ValueError, "src has 1 layers but tgt has 2"),
        (lambda s, t: correlation([s[0][0]], t, None, 4), ValueError, "src[0] must have 4 dimensions"),
        (lambda s, t: correlation(s, [t[0].long()], None, 4), TypeError, "tgt[0] must be a floating-point"),
        (lambda s, t: correlation(s, [t[0][:, :, :0]], None, 4), ValueError, "tgt[0] has an empty spatial size"),
        (lambda s, t: correlation([s[0][:, :0]], [t[0][:, :0]], None, 4), ValueError, "src[0] has no channels"),
        (lambda s, t: correlation(s, t, None, -4), ValueError, "size must be"),
        (lambda s, t: correlation(s, t, None, (4, 0)), ValueError, "size must be"),
        (lambda s, t: correlation(s, t, None, 4, 0), ValueError, "target_size must be"),
        (lambda s, t: correlation(s, t, None, (1 << 16, 1 << 15)), ValueError, "size .* positions; at most"),
        (lambda s, t: correlation(s, t, None, 4, scale=float("nan")), ValueError, "scale must be finite"),
        (lambda s, t: correlation(s, [t[0].to("meta")], None, 4), ValueError, "one device"),
        (lambda s, t: correlation([s[0].to("meta")], t, None, 4), ValueError, "one device"),
    ],
)
def test_bad_input_without_grid(make, error, words):
    """Without a grid, plain CPU maps go straight to the compiled op; what it refuses gets the same named errors."""
    src, tgt = [torch.randn(2, 3, 6, 6)], [torch.randn(2, 3, 5, 5)]
    with pytest.raises(error, match=re.sub(r"([()\[\]])", r"\\\1", words)):
        make(src, tgt)


def test_direct_cpu_call_equals_checked_call(monkeypatch):
    """Plain CPU maps without a grid go straight to the compiled op (the Python checks never run); a tensor
    subclass (nn.Parameter), an int scale, a float size pair or mixed dtypes take the checked path: the
    reference's numbers either way."""
    require("correlation", "cpp", "cpu", torch.float32)
    src, tgt, _ = _inputs([(3, 8, 8, 6, 6), (2, 4, 4, 4, 4)], 2, (4, 3), torch.float32, "cpu")
    with monkeypatch.context() as m:
        m.setattr(correlation_module, "_layers", lambda *args: pytest.fail("the plain call ran the checks"))
        direct = correlation(src, tgt, None, (4, 3), 4, scale=0.5)
    assert_close(direct, _reference.correlation(src, tgt, None, (4, 3), (4, 4), 0.5))
    assert torch.equal(direct, correlation([torch.nn.Parameter(s) for s in src], tgt, None, (4, 3), 4, scale=0.5))
    assert torch.equal(direct * 2, correlation(tuple(src), tuple(tgt), None, (4.0, 3.0), (4, 4), scale=1))
    mixed = correlation([s.double() for s in src], tgt, None, (4, 3), 4, scale=0.5)
    assert mixed.dtype == torch.float64
    assert_close(mixed.float(), direct)  # the float64 product of the float32 maps
