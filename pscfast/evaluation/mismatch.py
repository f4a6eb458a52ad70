"""The mismatched-photo baseline: any predictor scored with each sketch paired with a different photo.

PCK is still scored against the keypoints of each sketch's own photo, so what a predictor keeps under the
mismatch comes from where objects tend to sit and from the sketch alone, not from matching the pair. The gap
between a predictor's PCK on the true pairs and under the mismatch is what it gains from the photo.

    result = evaluate(Mismatched(predict_fn), PSCTestPairs(root, csv))
"""
from __future__ import annotations

import inspect


def other_photos(batch) -> list[int]:
    """For each pair of the batch, the index of the next pair (cyclically) whose photo is a different one."""
    if batch is None:
        raise ValueError("mismatch: needs the batch's photo paths (call the predictor through evaluate)")
    paths = list(batch["photo_path"])
    n = len(paths)
    out = []
    for i, p in enumerate(paths):
        j = next(((i + s) % n for s in range(1, n) if paths[(i + s) % n] != p), None)
        if j is None:
            raise ValueError(f"mismatch: needs another photo in the batch, but all {n} pairs of this one show "
                             f"{p}; use a larger batch size")
        out.append(j)
    return out


class Mismatched:
    """predict_fn for :func:`pscfast.evaluation.evaluate` that calls ``predict_fn`` with each photo replaced by
    :func:`other_photos`' choice (and, for a predictor that takes the batch, the photo paths with it)."""

    def __init__(self, predict_fn):
        self.predict_fn = predict_fn
        self.wants_batch = "batch" in inspect.signature(predict_fn).parameters

    def __call__(self, photo, sketch, batch=None):
        idx = other_photos(batch)
        if not self.wants_batch:
            return self.predict_fn(photo[idx], sketch)
        return self.predict_fn(photo[idx], sketch, batch=dict(batch, photo_path=[batch["photo_path"][i] for i in idx]))
