"""The device's two ceilings, measured in the same run as the benchmarks: copy bandwidth and matrix rate.

Roofline fractions in the results divide an op's minimum bytes (or FLOPs) per second by these, so the
ceilings must come from the same machine and the same moment, not from a data sheet.

    python -m bench.ceilings            # prints the JSON for this machine's default device
"""
from __future__ import annotations

import json
import time

import torch


def _time(fn, device: str, repeats: int) -> float:
    """Median seconds of fn() over `repeats` calls after two warm-ups."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def copy_bandwidth(device: str) -> float:
    """Bytes per second of a device-to-device copy, counting bytes read and written."""
    n = (1 << 28) if device == "cuda" else (1 << 25)  # 1 GiB on a GPU, 128 MiB on a CPU (float32)
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    seconds = _time(lambda: dst.copy_(src), device, repeats=10)
    return 2 * src.numel() * src.element_size() / seconds


def matmul_rate(device: str, dtype: torch.dtype) -> float:
    """FLOP per second of one large square matrix product on random data."""
    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    seconds = _time(lambda: torch.matmul(a, b, out=out), device, repeats=10 if device == "cuda" else 3)
    return 2 * n**3 / seconds


def measure(device: str) -> dict:
    """The ceilings of `device` ("cuda" or "cpu"); fp32 matrix products without TF32."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        out = {"copy_bytes_per_s": copy_bandwidth(device), "fp32_flop_per_s": matmul_rate(device, torch.float32)}
        if device == "cuda":
            out["bf16_flop_per_s"] = matmul_rate(device, torch.bfloat16)
            out["fp16_flop_per_s"] = matmul_rate(device, torch.float16)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return out


if __name__ == "__main__":
    print(json.dumps(measure("cuda" if torch.cuda.is_available() else "cpu"), indent=1))
