// The autograd kernel of pscfast::correlation (Autograd dispatch key, every device): a hand-written graph node, as
// warp_autograd.cpp's, rather than a torch::autograd::Function, whose context (a map of boxed values keyed by
// strings, filled at every call, even without grad) cost 1.5 us of a small call's forward, with or without grad,
// and 20 of its forward and backward: a 1 x 4 x 4 x 4 correlation took 70 us forward and backward against 54 for
// torch.bmm, and takes 45-52 us now. Autograd through Python (torch.library's register_autograd) had cost
// 0.1-0.2 ms per forward and backward.
// First derivatives: pscfast::_correlation_backward. A backward that autograd records (create_graph=True: gradient
// penalties, gradgradcheck) differentiates the plain PyTorch reference instead, through
// pscfast::_correlation_backward_reference, which pscfast/ops/correlation.py implements in Python
// (pscfast.ops._higher_order), so every higher derivative is the reference's (csrc/ops/common/autograd.h). The node
// supports compiled autograd; forward-mode AD is refused rather than dropped.
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
using Mask = std::array<bool, 3>;
using Grads = std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor>;
using Forward = at::Tensor(at::TensorList, at::TensorList, const c10::optional<at::Tensor>&, c10::SymIntArrayRef,
                           c10::SymIntArrayRef, double);
using Backward = Grads(const at::Tensor&, at::TensorList, at::TensorList, const c10::optional<at::Tensor>&,
                       c10::SymIntArrayRef, c10::SymIntArrayRef, double, Mask);

const c10::TypedOperatorHandle<Forward>& correlation_op() {
  static const auto op = pscfast_op<Forward>("pscfast::correlation");
  return op;
}

std::vector<SavedVariable> saved(at::TensorList maps) {
  std::vector<SavedVariable> out;
  out.reserve(maps.size());
  for (const auto& m : maps) out.emplace_back(m, false);
  return out;
}

std::vector<at::Tensor> unpacked(const std::vector<SavedVariable>& maps) {
  std::vector<at::Tensor> out;
  out.reserve(maps.size());
  for (const auto& m : maps) out.push_back(m.unpack());
  return out;
}

// Inputs, in the order of the node's outputs: the src layers, the tgt layers, then the grid (an edge even when
// there is none).
struct CorrelationBackward final : torch::autograd::Node {
  std::vector<SavedVariable> src, tgt;
  SavedVariable grid;  // undefined without one
  bool has_grid = false;
  std::vector<c10::SymInt> size, target_size;
  double scale = 1.0;

  std::string name() const override { return "CorrelationBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto* maps : {&src, &tgt})
      for (auto& m : *maps) m.reset_data();
    grid.reset_data();
  }

  bool any_output(size_t first, size_t count) const {
    for (size_t i = first; i < first + count; ++i)
      if (task_should_compute_output(i)) return true;
    return false;
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const size_t L = src.size();
    const Mask mask = {any_output(0, L), any_output(L, L), has_grid && task_should_compute_output(2 * L)};
    variable_list out(2 * L + 1);  // undefined: no gradient
    if (!grads[0].defined() || !(mask[0] || mask[1] || mask[2])) return out;
    const auto src_ = unpacked(src), tgt_ = unpacked(tgt);
    const c10::optional<at::Tensor> grid_ = has_grid ? c10::optional<at::Tensor>(grid.unpack()) : c10::nullopt;
    Grads g;
    if (at::GradMode::is_enabled()) {
      static const auto reference = pscfast_op<Backward>("pscfast::_correlation_backward_reference");
      g = reference.call(grads[0], src_, tgt_, grid_, size, target_size, scale, mask);
    } else {
      static const auto backward_op = pscfast_op<Backward>("pscfast::_correlation_backward");
      at::AutoDispatchBelowADInplaceOrView below;
      g = backward_op.call(grads[0].contiguous(), src_, tgt_, grid_, size, target_size, scale, mask);
    }
    auto& [dsrc, dtgt, dgrid] = g;
    for (size_t l = 0; l < L; ++l) {
      if (mask[0]) out[l] = dsrc[l];
      if (mask[1]) out[L + l] = dtgt[l];
    }
    if (mask[2]) out[2 * L] = dgrid;
    return out;
  }

  // Compiled autograd. Node::compiled_args became const in recent torch: one of the two overrides it.
  void compiled_args(torch::dynamo::autograd::CompiledNodeArgs& args) const { collect(args); }
  void compiled_args(torch::dynamo::autograd::CompiledNodeArgs& args) { collect(args); }
  void collect(torch::dynamo::autograd::CompiledNodeArgs& args) const {
    args.collect(src, false);
    args.collect(tgt, false);
    args.collect(grid, false);
    args.collect(has_grid);
    args.collect(size);
    args.collect(target_size);
    args.collect(scale);
  }

  variable_list apply_with_saved(const variable_list& grads,
                                 torch::dynamo::autograd::SwapSavedVariables& saved_vars) override {
    saved_vars.before(src);
    saved_vars.before(tgt);
    saved_vars.before(grid);
    saved_vars.before(size);
    saved_vars.before(target_size);
    auto out = apply(variable_list(grads));
    saved_vars.after(src);
    saved_vars.after(tgt);
    saved_vars.after(grid);
    saved_vars.after(size);
    saved_vars.after(target_size);
    return out;
  }
};

at::Tensor correlation_autograd(at::TensorList src, at::TensorList tgt, const c10::optional<at::Tensor>& grid,
                                c10::SymIntArrayRef size, c10::SymIntArrayRef target_size, double scale) {
  const auto dual = [](const at::Tensor& t) { return t.defined() && torch::autograd::isFwGradDefined(t); };
  bool any_dual = grid.has_value() && dual(*grid);
  for (const auto& t : src) any_dual = any_dual || dual(t);
  for (const auto& t : tgt) any_dual = any_dual || dual(t);
  TORCH_CHECK_NOT_IMPLEMENTED(!any_dual, "pscfast::correlation: forward-mode AD (dual tensors) is not supported");
  if (!torch::autograd::compute_requires_grad(src, tgt, grid)) {  // no graph to record
    at::AutoDispatchBelowADInplaceOrView below;
    return correlation_op().call(src, tgt, grid, size, target_size, scale);
  }
  auto node = make_node<CorrelationBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(src, tgt, grid));
  node->src = saved(src);
  node->tgt = saved(tgt);
  node->has_grid = grid.has_value() && grid->defined();
  if (node->has_grid) node->grid = SavedVariable(*grid, false);
  node->size = size.vec();
  node->target_size = target_size.vec();
  node->scale = scale;
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView below;
    out = correlation_op().call(src, tgt, grid, size, target_size, scale);
  }
  torch::autograd::set_history(out, node);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, Autograd, m) { m.impl("correlation", &correlation_autograd); }

}  // namespace pscfast
