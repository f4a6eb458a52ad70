// Checks of the truncated_flow_loss arguments, and the loss's gradient buffers, shared by the CPU and CUDA
// kernels (direct torch.ops.pscfast calls; the Python layer validates first with friendlier messages).
#pragma once

#include <c10/util/Optional.h>

#include <array>
#include <tuple>

#include "ops/common/flow_checks.h"
#include "ops/common/output_mask.h"

namespace pscfast {

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

// The (d pred, d target, d mask) buffers of _truncated_flow_loss_backward: undefined for a gradient that
// output_mask does not ask for, and d mask for an absent mask too.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_grad_buffers(const at::Tensor& pred,
                                                                        const c10::optional<at::Tensor>& mask,
                                                                        std::array<bool, 3> output_mask) {
  return {empty_if(output_mask[0], pred.sizes(), pred.options()),
          empty_if(output_mask[1], pred.sizes(), pred.options()),
          empty_if(output_mask[2] && mask.has_value(), {pred.size(0), 1, pred.size(2), pred.size(3)}, pred.options())};
}

}  // namespace pscfast
