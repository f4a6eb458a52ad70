// Schemas of the local_correlation op: the windowed cost volume of a (N, C, H, W) against b (N, C, H, W),
// out (N, P*P, H', W') with P = 2 max_displacement + 1 (spatial_correlation_sampler's semantics, flattened).
// Kernels: csrc/ops/{cpu,cuda}/local_correlation_kernel.*; autograd and fake: pscfast/ops/local_correlation.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pscfast, m) {
  m.def("local_correlation(Tensor a, Tensor b, int kernel_size, int max_displacement, int stride, int padding, "
        "int dilation, int dilation_patch) -> Tensor");
  m.def("_local_correlation_backward(Tensor grad_out, Tensor a, Tensor b, int kernel_size, int max_displacement, "
        "int stride, int padding, int dilation, int dilation_patch, bool need_a, bool need_b) -> (Tensor, Tensor)");
}
