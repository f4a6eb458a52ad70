// Schemas of the compose_displacement op: Zhou et al.'s transitive composition of pixel displacement fields
// with matchability. f_ab (N, 2, H, W), f_bc (N, 2, Hb, Wb), m_ab (N, 1, H, W), m_bc (N, 1, Hb, Wb)
// -> (f_ac (N, 2, H, W), m_ac (N, 1, H, W)); the Python layer passes ones for absent maps. Kernels:
// csrc/ops/{cpu,cuda}/compose_displacement_kernel.*; autograd and fake: pscfast/ops/compose_displacement.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pscfast, m) {
  m.def("compose_displacement(Tensor f_ab, Tensor f_bc, Tensor m_ab, Tensor m_bc) -> (Tensor, Tensor)");
  // output_mask: (f_ab, f_bc, m_ab, m_bc)
  m.def(
      "_compose_displacement_backward(Tensor grad_f, Tensor grad_m, Tensor f_ab, Tensor f_bc, Tensor m_ab, "
      "Tensor m_bc, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
}
