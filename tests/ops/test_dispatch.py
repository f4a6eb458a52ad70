"""Backend choice: argument, PSCFAST_BACKEND, default order, and refusals that give every reason."""
import pytest
import torch

from pscfast.ops import OPS, BackendUnavailable, warp
from pscfast.ops._dispatch import DEFAULT_ORDER


def test_default_is_first_available_in_order():
    op = OPS["warp"]
    name, _ = op.select(None, torch.zeros(1))
    expected = next(b for b in DEFAULT_ORDER["cpu"] if op.reason(b, torch.device("cpu"), torch.float32) is None)
    assert name == expected


def test_argument_and_environment(monkeypatch):
    op = OPS["warp"]
    assert op.select("torch", torch.zeros(1))[0] == "torch"
    monkeypatch.setenv("PSCFAST_BACKEND", "torch")
    assert op.select(None, torch.zeros(1))[0] == "torch"
    assert op.select("cpp", torch.zeros(1))[0] == "cpp"  # the argument wins over the environment
    monkeypatch.setenv("PSCFAST_BACKEND", "cpp, torch")
    assert op.select(None, torch.zeros(1, dtype=torch.float16))[0] == "torch"  # no fp16 CPU kernel
    monkeypatch.setenv("PSCFAST_BACKEND", "fastest")
    with pytest.raises(ValueError, match="PSCFAST_BACKEND: unknown backend 'fastest'"):
        op.select(None, torch.zeros(1))


def test_refusal_lists_each_reason(monkeypatch):
    monkeypatch.setenv("PSCFAST_BACKEND", "cpp,triton")
    x = torch.zeros(1, 1, 4, 4, device="meta")
    with pytest.raises(BackendUnavailable) as info:
        warp(x, torch.zeros(1, 2, 2, 2, device="meta"))
    text = str(info.value)
    assert "PSCFAST_BACKEND='cpp,triton'" in text and "meta" in text
    assert "cpp: no compiled kernel for meta tensors" in text
    assert "triton: " in text


def test_explicit_backend_with_unsupported_dtype():
    x, grid = torch.randn(1, 1, 4, 4, dtype=torch.float16), torch.zeros(1, 2, 2, 2, dtype=torch.float16)
    with pytest.raises(BackendUnavailable, match="cpp: the cpu kernel takes float32, float64, not float16"):
        warp(x, grid, backend="cpp")
    assert warp(x.float(), grid.float(), backend="torch").dtype == torch.float32
