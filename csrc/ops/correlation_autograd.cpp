// Autograd of pscfast::correlation (every device), in C++: autograd through Python (torch.library's
// register_autograd) cost 0.1-0.2 ms per forward and backward, a tenth of GLU-Net's whole global
// correlation (2 x 256 x 16 x 16 on one CPU thread), where torch.bmm's autograd costs microseconds.
// First derivatives: pscfast::_correlation_backward. A backward that autograd records (create_graph=True:
// gradient penalties, gradgradcheck) differentiates the plain PyTorch reference instead, through
// pscfast::_correlation_backward_reference, which pscfast/ops/correlation.py implements in Python
// (pscfast.ops._higher_order), so every higher derivative is the reference's (csrc/ops/common/autograd.h).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "ops/common/autograd.h"

namespace pscfast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Grads = std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor>;

class CorrelationFunction : public torch::autograd::Function<CorrelationFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, at::TensorList src, at::TensorList tgt,
                            const c10::optional<at::Tensor>& grid, c10::SymIntArrayRef size,
                            c10::SymIntArrayRef target_size, double scale) {
    variable_list saved(src.begin(), src.end());
    saved.insert(saved.end(), tgt.begin(), tgt.end());
    const bool has_grid = grid.has_value() && grid->defined();
    if (has_grid) saved.push_back(*grid);
    ctx->save_for_backward(saved);
    ctx->saved_data["layers"] = static_cast<int64_t>(src.size());
    ctx->saved_data["has_grid"] = has_grid;
    ctx->saved_data["size"] = size.vec();
    ctx->saved_data["target_size"] = target_size.vec();
    ctx->saved_data["scale"] = scale;
    at::AutoDispatchBelowADInplaceOrView below;
    static const auto forward_op =
        pscfast_op<at::Tensor(at::TensorList, at::TensorList, const c10::optional<at::Tensor>&, c10::SymIntArrayRef,
                              c10::SymIntArrayRef, double)>("pscfast::correlation");
    return forward_op.call(src, tgt, grid, size, target_size, scale);
  }

  // One gradient per forward argument: the src and tgt layers, the grid, size, target_size and scale.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const int64_t L = ctx->saved_data["layers"].toInt();
    const bool has_grid = ctx->saved_data["has_grid"].toBool();
    const auto size = ctx->saved_data["size"].toSymIntVector();
    const auto target_size = ctx->saved_data["target_size"].toSymIntVector();
    const double scale = ctx->saved_data["scale"].toDouble();
    const std::vector<at::Tensor> src(saved.begin(), saved.begin() + L), tgt(saved.begin() + L, saved.begin() + 2 * L);
    const c10::optional<at::Tensor> grid = has_grid ? c10::optional<at::Tensor>(saved[2 * L]) : c10::nullopt;
    const auto any = [&](int64_t first, int64_t count) {
      for (int64_t i = first; i < first + count; ++i)
        if (ctx->needs_input_grad(i)) return true;
      return false;
    };
    const std::array<bool, 3> mask = {any(0, L), any(L, L), has_grid && ctx->needs_input_grad(2 * L)};
    using Backward = Grads(const at::Tensor&, at::TensorList, at::TensorList, const c10::optional<at::Tensor>&,
                           c10::SymIntArrayRef, c10::SymIntArrayRef, double, std::array<bool, 3>);
    static const auto backward_op = pscfast_op<Backward>("pscfast::_correlation_backward");
    Grads g;
    if (at::GradMode::is_enabled()) {
      static const auto reference = pscfast_op<Backward>("pscfast::_correlation_backward_reference");
      g = reference.call(grads[0], src, tgt, grid, size, target_size, scale, mask);
    } else {
      g = backward_op.call(grads[0].contiguous(), src, tgt, grid, size, target_size, scale, mask);
    }
    auto& [dsrc, dtgt, dgrid] = g;
    variable_list out(2 * L + 4);  // undefined: no gradient
    for (int64_t l = 0; l < L; ++l) {
      if (mask[0]) out[l] = dsrc[l];
      if (mask[1]) out[L + l] = dtgt[l];
    }
    if (mask[2]) out[2 * L] = dgrid;
    return out;
  }
};

at::Tensor correlation_autograd(at::TensorList src, at::TensorList tgt, const c10::optional<at::Tensor>& grid,
                                c10::SymIntArrayRef size, c10::SymIntArrayRef target_size, double scale) {
  return CorrelationFunction::apply(src, tgt, grid, size, target_size, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, Autograd, m) { m.impl("correlation", &correlation_autograd); }

}  // namespace pscfast
