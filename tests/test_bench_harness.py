"""The benchmark harness and the GPU sweep's selection, on CPU: a GPU's scarce minutes must not be lost to them.

`pytest bench --benchmark` rewrites its JSON after every case and `--bench-resume` skips what the file holds (a
sweep split over two calls); the report shows a case that ran out of memory as such; `--gpu-only` keeps
every case that can use a GPU and drops the CPU-only ones.
"""
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from bench import report

ROOT = Path(__file__).resolve().parent.parent
CASES = ["bench/bench_truncated_flow_loss.py", "-k", "truncated_flow_loss and g16"]


def _pytest(*args):
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def test_results_are_saved_per_case_and_resumed(tmp_path):
    out = tmp_path / "run.json"
    rc, log = _pytest(*CASES, "--benchmark", "--bench-out", str(out))
    assert rc == 0, log
    first = json.loads(out.read_text())
    cases = [r["case"] for r in first["results"]]
    assert len(cases) == 4 and len(set(cases)) == 4, cases  # torch and cpp, fwd and fwd+bwd (triton: skipped)
    assert all(c.startswith("bench/bench_truncated_flow_loss.py::test_truncated_flow_loss[B64-g16-") for c in cases)
    assert first["meta"]["ceilings"]["copy_bytes_per_s"] > 0

    rc, log = _pytest(*CASES, "--benchmark", "--bench-out", str(out), "--bench-resume")
    assert rc == 0, log
    assert re.search(r"SKIPPED \[4\] .*: measured in an earlier call \(run.json\)", log), log
    second = json.loads(out.read_text())
    assert second == first  # nothing measured again, nothing lost

    # a file with some cases missing (a call cut short): resume measures only those
    first["results"] = first["results"][:1]
    out.write_text(json.dumps(first))
    rc, log = _pytest(*CASES, "--benchmark", "--bench-out", str(out), "--bench-resume")
    assert rc == 0, log
    third = json.loads(out.read_text())
    assert [r["case"] for r in third["results"]][0] == cases[0]
    assert sorted(r["case"] for r in third["results"]) == sorted(cases)


def test_a_run_killed_midway_keeps_the_cases_it_measured(tmp_path):
    out = tmp_path / "run.json"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CASES, "--benchmark",
                             "--bench-out", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()  # as a time limit does
    proc.wait()
    results = json.loads(out.read_text())["results"]
    assert 1 <= len(results) < 4, [r["case"] for r in results]  # written per case, not at the end


def test_report_shows_a_naive_out_of_memory_case(tmp_path):
    rec = {"op": "similarity_loss", "shape": "B256-R18-g64", "dtype": "float32", "mode": "fwd+bwd", "device": "cuda"}
    run = {"meta": {"device": "a GPU", "device_type": "cuda", "versions": {"torch": "x"}, "git_revision": "r",
                    "date": "d", "ceilings": {"fp32_flop_per_s": 5e13}},
           "results": [{**rec, "provider": "torch", "median_s": None, "peak_bytes": None, "out_of_memory": True},
                       {**rec, "provider": "cpp", "median_s": 0.5, "peak_bytes": 2**30, "min_flops": 1e13}],
           "path": tmp_path / "x.json"}
    row = next(line for line in report.table(run).splitlines() if line.startswith("| similarity_loss"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4:10] == ["out of memory", "500.000 (cpp)", "-", "-", "1,024.0", "-"], cells
    assert cells[10] == "40% of matmul"


def test_report_renders_an_interleaved_run(tmp_path):
    run = {"meta": {"device": "a CPU", "torch": "x", "git": "r", "date": "2026-01-02T03:04:05+0000"},
           "results": [{"case": "warp-SFNet-mask-B16-1x16x16", "mode": "fwd+bwd", "rounds": 7,
                        "median_s": {"naive": 4e-5, "pscfast": 2.5e-5}, "ratio": 1.6}]}
    (tmp_path / "interleaved").mkdir()
    (tmp_path / "interleaved" / "a-cpu.json").write_text(json.dumps(run))
    (loaded,) = report.load_interleaved(tmp_path)
    text = report.interleaved_table(loaded)
    assert "**a CPU**, torch x, git r, 2026-01-02" in text
    row = next(line for line in text.splitlines() if line.startswith("| warp-"))
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "warp-SFNet-mask-B16-1x16x16", "fwd+bwd", "7", "0.040", "0.025", "1.60x"]


def test_gpu_only_keeps_the_cases_that_can_use_a_gpu():
    rc, log = _pytest("tests/ops/test_warp.py", "--collect-only", "--gpu-only")
    assert rc == 0, log
    kept = {line.split("::", 1)[1] for line in log.splitlines() if "::" in line}
    assert "test_half_precision_error_within_twice_naive[cpp-dtype0]" in kept  # device fixed to cuda: marker
    assert "test_identity_grid_reproduces_input[cuda-torch-True]" in kept
    assert "test_identity_grid_reproduces_input[cpu-triton-True]" in kept  # skips on a GPU machine, cheaply
    assert not any("[cpu-cpp" in k or "[cpu-torch" in k for k in kept), kept


PEAK_SCRIPT = """
import torch
from bench.conftest import _CpuPeak

peak = _CpuPeak()
# what timed calls leave behind: free heap memory (buffers under the 32 MiB mmap threshold come from the heap)
junk = [torch.ones(6 << 20) for _ in range(8)]
del junk

def one_at_a_time():  # 16 temporaries of 4-5 MiB, at most two alive at once
    for k in range(16):
        t = torch.ones((1 << 20) + k * 16384)

def all_at_once():  # 8 buffers of 4 MiB alive together
    kept = [torch.ones(1 << 20) for _ in range(8)]

print(peak.measure(one_at_a_time), peak.measure(all_at_once))
"""


def test_cpu_peak_memory_counts_live_buffers_not_freed_ones():
    """The CPU peak is the most memory alive at once during the call: a sequence of temporaries counts as one or
    two of them, not as their sum, even after timed calls have left free chunks in the heap."""
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    sequence, together = (int(v) / 2**20 for v in proc.stdout.split())
    assert sequence < 12, f"16 temporaries of 4-5 MiB measured as {sequence:.1f} MiB"
    assert 31 < together < 40, f"8 live buffers of 4 MiB measured as {together:.1f} MiB"


def test_cpu_peak_memory_raises_what_the_call_raised():
    script = ("from bench.conftest import _CpuPeak\n"
              "def fail():\n    raise ValueError('inside the measured call')\n"
              "try:\n    _CpuPeak().measure(fail)\nexcept ValueError as e:\n    print('caught', e)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "caught inside the measured call"
