"""Data: Sketchy + PSC6k loaders, the embedded synthetic benchmark, PSC6k keypoint sampling.

    from pscfast.data import PSCTrainPairs, PSCTestPairs, normalize
    train = PSCTrainPairs(root, f"{csv_dir}/train_pairs_ps.csv")
    item = train[0]        # dict: photo, sketch (3, 256, 256) in [0, 1], class_id (1-based)

`python -m pscfast.data.synthetic --out DIR` writes a small benchmark in Sketchy's layout.
"""
from pscfast.data.images import (IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD, DatasetError, decode_rgb, normalize,
                                 resize)
from pscfast.data.sketchy import PSCEvalPairs, PSCTestPairs, PSCTrainPairs, resolve_classes

__all__ = ["IMAGE_SIZE", "IMAGENET_MEAN", "IMAGENET_STD", "DatasetError", "decode_rgb", "normalize", "resize",
           "PSCTrainPairs", "PSCEvalPairs", "PSCTestPairs", "resolve_classes"]
