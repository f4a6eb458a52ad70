// Schemas of the truncated_flow_loss op: Zhou et al.'s truncated Euclidean flow loss, pred, target
// (N, 2, H, W), mask (N, 1, H, W) or None -> scalar. Kernels: csrc/ops/{cpu,cuda}/truncated_flow_loss_kernel.*;
// autograd and fake: pscfast/ops/truncated_flow_loss.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pscfast, m) {
  m.def("truncated_flow_loss(Tensor pred, Tensor target, Tensor? mask, float T) -> Tensor");
  // output_mask: (pred, target, mask); the gradient of an absent mask is undefined
  m.def(
      "_truncated_flow_loss_backward(Tensor grad, Tensor pred, Tensor target, Tensor? mask, float T, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}
