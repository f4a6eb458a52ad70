"""Images: decoding for the Sketchy/PSC6k loaders and pscfast.predict (PIL, RGB, float32 (3, H, W) in [0, 1],
clear errors), ImageNet normalisation and the resize to a model's resolution.

Every error names the file and, when the image came from a CSV, the CSV file and line, so a broken
benchmark can be fixed without a debugger. Transparent images (a sketch exported as black strokes on
transparent paper) are composited onto white paper, as Sketchy's sketches are drawn; 16-bit images are
scaled from [0, 65535] and float images (32-bit TIFF) are read as [0, 1]. Images above PIL's
decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) are refused.
"""
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
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


def resize(x, size):
    """(N, C, H, W) images -> (N, C, size, size): bilinear with antialiasing (unchanged when already that size);
    the resolution a model sees in training and inference."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def decode_rgb(path, where="", size=IMAGE_SIZE):
    """Read `path` as RGB float32 (3, size, size) in [0, 1].

    `where` describes the origin (e.g. "train_pairs_ps.csv line 12") and is added to every error.
    `size=None` accepts any size.
    """
    suffix = f" ({where})" if where else ""
    rgb = open_rgb(path, where)
    if size is not None and rgb.size != (size, size):
        raise DatasetError(
            f"image {path}{suffix} is {rgb.size[0]}x{rgb.size[1]} (width x height), expected {size}x{size}: "
            f"use Sketchy's rendered_256x256 images")
    arr = np.asarray(rgb, dtype=np.float32) / 255.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # PIL's modes for 16-bit grey (I: 32-bit container)


def open_rgb(path, where=""):
    """`path` as an 8-bit RGB PIL image (see the module docstring for alpha, 16-bit and float images)."""
    suffix = f" ({where})" if where else ""
    if not os.path.isfile(path):
        raise DatasetError(f"image not found: {path}{suffix}")
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; both are refused here
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            im.load()
            return _to_rgb(im, path, suffix)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DatasetError(f"image {path}{suffix} is refused as a possible decompression bomb: {e}") from None
    except DatasetError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot decode image {path}{suffix}: {e}") from e


def _to_rgb(im, path, suffix):
    if im.mode == "F" or im.mode in _SIXTEEN_BIT:
        arr = np.asarray(im, dtype=np.float64)
        kind, top = ("float", 1.0) if im.mode == "F" else ("16-bit", 65535.0)
        if not np.isfinite(arr).all():
            raise DatasetError(f"image {path}{suffix} is a float image holding NaN or infinite values")
        if arr.min() < 0 or arr.max() > top:
            raise DatasetError(f"image {path}{suffix} is a {kind} image with values in [{arr.min():g}, {arr.max():g}], "
                               f"expected [0, {top:g}]")
        return Image.fromarray(np.round(arr * (255 / top)).astype(np.uint8), "L").convert("RGB")
    if im.has_transparency_data:
        paper = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, im.convert("RGBA")).convert("RGB")
    return im.convert("RGB")
