"""Bilinear resize (F.interpolate, align_corners=False, no antialias) of per-layer maps (N, C_l, H_l, W_l) to
size x size, concatenated on channels, for a chunk of samples at a time: the Python twin of
csrc/ops/common/resize_matrix.h, used by the Triton similarity loss. Per plane X (H x W):
  R = A_y X A_x^T,  A_y (S x H), A_x (S x W) with the weights (1 - l, l) at (i0, i1) of PyTorch's
                    upsample_bilinear2d: src = max((d + 0.5) * in / out - 0.5, 0), i0 = floor(src) (<= in - 1),
                    i1 = min(i0 + 1, in - 1), l = clamp(src - i0, 0, 1), in the accumulation type;
  dX = A_y^T dR A_x (the adjoint).
Plain matmuls, no atomics (interpolate's CUDA backward has them): gradients are bitwise reproducible.
"""
from __future__ import annotations

import os

import torch

# Budget of the resized copies per chunk of samples (resized fw and ft plus their gradients): 256 MiB keeps
# them small next to a training step's activations while a chunk still holds enough samples to fill a GPU.
# PSCFAST_SIMILARITY_CHUNK_BYTES overrides it (tests use it to force several chunks); the CUDA host code
# reads the same variable.
CHUNK_BYTES = 256 << 20


def chunks(n: int, channels: int, p: int, itemsize: int):
    """[n0, n1) ranges of samples whose 4 resized (channels, p) buffers fit the budget (at least 1 sample)."""
    budget = int(os.environ.get("PSCFAST_SIMILARITY_CHUNK_BYTES", CHUNK_BYTES))
    step = max(1, budget // (4 * channels * p * itemsize))
    return [(n0, min(n, n0 + step)) for n0 in range(0, n, step)]


def resize_matrix(n_in: int, n_out: int, acc: torch.dtype, device) -> torch.Tensor:
    """(n_out x n_in) matrix of a 1-D resize n_in -> n_out."""
    scale = torch.tensor(n_in, dtype=acc) / n_out
    src = (scale * (torch.arange(n_out, dtype=acc) + 0.5) - 0.5).clamp_min(0)
    i0 = src.long().clamp_max(n_in - 1)
    l1 = (src - i0).clamp(0, 1)
    i1 = i0 + (i0 < n_in - 1).long()
    rows = torch.arange(n_out)
    a = torch.zeros(n_out, n_in, dtype=acc)
    a.index_put_((rows, i0), 1 - l1, accumulate=True)
    a.index_put_((rows, i1), l1, accumulate=True)
    return a.to(device)


class ConcatResize:
    """The resize of one list of layers into (B, sum C_l, size^2) buffers and its adjoint."""

    def __init__(self, layers, size: int, acc: torch.dtype):
        self.size, self.acc, self.layers = size, acc, []
        offset = 0
        for x in layers:
            _, c, h, w = x.shape
            same = (h, w) == (size, size)  # copied: the reference skips interpolate there
            mats = None if same else (resize_matrix(h, size, acc, x.device), resize_matrix(w, size, acc, x.device))
            self.layers.append((offset, c, mats))
            offset += c
        self.channels = offset

    def resize(self, layers, n0: int, n1: int) -> torch.Tensor:
        """Samples [n0, n1) of every layer, resized and concatenated: (n1 - n0, channels, size^2), contiguous."""
        x0 = layers[0]
        out = x0.new_empty(n1 - n0, self.channels, self.size ** 2)
        for x, (offset, c, mats) in zip(layers, self.layers):
            x = x[n0:n1]
            if mats is not None:
                ay, ax = mats
                x = torch.matmul(torch.matmul(ay, x.to(self.acc)), ax.T)
            out[:, offset:offset + c] = x.flatten(2)
        return out

    def adjoint(self, dout: torch.Tensor, n0: int, grads) -> None:
        """dout (B, channels, size^2) -> grads[l][n0:n0 + B] (overwritten)."""
        for g, (offset, c, mats) in zip(grads, self.layers):
            d = dout[:, offset:offset + c].unflatten(2, (self.size, self.size))
            if mats is not None:
                ay, ax = mats
                d = torch.matmul(torch.matmul(ay.T, d.to(self.acc)), ax)
            g[n0:n0 + dout.shape[0]] = d
