"""consistency_loss: the release's golden loss, every backend against the PyTorch reference (forward and
backward), the empty mask, gradcheck, opcheck, determinism, bad input."""
import pytest
import torch

from pscfast.ops import ConsistencyLoss, consistency_loss
from pscfast.ops import _reference as ref
from tests.ops.test_compose import GOLDEN, MODES, SHAPES, _flows, _grads, _off_boundary_grid, _scale
from tests.utils import BACKENDS, assert_close, identity_grid, require


@pytest.mark.parametrize("backend", BACKENDS)
def test_golden_release_loss(backend):
    require("consistency_loss", backend, "cpu", torch.float32)
    g = torch.load(GOLDEN)
    loss = consistency_loss(g["con_fwd"], g["con_bwd"], "nearest", backend=backend)
    torch.testing.assert_close(loss, g["con_loss"].to(loss.dtype), rtol=1e-5, atol=0)


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_matches_reference(device, backend, dtype, shape, contiguous):
    require("consistency_loss", backend, device, dtype)
    f_ab, f_bc = _flows(shape, dtype, device, contiguous, spread=2.2)
    for mode in MODES:
        got = _grads(lambda a, b: consistency_loss(a, b, mode, backend=backend), f_ab, f_bc)
        exp = _grads(lambda a, b: ref.consistency_loss(a, b, mode), f_ab, f_bc)
        assert exp[0] > 0
        assert_close(got[0], exp[0], msg=f"loss {mode}")
        assert_close(got[1], exp[1], scale=_scale(exp[1]), msg=f"fwd gradient {mode}")
        assert_close(got[2], exp[2], scale=_scale(exp[2]), msg=f"bwd gradient {mode}")
        if mode == "nearest":
            assert got[2].abs().max() == 0  # the sampling position has no gradient


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_mask_gives_zero_loss_and_gradient(device, backend):
    require("consistency_loss", backend, device, torch.float32)
    fwd = torch.full((2, 4, 5, 2), 3.0, device=device, requires_grad=True)  # every cycle value is outside
    bwd = identity_grid(2, 4, 5, device=device).requires_grad_()
    loss = consistency_loss(fwd, bwd, "bilinear", backend=backend)
    assert loss.item() == 0
    d_fwd, d_bwd = torch.autograd.grad(loss, (fwd, bwd))
    assert d_fwd.abs().max() == 0 and d_bwd.abs().max() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_identity_gives_zero_loss(device, backend):
    require("consistency_loss", backend, device, torch.float64)
    ident = identity_grid(2, 5, 8, True, torch.float64, device)
    for mode in MODES:
        assert consistency_loss(ident, ident, mode, backend=backend).item() == 0


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_gradcheck_float64(device, backend):
    require("consistency_loss", backend, device, torch.float64)
    fwd = (torch.rand(1, 4, 5, 2, dtype=torch.float64, device=device) * 1.8 - 0.9).requires_grad_()
    bwd = _off_boundary_grid(1, 4, 5, 3, 4, device).requires_grad_()
    for mode in MODES:
        assert torch.autograd.gradcheck(lambda a, b: consistency_loss(a, b, mode, backend=backend), (fwd, bwd))


def test_opcheck(device):
    require("consistency_loss", "cpp", device, torch.float32)
    fwd, bwd = _flows((2, 5, 4, 3, 6), torch.float32, device)
    xs, ys = torch.linspace(-1, 1, 6, device=device), torch.linspace(-1, 1, 3, device=device)
    for mode in MODES:
        torch.library.opcheck(torch.ops.pscfast.consistency_loss.default,
                              (fwd.requires_grad_(), bwd.requires_grad_(), xs, ys, mode))
    fwd, bwd = fwd.detach(), bwd.detach()
    loss, count = torch.ops.pscfast.consistency_loss(fwd, bwd, xs, ys, "bilinear")
    torch.library.opcheck(torch.ops.pscfast._consistency_loss_backward.default,
                          (torch.ones_like(loss), fwd, bwd, xs, ys, "bilinear", count, [True, True]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(device, backend):
    require("consistency_loss", backend, device, torch.float32)
    fwd, bwd = _flows((1, 5, 5, 11, 11), torch.float32, device, spread=2.2)  # many pixels per node
    for mode in MODES:
        first = _grads(lambda a, b: consistency_loss(a, b, mode, backend=backend), fwd, bwd)
        second = _grads(lambda a, b: consistency_loss(a, b, mode, backend=backend), fwd, bwd)
        assert all(torch.equal(x, y) for x, y in zip(first, second))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_edges_as_the_release(device, backend, dtype):
    """Cycle values exactly at the release's mask edges (0, -0, +-1, the neighbours of 1 and of 0): with bwd the
    identity and nearest sampling the cycle is fwd itself, so each value meets the mask as it is."""
    require("consistency_loss", backend, device, dtype)
    one = torch.tensor(1.0, dtype=dtype)
    edges = torch.stack([torch.tensor(v, dtype=dtype) for v in (0.0, -0.0, 1.0, -1.0, 0.5, -0.25)]
                        + [torch.nextafter(one, one * 2), torch.nextafter(one, one * 0), -torch.nextafter(one, one * 2),
                           torch.nextafter(one * 0, one), torch.tensor(3.0, dtype=dtype)])
    h, w = 3, 8
    values = edges.repeat(h * w * 2 // len(edges) + 1)[: h * w * 2]
    fwd = values[torch.randperm(h * w * 2)].view(1, h, w, 2).to(device).requires_grad_()
    bwd = identity_grid(1, h, w, True, dtype, device)
    got = _grads(lambda a, b: consistency_loss(a, b, "nearest", backend=backend), fwd, bwd)
    exp = _grads(lambda a, b: ref.consistency_loss(a, b, "nearest"), fwd, bwd)
    assert exp[0] > 0
    for g, e in zip(got, exp):
        assert_close(g, e)


def test_cpu_same_bits_for_any_thread_count():
    """The CPU kernel sums per sample in a fixed order and each sample's fwd gradient is scattered by one
    thread: the loss and both gradients are bitwise the same on one thread and on several."""
    require("consistency_loss", "cpp", "cpu", torch.float32)
    fwd, bwd = _flows((5, 9, 7, 13, 11), torch.float32, "cpu", spread=2.2)
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            runs.append([_grads(lambda a, b: consistency_loss(a, b, mode, backend="cpp"), fwd, bwd)
                         for mode in MODES])
    finally:
        torch.set_num_threads(threads)
    for other in runs[1:]:
        for got, exp in zip(other, runs[0]):
            assert all(torch.equal(x, y) for x, y in zip(got, exp))


def test_modules_equal_functions():
    fwd, bwd = _flows((2, 4, 5, 4, 5), torch.float32, "cpu", spread=2.2)
    assert torch.equal(ConsistencyLoss("bilinear")(fwd, bwd), consistency_loss(fwd, bwd, "bilinear"))
    assert "bilinear" in repr(ConsistencyLoss("bilinear"))


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda a, b: consistency_loss(a[0], b), ValueError, "fwd must have 4 dimensions"),
        (lambda a, b: consistency_loss(a, b[..., :1]), ValueError, "bwd must have size 2 in its last dimension"),
        (lambda a, b: consistency_loss(a[:1], b), ValueError, "batch sizes differ"),
        (lambda a, b: consistency_loss(a, b, "bicubic"), ValueError, "mode must be one of"),
        (lambda a, b: consistency_loss(a, b * float("nan")), ValueError, "bwd contains NaN"),
        (lambda a, b: consistency_loss(a.numpy(), b), TypeError, "fwd must be a torch.Tensor"),
        (lambda a, b: consistency_loss(a, b, backend="gpu"), ValueError, "unknown backend 'gpu'"),
    ],
)
def test_bad_input(make, error, words):
    a, b = torch.rand(2, 4, 4, 2) * 2 - 1, torch.rand(2, 3, 5, 2) * 2 - 1
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        make(a, b)
