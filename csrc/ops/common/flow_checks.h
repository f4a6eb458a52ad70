// Checks of the compose / consistency_loss / compose_displacement / truncated_flow_loss arguments for
// direct torch.ops.pscfast calls; the Python layer validates everything first with friendlier messages.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace pscfast {

// h * w < 2^30 without overflow: each size is bounded before the product (an empty tensor may have huge sizes).
inline bool plane_below_2_30(int64_t h, int64_t w) {
  constexpr int64_t kLimit = int64_t(1) << 30;
  return h < kLimit && w < kLimit && h * w < kLimit;
}

// Absolute grids (N, h, w, 2) of one batch, dtype and device.
inline void check_grid_pair(const char* op, const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.dim() == 4 && a.size(3) == 2 && b.dim() == 4 && b.size(3) == 2, "pscfast::", op,
              ": flows must be (N, h, w, 2), got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.size(0) == b.size(0), "pscfast::", op, ": batch sizes differ");
  TORCH_CHECK(a.scalar_type() == b.scalar_type() && a.device() == b.device(), "pscfast::", op,
              ": flows must share dtype and device");
  TORCH_CHECK(a.size(1) > 0 && a.size(2) > 0 && plane_below_2_30(a.size(1), a.size(2)) &&
                  plane_below_2_30(b.size(1), b.size(2)),
              "pscfast::", op, ": flow planes must be non-empty and below 2^30 pixels");
}

// A (N, c, H, W) tensor like `like` (dtype, device, batch), with c channels.
inline void check_field(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like, int64_t c) {
  TORCH_CHECK(t.dim() == 4 && t.size(0) == like.size(0) && t.size(1) == c, "pscfast::", op, ": ", name, " must be (N, ",
              c, ", H, W) with N = ", like.size(0), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type() && t.device() == like.device(), "pscfast::", op, ": ", name,
              " must share dtype and device with the other inputs");
  TORCH_CHECK(plane_below_2_30(t.size(2), t.size(3)), "pscfast::", op, ": ", name, " plane too large");
}

// The identity's coordinates xs (w',) and ys (h',) of consistency_loss for bwd (N, h', w', 2).
inline void check_identity(const char* op, const at::Tensor& bwd, const at::Tensor& xs, const at::Tensor& ys) {
  TORCH_CHECK(xs.dim() == 1 && xs.size(0) == bwd.size(2) && ys.dim() == 1 && ys.size(0) == bwd.size(1), "pscfast::", op,
              ": xs must be (w',) and ys (h',) for bwd (N, h', w', 2)");
  TORCH_CHECK(xs.scalar_type() == bwd.scalar_type() && ys.scalar_type() == bwd.scalar_type() &&
                  xs.device() == bwd.device() && ys.device() == bwd.device(),
              "pscfast::", op, ": xs and ys must have the flows' dtype and device");
}

}  // namespace pscfast
