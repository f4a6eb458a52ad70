// Checks of the similarity loss's tensor arguments for direct torch.ops.pscfast calls, and its constants.
// pscfast.ops.similarity_loss validates everything with friendlier messages before it gets here.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace pscfast {

// F.normalize's eps: an L1 norm below it is replaced by it (and then passes no gradient).
constexpr double kSimilarityEps = 1e-12;

// fw, ft: lists of per-layer maps (N, C_l, H_l, W_l); fw[l] and ft[l] share N and C_l (not H, W).
inline void check_similarity_inputs(at::TensorList fw, at::TensorList ft, double tau, int64_t size) {
  TORCH_CHECK(!fw.empty(), "pscfast::similarity_loss: fw and ft must hold at least one layer");
  TORCH_CHECK(ft.size() == fw.size(), "pscfast::similarity_loss: fw has ", fw.size(), " layers, ft ", ft.size());
  TORCH_CHECK(size > 0 && size * size < (int64_t(1) << 31), "pscfast::similarity_loss: bad size ", size);
  TORCH_CHECK(tau > 0, "pscfast::similarity_loss: tau must be positive, got ", tau);
  const auto& ref = fw[0];
  int64_t channels = 0;
  for (size_t l = 0; l < fw.size(); ++l) {
    for (const auto* t : {&fw[l], &ft[l]}) {
      const char* name = t == &fw[l] ? "fw" : "ft";
      TORCH_CHECK(t->dim() == 4, "pscfast::similarity_loss: ", name, "[", l, "] must be (N, C, H, W), got ",
                  t->sizes());
      TORCH_CHECK(t->size(0) == ref.size(0), "pscfast::similarity_loss: ", name, "[", l, "] has batch ", t->size(0),
                  ", fw[0] has ", ref.size(0));
      TORCH_CHECK(t->scalar_type() == ref.scalar_type() && t->device() == ref.device(),
                  "pscfast::similarity_loss: every map of fw and ft must share one dtype and device");
      TORCH_CHECK(t->size(2) > 0 && t->size(3) > 0, "pscfast::similarity_loss: ", name, "[", l, "] has an empty grid ",
                  t->sizes());
    }
    TORCH_CHECK(ft[l].size(1) == fw[l].size(1), "pscfast::similarity_loss: layer ", l, ": fw has ", fw[l].size(1),
                " channels, ft ", ft[l].size(1));
    channels += fw[l].size(1);
  }
  TORCH_CHECK(ref.size(0) > 0 && channels > 0, "pscfast::similarity_loss: fw and ft must not be empty");
}

inline void check_similarity_backward(const at::Tensor& grad, at::TensorList fw, const at::Tensor& stats,
                                      int64_t size) {
  const int64_t N = fw[0].size(0), P = size * size;
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == N && grad.size(1) == P,
              "pscfast::_similarity_loss_backward: grad_ce must be (N, size^2), got ", grad.sizes());
  TORCH_CHECK(stats.dim() == 3 && stats.size(0) == N && stats.size(1) == 3 && stats.size(2) == P,
              "pscfast::_similarity_loss_backward: stats must be (N, 3, size^2), got ", stats.sizes());
}

}  // namespace pscfast
