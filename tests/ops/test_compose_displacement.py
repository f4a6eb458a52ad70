"""compose_displacement (Zhou et al.): every backend against the PyTorch reference (forward and backward),
composition contract, gradcheck, opcheck, determinism, bad input."""
import pytest
import torch

from pscfast.ops import ComposeDisplacement, compose_displacement
from pscfast.ops import _reference as ref
from tests.utils import BACKENDS, assert_close, noncontiguous, require

# (N, H, W, Hb, Wb): f_ab on image a (H, W), f_bc on image b (Hb, Wb)
SHAPES = [
    pytest.param((2, 5, 7, 6, 4), id="odd"),
    pytest.param((1, 4, 4, 4, 4), id="batch1"),
]


def _inputs(shape, dtype, device, contiguous=True):
    n, H, W, Hb, Wb = shape
    f_ab = torch.randn(n, 2, H, W, dtype=dtype, device=device) * 2  # many positions fall outside image b
    f_bc = torch.randn(n, 2, Hb, Wb, dtype=dtype, device=device)
    m_ab = torch.rand(n, 1, H, W, dtype=dtype, device=device)
    m_bc = torch.rand(n, 1, Hb, Wb, dtype=dtype, device=device)
    ts = (f_ab, f_bc, m_ab, m_bc)
    return tuple(noncontiguous(t) for t in ts) if not contiguous else ts


def _grads(fn, inputs, gouts):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*inputs)
    out = out if isinstance(out, tuple) else (out,)
    return (*out, *torch.autograd.grad(out, inputs, gouts))


@pytest.mark.parametrize("maps", [True, False], ids=["maps", "no-maps"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_compose_displacement_matches_reference(device, backend, dtype, shape, contiguous, maps):
    require("compose_displacement", backend, device, dtype)
    inputs = _inputs(shape, dtype, device, contiguous)
    inputs = inputs if maps else inputs[:2]
    gouts = (torch.randn_like(inputs[0]), torch.randn_like(inputs[0][:, :1]))
    got = _grads(lambda *t: compose_displacement(*t, backend=backend), inputs, gouts)
    exp = _grads(ref.compose_displacement, inputs, gouts)
    names = ["f_ac", "m_ac", "d f_ab", "d f_bc", "d m_ab", "d m_bc"]
    for name, a, b in zip(names, got, exp):
        assert_close(a, b, scale=float(b.detach().abs().max().clamp_min(1)), msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_composition_contract(device, backend):
    require("compose_displacement", backend, device, torch.float64)
    f_ab, f_bc, m_ab, m_bc = _inputs((2, 5, 6, 5, 6), torch.float64, device)
    zero = torch.zeros_like(f_ab)
    # a zero displacement reads f_bc and m_bc at the pixel itself
    f_ac, m_ac = compose_displacement(zero, f_bc, m_ab, m_bc, backend=backend)
    torch.testing.assert_close(f_ac, f_bc, rtol=0, atol=1e-12)
    torch.testing.assert_close(m_ac, m_ab * m_bc, rtol=0, atol=1e-12)
    # composing with a zero second field returns the first where it lands inside image b
    f_ac, m_ac = compose_displacement(f_ab, zero, backend=backend)
    torch.testing.assert_close(f_ac, f_ab, rtol=0, atol=1e-12)
    # a shift of one column right then the reverse is the zero field (and reads one column outside: m = 0)
    one = zero.clone()
    one[:, 0] = 1.0
    f_ac, m_ac = compose_displacement(one, -one, backend=backend)
    torch.testing.assert_close(f_ac[..., :5], zero[..., :5], rtol=0, atol=1e-12)
    torch.testing.assert_close(m_ac[..., :5], torch.ones_like(m_ac[..., :5]), rtol=0, atol=1e-12)
    assert m_ac[..., 5].abs().max() == 0
    torch.testing.assert_close(f_ac[..., 5], one[..., 5], rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_gradcheck_float64(device, backend):
    require("compose_displacement", backend, device, torch.float64)
    H, W = 4, 5
    # displacements whose targets keep >= 0.1 px from integer positions (the kinks of bilinear sampling)
    frac = 0.1 + 0.8 * torch.rand(2, 2, H, W, dtype=torch.float64, device=device)
    f_ab = (torch.randint(-2, 3, (2, 2, H, W), device=device) + frac).requires_grad_()
    f_bc = torch.randn(2, 2, H, W, dtype=torch.float64, device=device, requires_grad=True)
    m_ab = torch.rand(2, 1, H, W, dtype=torch.float64, device=device, requires_grad=True)
    m_bc = torch.rand(2, 1, H, W, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: compose_displacement(*t, backend=backend), (f_ab, f_bc, m_ab, m_bc))


def test_opcheck(device):
    require("compose_displacement", "cpp", device, torch.float32)
    f_ab, f_bc, m_ab, m_bc = _inputs((2, 5, 4, 3, 6), torch.float32, device)
    gf, gm = torch.randn_like(f_ab), torch.randn_like(m_ab)
    torch.library.opcheck(torch.ops.pscfast.compose_displacement.default,
                          tuple(t.requires_grad_() for t in (f_ab, f_bc, m_ab, m_bc)))
    torch.library.opcheck(torch.ops.pscfast._compose_displacement_backward.default,
                          (gf, gm, *(t.detach() for t in (f_ab, f_bc, m_ab, m_bc)), [True] * 4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(device, backend):
    require("compose_displacement", backend, device, torch.float32)
    inputs = _inputs((2, 12, 12, 5, 5), torch.float32, device)  # many pixels per image-b node
    gouts = (torch.randn_like(inputs[0]), torch.randn_like(inputs[2]))
    first = _grads(lambda *t: compose_displacement(*t, backend=backend), inputs, gouts)
    second = _grads(lambda *t: compose_displacement(*t, backend=backend), inputs, gouts)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_module_equals_function():
    f_ab, f_bc, m_ab, m_bc = _inputs((2, 4, 5, 4, 5), torch.float32, "cpu")
    for a, b in zip(ComposeDisplacement()(f_ab, f_bc, m_ab, m_bc), compose_displacement(f_ab, f_bc, m_ab, m_bc)):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda f, m: compose_displacement(f[:, :1], f), ValueError, "f_ab must be (N, 2, H, W)"),
        (lambda f, m: compose_displacement(f, f[0]), ValueError, "f_bc must have 4 dimensions"),
        (lambda f, m: compose_displacement(f, f, m[..., :3]), ValueError, "m_ab must have the spatial size"),
        (lambda f, m: compose_displacement(f, f, m, f), ValueError, "m_bc must be (N, 1, H, W)"),
        (lambda f, m: compose_displacement(f, f[:1]), ValueError, "batch sizes differ"),
        (lambda f, m: compose_displacement(f.long(), f), TypeError, "f_ab must be a floating-point tensor"),
        (lambda f, m: compose_displacement(f, f * float("inf")), ValueError, "f_bc contains NaN"),
        # a zero-stride field of 2^30 pixels (the kernels' limit), refused before its values are read or copied
        (lambda f, m: compose_displacement(f, torch.zeros((), dtype=torch.float64).expand(2, 2, 2**15, 2**15)),
         ValueError, "f_bc has a plane of 32768 x 32768"),
    ],
)
def test_bad_input(make, error, words):
    f, m = torch.randn(2, 2, 4, 5), torch.rand(2, 1, 4, 5)
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        make(f, m)
