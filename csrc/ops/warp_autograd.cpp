// The autograd kernel of pscfast::warp (Autograd dispatch key, every device): saves x and the grid, and the
// backward calls _warp_backward for the gradients autograd asks for (its output_mask), or, inside a recorded
// backward, _warp_backward_reference (csrc/ops/common/autograd.h).
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>
#include <vector>

#include "ops/common/autograd.h"

namespace pscfast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

const c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef, c10::string_view,
                                          c10::string_view, bool)>&
warp_op() {
  static const auto op = pscfast_op<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef,
                                               c10::string_view, c10::string_view, bool)>("pscfast::warp");
  return op;
}

class WarpFunction : public torch::autograd::Function<WarpFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& grid,
                            c10::SymIntArrayRef out_size, c10::string_view mode, c10::string_view padding_mode,
                            bool align_corners) {
    ctx->save_for_backward({x, grid});
    ctx->saved_data["mode"] = std::string(mode);
    ctx->saved_data["padding_mode"] = std::string(padding_mode);
    ctx->saved_data["align_corners"] = align_corners;
    at::AutoDispatchBelowADInplaceOrView below;
    return warp_op().call(x, grid, out_size, mode, padding_mode, align_corners);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 2> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    const std::string mode = ctx->saved_data["mode"].toStringRef();
    const std::string padding_mode = ctx->saved_data["padding_mode"].toStringRef();
    const bool align_corners = ctx->saved_data["align_corners"].toBool();
    variable_list out(6);
    if (!grads[0].defined() || !(mask[0] || mask[1])) return out;
    if (at::GradMode::is_enabled()) {
      static const auto reference =
          pscfast_op<std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view,
                                             c10::string_view, bool, std::array<bool, 2>)>(
              "pscfast::_warp_backward_reference");
      const auto found =
          spread_masked(reference.call(grads[0], saved[0], saved[1], mode, padding_mode, align_corners, mask), mask);
      out[0] = found[0];
      out[1] = found[1];
      return out;
    }
    static const auto backward_op =
        pscfast_op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                      c10::string_view, c10::string_view, bool, std::array<bool, 2>)>(
            "pscfast::_warp_backward");
    at::AutoDispatchBelowADInplaceOrView below;
    std::tie(out[0], out[1]) =
        backward_op.call(grads[0].contiguous(), saved[0], saved[1], mode, padding_mode, align_corners, mask);
    return out;
  }
};

at::Tensor warp_autograd(const at::Tensor& x, const at::Tensor& grid, c10::SymIntArrayRef out_size,
                         c10::string_view mode, c10::string_view padding_mode, bool align_corners) {
  if (!at::GradMode::is_enabled() || !(x.requires_grad() || grid.requires_grad())) {  // no graph to record
    at::AutoDispatchBelowADInplaceOrView below;
    return warp_op().call(x, grid, out_size, mode, padding_mode, align_corners);
  }
  return WarpFunction::apply(x, grid, out_size, mode, padding_mode, align_corners);
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, Autograd, m) { m.impl("warp", &warp_autograd); }

}  // namespace pscfast
