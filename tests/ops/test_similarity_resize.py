"""The similarity loss's in-op resize (csrc/ops/common/resize_matrix.h and its Python twin kernels/_resize.py)
against F.interpolate + cat, and its adjoint against interpolate's autograd backward."""
import pytest
import torch

from pscfast.kernels import _resize
from pscfast.ops import _reference as ref
from tests.utils import assert_close, noncontiguous, require

# (H, W) of each layer for size 7: larger (downsampling), smaller, equal, equal in one axis only
RESIZE_SHAPES = [(13, 11), (5, 3), (7, 7), (7, 9), (1, 2)]


@pytest.mark.parametrize("impl", ["cpp", "python"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_resize_and_adjoint_match_interpolate(impl, dtype):
    """The op's resize (C++ resize_matrix.h, its Python twin kernels/_resize.py) against F.interpolate + cat,
    and its adjoint against interpolate's autograd backward, for one non-contiguous layer among them."""
    if impl == "cpp":
        require("similarity_loss", "cpp", "cpu", dtype)
    gen = torch.Generator().manual_seed(21)
    layers = [torch.randn(3, 2 + k, h, w, generator=gen, dtype=dtype) for k, (h, w) in enumerate(RESIZE_SHAPES)]
    layers[1] = noncontiguous(layers[1])
    size, n, c = 7, 3, sum(x.shape[1] for x in layers)
    grad = torch.randn(n, c, size * size, generator=gen, dtype=dtype)
    if impl == "cpp":
        got = torch.ops.pscfast_testing.similarity_resize(layers, size)
        got_adj = torch.ops.pscfast_testing.similarity_resize_adjoint(grad, layers, size)
    else:
        r = _resize.ConcatResize(layers, size, dtype)
        got, got_adj = r.resize(layers, 0, n), [torch.empty_like(x) for x in layers]
        r.adjoint(grad, 0, got_adj)
    xs = [x.clone().requires_grad_() for x in layers]
    exp = torch.cat([ref.resize_features(x, size) for x in xs], 1).flatten(2)
    exp_adj = torch.autograd.grad(exp, xs, grad)
    assert_close(got, exp.detach(), msg="resize")
    for k, (a, b) in enumerate(zip(got_adj, exp_adj)):
        assert a.shape == layers[k].shape
        assert_close(a, b, msg=f"adjoint of layer {k}")


def test_opcheck():
    require("similarity_loss", "cpp", "cpu", torch.float64)
    layers = [torch.rand(2, 5, 4, 3, dtype=torch.float64), torch.rand(2, 2, 3, 3, dtype=torch.float64)]
    torch.library.opcheck(torch.ops.pscfast_testing.similarity_resize.default, (layers, 3))
    torch.library.opcheck(torch.ops.pscfast_testing.similarity_resize_adjoint.default,
                          (torch.rand(2, 7, 9, dtype=torch.float64), layers, 3))


def test_test_only_ops_are_outside_the_public_namespace():
    """The resize ops exist for these tests alone: pscfast_testing::, not the public pscfast::."""
    require("similarity_loss", "cpp", "cpu", torch.float64)
    for name in ("similarity_resize", "similarity_resize_adjoint"):
        assert hasattr(torch.ops.pscfast_testing, name)
        assert not hasattr(torch.ops.pscfast, f"_{name}")
