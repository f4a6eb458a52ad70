"""similarity_loss: goldens, every backend against the PyTorch reference forward and backward (sizes,
channels, batch 1, odd sizes, signed features, layers larger, smaller and equal to the grid), the in-op
chunks of samples, gradcheck, opcheck, determinism, bad input (the in-op resize: test_similarity_resize.py)."""
import functools

import pytest
import torch

from pscfast.kernels import _resize
from pscfast.ops import SimilarityLoss, similarity_loss
from pscfast.ops import _reference as ref
from tests.utils import BACKENDS, assert_close, require

GOLDEN = "tests/data/golden-psc-ops.pt"


def _layers(n, c, signed, dtype, device, seed, hw=((13, 11), (7, 6))):
    """Two layers of different resolutions (by default 32x32-ish and 16x16-ish, odd sizes), c channels in all."""
    gen = torch.Generator().manual_seed(seed)
    draw = torch.randn if signed else torch.rand
    shapes = [(n, c // 2, *hw[0]), (n, c - c // 2, *hw[1])]
    return [draw(*s, generator=gen, dtype=dtype).to(device) for s in shapes]


def _run(fn, fw, ft, gout, tau, size, **kw):
    fw = [f.detach().clone().requires_grad_() for f in fw]
    ft = [f.detach().clone().requires_grad_() for f in ft]
    ce, weight = fn(fw, ft, tau, size, **kw)
    assert not weight.requires_grad
    grads = torch.autograd.grad(ce, fw + ft, gout)
    return ce, weight, grads


def _weight_scale(fw, ft, size):
    """The min-max scaling multiplies the raw row maxima's rounding by max / (max - min)."""
    fw = torch.cat([ref.resize_features(f.double(), size) for f in fw], 1).flatten(2)
    ft = torch.cat([ref.resize_features(f.double(), size) for f in ft], 1).flatten(2)
    s = torch.nn.functional.normalize(torch.nn.functional.normalize(fw.transpose(1, 2) @ ft, p=1, dim=1), p=1, dim=2)
    w = s.amax(2)
    return float(w.max() / (w.max() - w.min()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_golden(backend):
    if backend == "triton" and not torch.cuda.is_available():
        pytest.skip("size 16, C = 384 takes ~1 min in the Triton interpreter; covered on CUDA")
    require("similarity_loss", backend, "cuda" if backend == "triton" else "cpu", torch.float32)
    device = "cuda" if backend == "triton" else "cpu"
    g = torch.load(GOLDEN)
    tau, loss = float(g["sim_tau"]), 0
    for k in "12":
        fw = [f.to(device) for f in g[f"sim_fw{k}"].values()]
        ft = [f.to(device) for f in g[f"sim_ft{k}"].values()]
        ce, weight = similarity_loss(fw, ft, tau, 16, backend=backend)
        ce, weight = ce.cpu(), weight.cpu()
        torch.testing.assert_close(ce, g[f"sim_ce{k}"], rtol=1e-5, atol=0)
        # weight and loss: the min-max scaling amplifies rounding ~29x on these inputs, so the float32 golden
        # is itself 4.4e-5 (weight) and 3.5e-5 relative (loss) from the float64 value of the same formula;
        # a kernel that sums in another order cannot get closer than that (the torch backend is bitwise equal)
        torch.testing.assert_close(weight, g[f"sim_weight{k}"], rtol=0, atol=1e-4)
        loss = loss + (ce * weight).mean()
    torch.testing.assert_close(loss, g["sim_loss"], rtol=6e-5, atol=0)


# (N, C, size, signed)
CASES = [
    pytest.param((2, 8, 16, False), id="c8-16"),
    pytest.param((1, 24, 7, True), id="batch1-odd7-signed"),
    pytest.param((2, 96, 16, True), id="c96-16-signed"),
    pytest.param((2, 40, 32, False), id="c40-32"),
    pytest.param((3, 17, 11, False), id="odd-c17-11"),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("tau", [0.001, 0.05])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_matches_reference(device, backend, dtype, tau, case):
    n, c, size, signed = case
    if backend == "triton" and (dtype == torch.float64 or size > 11 or tau < 0.01) and device == "cpu":
        pytest.skip("interpreter: float32, size <= 11 and one tau keep the run short")
    require("similarity_loss", backend, device, dtype)
    fw = _layers(n, c, signed, dtype, device, seed=1 + c)
    ft = _layers(n, c, signed, dtype, device, seed=2 + c)
    gout = torch.rand(n, size * size, dtype=dtype, device=device)
    got = _run(similarity_loss, fw, ft, gout, tau, size, backend=backend)
    exp = _run(ref.similarity_loss, fw, ft, gout, tau, size)
    assert_close(got[0], exp[0], msg="ce")
    assert_close(got[1], exp[1], scale=_weight_scale(fw, ft, size), msg="weight")
    for i, (a, b) in enumerate(zip(got[2], exp[2])):
        assert_close(a, b, scale=float(b.abs().max()), msg=f"gradient of input {i}")


@pytest.mark.parametrize("c", [128, 1536])
def test_cpp_large_channels_and_size64(c):
    require("similarity_loss", "cpp", "cpu", torch.float32)
    size = 64 if c == 128 else 16
    fw, ft = _layers(1, c, False, torch.float32, "cpu", 5), _layers(1, c, False, torch.float32, "cpu", 6)
    gout = torch.rand(1, size * size)
    got = _run(similarity_loss, fw, ft, gout, 0.001, size, backend="cpp")
    exp = _run(ref.similarity_loss, fw, ft, gout, 0.001, size)
    assert_close(got[0], exp[0], msg="ce")
    assert_close(got[1], exp[1], scale=_weight_scale(fw, ft, size), msg="weight")
    for a, b in zip(got[2], exp[2]):
        assert_close(a, b, scale=float(b.abs().max()))


@pytest.mark.parametrize("case", [(16, (32, 32), (16, 16)), (32, (45, 64), (32, 32)), (6, (12, 9), (6, 6))],
                         ids=["g16", "g32-odd", "g6"])
@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_layers_larger_than_and_equal_to_the_grid(device, backend, case):
    """Layers downsampled to the grid (layer2 of R18 at g16) and layers already at its size (copied)."""
    size, *hw = case
    if backend == "triton" and device == "cpu" and size > 6:
        pytest.skip("interpreter: the small case keeps the run short")
    require("similarity_loss", backend, device, torch.float32)
    fw, ft = _layers(2, 24, True, torch.float32, device, 41, hw), _layers(2, 24, True, torch.float32, device, 42, hw)
    gout = torch.rand(2, size * size, device=device)
    got = _run(similarity_loss, fw, ft, gout, 0.05, size, backend=backend)
    exp = _run(ref.similarity_loss, fw, ft, gout, 0.05, size)
    assert_close(got[0], exp[0], msg="ce")
    assert_close(got[1], exp[1], scale=_weight_scale(fw, ft, size), msg="weight")
    for i, (a, b) in enumerate(zip(got[2], exp[2])):
        assert_close(a, b, scale=float(b.abs().max()), msg=f"gradient of input {i}")


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_gradcheck_float64(backend, signed):
    require("similarity_loss", backend, "cpu", torch.float64)
    draw = functools.partial(torch.randn if signed else torch.rand, dtype=torch.float64)
    fw = [draw(2, 2, 4, 4).requires_grad_(), draw(2, 1, 3, 2).requires_grad_()]
    ft = [draw(2, 2, 4, 4).requires_grad_(), draw(2, 1, 3, 2).requires_grad_()]
    # tau = 0.5 keeps the softmax well-conditioned for finite differences (tau = 0.001 is checked above)
    fn = lambda *x: similarity_loss(list(x[:2]), list(x[2:]), 0.5, 3, backend=backend)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (*fw, *ft))


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_gradgradcheck_float64(backend, signed):
    """Second derivatives (create_graph=True): before, the cpp backward was a constant to autograd, so
    they were silently zero."""
    require("similarity_loss", backend, "cpu", torch.float64)
    draw = functools.partial(torch.randn if signed else torch.rand, dtype=torch.float64)
    fw = [draw(1, 2, 3, 3).requires_grad_(), draw(1, 1, 2, 3).requires_grad_()]
    ft = [draw(1, 2, 3, 3).requires_grad_(), draw(1, 1, 2, 3).requires_grad_()]
    fn = lambda *x: similarity_loss(list(x[:2]), list(x[2:]), 0.5, 2, backend=backend)[0]  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (*fw, *ft))


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_second_derivative_equals_the_reference(backend):
    """A gradient penalty through the loss, float32 (the Triton kernels take no float64): the same
    gradient as through the reference; before, Triton returned detached gradients and cpp a zero."""
    require("similarity_loss", backend, "cpu", torch.float32)
    fw0, ft0 = _layers(2, 4, True, torch.float32, "cpu", 21), _layers(2, 4, True, torch.float32, "cpu", 22)

    def penalty_grad(fn):
        fw = [f.clone().requires_grad_() for f in fw0]
        ft = [f.clone().requires_grad_() for f in ft0]
        ce, _ = fn(fw, ft, 0.5, 4)
        grads = torch.autograd.grad(ce.sum(), fw + ft, create_graph=True)
        return torch.autograd.grad(sum(g.pow(2).sum() for g in grads), fw + ft)

    got = penalty_grad(lambda *a: similarity_loss(*a, backend=backend))
    expected = penalty_grad(ref.similarity_loss)
    for a, b in zip(got, expected):
        assert float(b.abs().max()) > 0
        assert_close(a, b, scale=float(b.abs().max()))


def test_opcheck():
    require("similarity_loss", "cpp", "cpu", torch.float64)
    for signed in (False, True):
        fw = [torch.rand(2, 5, 4, 3, dtype=torch.float64) - 0.5 * signed, torch.rand(2, 2, 2, 2, dtype=torch.float64)]
        ft = [torch.rand(2, 5, 3, 3, dtype=torch.float64), torch.rand(2, 2, 5, 4, dtype=torch.float64)]
        torch.library.opcheck(torch.ops.pscfast.similarity_loss.default,
                              ([f.requires_grad_() for f in fw], ft, 0.1, 3))
        fw = [f.detach() for f in fw]
        _, _, stats = torch.ops.pscfast.similarity_loss(fw, ft, 0.1, 3)
        g = torch.rand(2, 9, dtype=torch.float64)
        for mask in ([True, True], [True, False], [False, True], [False, False])[: 4 - 3 * signed]:
            torch.library.opcheck(torch.ops.pscfast._similarity_loss_backward.default,
                                  (g, fw, ft, stats, 0.1, 3, mask))


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_backward_output_mask(backend):
    """ATen's output_mask (fw, ft): the backward op and the Triton launcher return an empty list for a masked
    gradient and the others unchanged."""
    dtype = torch.float64 if backend == "cpp" else torch.float32  # the Triton kernels take no float64
    require("similarity_loss", backend, "cpu", dtype)
    fw = [torch.rand(2, 5, 4, 3, dtype=dtype), torch.rand(2, 2, 2, 2, dtype=dtype)]
    ft = [torch.rand(2, 5, 3, 3, dtype=dtype), torch.rand(2, 2, 5, 4, dtype=dtype)]
    if backend == "cpp":
        _, _, stats = torch.ops.pscfast.similarity_loss(fw, ft, 0.1, 3)
        backward = torch.ops.pscfast._similarity_loss_backward
    else:
        from pscfast.kernels import similarity_loss as k

        _, _, stats = k.similarity_loss(fw, ft, 0.1, 3)
        backward = k.similarity_loss_backward
    g = torch.rand(2, 9, dtype=dtype)
    full = backward(g, fw, ft, stats, 0.1, 3, [True, True])
    assert len(full[0]) == 2 and len(full[1]) == 2
    for mask in ([True, False], [False, True], [False, False]):
        got = backward(g, fw, ft, stats, 0.1, 3, mask)
        for want, grads, expected in zip(mask, got, full):
            assert len(grads) == (2 if want else 0)
            for a, b in zip(grads, expected):
                assert torch.equal(a, b)


def test_chunks_give_the_same_result_as_one_chunk(device, monkeypatch):
    """The CUDA and Triton paths resize a chunk of samples at a time; one sample per chunk changes nothing."""
    backend = "cpp" if device == "cuda" else "triton"
    require("similarity_loss", backend, device, torch.float32)
    fw, ft = _layers(3, 16, True, torch.float32, device, 31), _layers(3, 16, True, torch.float32, device, 32)
    gout = torch.rand(3, 36, device=device)
    whole = _run(similarity_loss, fw, ft, gout, 0.05, 6, backend=backend)
    monkeypatch.setenv("PSCFAST_SIMILARITY_CHUNK_BYTES", "1")
    assert len(_resize.chunks(3, 16, 36, 4)) == 3
    chunked = _run(similarity_loss, fw, ft, gout, 0.05, 6, backend=backend)
    torch.testing.assert_close(chunked[0], whole[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(chunked[1], whole[1], rtol=1e-6, atol=1e-7)
    for a, b in zip(chunked[2], whole[2]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7 * float(b.abs().max()))


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_backward_is_deterministic(device, backend):
    require("similarity_loss", backend, device, torch.float32)
    fw, ft = _layers(2, 32, True, torch.float32, device, 9), _layers(2, 32, True, torch.float32, device, 10)
    gout = torch.rand(2, 64, device=device)
    first = _run(similarity_loss, fw, ft, gout, 0.001, 8, backend=backend)
    second = _run(similarity_loss, fw, ft, gout, 0.001, 8, backend=backend)
    for a, b in zip((*first[:2], *first[2]), (*second[:2], *second[2])):
        assert torch.equal(a, b)


def test_target_gradient_only_when_required():
    require("similarity_loss", "cpp", "cpu", torch.float32)
    fw = [f.requires_grad_() for f in _layers(2, 8, False, torch.float32, "cpu", 11)]
    ft = _layers(2, 8, False, torch.float32, "cpu", 12)
    ce, _ = similarity_loss(fw, ft, backend="cpp", size=6)
    ce.sum().backward()
    assert all(f.grad is not None for f in fw) and all(f.grad is None for f in ft)
    expected = torch.autograd.grad(ref.similarity_loss(fw, ft, 0.001, 6)[0].sum(), fw)
    for a, b in zip((f.grad for f in fw), expected):
        assert_close(a, b, scale=float(b.abs().max()))


def test_bad_input():
    a, b = torch.rand(2, 4, 5, 5), torch.rand(2, 3, 5, 5)
    with pytest.raises(ValueError, match="same layers"):
        similarity_loss([a], [b])
    for tau in (0, -1.0, float("inf"), float("nan"), "0.1", True, None):
        with pytest.raises(ValueError, match=f"tau must be a positive finite number, got {tau!r}"):
            similarity_loss([a], [a], tau=tau)
    for size in ((3, 4), (4, 3)):
        with pytest.raises(ValueError, match="size must be one int .* rectangular grids are not supported"):
            similarity_loss([a], [a], size=size)
    for size in ("16", (3, 3, 3), 0, 2.5):
        with pytest.raises(ValueError, match="size must be a positive int"):
            similarity_loss([a], [a], size=size)
    with pytest.raises(TypeError, match="fw"):
        similarity_loss([], [a])
    with pytest.raises(ValueError, match="ft"):
        similarity_loss([a], [torch.rand(2, 4, 5)])
    with pytest.raises(ValueError, match="fw\\[0\\] has no channels"):
        similarity_loss([a[:, :0]], [a[:, :0]])
    with pytest.raises(ValueError, match="the batch is empty"):
        similarity_loss([a[:0]], [a[:0]])
    with pytest.raises(RuntimeError, match="ft"):
        torch.ops.pscfast.similarity_loss([a], [b], 0.1, 5)


def test_module_equals_function():
    fw, ft = _layers(2, 8, False, torch.float32, "cpu", 13), _layers(2, 8, False, torch.float32, "cpu", 14)
    for x, y in zip(SimilarityLoss(0.01, 6)(fw, ft), similarity_loss(fw, ft, 0.01, 6)):
        assert torch.equal(x, y)
    for x, y in zip(SimilarityLoss(0.01, (6, 6))(fw, ft), similarity_loss(fw, ft, 0.01, 6)):
        assert torch.equal(x, y)


@pytest.mark.parametrize("signed", [False, True], ids=["nonneg", "signed"])
def test_saved_stats_are_one_layout(signed):
    """The C++ op and the Triton launcher save the same stats (N, 3, P): raw column L1 sums, raw row L1 sums
    and the columns' log-sum-exp, so one backward could read the other's."""
    require("similarity_loss", "cpp", "cpu", torch.float32)
    require("similarity_loss", "triton", "cpu", torch.float32)
    from pscfast.kernels import similarity_loss as k

    g = torch.Generator().manual_seed(0)
    fw = [torch.rand(2, 5, 4, 3, generator=g) - 0.5 * signed, torch.rand(2, 2, 2, 2, generator=g)]
    ft = [torch.rand(2, 5, 3, 3, generator=g), torch.rand(2, 2, 5, 4, generator=g)]
    _, _, cpp = torch.ops.pscfast.similarity_loss(fw, ft, 0.1, 3)
    _, _, triton = k.similarity_loss(fw, ft, 0.1, 3)
    assert cpp.shape == triton.shape == (2, 3, 9)
    assert_close(triton, cpp)
