#!/usr/bin/env bash
# The whole GPU sweep in one command, for one call on a lent H100/H200 (about 10 minutes):
# build pscfast for the visible GPU, run the test suite on it (CUDA and Triton correctness), time every op
# and the training step, and leave the JSON, the logs and a summary table in one folder.
#
#   bash bench/gpu_sweep.sh [OUT_DIR] [PHASE ...]   # OUT_DIR default: $OUT when set (the device tool's
#                                                   # folder), else bench/results/sweep-<date>
# PHASE: build, tests, bench, summary (default: all four, in that order). Device calls are limited to
# 10 minutes each: on a cold machine, `build tests` in one call and `bench summary` in the next fit.
# Uses the python3 that holds torch (PYTHON=... to choose); needs pytest and pytest-benchmark there.
set -uo pipefail
cd "$(dirname "$0")/.."

py=${PYTHON:-python3}
out=${1:-${OUT:-bench/results/sweep-$(date -u +%Y%m%dT%H%M)}}
shift || true
phases=" ${*:-build tests bench summary} "
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
status=0

want() { [[ "$phases" == *" $1 "* ]]; }

if want build; then
echo "== build ($(date -u +%T))"
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$py" -c \
  "import torch; print('%d.%d' % torch.cuda.get_device_capability())")} \
  FORCE_CUDA=1 "$py" setup.py -q build_ext --inplace > "$out/build.log" 2>&1 \
  || { echo "build failed: $out/build.log"; tail -30 "$out/build.log"; exit 1; }
"$py" -m pscfast.info | tee "$out/info.txt"
if [[ -d .whl ]]; then  # the peers, when their files were carried along (bench/install_peers.sh download)
  bash bench/install_peers.sh install > "$out/peers.log" 2>&1 || echo "peer install failed: $out/peers.log"
fi
fi

if want tests; then
echo "== tests on the GPU ($(date -u +%T))"
# no -x: one failure must not hide the rest of a scarce GPU session's results
"$py" -m pytest tests -q --maxfail=25 -p no:cacheprovider --junitxml="$out/tests.xml" > "$out/tests.log" 2>&1 \
  || status=1
grep -E "^(FAILED|ERROR)" "$out/tests.log" | head -25
tail -3 "$out/tests.log"
fi

if want bench; then
echo "== benchmarks ($(date -u +%T))"
slug=$("$py" -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name(0).lower()).strip('-'))")
"$py" -m pytest bench --benchmark -q -p no:cacheprovider --benchmark-disable-gc \
  --bench-out "$out/$slug.json" > "$out/bench.log" 2>&1 || status=1
tail -5 "$out/bench.log"
fi

if want summary; then
echo "== summary ($(date -u +%T))"
"$py" bench/report.py --results "$out" --summary "$out/summary.md" --no-readme > /dev/null && cat "$out/summary.md"
fi
exit $status
