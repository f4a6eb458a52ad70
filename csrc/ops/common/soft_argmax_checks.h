// Shape and argument checks of kernel_soft_argmax, shared by the CPU and CUDA kernels (direct
// torch.ops.pscfast calls; the Python layer validates first with friendlier messages).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace pscfast {

// corr (N, T, Hs, Ws): T = Ht * Wt target positions, S = Hs * Ws source positions.
struct SoftArgmaxShape {
  int64_t N, T, S;
  int Ht, Wt;
};

inline SoftArgmaxShape check_soft_argmax(const at::Tensor& corr, int64_t Ht, int64_t Wt, double sigma) {
  TORCH_CHECK(corr.dim() == 4, "pscfast::kernel_soft_argmax: corr must be (N, Ht*Wt, Hs, Ws), got ", corr.sizes());
  TORCH_CHECK(Ht > 0 && Wt > 0 && Ht * Wt == corr.size(1), "pscfast::kernel_soft_argmax: target size ", Ht, "x",
              Wt, " does not match the ", corr.size(1), " channels of corr");
  TORCH_CHECK(sigma > 0, "pscfast::kernel_soft_argmax: sigma must be positive");
  return {corr.size(0), corr.size(1), corr.size(2) * corr.size(3), static_cast<int>(Ht), static_cast<int>(Wt)};
}

inline void check_soft_argmax_grad(const at::Tensor& grad_out, const at::Tensor& corr, const SoftArgmaxShape& sh) {
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == sh.N && grad_out.size(1) * grad_out.size(2) == sh.S &&
                  grad_out.size(3) == 2 && grad_out.scalar_type() == corr.scalar_type(),
              "pscfast::_kernel_soft_argmax_backward: grad_out must be (N, Hs, Ws, 2) in corr's dtype, got ",
              grad_out.sizes());
}

}  // namespace pscfast
