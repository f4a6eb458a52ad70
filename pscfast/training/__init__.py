"""PSC training: batched augmentation, losses, the two stages, the end-to-end pipeline."""
from pscfast.training.config import TrainConfig

__all__ = ["TrainConfig", "train"]


def train(cfg: TrainConfig) -> dict:
    """See pscfast.training.pipeline.train (imported lazily: it pulls in the data package)."""
    from pscfast.training.pipeline import train as _train
    return _train(cfg)
