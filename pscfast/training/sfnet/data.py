"""Training pairs with foreground masks for SFNet, from a benchmark in the synthetic benchmark's layout.

Mask paths follow ``pscfast.data.synthetic``: the photo ``<prefix>/photo/<tx>/<class>/<id>.jpg`` has its mask
at ``<prefix>/mask/<tx>/<class>/<id>.png``, the sketch ``<prefix>/sketch/<tx>/<class>/<id>-<k>.png`` at
``<prefix>/sketch_mask/<tx>/<class>/<id>-<k>.png`` (255 = foreground).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pscfast.data import DatasetError, PSCTrainPairs

MASK_DIRS = {"photo": "mask", "sketch": "sketch_mask"}


def mask_path(image_path: str, kind: str) -> str:
    """Relative path of the foreground mask of a photo (kind "photo") or sketch (kind "sketch")."""
    parts = image_path.replace("\\", "/").split("/")
    if kind not in parts:
        raise DatasetError(f"{image_path}: no {kind!r} folder in the path, cannot locate its mask")
    i = len(parts) - 1 - parts[::-1].index(kind)
    parts[i] = MASK_DIRS[kind]
    parts[-1] = os.path.splitext(parts[-1])[0] + ".png"
    return "/".join(parts)


def load_mask(path: str) -> torch.Tensor:
    """(1, H, W) float32 in {0, 1} (pixels > 127 are foreground)."""
    if not os.path.isfile(path):
        raise DatasetError(f"mask not found: {path} (generate the benchmark with masks: pscfast.data.synthetic)")
    with Image.open(path) as im:
        arr = np.asarray(im.convert("L")) > 127
    return torch.from_numpy(arr.astype(np.float32))[None]


class MaskedPairs(Dataset):
    """PSCTrainPairs items plus ``photo_mask`` and ``sketch_mask`` (1, H, W), flipped with their images.

    Items are dicts: photo, sketch (3, 256, 256) in [0, 1], photo_mask, sketch_mask, and the base keys.
    """

    def __init__(self, root: str, csv: str, generator: torch.Generator | None = None):
        self.pairs = PSCTrainPairs(root, csv, generator=generator)
        self.root = root

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, idx: int) -> dict:
        item = self.pairs[idx]
        for kind in ("photo", "sketch"):
            m = load_mask(os.path.join(self.root, mask_path(item[f"{kind}_path"], kind)))
            item[f"{kind}_mask"] = m.flip(-1) if item["flip"] else m
        return item
