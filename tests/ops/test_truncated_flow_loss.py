"""truncated_flow_loss (Zhou et al.): every backend against the PyTorch reference (forward and backward), each
gradient on its own, gradcheck, opcheck, determinism, bad input."""
import pytest
import torch

from pscfast.ops import TruncatedFlowLoss, truncated_flow_loss
from pscfast.ops import _reference as ref
from tests.ops.test_compose_displacement import _grads
from tests.utils import BACKENDS, assert_close, noncontiguous, require


@pytest.mark.parametrize("masked", [True, False], ids=["mask", "no-mask"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_loss_matches_reference(device, backend, dtype, contiguous, masked):
    require("truncated_flow_loss", backend, device, dtype)
    pred, target = (torch.randn(3, 2, 9, 7, dtype=dtype, device=device) * 3 for _ in range(2))
    mask = (torch.rand(3, 1, 9, 7, device=device) > 0.3).to(dtype)
    if not contiguous:
        pred, target, mask = noncontiguous(pred), noncontiguous(target), noncontiguous(mask)
    inputs = (pred, target, mask) if masked else (pred, target)
    err = ((pred - target) ** 2).sum(1)
    assert (err > 16).any() and (err < 16).any()  # T = 4 truncates some pixels and not others
    got = _grads(lambda *t: truncated_flow_loss(*t, T=4.0, backend=backend), inputs, None)
    exp = _grads(lambda *t: ref.truncated_flow_loss(*t, T=4.0), inputs, None)
    for name, a, b in zip(["loss", "d pred", "d target", "d mask"], got, exp):
        assert_close(a, b, scale=float(b.detach().abs().max().clamp_min(1)), msg=name)


@pytest.mark.parametrize("need", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)], ids=["pred", "target", "mask", "all"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_loss_partial_grads(device, backend, need):
    """Only the gradients asked for are computed, each right and bitwise reproducible; the cpp shape's pixels
    split into CPU tasks in mid-sample."""
    require("truncated_flow_loss", backend, device, torch.float32)
    n, h, w = (3, 150, 151) if backend == "cpp" else (2, 9, 7)
    pred, target = (torch.randn(n, 2, h, w, device=device) * 3 for _ in range(2))
    mask = torch.rand(n, 1, h, w, device=device)
    inputs = [t.requires_grad_(bool(k)) for t, k in zip((pred, target, mask), need)]
    wanted = [t for t in inputs if t.requires_grad]
    got, again = (torch.autograd.grad(truncated_flow_loss(*inputs, T=4.0, backend=backend), wanted) for _ in "12")
    exp = torch.autograd.grad(ref.truncated_flow_loss(*inputs, T=4.0), wanted)
    for a, b, c in zip(got, again, exp):
        assert torch.equal(a, b)
        assert_close(a, c, scale=float(c.abs().max().clamp_min(1)))


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_gradcheck_float64(device, backend):
    require("truncated_flow_loss", backend, device, torch.float64)
    pred, target = (torch.randn(2, 2, 4, 5, dtype=torch.float64, device=device) * 3 for _ in range(2))
    mask = torch.rand(2, 1, 4, 5, dtype=torch.float64, device=device)
    assert torch.autograd.gradcheck(lambda p, t, m: truncated_flow_loss(p, t, m, T=3.0, backend=backend),
                                    (pred.requires_grad_(), target.requires_grad_(), mask.requires_grad_()))


def test_opcheck(device):
    require("truncated_flow_loss", "cpp", device, torch.float32)
    pred, target = torch.randn(2, 2, 5, 4, device=device).requires_grad_(), torch.randn(2, 2, 5, 4, device=device)
    for mask in (torch.rand(2, 1, 5, 4, device=device), None):
        torch.library.opcheck(torch.ops.pscfast.truncated_flow_loss.default, (pred, target, mask, 1.5))
        torch.library.opcheck(torch.ops.pscfast._truncated_flow_loss_backward.default,
                              (torch.tensor(1.0, device=device), pred.detach(), target, mask, 1.5, [True] * 3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(device, backend):
    require("truncated_flow_loss", backend, device, torch.float32)
    pred = torch.randn(2, 2, 12, 12, device=device) * 3
    loss = [truncated_flow_loss(pred, pred.flip(-1), backend=backend) for _ in range(2)]
    assert torch.equal(loss[0], loss[1])


def test_module_equals_function():
    f, m = torch.randn(2, 2, 4, 5), torch.rand(2, 1, 4, 5)
    assert torch.equal(TruncatedFlowLoss(2.0)(f, f + 1, m), truncated_flow_loss(f, f + 1, m, 2.0))
    assert "T=2.0" in repr(TruncatedFlowLoss(2.0))


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda f, m: truncated_flow_loss(f[:, :1], f), ValueError, "pred must be (N, 2, H, W)"),
        (lambda f, m: truncated_flow_loss(f, f, m[:1]), ValueError, "batch sizes differ"),
        (lambda f, m: truncated_flow_loss(f, f[..., :3]), ValueError, "target must have the spatial size"),
        (lambda f, m: truncated_flow_loss(f, f, m, T=0), ValueError, "T must be a positive number"),
        (lambda f, m: truncated_flow_loss(f, f, m * float("nan")), ValueError, "mask contains NaN"),
        (lambda f, m: truncated_flow_loss(f, f.to("meta")), ValueError, "one device"),
    ],
)
def test_bad_input(make, error, words):
    f, m = torch.randn(2, 2, 4, 5), torch.rand(2, 1, 4, 5)
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        make(f, m)
