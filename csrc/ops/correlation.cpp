// Schemas of the correlation op: PSC's global multi-layer correlation of per-layer src/tgt maps, src on the
// size = (hs, ws) grid (resized, or sampled at an absolute grid) and tgt resized to the target_size = (ht, wt)
// grid: out (N, L * ht * wt, hs, ws), every dot product times scale (1 / sqrt(C) gives RAFT's all-pairs
// volume, Teed and Deng, ECCV 2020). The GEMMs take scale as their alpha and the fused kernels apply it where
// they store, so it costs no pass of its own over the volume. Kernels: csrc/ops/cpu/correlation_kernel.cpp,
// csrc/ops/cuda/correlation{,_backward}_kernel.cu; autograd: correlation_autograd.cpp; fake implementations
// and the reference backward: pscfast/ops/correlation.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pscfast, m) {
  m.def(
      "correlation(Tensor[] src, Tensor[] tgt, Tensor? grid, SymInt[2] size, SymInt[2] target_size, "
      "float scale=1.0) -> Tensor");
  // output_mask: which of (src, tgt, grid) gradients to compute; a skipped list comes back empty, a skipped
  // (or absent) grid gradient undefined (None). Every gradient carries the forward's scale.
  m.def(
      "_correlation_backward(Tensor grad_out, Tensor[] src, Tensor[] tgt, Tensor? grid, SymInt[2] size, "
      "SymInt[2] target_size, float scale, bool[3] output_mask) -> (Tensor[], Tensor[], Tensor)");
  // The same gradients, differentiable (those of the plain PyTorch reference): a recorded backward calls it.
  m.def(
      "_correlation_backward_reference(Tensor grad_out, Tensor[] src, Tensor[] tgt, Tensor? grid, SymInt[2] size, "
      "SymInt[2] target_size, float scale, bool[3] output_mask) -> (Tensor[], Tensor[], Tensor)");
}
