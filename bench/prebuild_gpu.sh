#!/usr/bin/env bash
# Build pscfast._C for a GPU machine here, on a machine with network and cores to spare, so that the GPU
# sweep skips its build (minutes of scarce GPU time; bench/gpu_sweep.sh takes the prebuilt extension when it
# matches).
#
#   bash bench/prebuild_gpu.sh [TORCH_REQUIREMENT] [ARCHS]   # default torch==2.11.0 (the torch of the H200
#                                                            # the sweep last ran on) and 9.0 (H100/H200)
#
# Makes .prebuilt/venv with that torch (a CUDA build from PyPI), compiles a copy of the tree there for ARCHS,
# and leaves .prebuilt/<torch version>/_C.abi3.so (limited API: any Python 3.9+) with sources.sha256, the
# hash of csrc/ and setup.py it was built from. Then copy ".prebuilt/<torch version>" into the GPU machine's
# checkout.
set -euo pipefail
cd "$(dirname "$0")/.."

req=${1:-torch==2.11.0}
archs=${2:-9.0}
venv=.prebuilt/venv
py=$venv/bin/python
[[ -x $py ]] || python3 -m venv "$venv"
"$py" -m pip install -q --upgrade pip setuptools wheel ninja numpy
"$py" -m pip install -q "$req"
version=$("$py" -c "import torch; print(torch.__version__)")
[[ -n $("$py" -c "import torch; print(torch.version.cuda or '')") ]] \
  || { echo "$req is a CPU-only build of torch: the device needs a CUDA build" >&2; exit 1; }

src=.prebuilt/src  # a copy of the sources, so this build's objects never mix with the working tree's
mkdir -p "$src"
rm -rf "$src"/csrc "$src"/pscfast "$src"/kernels
cp -rp setup.py pyproject.toml csrc pscfast kernels "$src"/  # -p: unchanged sources are not recompiled
rm -f "$src"/pscfast/*.so
(cd "$src" && FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$archs" MAX_JOBS=${MAX_JOBS:-$(nproc)} \
  "../../$py" setup.py -q build_ext --inplace)

dest=.prebuilt/$version
mkdir -p "$dest"
cp "$src"/pscfast/_C.abi3.so "$dest"/
bash bench/sources_hash.sh > "$dest/sources.sha256"
echo "$dest/_C.abi3.so: torch $version, archs $archs, sources $(cat "$dest/sources.sha256")"
