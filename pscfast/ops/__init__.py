"""pscfast's fused correspondence ops: one function and one nn.Module per op.

Each op runs on the fastest available backend for its inputs (compiled C++/CUDA, Triton, or plain
PyTorch); `backend=` or the PSCFAST_BACKEND environment variable chooses one (see _dispatch).
"""
from pscfast.ops._dispatch import OPS, BackendUnavailable
from pscfast.ops.consistency import Compose, ConsistencyLoss, compose, consistency_loss
from pscfast.ops.correlation import Correlation, correlation
from pscfast.ops.cycle import ComposeDisplacement, TruncatedFlowLoss, compose_displacement, truncated_flow_loss
from pscfast.ops.local_correlation import (LocalCorrelation, SpatialCorrelationSampler, local_correlation,
                                          spatial_correlation_sample)
from pscfast.ops.similarity_loss import SimilarityLoss, similarity_loss
from pscfast.ops.kernel_soft_argmax import KernelSoftArgmax, kernel_soft_argmax
from pscfast.ops.warp import Warp, WarpDisplacement, warp, warp_displacement

__all__ = [
    "OPS", "BackendUnavailable",
    "Compose", "ConsistencyLoss", "compose", "consistency_loss",
    "Correlation", "correlation",
    "ComposeDisplacement", "TruncatedFlowLoss", "compose_displacement", "truncated_flow_loss",
    "LocalCorrelation", "local_correlation", "SpatialCorrelationSampler", "spatial_correlation_sample",
    "SimilarityLoss", "similarity_loss",
    "KernelSoftArgmax", "kernel_soft_argmax",
    "Warp", "WarpDisplacement", "warp", "warp_displacement",
]
