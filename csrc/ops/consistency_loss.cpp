// Schemas of the consistency_loss op: PSC's forward-backward consistency loss, cycle = compose(fwd, bwd);
// xs (w',) and ys (h',) are the identity's coordinates (torch.linspace(-1, 1, .) on the device, so that the
// mask matches the reference bit for bit); returns (loss, count): the masked mean and the int64 number of
// masked-in coordinates. Kernels: csrc/ops/{cpu,cuda}/consistency_loss_kernel.*; autograd and fake:
// pscfast/ops/consistency_loss.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pscfast, m) {
  m.def("consistency_loss(Tensor fwd, Tensor bwd, Tensor xs, Tensor ys, str mode) -> (Tensor, Tensor)");
  // count: the forward's; output_mask: (fwd, bwd)
  m.def(
      "_consistency_loss_backward(Tensor grad, Tensor fwd, Tensor bwd, Tensor xs, Tensor ys, str mode, "
      "Tensor count, bool[2] output_mask) -> (Tensor, Tensor)");
}
