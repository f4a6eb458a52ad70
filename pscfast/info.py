"""`python -m pscfast.info`: versions, what was built, and which backend serves each op here."""
from __future__ import annotations

import platform
import sys

import torch

import pscfast
from pscfast import _extension, kernels
from pscfast.ops._dispatch import DEFAULT_ORDER, OPS, BackendUnavailable


def _serving(op, device: str, dtype: torch.dtype) -> str:
    order = DEFAULT_ORDER.get(device, ("torch",))
    for name in order:
        if op.reason(name, torch.device(device), dtype) is None:
            return name
    raise BackendUnavailable(op.name)


def _dtypes(dtypes) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes) or "-"


def report() -> str:
    info = _extension.build_info()
    cuda_built = info.get("cuda") == "yes"
    lines = [
        f"pscfast {pscfast.__version__}  python {platform.python_version()}  torch {torch.__version__}"
        f"  triton {getattr(sys.modules.get('triton'), '__version__', 'not installed')}",
        f"CUDA device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}",
        "",
        f"pscfast._C: {'loaded' if _extension.loaded() else _extension.load_error()}",
        f"  CPU kernels:  {'yes (OpenMP ' + info['openmp'] + ')' if info.get('openmp', 'no') != 'no' else 'no'}",
        f"  CUDA kernels: {'yes, compiled for ' + info.get('cuda_archs', '?') if cuda_built else 'no'}",
        f"  built against torch {info.get('torch', '-')}",
        f"Triton kernels: {'yes' if kernels.AVAILABLE else 'no: ' + kernels.UNAVAILABLE_REASON}"
        f"{' (TRITON_INTERPRET=1: CPU tensors too)' if kernels.INTERPRET else ''}",
    ]
    if _extension.version_mismatch():
        lines.append(f"WARNING: {_extension.version_mismatch()}")
    here = "" if torch.cuda.is_available() else " (no device here)"
    lines += ["", f"{'op':<24}{'CPU float32':<14}CUDA float32{here}"]
    for name, op in sorted(OPS.items()):
        lines.append(f"{name:<24}{_serving(op, 'cpu', torch.float32):<14}{_serving(op, 'cuda', torch.float32)}")
    # torch, the reference, takes every floating dtype; it runs, with a warning, where no compiled kernel does
    lines += ["", "dtypes each compiled backend takes (others run the reference)",
              f"{'op':<24}{'cpp CPU':<38}{'cpp CUDA':<38}triton"]
    for name, op in sorted(OPS.items()):
        cpp_cpu, cpp_cuda = (_dtypes(op.cpp_dtypes.get(d, ())) for d in ("cpu", "cuda"))
        lines.append(f"{name:<24}{cpp_cpu:<38}{cpp_cuda:<38}{_dtypes(op.triton_dtypes)}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
