"""Time the providers of peer cases in alternating calls: `python bench/interleaved.py [filter ...]`.

The suite (`pytest bench --benchmark`) times each provider in a test of its own, minutes apart; on a shared
machine whose load drifts, a ratio within 15-20% of 1 can flip between runs. Here the plain-PyTorch and
pscfast versions of each case (bench/peers/cases.py; a filter keeps the case ids that contain it) run one call
each in turn, forward or forward and backward, and the ratio is of the medians of those paired rounds, with
glibc's allocator held as in the suite's timed calls (bench/conftest.py's _CpuPeak). The
results go to bench/results/interleaved/<device>.json with the device, versions and git revision (a folder
of their own, which bench/report.py renders after the suite's tables in bench/RESULTS.md).
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.conftest import (backward_and_clear, bench_device, device_name, device_slug, git_revision,  # noqa: E402
                            grad_like, hold_timing_allocator)
from bench.peers.cases import CASES  # noqa: E402

PROVIDERS = ("naive", "pscfast")


def measure(case, mode: str, rounds: int, device: str, dims: tuple | None = None, min_time: float = 0.0) -> dict:
    """Median seconds per provider over alternating calls, after one warm-up call each, at the case's shape (or
    `dims`): `rounds` rounds, more until the timed calls have taken `min_time` seconds (a case of microseconds
    needs thousands of rounds for a stable median on a shared machine)."""
    inputs, leaves = case.make(dims or case.dims, device, torch.float32)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    calls = {}
    for name in PROVIDERS:
        fn = case.providers[name]
        grads = grad_like(fn(*inputs))

        def call(fn=fn, grads=grads):
            out = fn(*inputs)
            if mode == "fwd+bwd":
                backward_and_clear(out, grads, leaves)
            sync()

        call()
        calls[name] = call
    times = {name: [] for name in PROVIDERS}
    gc.collect()
    gc.disable()
    spent, done = 0.0, 0
    try:
        while done < rounds or spent < min_time:
            for name in PROVIDERS:
                t0 = time.perf_counter()
                calls[name]()
                times[name].append(time.perf_counter() - t0)
                spent += times[name][-1]
            done += 1
    finally:
        gc.enable()
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    return {"case": case.id, "mode": mode, "rounds": done, "median_s": medians,
            "ratio": medians["naive"] / medians["pscfast"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("filters", nargs="*", help="keep the cases whose id contains one of these")
    parser.add_argument("--rounds", type=int, default=15, help="at least this many rounds per case and mode")
    parser.add_argument("--min-time", type=float, default=2.0,
                        help="and more rounds until the timed calls of a case and mode took this many seconds")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = bench_device()
    if device == "cpu":
        hold_timing_allocator()
    cases = [c for c in CASES if not args.filters or any(f in c.id for f in args.filters)]
    results = []
    for case in cases:
        for mode in ("fwd", "fwd+bwd"):
            r = measure(case, mode, args.rounds, device, min_time=args.min_time)
            results.append(r)
            print(f"{r['case']:48s} {mode:8s} {r['rounds']:6d} rounds  naive {r['median_s']['naive'] * 1e3:9.3f} ms  "
                  f"pscfast {r['median_s']['pscfast'] * 1e3:9.3f} ms  {r['ratio']:.2f}x", flush=True)
    out = args.out or ROOT / "bench" / "results" / "interleaved" / f"{device_slug()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": device_name(device), "torch": torch.__version__, "git": git_revision(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
