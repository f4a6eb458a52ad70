// Schemas of the local_correlation op: the windowed cost volume of a (N, C, H, W) against b (N, C, H, W),
// out (N, PH * PW, H', W'), every size argument an (h, w) pair (spatial_correlation_sampler's semantics,
// flattened). Kernels: csrc/ops/{cpu,cuda}/local_correlation_kernel.*; autograd and fake:
// pscfast/ops/local_correlation.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pscfast, m) {
  m.def("local_correlation(Tensor a, Tensor b, SymInt[2] kernel_size, SymInt[2] patch_size, SymInt[2] stride, "
        "SymInt[2] padding, SymInt[2] dilation, SymInt[2] dilation_patch) -> Tensor");
  // output_mask: (a, b)
  m.def("_local_correlation_backward(Tensor grad_out, Tensor a, Tensor b, SymInt[2] kernel_size, "
        "SymInt[2] patch_size, SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation, SymInt[2] dilation_patch, "
        "bool[2] output_mask) -> (Tensor, Tensor)");
}
