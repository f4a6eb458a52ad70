"""Guard-page fuzz of every op's compiled CPU kernels, forward and backward.

Each input (and each output gradient fed to a backward) lives in its own anonymous mapping whose data pages sit
between two PROT_NONE pages, placed so that its storage begins right after the first or ends right before the
second: a kernel that reads one element before or past a contiguous input faults at once. Shapes are random and
small, 1-pixel and odd sizes included, grids partly far outside [-1, 1]; in float64 every output and gradient
is also compared with the torch backend. The fuzz runs in a child process (a fault kills only the child; the
test reports the case it was running) with a fixed seed and a fixed number of cases per op.

Run by hand: python -m tests.ops.test_boundary_fuzz [--cases N] [--seed S].
"""
from __future__ import annotations

import argparse
import ctypes
import math
import mmap
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PAGE = mmap.PAGESIZE
PROT_NONE = 0
OPS = ("warp", "correlation", "compose", "consistency_loss", "compose_displacement", "truncated_flow_loss",
       "similarity_loss", "local_correlation", "kernel_soft_argmax")


class GuardedArena:
    """Tensors each in its own mapping, between two inaccessible pages."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.maps: list[mmap.mmap] = []  # the mappings must outlive their tensors
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

    def _protect(self, address: int) -> None:
        if self.libc.mprotect(address, PAGE, PROT_NONE) != 0:
            raise OSError(ctypes.get_errno(), "mprotect failed")

    def place(self, values: torch.Tensor, at_end: bool | None = None) -> torch.Tensor:
        """A contiguous copy of `values` whose storage starts right after a guard page or (at_end) ends right
        before one; at_end=None picks one at random."""
        at_end = self.rng.random() < 0.5 if at_end is None else at_end
        nbytes = values.numel() * values.element_size()
        pages = max(1, math.ceil(nbytes / PAGE))
        mm = mmap.mmap(-1, (pages + 2) * PAGE)
        address = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        self._protect(address)
        self._protect(address + (pages + 1) * PAGE)
        self.maps.append(mm)
        offset = PAGE + (pages * PAGE - nbytes if at_end else 0)
        t = torch.frombuffer(mm, dtype=values.dtype, count=values.numel(), offset=offset).view(values.shape)
        t.copy_(values)
        return t


# ---------------------------------------------------------------------------------------------------------------
# Random cases: (call(backend, *tensors) -> output or tuple of outputs, input tensors)

def _size(rng, low=1, high=7):
    """A spatial size, 1 and odd sizes favoured."""
    return rng.choice([1, 1, 2, 3, 5, 7, rng.randint(low, high)])


def _grid(rng, n, h, w, dtype):
    """Absolute grid points, mostly near [-1, 1] and some far outside (clamped by the kernels)."""
    g = torch.rand(n, h, w, 2, dtype=dtype) * 2.6 - 1.3
    far = torch.rand(n, h, w, 2) < 0.1
    return torch.where(far, torch.randn(n, h, w, 2, dtype=dtype) * 10.0 ** rng.randint(2, 6), g)


def _case(op: str, rng: random.Random, dtype):
    from pscfast import ops

    n = rng.randint(1, 2)
    if op == "warp":
        c, H, W, h, w = rng.randint(1, 3), _size(rng), _size(rng), _size(rng), _size(rng)
        out_size = None if rng.random() < 0.4 else (_size(rng, 1, 9), _size(rng, 1, 9))
        mode, pad, align = rng.choice(["bilinear", "nearest"]), rng.choice(["zeros", "border"]), rng.random() < 0.5
        return (lambda b, x, g: ops.warp(x, g, out_size, mode, pad, align, backend=b),
                [torch.randn(n, c, H, W, dtype=dtype), _grid(rng, n, h, w, dtype)])
    if op == "correlation":
        size, layers = rng.randint(1, 5), rng.randint(1, 2)
        src, tgt = [], []
        for _ in range(layers):
            c = rng.randint(1, 4)
            src.append(torch.randn(n, c, _size(rng), _size(rng), dtype=dtype))
            tgt.append(torch.randn(n, c, _size(rng), _size(rng), dtype=dtype))
        grid = [_grid(rng, n, size, size, dtype)] if rng.random() < 0.5 else []
        return (lambda b, *t: ops.correlation(list(t[:layers]), list(t[layers:2 * layers]),
                                              t[2 * layers] if grid else None, size, backend=b),
                src + tgt + grid)
    if op in ("compose", "consistency_loss"):
        mode = rng.choice(["bilinear", "nearest"])
        fn = ops.compose if op == "compose" else ops.consistency_loss
        return (lambda b, f, g: fn(f, g, mode, backend=b),
                [_grid(rng, n, _size(rng), _size(rng), dtype), _grid(rng, n, _size(rng), _size(rng), dtype)])
    if op == "compose_displacement":
        H, W, Hb, Wb = _size(rng), _size(rng), _size(rng), _size(rng)
        return (lambda b, *t: ops.compose_displacement(*t, backend=b),
                [3 * torch.randn(n, 2, H, W, dtype=dtype), 3 * torch.randn(n, 2, Hb, Wb, dtype=dtype),
                 torch.rand(n, 1, H, W, dtype=dtype), torch.rand(n, 1, Hb, Wb, dtype=dtype)])
    if op == "truncated_flow_loss":
        H, W, T = _size(rng), _size(rng), rng.choice([0.5, 2.0, 15.0])
        return (lambda b, *t: ops.truncated_flow_loss(*t, T=T, backend=b),
                [3 * torch.randn(n, 2, H, W, dtype=dtype), 3 * torch.randn(n, 2, H, W, dtype=dtype),
                 torch.rand(n, 1, H, W, dtype=dtype)])
    if op == "similarity_loss":
        size, layers = rng.randint(1, 4), rng.randint(1, 2)
        shift = rng.choice([0.0, -0.5])  # signed features too
        fw, ft = [], []
        for _ in range(layers):
            c = rng.randint(1, 4)
            fw.append(torch.rand(n, c, _size(rng), _size(rng), dtype=dtype) + shift)
            ft.append(torch.rand(n, c, _size(rng), _size(rng), dtype=dtype) + shift)
        return (lambda b, *t: ops.similarity_loss(list(t[:layers]), list(t[layers:]), 0.1, size, backend=b),
                fw + ft)
    if op == "local_correlation":
        kw = {name: (rng.randint(1, hi), rng.randint(1, hi)) for name, hi in
              (("kernel_size", 3), ("patch_size", 5), ("stride", 2), ("dilation", 2), ("dilation_patch", 2))}
        kw["padding"] = (rng.randint(0, 2), rng.randint(0, 2))
        H, W = (max(1, kw["dilation"][d] * (kw["kernel_size"][d] - 1) + 1 - 2 * kw["padding"][d]) + rng.randint(0, 4)
                for d in range(2))
        c = rng.randint(1, 5)
        return (lambda b, x, y: ops.local_correlation(x, y, **kw, backend=b),
                [torch.randn(n, c, H, W, dtype=dtype), torch.randn(n, c, H, W, dtype=dtype)])
    if op == "kernel_soft_argmax":
        ht, wt, hs, ws = _size(rng, 1, 5), _size(rng, 1, 5), _size(rng), _size(rng)
        beta, sigma = rng.choice([1.0, 50.0]), rng.choice([0.5, 5.0])
        return (lambda b, corr: ops.kernel_soft_argmax(corr, beta, sigma, (ht, wt), backend=b),
                [torch.randn(n, ht * wt, hs, ws, dtype=dtype)])
    raise ValueError(op)


def _outputs(result) -> list[torch.Tensor]:
    return [t for t in (result if isinstance(result, (tuple, list)) else (result,)) if t.requires_grad]


def run_case(op: str, rng: random.Random, dtype) -> None:
    """One random case on guarded memory: forward and backward on the cpp backend; in float64 both are
    compared with the torch backend."""
    call, values = _case(op, rng, dtype)
    arena = GuardedArena(rng)
    inputs = [arena.place(v).requires_grad_() for v in values]
    outs = _outputs(call("cpp", *inputs))
    gouts = [arena.place(torch.randn(o.shape, dtype=o.dtype)) for o in outs]
    grads = torch.autograd.grad(outs, inputs, gouts, allow_unused=True)
    for t in [*outs, *(g for g in grads if g is not None)]:
        assert torch.isfinite(t).all(), f"{op}: non-finite values"
    if dtype != torch.float64:
        return
    plain = [v.clone().requires_grad_() for v in values]
    ref_outs = _outputs(call("torch", *plain))
    ref_grads = torch.autograd.grad(ref_outs, plain, [g.clone() for g in gouts], allow_unused=True)
    for name, got, exp in [*zip(("output",) * len(outs), outs, ref_outs), *zip(("gradient",) * len(grads), grads,
                                                                                ref_grads)]:
        if got is None or exp is None:
            assert got is None or not got.any(), f"{op}: a gradient where the reference has none"
            continue
        scale = float(exp.abs().max()) if exp.numel() else 1.0
        torch.testing.assert_close(got, exp, rtol=1e-6, atol=1e-9 * max(1.0, scale), msg=lambda m: f"{op} {name}: {m}")


def fuzz(cases: int, seed: int, ops=OPS) -> None:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    for op in ops:
        for i in range(cases):
            dtype = torch.float64 if i % 2 == 0 else torch.float32
            print(f"{op} case {i} ({dtype})", flush=True)  # the last line names the case a fault interrupted
            run_case(op, rng, dtype)


def _child(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "tests.ops.test_boundary_fuzz", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _explain(proc: subprocess.CompletedProcess) -> str:
    how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
    last = proc.stdout.strip().splitlines()[-1:] or ["(no case started)"]
    return f"fuzz child {how} during: {last[0]}\n{proc.stderr[-3000:]}"


def _require_cpp():
    from tests.utils import require

    for op in OPS:
        require(op, "cpp", "cpu", torch.float64)


CASES = 80


def test_guard_page_fuzz_every_op():
    """80 random cases per op (half float64, compared with the torch backend; half float32): 720 cases."""
    _require_cpp()
    proc = _child("--cases", str(CASES), "--seed", "0")
    assert proc.returncode == 0, _explain(proc)
    assert proc.stdout.count(" case ") == CASES * len(OPS)


@pytest.mark.parametrize("side", ["end", "start"])
def test_guard_pages_catch_a_read_out_of_bounds(side):
    """The harness itself: reading one element past the end (before the start) of a tensor placed at the end
    (start) of its pages kills the child with SIGSEGV."""
    proc = _child("--fault", side)
    assert proc.returncode == -11, _explain(proc)


def _main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=CASES, help="random cases per op")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fault", choices=["end", "start"], help="read out of bounds on purpose (tests the harness)")
    args = parser.parse_args(argv)
    if args.fault:
        t = GuardedArena(random.Random(0)).place(torch.ones(8, dtype=torch.float64), at_end=args.fault == "end")
        address = t.data_ptr() + 8 * t.numel() if args.fault == "end" else t.data_ptr() - 8
        print(ctypes.c_double.from_address(address).value, flush=True)
        return
    import pscfast.ops  # noqa: F401  (registers the ops before the fuzz)

    fuzz(args.cases, args.seed)


if __name__ == "__main__":
    _main()
