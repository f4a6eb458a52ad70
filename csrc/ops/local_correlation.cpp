// Schemas of the local_correlation op: the windowed cost volume of a (N, C, H, W) against b (N, C, H, W),
// out (N, PH * PW, H', W'), every size argument an (h, w) pair (spatial_correlation_sampler's semantics,
// flattened). Kernels: csrc/ops/{cpu,cuda}/local_correlation_kernel.*; autograd:
// csrc/ops/local_correlation_autograd.cpp; fake: pscfast/ops/local_correlation.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pscfast, m) {
  m.def(
      "local_correlation(Tensor a, Tensor b, SymInt[2] kernel_size, SymInt[2] patch_size, SymInt[2] stride, "
      "SymInt[2] padding, SymInt[2] dilation, SymInt[2] dilation_patch) -> Tensor");
  // output_mask: (a, b)
  m.def(
      "_local_correlation_backward(Tensor grad_out, Tensor a, Tensor b, SymInt[2] kernel_size, "
      "SymInt[2] patch_size, SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation, SymInt[2] dilation_patch, "
      "bool[2] output_mask) -> (Tensor, Tensor)");
  // The gradients of the plain PyTorch reference, recorded (for a backward with create_graph=True): one per set
  // output_mask entry. Implemented in Python (pscfast/ops/local_correlation.py); called by the autograd kernel,
  // csrc/ops/local_correlation_autograd.cpp.
  m.def(
      "_local_correlation_backward_reference(Tensor grad_out, Tensor a, Tensor b, SymInt[2] kernel_size, "
      "SymInt[2] patch_size, SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation, SymInt[2] dilation_patch, "
      "bool[2] output_mask) -> Tensor[]");
}
