"""augment_pair: PSC's stage-2 augmentation of a batch of photo-sketch pairs (pair flip, colour jitter,
grayscale, blur, a random affine/TPS warp of the sketch and its grid), batched ("pscfast") against the
release's way, parameters drawn and applied one pair at a time on the textbook formulas ("naive",
augment_reference). Each call draws new parameters, as training does; `pairs` in the record turns the
median per call into a time per pair."""
import pytest
import torch

from bench.conftest import bench_device, run_case
from pscfast.training.augment import AugmentConfig, augment_pair
from pscfast.training.augment_reference import augment_reference

DEVICE = bench_device()
DTYPE = torch.float32
SIZE = 256
BATCHES = {"cuda": (1, 32, 256), "cpu": (1, 8, 32)}[DEVICE]
PROVIDERS = {"pscfast": augment_pair, "naive": augment_reference}


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("n", BATCHES, ids=[f"B{n}" for n in BATCHES])
def test_augment_pair(benchmark, n, provider):
    fn, cfg = PROVIDERS[provider], AugmentConfig()
    g = torch.Generator(device=DEVICE).manual_seed(0)

    def make_inputs():
        photo = torch.rand(n, 3, SIZE, SIZE, device=DEVICE, dtype=DTYPE)
        sketch = torch.rand(n, 3, SIZE, SIZE, device=DEVICE, dtype=DTYPE)
        return (photo, sketch), ()

    def call(photo, sketch):
        return fn(photo, sketch, cfg, g)

    run_case(benchmark, op="augment_pair", provider=provider, mode="fwd", shape=f"B{n}-3x{SIZE}x{SIZE}",
             device=DEVICE, dtype=DTYPE, make_inputs=make_inputs, call=call,
             rounds=20 if DEVICE == "cuda" else 5, extra={"pairs": n})
