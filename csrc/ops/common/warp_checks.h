// Checks of the warp op's tensor arguments for direct torch.ops.pscfast calls. pscfast.ops.warp
// validates everything with friendlier messages before it gets here.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace pscfast {

inline void check_warp_inputs(const at::Tensor& x, const at::Tensor& grid, c10::IntArrayRef out_size) {
  TORCH_CHECK(x.dim() == 4, "pscfast::warp: x must be (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(grid.dim() == 4 && grid.size(3) == 2, "pscfast::warp: grid must be (N, h, w, 2), got ", grid.sizes());
  TORCH_CHECK(grid.size(0) == x.size(0), "pscfast::warp: grid batch ", grid.size(0), " != x batch ", x.size(0));
  TORCH_CHECK(grid.scalar_type() == x.scalar_type(), "pscfast::warp: grid dtype ", grid.scalar_type(), " != x dtype ",
              x.scalar_type());
  TORCH_CHECK(grid.device() == x.device(), "pscfast::warp: grid and x are on different devices");
  TORCH_CHECK(out_size.size() == 2 && out_size[0] > 0 && out_size[1] > 0,
              "pscfast::warp: out_size must be two positive sizes, got ", out_size);
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0 && grid.size(1) > 0 && grid.size(2) > 0,
              "pscfast::warp: x and grid must have non-empty spatial sizes");
  // the kernels index a plane in int; a grid holds two coordinates per point. Each size is bounded before the
  // product so that the product cannot overflow.
  const auto below = [](int64_t h, int64_t w, int bits) {
    const int64_t limit = int64_t(1) << bits;
    return h < limit && w < limit && h * w < limit;
  };
  TORCH_CHECK(
      below(x.size(2), x.size(3), 31) && below(out_size[0], out_size[1], 31) && below(grid.size(1), grid.size(2), 30),
      "pscfast::warp: x and output planes of 2^31 pixels or more, or grids of 2^30 points or more, are not "
      "supported");
}

// grad_out of _warp_backward: (N, C, Ho, Wo) for x (N, C, H, W), in x's dtype and on its device.
inline void check_warp_grad(const at::Tensor& grad_out, const at::Tensor& x) {
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == x.size(0) && grad_out.size(1) == x.size(1) &&
                  grad_out.scalar_type() == x.scalar_type() && grad_out.device() == x.device(),
              "pscfast::_warp_backward: grad_out must be (N, C, Ho, Wo) = (", x.size(0), ", ", x.size(1),
              ", Ho, Wo) in x's dtype and device, got ", grad_out.sizes(), " ", grad_out.scalar_type());
}

}  // namespace pscfast
