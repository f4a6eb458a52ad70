// Schemas of the kernel_soft_argmax op (SFNet eq. 2-3): corr (N, Ht*Wt, Hs, Ws) -> absolute grid
// (N, Hs, Ws, 2) into the Ht x Wt target; normalize is "l2", "sfnet" or "none"
// (ops/common/kernel_soft_argmax_math.h). The arguments keep the order of pscfast.ops.kernel_soft_argmax.
// Kernels: csrc/ops/{cpu,cuda}/kernel_soft_argmax_kernel.*; autograd and fake: pscfast/ops/kernel_soft_argmax.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pscfast, m) {
  m.def("kernel_soft_argmax(Tensor corr, float beta, float sigma, SymInt[2] target_size, str normalize) -> Tensor");
  // output_mask: (corr); a masked gradient comes back undefined (None)
  m.def(
      "_kernel_soft_argmax_backward(Tensor grad_out, Tensor corr, float beta, float sigma, SymInt[2] target_size, "
      "str normalize, bool[1] output_mask) -> Tensor");
}
