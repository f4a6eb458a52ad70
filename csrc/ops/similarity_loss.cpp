// Schemas of the fused similarity loss on per-layer maps fw, ft (lists of (N, C_l, H_l, W_l)): each layer is
// resized to size x size (bilinear, align_corners=False) and the layers are concatenated on channels inside
// the op (csrc/ops/common/resize_matrix.h), a sample or a chunk of samples at a time, so the resized
// features of the whole batch are never stored; P = size^2.
// stats (N, 3, P) = raw column L1 sums a, raw row L1 sums b (before the eps clamp of F.normalize) and the
// log-sum-exp over i of each column's logits: what the backward needs besides the input layers.
// Kernels: csrc/ops/cpu/similarity_loss_kernel.cpp, csrc/ops/cuda/similarity_loss{,_backward}_kernel.cu;
// autograd and fake: pscfast/ops/similarity_loss.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pscfast, m) {
  m.def(
      "similarity_loss(Tensor[] fw, Tensor[] ft, float tau, SymInt size) -> (Tensor ce, Tensor weight, "
      "Tensor stats)");
  // output_mask: (fw, ft); a masked gradient comes back as an empty list
  m.def(
      "_similarity_loss_backward(Tensor grad_ce, Tensor[] fw, Tensor[] ft, Tensor stats, float tau, "
      "SymInt size, bool[2] output_mask) -> (Tensor[] grad_fw, Tensor[] grad_ft)");
}

// The ops' resize on its own (layers -> (N, sum C_l, size^2)) and its adjoint, for the tests: a library of its
// own, so that the public pscfast:: namespace holds the ops alone.
TORCH_LIBRARY(pscfast_testing, m) {
  m.def("similarity_resize(Tensor[] layers, SymInt size) -> Tensor");
  m.def("similarity_resize_adjoint(Tensor grad, Tensor[] layers, SymInt size) -> Tensor[]");
}
