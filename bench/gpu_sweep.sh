#!/usr/bin/env bash
# The GPU sweep on an H100/H200, sized for a few minutes of GPU time: install pscfast for the visible GPU, run
# the test cases that use the GPU (CUDA and Triton against the reference), time every op and the training step,
# and leave a summary table, the JSON and every log in OUT_DIR.
#
#   bash bench/gpu_sweep.sh [OUT_DIR] [PHASE ...]   # OUT_DIR default: $OUT when set, else
#                                                   # bench/results/sweep-<date>
# PHASE: build, tests, bench, summary (default: all four, in that order).
#
# Time: the whole command keeps within SWEEP_BUDGET_S seconds (default 540). Each phase
# runs under what is left of it, less a reserve for the summary; the tests take at most TESTS_BUDGET_S
# (default 180) and each test case at most 240 s. A phase cut short keeps what it did: the benchmark JSON is
# rewritten after every case, and the suites run in order of importance (similarity loss, training step,
# correlation, warp, local correlation, consistency loss, displacement composition, truncated flow loss,
# soft-argmax).
# State lives in .sweep/ of the working tree, which stays between two commands on the same machine: a second
# command `bash bench/gpu_sweep.sh OUT_DIR bench summary` resumes the benchmarks after the cases already measured.
# OUT_DIR receives summary.md, the JSON, the similarity-loss plot and logs.tar.gz (build, info, peers, tests and
# bench logs, tests.xml).
# Build: pscfast is installed editable into the python that runs the sweep (pip, no network: setup.py maps
# kernels/ to pscfast.kernels there). An extension prebuilt on another machine from the same sources for this
# torch (bench/prebuild_gpu.sh, copied in as .prebuilt/<torch version>) is installed when it loads with CUDA
# kernels for this GPU (setup.py's PSCFAST_PREBUILT); else the install compiles it here.
# Uses the python3 that holds torch (PYTHON=... to choose); needs pip, setuptools >= 64, pytest and
# pytest-benchmark there, and uses pytest-xdist and pytest-timeout when they are installed.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

py=${PYTHON:-python3}
out=${1:-${OUT:-bench/results/sweep-$(date -u +%Y%m%dT%H%M)}}
shift || true
phases=" ${*:-build tests bench summary} "
budget=${SWEEP_BUDGET_S:-540}
reserve=25  # seconds kept for the summary and the copy to OUT_DIR
work=.sweep
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
status=0

want() { [[ "$phases" == *" $1 "* ]]; }
left() { echo $((budget - (SECONDS - start) - reserve)); }
has() { "$py" -c "import $1" 2>/dev/null; }
# run a phase's command under the time left (at most $1 seconds); SIGINT first, so pytest reports what it did
bounded() {
  local cap=$1 t
  shift
  t=$(left)
  ((t > cap)) && t=$cap
  if ((t < 10)); then echo "skipped: no time left in the ${budget} s budget"; return 1; fi
  timeout -s INT -k 15 "$t" "$@"
  local rc=$?
  ((rc == 124)) && echo "stopped at its ${t} s share of the budget"
  return $rc
}

if want build; then
  echo "== build ($(date -u +%T), ${SECONDS} s)"
  arch=$("$py" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  pre=.prebuilt/$("$py" -c "import torch; print(torch.__version__)")
  rm -f pscfast/_C*.so
  # editable, without network or build isolation: the extension compiles against this torch
  install=("$py" -m pip install -q --no-build-isolation --no-deps --no-index -e .)
  # an extension prebuilt elsewhere (bench/prebuild_gpu.sh) from these sources, for this torch and GPU
  if [[ -f $pre/_C.abi3.so && "$(cat "$pre/sources.sha256" 2>/dev/null)" == "$(bash bench/sources_hash.sh)" ]]; then
    if PSCFAST_PREBUILT=$pre/_C.abi3.so "${install[@]}" >> "$work/build.log" 2>&1 && "$py" -c "
import sys
from pscfast import _extension as e
info = e.build_info()
fits = e.loaded() and info.get('cuda') == 'yes' and not e.version_mismatch()
sys.exit(not (fits and any(a.startswith('$arch') for a in info.get('cuda_archs', '').split())))" \
      >> "$work/build.log" 2>&1
    then echo "prebuilt $pre/_C.abi3.so"
    else echo "prebuilt $pre/_C.abi3.so does not fit, building"; rm -f pscfast/_C.abi3.so
    fi
  fi
  if [[ ! -f pscfast/_C.abi3.so ]]; then
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} FORCE_CUDA=1 bounded 400 "${install[@]}" \
      >> "$work/build.log" 2>&1 || { echo "build failed: $work/build.log"; tail -30 "$work/build.log"
           tar -czf "$out/logs.tar.gz" "$work"; exit 1; }
  fi
  "$py" -m pscfast.info | tee "$work/info.txt"
  "$py" -c "
import sys, torch
from pscfast import _extension, kernels
why = [w for w in (None if torch.cuda.is_available() else 'torch sees no CUDA device',
                   None if _extension.has_kernel('warp', 'cuda') else 'pscfast._C has no CUDA kernels',
                   None if kernels.AVAILABLE else 'Triton: ' + str(kernels.UNAVAILABLE_REASON)) if w]
sys.exit('not ready for the GPU sweep: ' + '; '.join(why) if why else 0)" \
    || { tar -czf "$out/logs.tar.gz" "$work"; exit 1; }
  if [[ -d .whl ]]; then  # the peers, when their files were copied in (bench/install_peers.sh download);
    # built in the background while the tests run, waited for before the benchmarks
    PYTHON="$py" bash bench/install_peers.sh install > "$work/peers.log" 2>&1 &
    peers=$!
  fi
fi

if want tests; then
  echo "== tests that use the GPU ($(date -u +%T), ${SECONDS} s)"
  opts=()
  has xdist && opts+=(-n 8)
  has pytest_timeout && opts+=(--timeout 240)
  # no -x: one failure must not hide the rest of a scarce GPU run's results
  PSCFAST_EXPECT_CUDA_BUILD=1 PSCFAST_EXPECT_TRITON=1 \
    bounded "${TESTS_BUDGET_S:-180}" "$py" -m pytest tests --gpu-only -q -p no:cacheprovider "${opts[@]}" \
    --junitxml="$work/tests.xml" > "$work/tests.log" 2>&1 || status=1
  grep -E "^(FAILED|ERROR)" "$work/tests.log" | head -25
  tail -3 "$work/tests.log"
fi

if want bench; then
  [[ -n "${peers:-}" ]] && { wait "$peers" || echo "peer install failed: $work/peers.log"; }
  echo "== benchmarks ($(date -u +%T), ${SECONDS} s)"
  slug=$("$py" -c "from bench.conftest import device_slug; print(device_slug())")  # the suite's own file name
  suites=()
  for s in similarity_loss train_step correlation warp local_correlation consistency_loss compose_displacement \
      truncated_flow_loss kernel_soft_argmax; do
    suites+=("bench/bench_$s.py")
  done
  bounded 3600 "$py" -m pytest "${suites[@]}" --benchmark -q -p no:cacheprovider \
    --benchmark-disable-gc --bench-out "$work/latest-$slug.json" --bench-resume >> "$work/bench.log" 2>&1 || status=1
  tail -5 "$work/bench.log"
fi

if want summary; then
  echo "== summary ($(date -u +%T), ${SECONDS} s)"
  # the whole table is in summary.md; a caller that keeps only the end of the output still sees the rows of
  # the two headline cases and the test totals, printed last
  "$py" bench/report.py --results "$work" --summary "$work/summary.md" --no-readme > /dev/null \
    && grep -E "^\| (similarity_loss|train_step) " "$work/summary.md" | cut -c1-160
  [[ -f $work/tests.log ]] && echo "tests: $(tail -1 "$work/tests.log")"
fi
cp "$work"/*.json "$work"/*.png "$work"/summary.md "$out"/ 2>/dev/null
tar -czf "$out/logs.tar.gz" --exclude='*.json' --exclude='*.png' "$work"
echo "== done in ${SECONDS} s: $out"
exit $status
