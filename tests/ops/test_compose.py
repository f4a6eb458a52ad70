"""compose: the release's golden cycle, every backend against the PyTorch reference (forward and backward),
coordinate contract, gradcheck, opcheck, determinism, bad input."""
from pathlib import Path

import pytest
import torch

from pscfast.ops import Compose, compose
from pscfast.ops import _reference as ref
from tests.utils import BACKENDS, assert_close, identity_grid, noncontiguous, require

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden-psc-ops.pt"
# (N, h, w, h', w'): f_ab on (h, w), f_bc on (h', w')
SHAPES = [
    pytest.param((2, 5, 7, 6, 9), id="odd"),
    pytest.param((1, 4, 4, 3, 5), id="batch1"),
]
MODES = ("nearest", "bilinear")


def _flows(shape, dtype, device, contiguous=True, spread=2.4):
    n, h, w, ho, wo = shape
    f_ab = torch.rand(n, h, w, 2, dtype=dtype, device=device) * spread - spread / 2  # partly outside [-1, 1]
    f_bc = torch.rand(n, ho, wo, 2, dtype=dtype, device=device) * spread - spread / 2
    if not contiguous:
        f_ab, f_bc = noncontiguous(f_ab), noncontiguous(f_bc)
    return f_ab, f_bc


def _grads(fn, a, b, gout=None):
    a, b = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    out = fn(a, b)
    da, db = torch.autograd.grad(out, (a, b), gout if gout is not None else torch.ones_like(out))
    return out, da, db


def _scale(t):
    return float(t.abs().max().clamp_min(1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_golden_release_cycle(backend):
    require("compose", backend, "cpu", torch.float32)
    g = torch.load(GOLDEN)
    cycle = compose(g["con_fwd"], g["con_bwd"], "nearest", backend=backend)
    assert torch.equal(cycle, g["con_cycle"])  # nearest copies values: exact


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_compose_matches_reference(device, backend, dtype, shape, contiguous):
    require("compose", backend, device, dtype)
    f_ab, f_bc = _flows(shape, dtype, device, contiguous)
    gout = torch.randn(f_bc.shape, dtype=dtype, device=device)
    for mode in MODES:
        got = _grads(lambda a, b: compose(a, b, mode, backend=backend), f_ab, f_bc, gout)
        exp = _grads(lambda a, b: ref.compose(a, b, mode), f_ab, f_bc, gout)
        assert_close(got[0], exp[0], msg=f"forward {mode}")
        assert_close(got[1], exp[1], scale=_scale(exp[1]), msg=f"f_ab gradient {mode}")
        assert_close(got[2], exp[2], scale=_scale(exp[2]), msg=f"f_bc gradient {mode}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_identity_and_shift(device, backend):
    require("compose", backend, device, torch.float64)
    f = torch.rand(2, 5, 8, 2, dtype=torch.float64, device=device) * 2 - 1
    ident = identity_grid(2, 5, 8, True, torch.float64, device)
    for mode in MODES:  # sampling at the identity returns the sampled flow
        torch.testing.assert_close(compose(f, ident, mode, backend=backend), f, rtol=0, atol=1e-12)
    # the identity sampled anywhere inside [-1, 1] returns the positions (bilinear is exact on affine fields)
    torch.testing.assert_close(compose(ident, f, "bilinear", backend=backend), f, rtol=0, atol=1e-12)
    step = 2.0 / 7  # one pixel in x
    shifted = ident + torch.tensor([2 * step, 0.0], dtype=torch.float64, device=device)
    for mode in MODES:
        out = compose(f, shifted, mode, backend=backend)
        torch.testing.assert_close(out[:, :, :6], f[:, :, 2:], rtol=0, atol=1e-12)
        assert out[:, :, 6:].abs().max() == 0


def _off_boundary_grid(n, h, w, gh, gw, device):
    """A float64 grid into an (h, w) grid whose pixel positions keep >= 0.1 px from integers (kinks)."""
    px = torch.randint(-1, w, (n, gh, gw), device=device) + 0.1 + 0.8 * torch.rand(n, gh, gw, device=device)
    py = torch.randint(-1, h, (n, gh, gw), device=device) + 0.1 + 0.8 * torch.rand(n, gh, gw, device=device)
    return torch.stack((px / (w - 1) * 2 - 1, py / (h - 1) * 2 - 1), dim=-1).double()


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_gradcheck_float64(device, backend):
    require("compose", backend, device, torch.float64)
    f_ab = (torch.rand(1, 4, 5, 2, dtype=torch.float64, device=device) * 1.8 - 0.9).requires_grad_()
    f_bc = _off_boundary_grid(1, 4, 5, 3, 4, device).requires_grad_()
    for mode in MODES:
        assert torch.autograd.gradcheck(lambda a, b: compose(a, b, mode, backend=backend), (f_ab, f_bc))


def test_opcheck(device):
    require("compose", "cpp", device, torch.float32)
    f_ab, f_bc = _flows((2, 5, 4, 3, 6), torch.float32, device)
    gout = torch.randn(f_bc.shape, device=device)
    for mode in MODES:
        torch.library.opcheck(torch.ops.pscfast.compose.default, (f_ab.requires_grad_(), f_bc.requires_grad_(), mode))
    torch.library.opcheck(torch.ops.pscfast._compose_backward.default,
                          (gout, f_ab.detach(), f_bc.detach(), "bilinear", [True, True]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(device, backend):
    require("compose", backend, device, torch.float32)
    f_ab, f_bc = _flows((1, 5, 5, 11, 11), torch.float32, device, spread=2.2)  # many pixels per node
    for mode in MODES:
        gout = torch.randn_like(f_bc)
        first = _grads(lambda a, b: compose(a, b, mode, backend=backend), f_ab, f_bc, gout)
        second = _grads(lambda a, b: compose(a, b, mode, backend=backend), f_ab, f_bc, gout)
        assert all(torch.equal(x, y) for x, y in zip(first, second))


def test_modules_equal_functions():
    f_ab, f_bc = _flows((2, 4, 5, 4, 5), torch.float32, "cpu", spread=2.2)
    assert torch.equal(Compose("nearest")(f_ab, f_bc), compose(f_ab, f_bc, "nearest"))
    assert "nearest" in repr(Compose("nearest"))


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda a, b: compose(a[0], b), ValueError, "f_ab must have 4 dimensions"),
        (lambda a, b: compose(a, b[..., :1]), ValueError, "f_bc must have size 2 in its last dimension"),
        (lambda a, b: compose(a[:1], b), ValueError, "batch sizes differ"),
        (lambda a, b: compose(a.long(), b), TypeError, "f_ab must be a floating-point tensor"),
        (lambda a, b: compose(a, b, "bicubic"), ValueError, "mode must be one of"),
        (lambda a, b: compose(a, b.to("meta")), ValueError, "one device"),
        (lambda a, b: compose(a[:, :0], b), ValueError, "f_ab has an empty spatial size"),
        (lambda a, b: compose(a, b * float("nan")), ValueError, "f_bc contains NaN"),
        (lambda a, b: compose(a.numpy(), b), TypeError, "f_ab must be a torch.Tensor"),
        (lambda a, b: compose(a, b, backend="gpu"), ValueError, "unknown backend 'gpu'"),
        # a zero-stride grid of 2^30 points (the kernels' limit), refused before its values are read or copied
        (lambda a, b: compose(a, torch.zeros((), dtype=torch.float64).expand(2, 2**15, 2**15, 2)), ValueError,
         "f_bc has a plane of 32768 x 32768"),
    ],
)
def test_bad_input(make, error, words):
    a, b = torch.rand(2, 4, 4, 2) * 2 - 1, torch.rand(2, 3, 5, 2) * 2 - 1
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        make(a, b)

