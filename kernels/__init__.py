"""pscfast's Triton kernels, installed as `pscfast.kernels`: one module per op with its forward and
backward, or <op>.py and <op>_backward.py where one module would be too long.

Kernels only compute and launch; autograd, argument checks and backend choice live in pscfast.ops.
This package imports without Triton: AVAILABLE and UNAVAILABLE_REASON say whether the op modules can load.
With TRITON_INTERPRET=1 set before the first import, the kernels run on CPU tensors (slowly; for tests).
"""
import os

try:
    import triton  # noqa: F401

    AVAILABLE = True
    UNAVAILABLE_REASON = None
except ImportError as exc:  # e.g. a CPU-only torch, which does not bring Triton
    AVAILABLE = False
    UNAVAILABLE_REASON = f"Triton is not installed ({exc})"

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
