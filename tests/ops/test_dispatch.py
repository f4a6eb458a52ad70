"""Backend choice: argument, PSCFAST_BACKEND, default order, and refusals that give every reason."""
import warnings

import pytest
import torch

from pscfast.ops import OPS, BackendUnavailable, compose, warp
from pscfast.ops import _dispatch
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
    assert OPS["compose"].select(None, torch.zeros(1, dtype=torch.float16))[0] == "torch"  # no fp16 CPU kernel
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
    f_ab, f_bc = torch.zeros(1, 4, 4, 2, dtype=torch.float16), torch.zeros(1, 4, 4, 2, dtype=torch.float16)
    with pytest.raises(BackendUnavailable, match="cpp: the cpu kernel takes float32, float64, not float16"):
        compose(f_ab, f_bc, backend="cpp")
    assert compose(f_ab.float(), f_bc.float(), backend="torch").dtype == torch.float32


def test_fallback_to_the_reference_warns_once(monkeypatch):
    monkeypatch.setattr(_dispatch, "_WARNED", set())
    _dispatch._choose.cache_clear()
    monkeypatch.setattr(OPS["compose"], "_chosen", {})
    f = torch.zeros(1, 4, 4, 2, dtype=torch.float16)
    with pytest.warns(UserWarning, match="compose: running the plain PyTorch reference on cpu float16"):
        compose(f, f)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compose(f, f)
        compose(f, f, backend="torch")  # asked for: no warning


def test_info_lists_the_dtypes_of_each_backend():
    from pscfast import info

    rows = {line.split()[0]: line for line in info.report().splitlines()[-len(OPS):]}
    assert set(rows) == set(OPS)
    for name, op in OPS.items():
        listed = ", ".join(str(d).replace("torch.", "") for d in op.cpp_dtypes["cpu"])
        assert rows[name].split(None, 1)[1].startswith(listed), name
