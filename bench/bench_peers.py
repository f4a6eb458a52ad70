"""pscfast at other correspondence models' shapes, against the plain-PyTorch code those models run: GLU-Net,
SFNet, RAFT, FlowNetC and PWC-Net's cost volume (the cases and the models' code: bench/peers). Each op where
a model calls it, and minimal matching heads of RAFT, SFNet and GLU-Net built twice (plain PyTorch / pscfast
ops), forward, backward and both.

Providers: `naive` (the model's plain-PyTorch code, the baseline), `pscfast` (pscfast.ops with the default
backend, as a user calls them; the record's `backend` names the one the dispatcher chose) and `sampler`
(spatial-correlation-sampler, where the model's port calls it and the package is installed). float32
throughout; GLU-Net's feature warp and local cost volume also in bfloat16, to set each provider's half-
precision time against its float32 time (python bench/report.py tabulates the ratio).
"""
import pytest
import torch

from bench.conftest import bench_device, run_case
from bench.peers.cases import CASES
from pscfast.ops import OPS

DEVICE = bench_device()
PARAMS = [pytest.param(case, dtype, provider, id=f"{case.id}-{str(dtype).replace('torch.', '')}-{provider}")
          for case in CASES for dtype in case.dtypes for provider in case.providers]


@pytest.mark.parametrize("mode", ["fwd", "bwd", "fwd+bwd"])
@pytest.mark.parametrize("case,dtype,provider", PARAMS)
def test_peer(benchmark, case, dtype, provider, mode):
    why = case.why_not(provider, case.dims, dtype, DEVICE)
    if why:
        pytest.skip(f"{provider}: {why}")
    extra = {}
    if provider == "pscfast" and case.op in OPS:
        extra["backend"] = OPS[case.op].select(None, torch.empty(0, device=DEVICE, dtype=dtype))[0]

    def make_inputs():
        return case.make(case.dims, DEVICE, dtype)

    run_case(benchmark, op=case.op, provider=provider, mode=mode, shape=case.shape, device=DEVICE, dtype=dtype,
             make_inputs=make_inputs, call=case.providers[provider], rounds=20 if DEVICE == "cuda" else 5,
             extra=extra)
