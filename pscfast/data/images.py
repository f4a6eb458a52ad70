"""Image decoding for the Sketchy/PSC6k loaders: PIL, RGB, float32 (3, H, W) in [0, 1], clear errors.

Every error names the file and, when the image came from a CSV, the CSV file and line, so a broken
benchmark can be fixed without a debugger.
"""
import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SIZE = 256
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DatasetError(ValueError):
    """A benchmark file is missing, malformed or holds an unusable image."""


def normalize(x):
    """ImageNet mean/std normalisation of (3, H, W) or (N, 3, H, W) images in [0, 1] (any float dtype)."""
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"normalize: expected (3, H, W) or (N, 3, H, W) RGB images, got shape {tuple(x.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def decode_rgb(path, where="", size=IMAGE_SIZE):
    """Read `path` as RGB float32 (3, size, size) in [0, 1].

    `where` describes the origin (e.g. "train_pairs_ps.csv line 12") and is added to every error.
    `size=None` accepts any size.
    """
    suffix = f" ({where})" if where else ""
    if not os.path.isfile(path):
        raise DatasetError(f"image not found: {path}{suffix}")
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot decode image {path}{suffix}: {e}") from e
    if size is not None and rgb.size != (size, size):
        raise DatasetError(
            f"image {path}{suffix} is {rgb.size[0]}x{rgb.size[1]} (width x height), expected {size}x{size}: "
            f"use Sketchy's rendered_256x256 images")
    arr = np.asarray(rgb, dtype=np.float32) / 255.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())
