"""What the training-step benchmarks share: random image pairs and the timing of one stage's train_step."""
import torch

from bench.conftest import peak_bytes, record_result


class RandomPairs(torch.utils.data.Dataset):
    """``n`` pairs of random 256x256 images, one class."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"photo": torch.rand(3, 256, 256, generator=g), "sketch": torch.rand(3, 256, 256, generator=g),
                "class_id": 1}


def time_train_step(benchmark, stage, device: str, *, op: str, provider: str, shape: str) -> None:
    """Times ``stage.train_step`` on its loader's first batch (after one warm-up step) and records it with the
    step's peak memory beyond the resident model, optimizer state and batch."""
    batch = next(iter(stage.loader))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        stage.train_step(batch)
        sync()

    step()
    peak = peak_bytes(step, device)
    benchmark.pedantic(step, rounds=3 if device == "cuda" else 2, iterations=1)
    stats = benchmark.stats.stats
    record_result(benchmark, {
        "op": op, "provider": provider, "mode": "fwd+bwd", "shape": shape, "device": device,
        "dtype": "bf16-amp" if device == "cuda" else "float32", "median_s": stats.median, "iqr_s": stats.iqr,
        "min_s": stats.min, "rounds": stats.rounds, "peak_bytes": peak})
