// Shapes and checks of the compose_displacement and truncated_flow_loss arguments, and the loss's gradient
// buffers, shared by the CPU and CUDA kernels (direct torch.ops.pscfast calls; the Python layer validates
// first with friendlier messages).
#pragma once

#include <ATen/ops/empty.h>
#include <c10/util/Optional.h>

#include <array>
#include <tuple>

#include "ops/common/flow_checks.h"

namespace pscfast {

struct CycleDims {
  int64_t N, P, Pb;  // batch, pixels of image a, pixels of image b
  int H, W, Hb, Wb;
};

inline CycleDims check_cycle(const char* op, const at::Tensor& f_ab, const at::Tensor& f_bc,
                             const at::Tensor& m_ab, const at::Tensor& m_bc) {
  TORCH_CHECK(f_ab.dim() == 4 && f_ab.size(1) == 2, "pscfast::", op, ": f_ab must be (N, 2, H, W), got ", f_ab.sizes());
  check_field(op, "f_bc", f_bc, f_ab, 2);
  check_field(op, "m_ab", m_ab, f_ab, 1);
  check_field(op, "m_bc", m_bc, f_ab, 1);
  TORCH_CHECK(m_ab.sizes().slice(2) == f_ab.sizes().slice(2) && m_bc.sizes().slice(2) == f_bc.sizes().slice(2),
              "pscfast::", op, ": m_ab must match f_ab's spatial size and m_bc f_bc's");
  return {f_ab.size(0), f_ab.size(2) * f_ab.size(3), f_bc.size(2) * f_bc.size(3), static_cast<int>(f_ab.size(2)),
          static_cast<int>(f_ab.size(3)), static_cast<int>(f_bc.size(2)), static_cast<int>(f_bc.size(3))};
}

inline void check_loss(const char* op, const at::Tensor& pred, const at::Tensor& target,
                       const c10::optional<at::Tensor>& mask) {
  TORCH_CHECK(pred.dim() == 4 && pred.size(1) == 2 && target.sizes() == pred.sizes(), "pscfast::", op,
              ": pred and target must be (N, 2, H, W) of one shape, got ", pred.sizes(), " and ", target.sizes());
  TORCH_CHECK(target.scalar_type() == pred.scalar_type() && target.device() == pred.device(), "pscfast::", op,
              ": pred and target must share dtype and device");
  TORCH_CHECK(plane_below_2_30(pred.size(2), pred.size(3)), "pscfast::", op, ": pred plane too large");
  if (mask.has_value()) {
    check_field(op, "mask", *mask, pred, 1);
    TORCH_CHECK(mask->sizes().slice(2) == pred.sizes().slice(2), "pscfast::", op, ": mask must be (N, 1, H, W)");
  }
}

// The (d pred, d target, d mask) buffers of _truncated_flow_loss_backward: those output_mask skips are empty.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_grad_buffers(const at::Tensor& pred,
                                                                        std::array<bool, 3> output_mask) {
  const auto make = [&](bool need, at::IntArrayRef shape) {
    return at::empty(need ? shape : at::IntArrayRef{0}, pred.options());
  };
  return {make(output_mask[0], pred.sizes()), make(output_mask[1], pred.sizes()),
          make(output_mask[2], {pred.size(0), 1, pred.size(2), pred.size(3)})};
}

}  // namespace pscfast
