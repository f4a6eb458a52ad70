// Shape and argument checks of kernel_soft_argmax, shared by the CPU and CUDA kernels (direct
// torch.ops.pscfast calls; the Python layer validates first with friendlier messages).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cmath>

#include "ops/common/kernel_soft_argmax_math.h"

namespace pscfast {

// corr (N, T, Hs, Ws): T = Ht * Wt target positions, S = Hs * Ws source positions.
struct SoftArgmaxShape {
  int64_t N, T, S;
  int Ht, Wt;
  RowNorm norm;
};

inline RowNorm parse_row_norm(c10::string_view s) {
  if (s == "l2") return RowNorm::kL2;
  if (s == "sfnet") return RowNorm::kSfnet;
  TORCH_CHECK(s == "none", "pscfast::kernel_soft_argmax: normalize must be 'l2', 'sfnet' or 'none', got '",
              std::string(s), "'");
  return RowNorm::kNone;
}

inline SoftArgmaxShape check_soft_argmax(const at::Tensor& corr, double beta, double sigma,
                                         c10::IntArrayRef target_size, c10::string_view normalize) {
  TORCH_CHECK(corr.dim() == 4, "pscfast::kernel_soft_argmax: corr must be (N, Ht*Wt, Hs, Ws), got ", corr.sizes());
  TORCH_CHECK(target_size.size() == 2, "pscfast::kernel_soft_argmax: target_size must be (Ht, Wt)");
  const int64_t Ht = target_size[0], Wt = target_size[1];
  TORCH_CHECK(Ht > 0 && Wt > 0 && Ht < (int64_t(1) << 31) && Wt < (int64_t(1) << 31) && Ht * Wt == corr.size(1),
              "pscfast::kernel_soft_argmax: target size ", Ht, "x", Wt, " does not match the ", corr.size(1),
              " channels of corr");
  TORCH_CHECK(corr.size(1) < (int64_t(1) << 31), "pscfast::kernel_soft_argmax: too many target positions");
  TORCH_CHECK(std::isfinite(beta) && beta > 0, "pscfast::kernel_soft_argmax: beta must be positive and finite");
  TORCH_CHECK(std::isfinite(sigma) && sigma > 0, "pscfast::kernel_soft_argmax: sigma must be positive and finite");
  return {corr.size(0),         corr.size(1),         corr.size(2) * corr.size(3),
          static_cast<int>(Ht), static_cast<int>(Wt), parse_row_norm(normalize)};
}

inline void check_soft_argmax_grad(const at::Tensor& grad_out, const at::Tensor& corr, const SoftArgmaxShape& sh) {
  TORCH_CHECK(
      grad_out.dim() == 4 && grad_out.size(0) == sh.N && grad_out.size(1) == corr.size(2) &&
          grad_out.size(2) == corr.size(3) && grad_out.size(3) == 2 && grad_out.scalar_type() == corr.scalar_type(),
      "pscfast::_kernel_soft_argmax_backward: grad_out must be (N, Hs, Ws, 2) in corr's dtype, got ", grad_out.sizes());
}

}  // namespace pscfast
