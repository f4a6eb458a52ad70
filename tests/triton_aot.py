"""Compile every Triton kernel of pscfast for a GPU target on a machine without one (run as a script).

    python tests/triton_aot.py [--arch 90] [--out report.json]

Triton compiles to a cubin without a GPU (its LLVM and ptxas come with it); only the driver is missing.
A stand-in driver reports the target and every launch becomes a compile-only warm-up, so each op's forward
and backward, called through pscfast.ops with CPU tensors of every dtype the Triton backend takes, compiles
all the kernel variants a GPU run would launch, in the real compiler rather than the interpreter.
Nothing runs: the outputs are uninitialised. The report lists the kernels compiled, the shared memory each
needs (checked against the target's per-block limit, which a launch would otherwise hit), and the failures.
"""
import argparse
import json
import os
import sys
import traceback

os.environ.pop("TRITON_INTERPRET", None)  # the real compiler, not the interpreter
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402


# the most shared memory one block may use (opt-in), by compute capability; a launch beyond it fails
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}


class _TargetOnlyDriver:
    """Just enough of a driver for JITFunction.run to pick the target and compile."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


def _install(arch: int, case: dict) -> dict:
    """Launches compile only; returns {module.kernel: {case dtype: largest shared memory of its variants}}."""
    compiled = {}
    run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        per_dtype = compiled.setdefault(f"{self.fn.__module__}.{self.fn.__name__}", {})
        per_dtype[case["dtype"]] = max(per_dtype.get(case["dtype"], 0), kernel.metadata.shared)
        return kernel

    driver.set_active(_TargetOnlyDriver(arch))
    JITFunction.run = compile_only
    return compiled


def _cases(dtype):
    """(op name, function of dtype that calls the op forward and backward with backend="triton")."""
    from pscfast import ops

    def leaf(*shape, scale=1.0, shift=0.0):
        return (torch.rand(*shape) * scale + shift).to(dtype).requires_grad_()

    def backward(out):
        outs = out if isinstance(out, (tuple, list)) else (out,)
        torch.autograd.backward([o for o in outs if o.requires_grad],
                                [torch.ones_like(o) for o in outs if o.requires_grad])

    def grid(n, h, w):
        return leaf(n, h, w, 2, scale=1.8, shift=-0.9)

    t = dict(backend="triton")
    cases = [
        ("correlation", lambda: backward(ops.correlation([leaf(2, 8, 6, 5)], [leaf(2, 8, 7, 4)], size=4, **t))),
        ("correlation", lambda: backward(ops.correlation([leaf(2, 8, 6, 5), leaf(2, 5, 3, 3)],
                                                         [leaf(2, 8, 7, 4), leaf(2, 5, 3, 3)], grid(2, 4, 4),
                                                         size=4, **t))),
        ("correlation", lambda: backward(ops.correlation([leaf(2, 8, 6, 5)], [leaf(2, 8, 7, 4)], grid(2, 4, 3),
                                                         size=(4, 3), target_size=(2, 5), **t))),
        ("local_correlation", lambda: backward(ops.local_correlation(leaf(2, 8, 9, 9), leaf(2, 8, 9, 9), **t))),
        ("warp", lambda: backward(ops.warp(leaf(2, 3, 16, 16), grid(2, 4, 4), (16, 16), **t))),
        ("warp", lambda: backward(ops.warp(leaf(2, 3, 16, 16), grid(2, 16, 16), None, "bilinear", "border",
                                           False, **t))),
        ("warp", lambda: backward(ops.warp(leaf(2, 3, 16, 16), grid(2, 16, 16), None, "nearest", **t))),
        ("compose", lambda: backward(ops.compose(grid(2, 8, 8), grid(2, 8, 8), **t))),
        ("compose", lambda: backward(ops.compose(grid(2, 8, 8), grid(2, 8, 8), "nearest", **t))),
        ("consistency_loss", lambda: backward(ops.consistency_loss(grid(2, 8, 8), grid(2, 8, 8), **t))),
        ("consistency_loss", lambda: backward(ops.consistency_loss(grid(2, 8, 8), grid(2, 8, 8), "bilinear",
                                                                   **t))),
        ("compose_displacement", lambda: backward(ops.compose_displacement(
            leaf(2, 2, 8, 8), leaf(2, 2, 8, 8), leaf(2, 1, 8, 8), leaf(2, 1, 8, 8), **t))),
        # output_mask picks constexpr variants of the backward: without maps (the flows' gradients only), and
        # with the second flow a constant (the pointwise gradients only)
        ("compose_displacement", lambda: backward(ops.compose_displacement(leaf(2, 2, 8, 8), leaf(2, 2, 8, 8),
                                                                           **t))),
        ("compose_displacement", lambda: backward(ops.compose_displacement(
            leaf(2, 2, 8, 8), leaf(2, 2, 8, 8).detach(), leaf(2, 1, 8, 8), **t))),
        ("truncated_flow_loss", lambda: backward(ops.truncated_flow_loss(leaf(2, 2, 8, 8), leaf(2, 2, 8, 8),
                                                                         leaf(2, 1, 8, 8), **t))),
        ("truncated_flow_loss", lambda: backward(ops.truncated_flow_loss(  # d pred only, as PSC's training
            leaf(2, 2, 8, 8), leaf(2, 2, 8, 8).detach(), leaf(2, 1, 8, 8).detach(), **t))),
        ("kernel_soft_argmax", lambda: backward(ops.kernel_soft_argmax(leaf(2, 36, 5, 5), target_size=6, **t))),
        ("kernel_soft_argmax", lambda: backward(ops.kernel_soft_argmax(leaf(2, 12, 5, 5), target_size=(3, 4),
                                                                       normalize="sfnet", **t))),
        ("kernel_soft_argmax", lambda: backward(ops.kernel_soft_argmax(leaf(2, 12, 5, 5), target_size=(3, 4),
                                                                       normalize="none", **t))),
        ("similarity_loss", lambda: backward(ops.similarity_loss([leaf(2, 8, 6, 6)], [leaf(2, 8, 3, 3)],
                                                                 size=4, **t))),
        ("similarity_loss", lambda: backward(ops.similarity_loss(  # signed features: the exact |S| sums
            [leaf(2, 8, 6, 6, shift=-0.5)], [leaf(2, 8, 3, 3, shift=-0.5)], size=4, **t))),
    ]
    from pscfast.ops._dispatch import OPS

    return [(name, fn) for name, fn in cases if dtype in OPS[name].triton_dtypes]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    parser.add_argument("--out", help="write the report as JSON here")
    args = parser.parse_args(argv)

    case = {}
    compiled = _install(args.arch, case)
    import importlib
    import pkgutil

    from pscfast import kernels
    from pscfast.kernels import _interpreter

    for info in pkgutil.iter_modules(kernels.__path__):  # imported now, so they pick their GPU block sizes
        importlib.import_module(f"pscfast.kernels.{info.name}")
    kernels.INTERPRET = True  # let the dispatcher hand CPU tensors to the Triton backend ...
    _interpreter.problem = lambda: None  # ... whose launches only compile here
    failures = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        case["dtype"] = str(dtype).replace("torch.", "")
        for name, fn in _cases(dtype):
            try:
                fn()
            except Exception:  # report every failure, not just the first
                failures.append({"op": name, "dtype": str(dtype), "error": traceback.format_exc(limit=-6)})
    limit = SHARED_LIMIT.get(args.arch)
    for name, per_dtype in sorted(compiled.items()):
        for dtype, shared in per_dtype.items():
            if limit is not None and shared > limit:
                failures.append({"op": name, "dtype": dtype,
                                 "error": f"needs {shared} bytes of shared memory; sm_{args.arch} allows {limit}"})
    report = {"triton": triton.__version__, "torch": torch.__version__, "arch": args.arch,
              "compiled": sorted(compiled), "shared_bytes": compiled, "failures": failures}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print(f"Triton {triton.__version__}, sm_{args.arch}: {len(compiled)} kernels compiled, {len(failures)} failures")
    for f in failures:
        print(f"--- {f['op']} {f['dtype']}\n{f['error']}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
