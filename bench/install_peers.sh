#!/usr/bin/env bash
# The peer packages the benchmarks compare pscfast with (never pscfast dependencies):
# - spatial-correlation-sampler 0.5.0 (C++/CUDA extension). Its sdist does not build against a current torch
#   as published: torch's headers need C++20 (it asks for C++17) and it always builds the CUDA kernel. We patch
#   both: -std=c++20, and CPU_ONLY when there is no GPU (GPU_ARCH from the visible device otherwise).
# - localcorr (Triton kernels; a pure-Python wheel; CUDA only).
#
#   bash bench/install_peers.sh download   # needs the network: fetch both into .whl/ (git-ignored; copy it to
#                                          # a GPU machine without network)
#   bash bench/install_peers.sh install    # build and install from .whl/
# Both use PYTHON, else .venv/bin/python when there is one (bootstrap.sh's), else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
# the python3 that holds torch: the sampler's setup.py imports it even to be downloaded
py=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
dir=.whl
SAMPLER=spatial_correlation_sampler-0.5.0

case "${1:-}" in
download)
  mkdir -p "$dir"
  "$py" -m pip download --no-deps --no-build-isolation --no-binary :all: -d "$dir" "spatial-correlation-sampler==0.5.0"
  "$py" -m pip download --no-deps -d "$dir" localcorr
  ;;
install)
  [[ -f "$dir/$SAMPLER.tar.gz" ]] || { echo "no $dir/$SAMPLER.tar.gz: run '$0 download' first"; exit 1; }
  src=$(mktemp -d)
  tar xzf "$dir/$SAMPLER.tar.gz" -C "$src"
  arch=$("$py" -c "import torch; print('%d%d' % torch.cuda.get_device_capability() if torch.cuda.is_available() else '')")
  sed -i 's/-std=c++17/-std=c++20/' "$src/$SAMPLER/setup.py"
  [[ -n "$arch" ]] || sed -i 's/^CPU_ONLY = False/CPU_ONLY = True/' "$src/$SAMPLER/setup.py"
  # torch/extension.h reaches cuda_runtime.h even for a CPU-only build with a CUDA build of torch
  cuda_inc=$("$py" - <<'EOF' 2>/dev/null
import glob, os, site
from torch.utils.cpp_extension import CUDA_HOME
dirs = [f"{CUDA_HOME}/include", "/usr/local/cuda/include"] + [
    d for p in site.getsitepackages() for d in glob.glob(os.path.join(p, "nvidia", "*", "include"))]
print(next((d for d in dirs if os.path.isfile(os.path.join(d, "cuda_runtime.h"))), ""))
EOF
)
  CPATH="${cuda_inc}${CPATH:+:$CPATH}" GPU_ARCH="$arch" MAX_JOBS=${MAX_JOBS:-4} \
    "$py" -m pip install -q --no-deps --no-build-isolation "$src/$SAMPLER"
  rm -rf "$src"
  if compgen -G "$dir/localcorr-*.whl" > /dev/null; then
    "$py" -m pip install -q --no-deps "$dir"/localcorr-*.whl
  fi
  "$py" -c "import spatial_correlation_sampler; print('spatial_correlation_sampler installed')"
  ;;
*)
  echo "usage: $0 download|install"; exit 2
  ;;
esac
