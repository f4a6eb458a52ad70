// Schemas of flow composition on absolute grids and PSC's forward-backward consistency loss.
// Kernels: csrc/ops/{cpu,cuda}/consistency_kernel.*; autograd and fake: pscfast/ops/consistency.py.
//   compose: f_ab (N, h, w, 2) sampled at the grid f_bc (N, h', w', 2) -> (N, h', w', 2).
//   consistency_loss: cycle = compose(fwd, bwd); xs (w',) and ys (h',) are the identity's coordinates
//   (torch.linspace(-1, 1, .) on the device, so that the mask matches the reference bit for bit);
//   returns (loss, count): the masked mean and the int64 number of masked-in coordinates.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pscfast, m) {
  m.def("compose(Tensor f_ab, Tensor f_bc, str mode) -> Tensor");
  m.def("_compose_backward(Tensor grad_out, Tensor f_ab, Tensor f_bc, str mode) -> (Tensor, Tensor)");
  m.def("consistency_loss(Tensor fwd, Tensor bwd, Tensor xs, Tensor ys, str mode) -> (Tensor, Tensor)");
  m.def("_consistency_loss_backward(Tensor grad, Tensor count, Tensor fwd, Tensor bwd, Tensor xs, Tensor ys, "
        "str mode) -> (Tensor, Tensor)");
}
