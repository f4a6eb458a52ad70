"""Nearest-neighbour matching of an encoder's dense features: the flow with no warp estimator at all.

Each 16x16 cell of the target image points at the source cell whose features are most similar: the sum over
layer2 and layer3 of the cosine similarity, on the maps resized to 16x16 as the STN's first block sees them
(``pscfast.ops.correlation`` on L2-normalised features). It is the usual feature-matching baseline of dense
correspondence, and a check, in seconds, of whether an encoder's features match across photo and sketch.

Each cell is matched on its own, with nothing to keep the flow smooth, so the matched flow can lose to the
identity while the features still carry some correspondence. The yardstick is the mismatched-photo baseline
(``Mismatched(FeatureMatch(...))``, :mod:`pscfast.evaluation.mismatch`): features that match across photo and
sketch must beat it. ``control=GroundTruthFlows(root)`` (synthetic benchmark only) is the positive control: each
sketch is replaced by its photo under the true deformation, as :class:`pscfast.evaluation.FlowProbe` does.

    match = FeatureMatch(encoder, image_size=128)
    result = evaluate(match, PSCTestPairs(root, csv))
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pscfast import ops
from pscfast.data import normalize, resize
from pscfast.evaluation.ground_truth import control_sketch
from pscfast.models import PHOTO, SKETCH
from pscfast.ops._reference import resize_features

SIZE = 16


def match_flow(f_src, f_tgt, backend: str | None = None) -> torch.Tensor:
    """Per-layer feature maps of src and tgt (sequences of (N, C_l, H_l, W_l)) -> the absolute grid
    (N, 16, 16, 2) on the tgt grid whose every cell holds the centre of the best-matching src cell."""
    unit = [[F.normalize(resize_features(f.float(), SIZE), dim=1) for f in fs] for fs in (f_src, f_tgt)]
    corr = ops.correlation(unit[0], unit[1], size=SIZE, backend=backend)  # (N, L * 256 tgt, 16, 16 src)
    n = corr.shape[0]
    score = corr.view(n, len(f_src), SIZE * SIZE, SIZE * SIZE).sum(1)  # (N, tgt, src)
    best = score.argmax(-1).view(n, SIZE, SIZE)
    axis = torch.linspace(-1, 1, SIZE, device=best.device)  # cell centres, align_corners=True
    return torch.stack([axis[best % SIZE], axis[best // SIZE]], dim=-1)


class FeatureMatch:
    """predict_fn for :func:`pscfast.evaluation.evaluate`: [0, 1] images (N, 3, H, W) -> (fwd, bwd) 16x16 grids
    matched on ``encoder``'s features (:func:`match_flow`). ``encoder``: a :class:`pscfast.models.ResNet`, put in
    eval mode; images are resized to ``image_size`` and ImageNet-normalised. ``control``: the true-warp positive
    control."""

    def __init__(self, encoder, image_size: int = 256, control=None, backend: str | None = None):
        if image_size < 32:
            raise ValueError(f"FeatureMatch: image_size must be at least 32 (layer3 has stride 16), got {image_size}")
        self.encoder = encoder.eval()
        self.size, self.control, self.backend = image_size, control, backend

    def __call__(self, photo: torch.Tensor, sketch: torch.Tensor, batch=None):
        photo, sketch = normalize(resize(photo, self.size)), normalize(resize(sketch, self.size))
        sketch_modality = SKETCH
        if self.control is not None:
            sketch, sketch_modality = control_sketch(self.control, photo, batch, "FeatureMatch", self.backend), PHOTO
        with torch.no_grad():
            f_photo = self.encoder.features(photo, PHOTO)
            f_sketch = self.encoder.features(sketch, sketch_modality)
            return match_flow(f_photo, f_sketch, self.backend), match_flow(f_sketch, f_photo, self.backend)
