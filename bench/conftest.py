"""pytest-benchmark harness for pscfast: `pytest bench --benchmark`.

Without --benchmark the suite is skipped (plain `pytest` runs only tests/). Each case times one provider
(a backend: torch = the naive PyTorch reference, cpp, triton) in one mode (fwd, bwd, fwd+bwd) at one shape,
and records peak memory beyond the resident inputs. Results go to pytest-benchmark's tables and to
--bench-out (default bench/results/latest-<device>.json) with device, versions, dtype and git revision,
rewritten after every case, so a run cut short (a time limit on the GPU machine) keeps what it measured;
--bench-resume keeps the file's cases and skips them, so a sweep can be split over several runs.
Method: bench/README.md.
"""
from __future__ import annotations

import ctypes
import datetime
import gc
import json
import os
import platform
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels on CPU tensors need the interpreter, set before import
    os.environ.setdefault("TRITON_INTERPRET", "1")

RESULTS: list[dict] = []
ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    group = parser.getgroup("pscfast")
    group.addoption("--benchmark", action="store_true", help="run the pscfast benchmark suite")
    group.addoption("--bench-out", default=None, help="JSON result file (default bench/results/latest-<device>.json)")
    group.addoption("--bench-triton-cpu", action="store_true",
                    help="also time Triton on CPU tensors (the interpreter: meaningless as speed, off by default)")
    group.addoption("--bench-resume", action="store_true",
                    help="keep the cases already in --bench-out and skip them (a sweep split over several calls)")


def pytest_configure(config):
    global _CPU_PEAK
    if config.getoption("--benchmark") and not torch.cuda.is_available():
        _CPU_PEAK = _CpuPeak()  # the allocator's timing setting before the suite allocates anything


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--benchmark"):
        skip = pytest.mark.skip(reason="benchmarks run with `pytest bench --benchmark`")
        for item in items:
            item.add_marker(skip)
        return
    global _OUT, _META
    _OUT = Path(config.getoption("--bench-out") or ROOT / "bench" / "results" / f"latest-{device_slug()}.json")
    if config.getoption("--bench-resume") and _OUT.exists():
        earlier = json.loads(_OUT.read_text())
        if earlier["meta"]["device"] != device_name(bench_device()):
            raise pytest.UsageError(f"--bench-resume: {_OUT} holds results of {earlier['meta']['device']}, "
                                    f"not of this machine's {device_name(bench_device())}")
        _META = earlier["meta"]  # the same machine: its ceilings stand
        RESULTS.extend(earlier["results"])
        done = {r.get("case") for r in RESULTS}
        skip = pytest.mark.skip(reason=f"measured in an earlier call ({_OUT.name})")
        for item in items:
            if item.nodeid in done:
                item.add_marker(skip)


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)
    except (OSError, AttributeError):
        pass
    return f"{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        # results a run has just written do not make the sources dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)bench/results"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_slug() -> str:
    """The device's name as a file name part: `latest-<slug>.json`."""
    return re.sub(r"[^a-z0-9]+", "-", device_name(bench_device()).lower()).strip("-")[:40]


def _meta(device: str) -> dict:
    import pscfast
    from bench import ceilings
    from pscfast import kernels

    triton_version = None
    if kernels.AVAILABLE:
        import triton

        triton_version = triton.__version__
    return {
        "device": device_name(device),
        "device_type": device,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "versions": {"pscfast": pscfast.__version__, "torch": torch.__version__, "triton": triton_version,
                     "cuda": torch.version.cuda, "python": platform.python_version()},
        "memory_method": MEMORY_METHOD[device],
        "ceilings": ceilings.measure(device),
    }


_OUT: Path | None = None  # the result file, set at collection
_META: dict | None = None  # measured (ceilings included) before the first case is saved


def record_result(benchmark, record: dict) -> None:
    """Keep one case's record and rewrite the result file with every record so far."""
    global _META
    record = {"case": benchmark.fullname, **record}  # the pytest node id, which --bench-resume skips
    benchmark.extra_info.update(record)
    RESULTS.append(record)
    if _OUT is None:
        return
    if _META is None:
        _META = _meta(record["device"])
    _OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = _OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": _META, "results": RESULTS}, indent=1) + "\n")
    tmp.replace(_OUT)  # a run killed mid-write leaves the previous complete file


def pytest_sessionfinish(session, exitstatus):
    if RESULTS and _OUT is not None and session.config.getoption("--benchmark"):
        print(f"\npscfast benchmark results: {_OUT}")


MEMORY_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated() during one call minus memory_allocated() before it",
    "cpu": "growth of the process's peak resident set (VmHWM, reset through /proc/self/clear_refs) during one "
           "call over the resident set before it; during that call glibc's mmap threshold is pinned at 64 KiB "
           "and free heap pages are trimmed first, so every tensor buffer maps and unmaps its own pages",
}


class _CpuPeak:
    """Peak resident memory of the process during a call, beyond what was resident before it.

    glibc serves a large allocation from its own mapping, unmapped on free, until a free raises its threshold
    to that size (up to 32 MiB): a running process reuses heap memory for its recurring tensors. The timed
    calls run that way, with the threshold and the trim threshold held where a warm process has them. The
    memory measurement needs the opposite, freed memory leaving the resident set: it pins the threshold at
    64 KiB, hands free heap pages back, and makes the call in a new thread, whose malloc arena holds none of
    the free chunks the timed calls left (glibc maps a buffer only when no free chunk fits it; reusing those
    chunks counted a sequence of temporaries as if all were alive at once). Then it restores the timing
    setting.
    """

    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    TIMING = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20}
    MEASURING = {M_MMAP_THRESHOLD: 64 << 10, M_TRIM_THRESHOLD: 128 << 10}

    def __init__(self):
        self.libc = ctypes.CDLL("libc.so.6")
        self._set(self.TIMING)

    def _set(self, setting: dict) -> None:
        for param, value in setting.items():
            self.libc.mallopt(param, value)

    @staticmethod
    def _kb(key: str) -> int:
        return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))

    def measure(self, fn) -> int:
        peak, error = [], []

        def call():
            try:
                Path("/proc/self/clear_refs").write_text("5")
                before = self._kb("VmRSS")
                fn()
                peak.append(max(0, self._kb("VmHWM") - before) * 1024)
            except BaseException as e:  # raised again in the calling thread
                error.append(e)

        self._set(self.MEASURING)
        try:
            self.libc.malloc_trim(0)
            thread = threading.Thread(target=call)
            thread.start()
            thread.join()
        finally:
            self._set(self.TIMING)
        if error:
            raise error[0]
        return peak[0]


_CPU_PEAK = None


def hold_timing_allocator() -> _CpuPeak:
    """glibc's thresholds held where a warm process has them (_CpuPeak.TIMING), as for every timed CPU call of the
    suite: bench/interleaved.py calls it before timing."""
    global _CPU_PEAK
    _CPU_PEAK = _CPU_PEAK or _CpuPeak()
    return _CPU_PEAK


def peak_bytes(fn, device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    return hold_timing_allocator().measure(fn)


def run_case(benchmark, *, op: str, provider: str, mode: str, shape: str, device: str, dtype: torch.dtype,
             **kw):
    """Time `call(*inputs)` (fwd), its backward (bwd) or both (fwd+bwd) over `rotate` input copies in turn.

    make_inputs() -> (inputs tuple, tensors that require grad). The output's backward uses a fixed
    random gradient. The peak memory comes from one extra fwd+bwd (or the mode's) call after warm-up.
    A case that runs out of GPU memory is recorded as such (median_s None) and skipped.
    """
    key = dict(op=op, provider=provider, mode=mode, shape=shape, device=device, dtype=dtype)
    try:
        return _run_case(benchmark, **key, **kw)
    except torch.OutOfMemoryError:
        pass  # outside the handler, so that the traceback's tensors are freed
    torch.cuda.empty_cache()
    record_result(benchmark, {**key, "dtype": str(dtype).replace("torch.", ""), "median_s": None,
                              "peak_bytes": None, "out_of_memory": True})
    pytest.skip(f"{provider} runs out of memory at {shape}")


def _run_case(benchmark, *, op: str, provider: str, mode: str, shape: str, device: str, dtype: torch.dtype,
              make_inputs, call, rounds: int, rotate: int = 3, extra: dict | None = None):
    sets = [make_inputs() for _ in range(rotate)]
    outs = [call(*inputs) for inputs, _ in sets]  # warm-up, autotune, and the gradient shapes
    grads = [grad_like(o) for o in outs]
    del outs
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    counter = iter(range(1 << 62))

    def pick():
        return next(counter) % rotate

    def fwd_setup():
        return (pick(),), {}

    def fwd(i):
        call(*sets[i][0])
        sync()

    def bwd_setup():
        i = pick()
        out = call(*sets[i][0])
        sync()
        return (out, i), {}

    def bwd(out, i):
        backward_and_clear(out, grads[i], sets[i][1])
        sync()

    def both(i):
        backward_and_clear(call(*sets[i][0]), grads[i], sets[i][1])
        sync()

    if mode == "fwd":
        target, setup = fwd, fwd_setup
    elif mode == "bwd":
        target, setup = bwd, bwd_setup
    else:
        target, setup = both, fwd_setup
    # one untimed pass of the mode, then the memory measurement of one more
    target(*setup()[0])
    if mode == "bwd":
        args = setup()[0]
        peak = peak_bytes(lambda: target(*args), device)
    else:
        peak = peak_bytes(lambda: target(0), device)
    benchmark.group = f"{op} {shape} {str(dtype).replace('torch.', '')} {mode}"
    # as timeit: no garbage collection inside the timed rounds (a collection over the suite's accumulated objects
    # costs more than a whole small call), and what the suite has built so far frozen out of later ones
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        benchmark.pedantic(target, setup=setup, rounds=_rounds(target, setup, rounds, device), iterations=1,
                           warmup_rounds=1)
    finally:
        gc.enable()
    stats = benchmark.stats.stats
    record = {"op": op, "provider": provider, "mode": mode, "shape": shape, "device": device,
              "dtype": str(dtype).replace("torch.", ""), "median_s": stats.median, "iqr_s": stats.iqr,
              "min_s": stats.min, "rounds": stats.rounds, "peak_bytes": peak, **(extra or {})}
    record_result(benchmark, record)
    return record


ROUND_BUDGET_S = {"cuda": 0.2, "cpu": 0.5}
SLOW_CASE_S = {"cuda": 2.0, "cpu": 10.0}  # the minimum rounds of a slower case would take longer than this
MAX_ROUNDS, MIN_ROUNDS = 200, 3


def _rounds(target, setup, min_rounds: int, device: str) -> int:
    """At least `min_rounds`, and as many more (up to MAX_ROUNDS) as fill the device's time budget at the
    speed of one timed call: fast cases get enough rounds for a stable median. A slow case (a naive version at
    batch 256) gets the rounds that fit in SLOW_CASE_S, at least MIN_ROUNDS: its median is stable with few,
    and a GPU's scarce minutes are better spent on the other cases."""
    args = setup()[0]
    t0 = time.perf_counter()
    target(*args)
    elapsed = max(time.perf_counter() - t0, 1e-6)
    if elapsed * min_rounds > SLOW_CASE_S[device]:
        return max(MIN_ROUNDS, int(SLOW_CASE_S[device] / elapsed))
    return max(min_rounds, min(MAX_ROUNDS, int(ROUND_BUDGET_S[device] / elapsed)))


def grad_like(out):
    """A fixed random gradient for each floating output (None for the others)."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [torch.randn_like(o) if o.is_floating_point() else None for o in outs]


def backward_and_clear(out, grads, leaves):
    """The backward of the outputs that require grad, then the leaves' gradients dropped (no accumulation)."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
    torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
    for t in leaves:
        t.grad = None


def bench_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def providers(op_name: str, device: str, dtype: torch.dtype, include_triton_cpu: bool):
    """The op's backends that can run here, as (provider, skip reason or None)."""
    from pscfast.ops import OPS

    op = OPS[op_name]
    out = []
    for name in ("torch", "cpp", "triton"):
        why = op.reason(name, torch.device(device), dtype)
        if name == "triton" and device == "cpu" and not include_triton_cpu:
            why = why or "Triton on CPU is the interpreter (pass --bench-triton-cpu to time it anyway)"
        out.append((name, why))
    return out
