// The autograd kernel of pscfast::local_correlation (Autograd dispatch key, every device): saves a, b and the
// six size arguments, and the backward calls _local_correlation_backward for the gradients autograd asks for
// (its output_mask), or, inside a recorded backward, _local_correlation_backward_reference
// (csrc/ops/common/autograd.h).
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <vector>

#include "ops/common/autograd.h"

namespace pscfast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Sizes = c10::SymIntArrayRef;

constexpr const char* kArgs[] = {"kernel_size", "patch_size", "stride", "padding", "dilation", "dilation_patch"};

class LocalCorrelationFunction : public torch::autograd::Function<LocalCorrelationFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b, Sizes kernel_size,
                            Sizes patch_size, Sizes stride, Sizes padding, Sizes dilation, Sizes dilation_patch) {
    static const auto op =
        pscfast_op<at::Tensor(const at::Tensor&, const at::Tensor&, Sizes, Sizes, Sizes, Sizes, Sizes, Sizes)>(
            "pscfast::local_correlation");
    ctx->save_for_backward({a, b});
    const Sizes args[] = {kernel_size, patch_size, stride, padding, dilation, dilation_patch};
    for (int i = 0; i < 6; ++i) ctx->saved_data[kArgs[i]] = c10::IValue(args[i]);
    at::AutoDispatchBelowADInplaceOrView below;
    return op.call(a, b, kernel_size, patch_size, stride, padding, dilation, dilation_patch);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 2> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    std::vector<c10::SymInt> args[6];
    for (int i = 0; i < 6; ++i) args[i] = ctx->saved_data[kArgs[i]].toSymIntVector();
    variable_list out(8);
    if (!grads[0].defined() || !(mask[0] || mask[1])) return out;
    if (at::GradMode::is_enabled()) {
      static const auto reference =
          pscfast_op<std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, Sizes, Sizes,
                                             Sizes, Sizes, Sizes, Sizes, std::array<bool, 2>)>(
              "pscfast::_local_correlation_backward_reference");
      const auto found = spread_masked(
          reference.call(grads[0], saved[0], saved[1], args[0], args[1], args[2], args[3], args[4], args[5], mask),
          mask);
      out[0] = found[0];
      out[1] = found[1];
      return out;
    }
    static const auto backward_op =
        pscfast_op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, Sizes,
                                                      Sizes, Sizes, Sizes, Sizes, Sizes, std::array<bool, 2>)>(
            "pscfast::_local_correlation_backward");
    at::AutoDispatchBelowADInplaceOrView below;
    std::tie(out[0], out[1]) = backward_op.call(grads[0].contiguous(), saved[0], saved[1], args[0], args[1], args[2],
                                                args[3], args[4], args[5], mask);
    return out;
  }
};

at::Tensor local_correlation_autograd(const at::Tensor& a, const at::Tensor& b, Sizes kernel_size, Sizes patch_size,
                                      Sizes stride, Sizes padding, Sizes dilation, Sizes dilation_patch) {
  return LocalCorrelationFunction::apply(a, b, kernel_size, patch_size, stride, padding, dilation, dilation_patch);
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, Autograd, m) { m.impl("local_correlation", &local_correlation_autograd); }

}  // namespace pscfast
