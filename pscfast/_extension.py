"""Loading of the compiled operator library pscfast._C and what it was built with.

pscfast stays importable when the extension is missing or broken (the `torch` and `triton` backends need
no compilation); the reason is kept and reported by `python -m pscfast.info` and in backend refusals.
"""
from __future__ import annotations

import functools

import torch

_LOAD_ERROR: str | None = None
try:
    from pscfast import _C  # noqa: F401  (loading registers the pscfast:: operators)
except ImportError as exc:  # not built, or built against another torch (undefined symbols)
    _LOAD_ERROR = (
        f"pscfast._C could not be loaded ({exc}); build it with `pip install --no-build-isolation -e .` "
        "against the torch installed here"
    )


def loaded() -> bool:
    return _LOAD_ERROR is None


def load_error() -> str | None:
    return _LOAD_ERROR


@functools.lru_cache(maxsize=None)
def build_info() -> dict:
    """Key-value pairs the extension was compiled with (torch version, OpenMP, CUDA, architectures)."""
    if not loaded():
        return {}
    pairs = (item.split("=", 1) for item in torch.ops.pscfast._build_info().split(";"))
    return {key: value for key, value in pairs}


def has_kernel(op: str, device_type: str) -> bool:
    """Whether pscfast::<op> has a compiled kernel for a device type ("cpu" or "cuda")."""
    if not loaded():
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"pscfast::{op}", key)


def cuda_unavailable_reason() -> str:
    """Why the extension holds no CUDA kernels, in words."""
    if not loaded():
        return _LOAD_ERROR
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    return "pscfast._C was built without CUDA kernels (no toolkit at build time, or PSCFAST_FORCE_NO_CUDA=1)"


def version_mismatch() -> str | None:
    """A warning when the extension was compiled against a torch other than the one running."""
    built = build_info().get("torch")
    if built and built != torch.__version__:
        return f"pscfast._C was built against torch {built} but torch {torch.__version__} is running: rebuild it"
    return None
