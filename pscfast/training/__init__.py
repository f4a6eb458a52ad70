"""PSC training: batched augmentation, the training loop, the two stages, the end-to-end pipeline; SFNet's
training in pscfast.training.sfnet."""
from pscfast.training.config import TrainConfig
from pscfast.training.pipeline import train

__all__ = ["TrainConfig", "train"]
