"""pscfast's fused correspondence ops: one function and one nn.Module per op.

Each op runs on the fastest available backend for its inputs (compiled C++/CUDA, Triton, or plain
PyTorch); `backend=` or the PSCFAST_BACKEND environment variable chooses one (see _dispatch).
"""
from pscfast.ops._dispatch import OPS, BackendUnavailable
from pscfast.ops.compose import Compose, compose
from pscfast.ops.compose_displacement import ComposeDisplacement, compose_displacement
from pscfast.ops.consistency_loss import ConsistencyLoss, consistency_loss
from pscfast.ops.correlation import Correlation, correlation
from pscfast.ops.kernel_soft_argmax import KernelSoftArgmax, kernel_soft_argmax
from pscfast.ops.local_correlation import (LocalCorrelation, SpatialCorrelationSampler, local_correlation,
                                          spatial_correlation_sample)
from pscfast.ops.similarity_loss import SimilarityLoss, similarity_loss
from pscfast.ops.truncated_flow_loss import TruncatedFlowLoss, truncated_flow_loss
from pscfast.ops.warp import Warp, WarpDisplacement, warp, warp_displacement

__all__ = [
    "OPS", "BackendUnavailable",
    "Compose", "compose",
    "ComposeDisplacement", "compose_displacement",
    "ConsistencyLoss", "consistency_loss",
    "Correlation", "correlation",
    "LocalCorrelation", "local_correlation", "SpatialCorrelationSampler", "spatial_correlation_sample",
    "SimilarityLoss", "similarity_loss",
    "KernelSoftArgmax", "kernel_soft_argmax",
    "TruncatedFlowLoss", "truncated_flow_loss",
    "Warp", "WarpDisplacement", "warp", "warp_displacement",
]
