"""Whether Triton's interpreter (TRITON_INTERPRET=1, CPU tensors) can run pscfast's kernels here.

Triton 3.6's interpreter turns a runtime loop bound (`range(0, C, BLOCK)` with C an argument) into int() of a
one-element NumPy array, which NumPy 2.4 and later refuse ("only 0-dimensional arrays can be converted to
Python scalars"); every pscfast kernel loops that way. A GPU compiles the kernels and is not affected.
"""
import functools

import torch
import triton
import triton.language as tl


@triton.jit
def _probe_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], tl.float32)
    for i0 in range(0, n, BLOCK):
        idx = i0 + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + idx, mask=idx < n, other=0.0)
    tl.store(out_ptr, tl.sum(acc, axis=0))


@functools.lru_cache(maxsize=None)
def problem() -> str | None:
    """None when a runtime-bounded loop runs correctly in the interpreter, else why not (with versions)."""
    import numpy

    x, out = torch.arange(10, dtype=torch.float32), torch.zeros(1)
    try:
        _probe_kernel[(1,)](x, out, 10, BLOCK=4)
    except Exception as exc:  # the interpreter's own failure, whatever its type
        return (f"Triton {triton.__version__}'s interpreter cannot run these kernels with NumPy "
                f"{numpy.__version__} ({type(exc).__name__}: {exc}); a newer Triton (3.8 runs them) or NumPy < 2.4 "
                "does")
    if out.item() != 45.0:
        return f"Triton {triton.__version__}'s interpreter gave {out.item()} for a sum of 45"
    return None
