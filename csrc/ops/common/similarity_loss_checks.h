// Checks of the similarity loss's tensor arguments for direct torch.ops.pscfast calls, and its constants.
// pscfast.ops.similarity_loss validates everything with friendlier messages before it gets here.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace pscfast {

// F.normalize's eps: an L1 norm below it is replaced by it (and then passes no gradient).
constexpr double kSimilarityEps = 1e-12;

inline void check_similarity_inputs(const at::Tensor& fw, const at::Tensor& ft, double tau) {
  TORCH_CHECK(fw.dim() == 4, "pscfast::similarity_loss: fw must be (N, C, h, w), got ", fw.sizes());
  TORCH_CHECK(ft.sizes() == fw.sizes(), "pscfast::similarity_loss: ft ", ft.sizes(), " != fw ", fw.sizes());
  TORCH_CHECK(ft.scalar_type() == fw.scalar_type(), "pscfast::similarity_loss: ft dtype ", ft.scalar_type(),
              " != fw dtype ", fw.scalar_type());
  TORCH_CHECK(ft.device() == fw.device(), "pscfast::similarity_loss: fw and ft are on different devices");
  TORCH_CHECK(fw.numel() > 0, "pscfast::similarity_loss: fw and ft must not be empty");
  TORCH_CHECK(fw.size(2) * fw.size(3) < (int64_t(1) << 31), "pscfast::similarity_loss: grid too large");
  TORCH_CHECK(tau > 0, "pscfast::similarity_loss: tau must be positive, got ", tau);
}

inline void check_similarity_backward(const at::Tensor& grad, const at::Tensor& fw, const at::Tensor& stats) {
  const int64_t P = fw.size(2) * fw.size(3);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == fw.size(0) && grad.size(1) == P,
              "pscfast::_similarity_loss_backward: grad_ce must be (N, h * w), got ", grad.sizes());
  TORCH_CHECK(stats.dim() == 3 && stats.size(0) == fw.size(0) && stats.size(1) == 3 && stats.size(2) == P,
              "pscfast::_similarity_loss_backward: stats must be (N, 3, h * w), got ", stats.sizes());
}

}  // namespace pscfast
