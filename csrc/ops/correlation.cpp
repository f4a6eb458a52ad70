// Schemas of the correlation op: PSC's global multi-layer correlation of per-layer src/tgt maps on a
// size x size grid (tgt resized, src resized or sampled at an absolute grid). Kernels:
// csrc/ops/cpu/correlation_kernel.cpp, csrc/ops/cuda/correlation{,_backward}_kernel.cu; autograd and fake:
// pscfast/ops/correlation.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pscfast, m) {
  m.def("correlation(Tensor[] src, Tensor[] tgt, Tensor? grid, SymInt size) -> Tensor");
  // output_mask: which of (src, tgt, grid) gradients to compute; skipped ones come back empty
  // (an empty list, or a tensor of shape (0,)).
  m.def("_correlation_backward(Tensor grad_out, Tensor[] src, Tensor[] tgt, Tensor? grid, SymInt size, "
        "bool[3] output_mask) -> (Tensor[], Tensor[], Tensor)");
}
