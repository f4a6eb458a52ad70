"""The build itself: these fail loudly when the extension was silently built without its kernels.

CI sets PSCFAST_EXPECT_CUDA_BUILD=1 (the CUDA build of torch with nvcc: every .cu file must have compiled
and linked) and PSCFAST_EXPECT_TRITON=1 (Triton installed: every kernel module must import, and on CPU its
interpreter must run them).
"""
import importlib
import os
import pkgutil
import shutil
import subprocess
import sys
import sysconfig

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


def test_a_checkout_built_in_place_imports_its_triton_kernels(tmp_path):
    """`python setup.py build_ext --inplace` installs nothing, and setup.py maps kernels/ to pscfast.kernels
    only when it installs (the GPU sweep runs such a checkout): pscfast finds the checkout's kernels/ itself."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(pscfast.__file__)))
    skip = shutil.ignore_patterns("*.so", "__pycache__")
    for part in ("pscfast", "kernels"):
        shutil.copytree(os.path.join(root, part), tmp_path / part, ignore=skip)
    shutil.copy(os.path.join(root, "setup.py"), tmp_path)
    code = "from pscfast import kernels; print(kernels.__file__)"
    # -S: no .pth files, so no editable install of this checkout; torch from site-packages through PYTHONPATH
    env = {**os.environ, "PYTHONPATH": os.pathsep.join({sysconfig.get_paths()[k] for k in ("purelib", "platlib")})}
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(tmp_path / "kernels" / "__init__.py")
