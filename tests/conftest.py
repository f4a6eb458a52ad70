"""Test configuration: CPU-only machines run the Triton kernels in the interpreter (TRITON_INTERPRET=1 must
be set before pscfast.kernels is first imported, hence here); CUDA cases skip with a visible reason.
`pytest --gpu-only` keeps only the cases that can use a GPU (a short run on a GPU machine; CI runs the rest)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_addoption(parser):
    parser.addoption("--gpu-only", action="store_true",
                     help="run only the cases that can use a GPU: a cuda or triton parameter, 'cuda' in the test's "
                          "name, or the gpu marker (for a run on a GPU machine; the CPU cases are CI's)")


def _can_use_gpu(item) -> bool:
    params = set(item.callspec.id.split("-")) if hasattr(item, "callspec") else set()
    name = getattr(item, "originalname", item.name)
    return bool(params & {"cuda", "triton"}) or "cuda" in name or item.get_closest_marker("gpu") is not None


def pytest_collection_modifyitems(config, items):
    if config.getoption("--gpu-only"):
        dropped = [item for item in items if not _can_use_gpu(item)]
        items[:] = [item for item in items if _can_use_gpu(item)]
        config.hook.pytest_deselected(items=dropped)
