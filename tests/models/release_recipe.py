"""Deterministic weights for the release-equivalence test (tests/models/test_release_flows.py).

Every tensor of a release-format state dict is drawn from a generator seeded by its key (crc32), so the
authors' release code and pscfast build the same model without the repository shipping the weights. Keys that
alias one tensor in the release (``norms.0``/``norms.1`` of its shared BN, ``framework.encoder_q`` =
``encoder_q``) get the same draw. BatchNorm running statistics are not drawn: the golden file carries the ones
the release model measured on the test images (random statistics would blow the activations up).
"""
from __future__ import annotations

import math
import os
import zlib

import torch
import torch.nn.functional as F

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
GOLDEN = os.path.join(DATA, "golden-release-flows.pt")


def release_keys(arch: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{key: (shape, dtype)} of the release's state dict (tests/data/release-state-dict-<arch>.tsv)."""
    rows = open(os.path.join(DATA, f"release-state-dict-{arch}.tsv")).read().splitlines()[1:]
    out = {}
    for row in rows:
        key, shape, dtype = row.split("\t")
        out[key] = (() if shape == "scalar" else tuple(int(s) for s in shape.split("x")), getattr(torch, dtype))
    return out


def canonical(key: str) -> str:
    if key.startswith("framework.encoder_"):
        key = key[len("framework."):]
    return key.replace(".norms.1.", ".norms.0.")


def is_bn_statistic(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


def draw(key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    name = key.rsplit(".", 1)[-1]
    if name in ("base_map", "pos_map"):  # identity grids: (1, s, s, 2), pos_map (1, 2, s, s)
        s = shape[1] if name == "base_map" else shape[2]
        grid = F.affine_grid(torch.tensor([[[1.0, 0, 0], [0, 1, 0]]]), [1, 1, s, s], align_corners=True)
        return grid if name == "base_map" else grid.permute(0, 3, 1, 2).contiguous()
    if dtype == torch.int64:
        return torch.zeros(shape, dtype=dtype)
    g = torch.Generator().manual_seed(zlib.crc32(canonical(key).encode()))
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if name == "weight" and len(shape) >= 2:  # conv / linear: He-scaled; the STN's flow heads small so the
        gain = 0.05 if shape[0] == 2 else 1.0  # flows stay mostly inside the image, as a trained model's do
        return (x * gain * math.sqrt(2.0 / math.prod(shape[1:]))).to(dtype)
    if name == "weight":                      # BN scale
        return (1 + 0.1 * x).to(dtype)
    return (0.1 * x).to(dtype)                # biases, and the (ignored) MoCo queue


def recipe_state(arch: str, bn_statistics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The full release-format state dict of ``arch`` with the given BN statistics (canonical keys)."""
    state = {}
    for key, (shape, dtype) in release_keys(arch).items():
        if is_bn_statistic(key) and canonical(key).startswith(("encoder_q.", "stn.")):
            state[key] = bn_statistics[canonical(key)].clone()
        elif is_bn_statistic(key):  # the key encoder's, which a checkpoint loader ignores
            fill = torch.ones if key.endswith("running_var") else torch.zeros
            state[key] = fill(shape, dtype=dtype)
        else:
            state[key] = draw(key, shape, dtype)
    return state
