"""Training SFNet (Lee et al., TPAMI 2020) on photo-sketch pairs with foreground masks: its configuration,
model building and loading, the training step, the run."""
from pscfast.training.sfnet.config import SFNetConfig
from pscfast.training.sfnet.model import build, load_sfnet
from pscfast.training.sfnet.pipeline import train
from pscfast.training.sfnet.trainer import SFNetTrainer

__all__ = ["SFNetConfig", "SFNetTrainer", "build", "load_sfnet", "train"]
