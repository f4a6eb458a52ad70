// Schemas of the compose op: flow composition on absolute grids, f_ab (N, h, w, 2) sampled at the grid f_bc
// (N, h', w', 2) -> (N, h', w', 2). Kernels: csrc/ops/{cpu,cuda}/compose_kernel.*; autograd and fake:
// pscfast/ops/compose.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pscfast, m) {
  m.def("compose(Tensor f_ab, Tensor f_bc, str mode) -> Tensor");
  // output_mask: (f_ab, f_bc)
  m.def(
      "_compose_backward(Tensor grad_out, Tensor f_ab, Tensor f_bc, str mode, bool[2] output_mask) -> "
      "(Tensor, Tensor)");
}
