"""kernel_soft_argmax against SFNet's own formula: with normalize="none" the op is SFNet's soft argmax and with
"sfnet" SFNet's L2 normalisation followed by it (forward and gradient, float64), and in float32 every backend
stays within 2x of the error of SFNet's formula on a sweep of shapes and temperatures."""
import pytest
import torch

from pscfast.ops import kernel_soft_argmax
from tests.utils import BACKENDS, require


def sfnet_kernel_soft_argmax(corr, beta, sigma, target_size, eps=None):
    """The kernel soft argmax of SFNet's code (Lee et al., "SFNet: Learning Object-aware Semantic
    Correspondence", the authors' model.py: L2normalize, find_correspondence.apply_gaussian_kernel,
    softmax_with_temperature and kernel_soft_argmax), ported to a (N, Ht*Wt, Hs, Ws) correlation with a target
    grid of its own size. With eps, L2normalize (its epsilon: 1e-6) comes first, as SFNet's forward applies it
    to the correlation. Returns the grid (N, Hs, Ws, 2), (x, y)."""
    b, _, hs, ws = corr.shape
    ht, wt = target_size
    if eps is not None:
        corr = corr / (corr.pow(2).sum(dim=1, keepdim=True) + eps) ** 0.5
    idx = corr.max(dim=1)[1]
    idx_y = (idx // wt).view(b, 1, 1, hs, ws).to(corr.dtype)
    idx_x = (idx % wt).view(b, 1, 1, hs, ws).to(corr.dtype)
    x = torch.arange(wt, dtype=corr.dtype).view(1, 1, wt, 1, 1)
    y = torch.arange(ht, dtype=corr.dtype).view(1, ht, 1, 1, 1)
    gauss = torch.exp(-((x - idx_x) ** 2 + (y - idx_y) ** 2) / (2 * sigma ** 2)).view(b, ht * wt, hs, ws)
    corr = gauss * corr
    m = corr.max(dim=1, keepdim=True)[0]
    e = torch.exp(beta * (corr - m))
    corr = (e / e.sum(dim=1, keepdim=True)).view(b, ht, wt, hs, ws)
    x_normal = torch.linspace(-1, 1, wt, dtype=torch.float64).to(corr.dtype).view(1, wt, 1, 1)
    y_normal = torch.linspace(-1, 1, ht, dtype=torch.float64).to(corr.dtype).view(1, ht, 1, 1)
    grid_x = (corr.sum(dim=1) * x_normal).sum(dim=1)
    grid_y = (corr.sum(dim=2) * y_normal).sum(dim=1)
    return torch.stack((grid_x, grid_y), dim=-1)


# (Ht, Wt, Hs, Ws): SFNet's 20x20 at 320x320, PSC's 16x16, rectangular targets, many targets, small grids
SWEEP = [(16, 16, 16, 16), (20, 20, 20, 20), (7, 9, 5, 6), (32, 32, 8, 8), (5, 5, 3, 3), (2, 12, 2, 3)]
TEMPERATURES = [(50.0, 5.0), (100.0, 10.0), (10.0, 1.0), (1000.0, 5.0)]
# the interpreter runs every program in numpy: small grids, with more samples (float32 errors are a matter
# of rounding luck, so the worst case needs a few hundred rows to be stable)
TRITON_SWEEP = [(7, 9, 5, 6), (5, 5, 3, 3), (2, 12, 2, 3)]


def _correlations(shape, seed, n=2):
    """A correlation as SFNet's model builds one, the product of two rectified cosine correlations (raw),
    and the same after SFNet's L2 normalisation (unit), float64."""
    ht, wt, hs, ws = shape
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(n, ht * wt, hs, ws, dtype=torch.float64, generator=g).relu()
    raw = raw * torch.rand(n, ht * wt, hs, ws, dtype=torch.float64, generator=g)
    return raw, raw / (raw.pow(2).sum(dim=1, keepdim=True) + 1e-6) ** 0.5


def _run(fn, corr, gout):
    corr = corr.detach().clone().requires_grad_()
    out = fn(corr)
    return out, torch.autograd.grad(out, corr, gout)[0]


def _ours(backend, beta, sigma, shape, normalize):
    return lambda c: kernel_soft_argmax(c, beta, sigma, shape[:2], normalize, backend=backend)


# SFNet's formula with the normalisation of each mode: "l2" is its L2normalize with F.normalize's epsilon
# (no zero rows in these tests, so an epsilon of 0)
SFNET_EPS = {"sfnet": 1e-6, "l2": 0.0, "none": None}


def _theirs(beta, sigma, shape, normalize):
    return lambda c: sfnet_kernel_soft_argmax(c, beta, sigma, shape[:2], SFNET_EPS[normalize])


@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_sfnet_in_float64(backend):
    """normalize="none" on SFNet's normalised correlation is SFNet's soft argmax; normalize="sfnet" on the raw
    correlation is SFNet's L2normalize followed by it. Forward and gradient agree to float64 rounding."""
    require("kernel_soft_argmax", backend, "cpu", torch.float64)
    for i, shape in enumerate(TRITON_SWEEP if backend == "triton" else SWEEP):
        raw, unit = _correlations(shape, i)
        gout = torch.randn(2, *shape[2:], 2, dtype=torch.float64)
        for beta, sigma in TEMPERATURES:
            for normalize, corr in (("none", unit), ("sfnet", raw)):
                got = _run(_ours(backend, beta, sigma, shape, normalize), corr, gout)
                expected = _run(_theirs(beta, sigma, shape, normalize), corr, gout)
                case = f"{shape} beta={beta} sigma={sigma} normalize={normalize}"
                torch.testing.assert_close(got[0], expected[0], rtol=0, atol=1e-12, msg=f"forward {case}")
                # gradients reach beta / (cell size) ~ 1e4: 1e-12 relative to their largest entry
                atol = 1e-12 * float(expected[1].abs().max())
                torch.testing.assert_close(got[1], expected[1], rtol=0, atol=atol, msg=f"gradient {case}")


def _float32_errors(fn, exact_fn, corr, gout):
    """Max absolute grid and gradient errors of fn in float32 against exact_fn in float64."""
    exact = _run(exact_fn, corr, gout)
    got = _run(fn, corr.float(), gout.float())
    return [float((a.detach().double() - b.detach()).abs().max()) for a, b in zip(got, exact)]


@pytest.mark.parametrize("normalize", ["sfnet", "none", "l2"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_accuracy_within_twice_sfnet(backend, normalize):
    """Worst float32 error over the sweep, each formula against itself in float64 (ours: the reference,
    equal to every backend in float64 above): ours at most twice SFNet's formula's with the same
    normalisation. Absolute errors: the gradient scales with beta."""
    require("kernel_soft_argmax", backend, "cpu", torch.float32)
    sweep, n = (TRITON_SWEEP, 16) if backend == "triton" else (SWEEP, 4)
    ours, theirs = [0.0, 0.0], [0.0, 0.0]
    for i, shape in enumerate(sweep):
        raw, unit = _correlations(shape, i, n)
        corr = unit if normalize == "none" else raw
        gout = torch.randn(n, *shape[2:], 2, dtype=torch.float64)
        for beta, sigma in TEMPERATURES:
            exact = _ours("torch", beta, sigma, shape, normalize)
            a = _float32_errors(_ours(backend, beta, sigma, shape, normalize), exact, corr, gout)
            sfnet = _theirs(beta, sigma, shape, normalize)
            b = _float32_errors(sfnet, sfnet, corr, gout)
            ours = [max(x, y) for x, y in zip(ours, a)]
            theirs = [max(x, y) for x, y in zip(theirs, b)]
    assert ours[0] <= 2 * theirs[0], f"grid error {ours[0]:.2e} vs SFNet's {theirs[0]:.2e}"
    assert ours[1] <= 2 * theirs[1], f"gradient error {ours[1]:.2e} vs SFNet's {theirs[1]:.2e}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_row_gradient_is_sfnets(backend):
    """An all-zero correlation row: with SFNet's epsilon the gradient is SFNet's (1e3 times d L / d n), with
    F.normalize's clamp 1e12 times."""
    require("kernel_soft_argmax", backend, "cpu", torch.float64)
    corr = torch.randn(1, 16, 2, 3, dtype=torch.float64).relu()
    corr[:, :, 1, 2] = 0
    gout = torch.randn(1, 2, 3, 2, dtype=torch.float64)
    got = _run(_ours(backend, 50.0, 5.0, (4, 4), "sfnet"), corr, gout)
    expected = _run(_theirs(50.0, 5.0, (4, 4), "sfnet"), corr, gout)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-10, atol=1e-10)
    l2 = _run(_ours(backend, 50.0, 5.0, (4, 4), "l2"), corr, gout)[1]
    ratio = l2[0, :, 1, 2].abs().max() / got[1][0, :, 1, 2].abs().max()
    assert 0.9e9 < ratio < 1.1e9
