// The autograd kernel of pscfast::warp (Autograd dispatch key, every device): a hand-written graph node, the
// way ATen's own ops record theirs, rather than a torch::autograd::Function, whose context (a map of boxed
// values, per-input bookkeeping, a demangled name at every backward) cost 8 of the 57 us of a 16 x 1 x 16 x 16
// warp's forward and backward (SFNet's mask warps), two thirds of its gap to grid_sample. The node saves x and the
// grid; its backward calls _warp_backward for the gradients autograd asks for, or, inside a recorded backward,
// _warp_backward_reference (csrc/ops/common/autograd.h). It supports compiled autograd; forward-mode AD is
// refused rather than dropped.
//
// A one-channel CPU image whose grid alone requires grad (SFNet's mask warps: a soft-argmax grid warping a fixed
// mask) runs _warp_with_jacobian instead: the forward also returns d(out)/d(grid), from the taps it reads anyway,
// and the grid's gradient is then grad_out times it, where the backward kernel would compute every tap again.
#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <array>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "ops/common/autograd.h"

namespace pscfast {
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

using WarpSignature = at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef, c10::string_view,
                                 c10::string_view, bool);
using Mask = std::array<bool, 2>;

const c10::TypedOperatorHandle<WarpSignature>& warp_op() {
  static const auto op = pscfast_op<WarpSignature>("pscfast::warp");
  return op;
}

struct WarpBackward final : torch::autograd::Node {
  SavedVariable x, grid, jacobian;  // jacobian: d(out)/d(grid), (N, C, h, w, 2), when the forward returned it
  std::string mode, padding_mode;
  bool align_corners = true;

  std::string name() const override { return "WarpBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    x.reset_data();
    grid.reset_data();
    jacobian.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const Mask mask = {task_should_compute_output(0), task_should_compute_output(1)};
    variable_list out(2);  // undefined: no gradient
    if (!grads[0].defined() || !(mask[0] || mask[1])) return out;
    const auto x_ = x.unpack(), grid_ = grid.unpack();
    if (at::GradMode::is_enabled()) {
      static const auto reference =
          pscfast_op<std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view,
                                             c10::string_view, bool, Mask)>("pscfast::_warp_backward_reference");
      return spread_masked(reference.call(grads[0], x_, grid_, mode, padding_mode, align_corners, mask), mask);
    }
    static const auto backward_op = pscfast_op<std::tuple<at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view, c10::string_view, bool, Mask)>(
        "pscfast::_warp_backward");
    at::AutoDispatchBelowADInplaceOrView below;
    const auto jac = jacobian.unpack();
    if (jac.defined()) {
      static const auto product_op =
          pscfast_op<at::Tensor(const at::Tensor&, const at::Tensor&)>("pscfast::_warp_jacobian_product");
      out[1] = product_op.call(grads[0], jac);  // saved only when x does not require grad: no image gradient
      return out;
    }
    std::tie(out[0], out[1]) =
        backward_op.call(grads[0].contiguous(), x_, grid_, mode, padding_mode, align_corners, mask);
    return out;
  }

  // Compiled autograd. Node::compiled_args became const in recent torch: one of the two overrides it.
  void compiled_args(torch::dynamo::autograd::CompiledNodeArgs& args) const { collect(args); }
  void compiled_args(torch::dynamo::autograd::CompiledNodeArgs& args) { collect(args); }
  void collect(torch::dynamo::autograd::CompiledNodeArgs& args) const {
    args.collect(x, false);
    args.collect(grid, false);
    args.collect(jacobian, false);
    args.collect(mode);
    args.collect(padding_mode);
    args.collect(align_corners);
  }

  variable_list apply_with_saved(const variable_list& grads,
                                 torch::dynamo::autograd::SwapSavedVariables& saved) override {
    saved.before(x);
    saved.before(grid);
    saved.before(jacobian);
    auto out = apply(variable_list(grads));
    saved.after(x);
    saved.after(grid);
    saved.after(jacobian);
    return out;
  }
};

// Whether the forward returns d(out)/d(grid) (see the top of the file): a bilinear one-channel float or double CPU
// image that does not require grad, a grid that does, at the output's size (sizes known, not symbolic).
bool with_jacobian(const at::Tensor& x, const at::Tensor& grid, c10::SymIntArrayRef out_size, c10::string_view mode) {
  if (!x.is_cpu() || x.dim() != 4 || grid.dim() != 4 || out_size.size() != 2 || x.requires_grad() ||
      !grid.requires_grad() || mode != "bilinear" || grid.scalar_type() != x.scalar_type() ||
      (x.scalar_type() != at::kFloat && x.scalar_type() != at::kDouble))
    return false;
  const auto channels = x.sym_size(1).maybe_as_int(), h = grid.sym_size(1).maybe_as_int(),
             w = grid.sym_size(2).maybe_as_int(), ho = out_size[0].maybe_as_int(), wo = out_size[1].maybe_as_int();
  return channels && h && w && ho && wo && *channels == 1 && *h == *ho && *w == *wo;
}

at::Tensor warp_autograd(const at::Tensor& x, const at::Tensor& grid, c10::SymIntArrayRef out_size,
                         c10::string_view mode, c10::string_view padding_mode, bool align_corners) {
  TORCH_CHECK_NOT_IMPLEMENTED(!torch::autograd::isFwGradDefined(x) && !torch::autograd::isFwGradDefined(grid),
                              "pscfast::warp: forward-mode AD (dual tensors) is not supported");
  if (!torch::autograd::compute_requires_grad(x, grid)) {  // no graph to record
    at::AutoDispatchBelowADInplaceOrView below;
    return warp_op().call(x, grid, out_size, mode, padding_mode, align_corners);
  }
  auto node = make_node<WarpBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(x, grid));
  node->x = SavedVariable(x, false);
  node->grid = SavedVariable(grid, false);
  node->mode = std::string(mode);
  node->padding_mode = std::string(padding_mode);
  node->align_corners = align_corners;
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView below;
    if (with_jacobian(x, grid, out_size, mode)) {
      static const auto jacobian_op =
          pscfast_op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, c10::string_view,
                                                        c10::string_view, bool)>("pscfast::_warp_with_jacobian");
      at::Tensor jac;
      std::tie(out, jac) = jacobian_op.call(x, grid, mode, padding_mode, align_corners);
      node->jacobian = SavedVariable(jac, false);
    } else {
      out = warp_op().call(x, grid, out_size, mode, padding_mode, align_corners);
    }
  }
  torch::autograd::set_history(out, node);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, Autograd, m) { m.impl("warp", &warp_autograd); }

}  // namespace pscfast
