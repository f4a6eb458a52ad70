#!/usr/bin/env bash
# The hash of what pscfast._C is compiled from (csrc/ and setup.py): bench/gpu_sweep.sh takes an extension
# prebuilt by bench/prebuild_gpu.sh only when its recorded hash is this one.
set -euo pipefail
cd "$(dirname "$0")/.."
find csrc setup.py -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1
