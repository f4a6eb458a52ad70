"""2-process DDP with gloo on CPU via torchrun: gradients really are all-reduced (identical parameters on
every rank, equal to one process on the same global batch)."""
import os
import subprocess
import sys

import pytest
import torch

WORKER = os.path.join(os.path.dirname(__file__), "ddp_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(out, nproc, batch):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
           WORKER, str(out), str(batch)] if nproc > 1 else [sys.executable, WORKER, str(out), str(batch)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_process_gloo_ddp_matches_single_process(tmp_path):
    (tmp_path / "ddp").mkdir()
    (tmp_path / "single").mkdir()
    _run(tmp_path / "ddp", 2, 2)      # 2 ranks x 2 pairs ...
    _run(tmp_path / "single", 1, 4)   # ... = one process with the same 4 pairs per step
    r0, r1 = (torch.load(tmp_path / "ddp" / f"rank{i}.pt") for i in (0, 1))
    single = torch.load(tmp_path / "single" / "rank0.pt")
    init = torch.load(tmp_path / "single" / "init.pt")
    assert torch.equal(init["net_4x.0.weight"], torch.load(tmp_path / "ddp" / "init.pt")["net_4x.0.weight"])
    moved = 0
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
        if not r0[k].is_floating_point():
            assert torch.equal(r0[k], single[k]), k
            continue
        # one SGD step: compare the updates relative to their size (5%: float summation order in the global
        # BN; gradients that were not all-reduced, or summed instead of averaged, are off by 50-100%)
        d_ddp, d_single = r0[k] - init[k], single[k] - init[k]
        scale = d_single.abs().max().item()
        moved += scale > 0
        ulp = torch.finfo(torch.float32).eps * init[k].abs().max().item()  # an update of 1e-6 on a weight of 1
        torch.testing.assert_close(d_ddp, d_single, rtol=0, atol=5e-2 * scale + 4 * ulp + 1e-9, msg=k)
    assert moved > 10
