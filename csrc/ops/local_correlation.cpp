// Schemas of the local_correlation op: the windowed cost volume of a (N, C, H, W) against b (N, C, H, W),
// out (N, PH * PW, H', W'), every size argument an (h, w) pair (spatial_correlation_sampler's semantics,
// flattened). Kernels: csrc/ops/{cpu,cuda}/local_correlation_kernel.*; autograd and fake:
// pscfast/ops/local_correlation.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pscfast, m) {
  m.def("local_correlation(Tensor a, Tensor b, int[2] kernel_size, int[2] patch_size, int[2] stride, "
        "int[2] padding, int[2] dilation, int[2] dilation_patch) -> Tensor");
  m.def("_local_correlation_backward(Tensor grad_out, Tensor a, Tensor b, int[2] kernel_size, int[2] patch_size, "
        "int[2] stride, int[2] padding, int[2] dilation, int[2] dilation_patch, bool need_a, bool need_b) -> "
        "(Tensor, Tensor)");
}
