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
import zipfile

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


def _checkout(dest) -> str:
    """A copy of the package's sources in ``dest``: pscfast/ (no extension, no kernels link), kernels/, setup.py."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(pscfast.__file__)))
    shutil.copytree(os.path.join(root, "pscfast"), dest / "pscfast",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__", "kernels"))
    shutil.copytree(os.path.join(root, "kernels"), dest / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy(os.path.join(root, name), dest)
    return str(dest)


def _bare_python(code: str, cwd) -> subprocess.CompletedProcess:
    """``python -S -c code``: no .pth files, so no installed pscfast; torch from site-packages on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join({sysconfig.get_paths()[k] for k in ("purelib", "platlib")})}
    return subprocess.run([sys.executable, "-S", "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_package_imports_nothing_from_outside_its_folder(tmp_path):
    """A checkout on sys.path (nothing installed) is the package and no more: its root's setup.py, tests or
    kernels/ do not become pscfast submodules."""
    _checkout(tmp_path)
    code = ("import importlib.util, pscfast; print(pscfast.__path__); "
            "print([m for m in ('pscfast.setup', 'pscfast.kernels') if importlib.util.find_spec(m)])")
    proc = _bare_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == [str([str(tmp_path / "pscfast")]), "[]"], proc.stdout


def test_an_editable_install_with_a_prebuilt_extension_maps_the_kernels(tmp_path):
    """The GPU sweep installs pscfast editable with PSCFAST_PREBUILT (an extension compiled elsewhere from the same
    sources, bench/prebuild_gpu.sh): setup.py copies it in place of compiling, and the editable install maps
    kernels/ to pscfast.kernels."""
    if not _extension.loaded():
        pytest.skip(_extension.load_error())
    src = _checkout(tmp_path / "src")
    build = subprocess.run([sys.executable, "-c", f"from setuptools import build_meta; "
                            f"print(build_meta.build_editable({str(tmp_path / 'wheel')!r}))"],
                           cwd=src, env={**os.environ, "PSCFAST_PREBUILT": pscfast._C.__file__}, capture_output=True,
                           text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = tmp_path / "wheel" / build.stdout.split()[-1]
    site_dir = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site_dir)
    # the site folder first: the environment running this test holds an editable finder of the same name. Run
    # from the checkout's root, as the sweep runs: pscfast is found there, pscfast.kernels through the mapping
    code = (f"import sys, site; sys.path.insert(0, {str(site_dir)!r}); site.addsitedir({str(site_dir)!r}); "
            "import pscfast, pscfast.kernels, pscfast._C; from pscfast import _extension; "
            "print(pscfast.__file__, pscfast.kernels.__file__, pscfast._C.__file__, "
            "_extension.has_kernel('warp', 'cpu'))")
    proc = _bare_python(code, src)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [os.path.join(src, "pscfast", "__init__.py"),
                                   os.path.join(src, "kernels", "__init__.py"),
                                   os.path.join(src, "pscfast", "_C.abi3.so"), "True"], proc.stdout
