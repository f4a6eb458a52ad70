"""Every op under torch.compile(fullgraph=True) and torch.export: one graph, no breaks, and the values and
gradients of the plain PyTorch reference run eagerly (not the same backend eagerly, which would share its
bugs). The backend choice is made while tracing (pscfast.ops._dispatch) and the compiled kernels are opaque
torch.library ops with fake and autograd implementations, so nothing in an op may break the graph."""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch._subclasses.fake_utils import CrossRefFakeMode

import pscfast.ops as P
from pscfast.ops._dispatch import OPS

from ..utils import BACKENDS, assert_close, noncontiguous, require

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _grid(n, h, w):
    return torch.rand(n, h, w, 2) * 2.2 - 1.1


# op name -> (call(backend, *tensors) -> one tensor, input tensors); odd sizes throughout
CASES = {
    "warp": (lambda b, x, g: P.warp(x, g, (9, 11), backend=b), lambda: (torch.randn(2, 3, 10, 7), _grid(2, 4, 5))),
    "correlation": (lambda b, s2, s3, t2, t3, g: P.correlation([s2, s3], [t2, t3], g, 5, scale=0.37, backend=b),
                    lambda: (torch.randn(2, 3, 10, 9), torch.randn(2, 4, 5, 5), torch.randn(2, 3, 7, 7),
                             torch.randn(2, 4, 4, 3), _grid(2, 5, 5))),
    "compose": (lambda b, f, g: P.compose(f, g, backend=b), lambda: (_grid(2, 5, 6), _grid(2, 5, 6))),
    "consistency_loss": (lambda b, f, g: P.consistency_loss(f, g, "bilinear", backend=b),
                         lambda: (_grid(2, 5, 6), _grid(2, 5, 6))),
    "compose_displacement": (lambda b, f, g: P.compose_displacement(f, g, backend=b)[0],
                             lambda: (3 * torch.randn(2, 2, 6, 7), 3 * torch.randn(2, 2, 6, 7))),
    "truncated_flow_loss": (lambda b, p, t: P.truncated_flow_loss(p, t, T=2.0, backend=b),
                            lambda: (3 * torch.randn(2, 2, 6, 7), 3 * torch.randn(2, 2, 6, 7))),
    "local_correlation": (lambda b, x, y: P.spatial_correlation_sample(x, y, (1, 2), (4, 5), 1, (0, 1), 1, (1, 2),
                                                                         backend=b).flatten(1, 2),
                          lambda: (torch.randn(2, 5, 7, 6), torch.randn(2, 5, 7, 6))),
    "similarity_loss": (lambda b, w2, w3, t2, t3: P.similarity_loss([w2, w3], [t2, t3], 0.05, 5, backend=b)[0],
                        lambda: (torch.rand(2, 3, 9, 9), torch.rand(2, 4, 5, 5), torch.rand(2, 3, 9, 9),
                                 torch.rand(2, 4, 5, 5))),
    "kernel_soft_argmax": (lambda b, c: P.kernel_soft_argmax(c, 20.0, 3.0, (4, 5), backend=b),
                           lambda: (torch.randn(2, 20, 5, 6),)),
}


def test_every_op_has_a_case():
    assert set(CASES) == set(OPS)


def _run(fn, inputs):
    """Output and input gradients for a random output gradient (fixed by the output's shape)."""
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*inputs)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    return out.detach(), torch.autograd.grad(out, inputs, gout)


def _setup(op, backend, device):
    require(op, backend, device, torch.float32)
    if backend == "triton" and device == "cpu":
        pytest.skip("the Triton interpreter runs eagerly; torch.compile of the Triton backend is checked on CUDA")
    call, make = CASES[op]
    torch.manual_seed(0)
    return (lambda *xs: call(backend, *xs)), [x.to(device) for x in make()]


def _reference(op):
    """The op on the torch backend (pscfast/ops/_reference.py), eager."""
    return lambda *xs: CASES[op][0]("torch", *xs)


def _assert_matches(actual, expected):
    (out, grads), (ref_out, ref_grads) = actual, expected
    assert_close(out, ref_out)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, scale=10.0)  # gradients sum over outputs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(CASES))
def test_compile_fullgraph(op, backend, device):
    fn, inputs = _setup(op, backend, device)
    torch._dynamo.reset()
    _assert_matches(_run(torch.compile(fn, backend="aot_eager", fullgraph=True), inputs),
                    _run(_reference(op), inputs))


# op name -> (call(backend, *tensors) -> one tensor, inputs(N, H, W)): every call below has new batch and spatial
# sizes, none equal to another (torch.compile would tie equal sizes into one symbol)
DYNAMIC = {
    "warp": (lambda b, x, g: P.warp(x, g, x.shape[-2:], backend=b),  # out_size: symbolic sizes of x
             lambda n, h, w: (torch.randn(n, 2, h, w), _grid(n, h - 3, w - 4))),
    "local_correlation": (lambda b, x, y: P.local_correlation(x, y, max_displacement=2, backend=b),
                          lambda n, h, w: (torch.randn(n, 6, h, w), torch.randn(n, 6, h, w))),
    "compose": (lambda b, f, g: P.compose(f, g, backend=b), lambda n, h, w: (_grid(n, h, w), _grid(n, h + 1, w + 3))),
    # the identity's axes are torch.linspace of the grid's sizes (bit for bit the reference's mask), whose
    # `steps` is an int: the grid sizes are specialised, the batch stays symbolic
    "consistency_loss": (lambda b, f, g: P.consistency_loss(f, g, "bilinear", backend=b),
                         lambda n, h, w: (_grid(n, 6, 7), _grid(n, 9, 11))),
    "compose_displacement": (lambda b, f, g: P.compose_displacement(f, g, backend=b)[0],
                             lambda n, h, w: (3 * torch.randn(n, 2, h, w), 3 * torch.randn(n, 2, h + 1, w + 3))),
    "truncated_flow_loss": (lambda b, p, t: P.truncated_flow_loss(p, t, T=2.0, backend=b),
                            lambda n, h, w: (3 * torch.randn(n, 2, h, w), 3 * torch.randn(n, 2, h, w))),
}


@pytest.mark.parametrize("op", list(DYNAMIC))
def test_dynamic_shapes_compile_once(op):
    """Under torch.compile(dynamic=True) the ops' sizes (SymInt in the schemas, symbolic in the fake and argument
    checks) stay symbolic: new shapes reuse the first graph, forward and backward, and match the reference."""
    require(op, "cpp", "cpu", torch.float32)
    call, make = DYNAMIC[op]
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    fn = torch.compile(lambda *xs: call("cpp", *xs), backend=counter, dynamic=True, fullgraph=True)
    frames = None
    for n, h, w in ((3, 8, 10), (5, 12, 7), (4, 10, 14)):
        torch.manual_seed(n)
        inputs = make(n, h, w)
        _assert_matches(_run(fn, inputs), _run(lambda *xs: call("torch", *xs), inputs))
        frames = counter.frame_count if frames is None else frames
    assert counter.frame_count == frames, f"{op} recompiled for new shapes"


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("op", list(CASES))
def test_fake_outputs_match_the_kernels(op, layout):
    """Each compiled op and its backward run on real and fake tensors side by side: shapes, dtypes and strides
    agree (inductor asserts the strides of opaque ops; a transposed input must still give contiguous grads)."""
    fn, inputs = _setup(op, "cpp", "cpu")
    if layout == "transposed":
        inputs = [noncontiguous(x) for x in inputs]
    inputs = [x.requires_grad_() for x in inputs]
    with CrossRefFakeMode():
        out = fn(*inputs)
        torch.autograd.grad(out, inputs, torch.ones_like(out))


@pytest.mark.parametrize("op", list(CASES))
def test_export(op):
    fn, inputs = _setup(op, "cpp", "cpu")

    class Module(torch.nn.Module):
        def forward(self, *xs):
            return fn(*xs)

    program = torch.export.export(Module(), tuple(inputs))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert f"pscfast.{op}.default" in targets, targets  # the compiled op itself, not a decomposition
    assert_close(program.module()(*inputs), _reference(op)(*inputs))


def test_inductor_around_an_op():
    """Inductor generates code for the arithmetic around the opaque op, forward and backward."""
    fn, (x, grid) = _setup("warp", "cpp", "cpu")
    torch._dynamo.reset()

    def step(warp, x, grid):
        return (warp(x * 2 + 1, grid.tanh()) ** 2).mean(dim=1)

    _assert_matches(_run(torch.compile(lambda x, g: step(fn, x, g), fullgraph=True), [x, grid]),
                    _run(lambda x, g: step(_reference("warp"), x, g), [x, grid]))
