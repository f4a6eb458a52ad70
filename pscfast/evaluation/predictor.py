"""Flow predictors for :func:`pscfast.evaluation.evaluate` and ``python -m pscfast.predict``: callables taking
[0, 1] images (N, 3, H, W) to (fwd, bwd) absolute grids (N, 16, 16, 2) in the release convention."""
from __future__ import annotations

import torch

from pscfast.data import normalize, resize
from pscfast.ops._reference import identity_grid


def model_predictor(model: torch.nn.Module, image_size: int):
    """``model.predict_flow`` (PSCNet's or SFNet's) on the images resized to ``image_size`` and
    ImageNet-normalised. The model is put in eval mode at every call: a training run that evaluates between
    epochs hands over a model in train mode."""
    def predict(photo: torch.Tensor, sketch: torch.Tensor):
        model.eval()
        return model.predict_flow(normalize(resize(photo, image_size)), normalize(resize(sketch, image_size)))
    return predict


def identity_predictor(photo: torch.Tensor, sketch: torch.Tensor):
    """The identity flow in both directions (no model): the baseline every predictor is scored beside."""
    grid = identity_grid(photo.shape[0], 16, 16, device=photo.device)
    return grid, grid
