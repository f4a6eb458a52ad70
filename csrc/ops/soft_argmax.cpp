// Schemas of the kernel_soft_argmax op (SFNet eq. 2-3): corr (N, Ht*Wt, Hs, Ws) -> absolute grid
// (N, Hs, Ws, 2) into the Ht x Wt target. Kernels: csrc/ops/{cpu,cuda}/soft_argmax_kernel.*; autograd and
// fake: pscfast/ops/soft_argmax.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pscfast, m) {
  m.def("kernel_soft_argmax(Tensor corr, int target_h, int target_w, float beta, float sigma) -> Tensor");
  m.def("_kernel_soft_argmax_backward(Tensor grad_out, Tensor corr, int target_h, int target_w, float beta, "
        "float sigma) -> Tensor");
}
