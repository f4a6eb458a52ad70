"""The synthetic benchmark's ground-truth deformation as a "model" (sanity check of the evaluation)."""
import os

import numpy as np
import torch

from pscfast import ops

GT_FILE = "test_pairs_gt.npz"


class GroundTruthFlows:
    """predict_fn for `evaluate` that returns the stored 16x16 (fwd, bwd) grids of each test pair.

    `path`: the `test_pairs_gt.npz` written by `pscfast.data.synthetic` (or the folder holding it).
    Pairs are matched by their (photo, sketch) paths, so any subset or order of the test CSV works.
    """

    def __init__(self, path):
        if os.path.isdir(path):
            path = os.path.join(path, GT_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ground-truth flows not found: {path} (written by python -m "
                                    "pscfast.data.synthetic; real PSC6k has none)")
        with np.load(path) as z:
            self.fwd = torch.from_numpy(z["fwd"])
            self.bwd = torch.from_numpy(z["bwd"])
            self.index = {(p, s): i for i, (p, s) in enumerate(zip(z["photo"].tolist(), z["sketch"].tolist()))}

    def __call__(self, photo, sketch, batch):
        try:
            rows = [self.index[(p, s)] for p, s in zip(batch["photo_path"], batch["sketch_path"])]
        except KeyError as e:
            raise KeyError(f"no ground-truth flow for pair {e.args[0]}") from None
        return self.fwd[rows].to(photo.device), self.bwd[rows].to(photo.device)


def control_sketch(control: GroundTruthFlows, photo, batch, who: str, backend=None):
    """The positive control's "sketch": each photo warped by its pair's true fwd flow into the sketch's frame,
    so that even a random encoder's features match (it is encoded as a photo)."""
    if batch is None:
        raise ValueError(f"{who}: the control needs the batch's paths (call it through evaluate)")
    true_fwd, _ = control(photo, None, batch)
    return ops.warp(photo, true_fwd.to(photo), out_size=tuple(photo.shape[-2:]), padding_mode="border",
                    backend=backend)
