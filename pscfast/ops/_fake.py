"""Output metadata of the compiled ops for fake tensors (torch.compile, torch.export, meta).

Every C++/CUDA kernel makes its inputs contiguous and allocates contiguous outputs, so a gradient has the
shape of its input but contiguous strides whatever the input's layout (an empty_like that preserved a
permuted or channels-last layout would mispredict them, and inductor checks strides)."""
from __future__ import annotations

import torch


def like(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def grads(output_mask, *inputs) -> tuple:
    """The fake outputs of a backward op: a gradient like each input whose output_mask entry is set, None (an
    undefined tensor) for the others and for absent optional inputs."""
    return tuple(like(t) if need and t is not None else None for t, need in zip(inputs, output_mask))
