// Schemas of Zhou et al.'s transitive composition of pixel displacement fields with matchability, and of
// their truncated flow loss. Kernels: csrc/ops/{cpu,cuda}/cycle_kernel.*; autograd and fake:
// pscfast/ops/cycle.py.
//   compose_displacement: f_ab (N, 2, H, W), f_bc (N, 2, Hb, Wb), m_ab (N, 1, H, W), m_bc (N, 1, Hb, Wb)
//     -> (f_ac (N, 2, H, W), m_ac (N, 1, H, W)); the Python layer passes ones for absent maps.
//   truncated_flow_loss: pred, target (N, 2, H, W), mask (N, 1, H, W) or None -> scalar.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pscfast, m) {
  m.def("compose_displacement(Tensor f_ab, Tensor f_bc, Tensor m_ab, Tensor m_bc) -> (Tensor, Tensor)");
  m.def("_compose_displacement_backward(Tensor grad_f, Tensor grad_m, Tensor f_ab, Tensor f_bc, Tensor m_ab, "
        "Tensor m_bc) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("truncated_flow_loss(Tensor pred, Tensor target, Tensor? mask, float T) -> Tensor");
  // output_mask: which of (pred, target, mask) gradients to compute; skipped ones come back empty
  m.def("_truncated_flow_loss_backward(Tensor grad, Tensor pred, Tensor target, Tensor? mask, float T, "
        "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}
