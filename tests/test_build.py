"""The build itself: these fail loudly when the extension was silently built without its kernels.

CI sets PSCFAST_EXPECT_CUDA_BUILD=1 (the CUDA build of torch with nvcc: every .cu file must have compiled
and linked) and PSCFAST_EXPECT_TRITON=1 (Triton installed: every kernel module must import, and on CPU its
interpreter must run them).
"""
import importlib
import os
import pkgutil
import subprocess
import sys

import pytest
import torch

import pscfast
from pscfast import _extension
from pscfast.ops import OPS

COMPILED_OPS = sorted(name for name, op in OPS.items() if "cpp" in op.impls)


def _expected(flag):
    return os.environ.get(flag, "0") == "1"


def test_extension_loaded_with_openmp():
    assert _extension.loaded(), _extension.load_error()
    info = _extension.build_info()
    assert info["openmp"] != "no", "pscfast._C was compiled without OpenMP: its CPU kernels would run serially"
    assert _extension.version_mismatch() is None


@pytest.mark.parametrize("op", COMPILED_OPS)
def test_cpu_kernels_registered(op):
    assert _extension.has_kernel(op, "cpu"), f"pscfast._C has no CPU kernel for {op}"


@pytest.mark.skipif(not _expected("PSCFAST_EXPECT_CUDA_BUILD"), reason="PSCFAST_EXPECT_CUDA_BUILD is not set")
@pytest.mark.parametrize("op", COMPILED_OPS)
def test_cuda_kernels_compiled(op):
    assert _extension.build_info().get("cuda") == "yes", _extension.cuda_unavailable_reason()
    assert _extension.has_kernel(op, "cuda"), f"pscfast._C has no CUDA kernel for {op}"


def test_kernels_package_imports():
    import pscfast.kernels as kernels

    if _expected("PSCFAST_EXPECT_TRITON"):
        assert kernels.AVAILABLE, kernels.UNAVAILABLE_REASON
    if not kernels.AVAILABLE:
        pytest.skip(kernels.UNAVAILABLE_REASON)
    modules = [m.name for m in pkgutil.iter_modules(kernels.__path__)]
    for name in modules:
        importlib.import_module(f"pscfast.kernels.{name}")
    for name, op in OPS.items():
        if "triton" in op.impls:
            assert op.reason("triton", torch.device("cuda"), torch.float32) is None, name
    if _expected("PSCFAST_EXPECT_TRITON") and kernels.INTERPRET:  # else every CPU Triton test would skip
        from pscfast.kernels import _interpreter

        assert _interpreter.problem() is None, _interpreter.problem()


def test_info_cli():
    out = subprocess.run([sys.executable, "-m", "pscfast.info"], capture_output=True, text=True, check=True).stdout
    assert "CPU kernels:  yes" in out
    for name in OPS:
        assert name in out
    assert pscfast.__version__ in out
