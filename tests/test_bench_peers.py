"""The benchmark cases at other models' shapes (bench/peers, timed by bench/bench_peers.py): every provider of a
case computes what the model's plain-PyTorch code computes, forward and gradients, in float64 on a small
shape of the case's kind, whole heads included; so a ratio in the table compares equal work."""
import pytest
import torch

from bench.peers import cost_volume
from bench.peers.cases import CASES
from tests.utils import assert_close

PARAMS = [pytest.param(case, provider, id=f"{case.id}-{provider}")
          for case in CASES for provider in case.providers if provider != "naive"]


def _outputs_and_grads(case, provider, inputs, leaves, grads):
    out = case.canonical.get(provider, lambda o: o)(case.providers[provider](*inputs))
    outs = out if isinstance(out, tuple) else (out,)
    if grads is None:
        grads = [torch.randn_like(o) if o.requires_grad else None for o in outs]
    pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
    got = torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs])
    return [o.detach() for o in outs], list(got), grads


@pytest.mark.parametrize("case,provider", PARAMS)
def test_provider_matches_the_models_code(case, provider):
    why = case.why_not(provider, case.small, torch.float64, "cpu")
    if why:
        pytest.skip(f"{provider}: {why}")
    inputs, leaves = case.make(case.small, "cpu", torch.float64)
    expected, expected_grads, grads = _outputs_and_grads(case, "naive", inputs, leaves, None)
    got, got_grads, _ = _outputs_and_grads(case, provider, inputs, leaves, grads)
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.shape == e.shape, (i, g.shape, e.shape)
        assert_close(g, e, msg=f"{case.id} {provider}: output {i}")
    for leaf, g, e in zip(leaves, got_grads, expected_grads):
        # gradients sum many products (a head's over 12 iterations): atol relative to their size
        assert_close(g, e, scale=max(1.0, float(e.abs().max())),
                     msg=f"{case.id} {provider}: gradient of {tuple(leaf.shape)}")


def test_every_case_has_something_to_differentiate():
    """A bwd case whose inputs require no grad would time nothing."""
    for case in CASES:
        _, leaves = case.make(case.small, "cpu", torch.float32)
        assert leaves and all(t.requires_grad for t in leaves), case.id


def test_shift_and_multiply_is_the_textbook_cost_volume():
    """The naive cost volume itself against a direct loop over displacements (the baseline must be right)."""
    torch.manual_seed(1)
    a, b = torch.randn(1, 3, 5, 6, dtype=torch.float64), torch.randn(1, 3, 5, 6, dtype=torch.float64)
    radius, step = 2, 2
    out = cost_volume.shift_and_multiply(a, b, radius, step)
    k = 0
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            for y in range(5):
                for x in range(6):
                    yy, xx = y + dy * step, x + dx * step
                    want = (a[0, :, y, x] * b[0, :, yy, xx]).mean() if 0 <= yy < 5 and 0 <= xx < 6 else 0.0
                    assert abs(float(out[0, k, y, x]) - float(want)) < 1e-12, (dy, dx, y, x)
            k += 1


def test_report_sets_half_precision_against_float32_and_names_the_backend(tmp_path):
    from bench import report

    case = {"op": "warp", "shape": "GLU-Net-L3-B2-C256-32x32", "mode": "fwd", "device": "cpu", "peak_bytes": 2**21}
    run = {"meta": {"device": "a CPU", "device_type": "cpu", "versions": {"torch": "x"}, "git_revision": "r",
                    "date": "d"},
           "results": [{**case, "provider": "naive", "dtype": "float32", "median_s": 0.002},
                       {**case, "provider": "pscfast", "backend": "cpp", "dtype": "float32", "median_s": 0.001},
                       {**case, "provider": "naive", "dtype": "bfloat16", "median_s": 0.003},
                       {**case, "provider": "pscfast", "backend": "torch", "dtype": "bfloat16", "median_s": 0.04}],
           "path": tmp_path / "x.json"}
    rows = {tuple(c.strip() for c in line.strip("|").split("|")) for line in report.dtype_table(run).splitlines()
            if line.startswith("| warp")}
    assert rows == {("warp", case["shape"], "fwd", "naive", "bfloat16", "3.000", "2.000 (naive)", "1.50x"),
                    ("warp", case["shape"], "fwd", "pscfast: torch", "bfloat16", "40.000", "1.000 (pscfast: cpp)",
                     "40.00x")}
    main = [line for line in report.table(run).splitlines() if line.startswith("| warp")]
    assert any("| 1.000 (pscfast: cpp) | 2.00x |" in line for line in main), main
    assert report.dtype_table({**run, "results": run["results"][:2]}) is None


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_interleaved_timing_times_both_providers(mode):
    from bench import interleaved

    case = next(c for c in CASES if c.id == "warp-SFNet-mask-B16-1x16x16")
    r = interleaved.measure(case, mode, 3, "cpu", case.small)
    assert r["case"] == case.id and r["mode"] == mode and r["rounds"] == 3
    assert all(t > 0 for t in r["median_s"].values())
    assert r["ratio"] == r["median_s"]["naive"] / r["median_s"]["pscfast"]
    longer = interleaved.measure(case, mode, 3, "cpu", case.small, min_time=0.05)  # rounds until 50 ms are timed
    assert longer["rounds"] > 3 and longer["rounds"] * sum(longer["median_s"].values()) > 0.02
