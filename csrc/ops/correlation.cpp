// Schemas of the correlation op: PSC's global multi-layer correlation of per-layer src/tgt maps, src on the
// size = (hs, ws) grid (resized, or sampled at an absolute grid) and tgt resized to the target_size = (ht, wt)
// grid: out (N, L * ht * wt, hs, ws). Kernels: csrc/ops/cpu/correlation_kernel.cpp,
// csrc/ops/cuda/correlation{,_backward}_kernel.cu; autograd and fake: pscfast/ops/correlation.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pscfast, m) {
  m.def("correlation(Tensor[] src, Tensor[] tgt, Tensor? grid, SymInt[2] size, SymInt[2] target_size) -> Tensor");
  // output_mask: which of (src, tgt, grid) gradients to compute; a skipped list comes back empty, a skipped
  // (or absent) grid gradient undefined (None).
  m.def(
      "_correlation_backward(Tensor grad_out, Tensor[] src, Tensor[] tgt, Tensor? grid, SymInt[2] size, "
      "SymInt[2] target_size, bool[3] output_mask) -> (Tensor[], Tensor[], Tensor)");
  // The same gradients, differentiable (those of the plain PyTorch reference): a recorded backward calls it.
  m.def(
      "_correlation_backward_reference(Tensor grad_out, Tensor[] src, Tensor[] tgt, Tensor? grid, SymInt[2] size, "
      "SymInt[2] target_size, bool[3] output_mask) -> (Tensor[], Tensor[], Tensor)");
}
