// What the ops' autograd kernels share (csrc/ops/<op>_autograd.cpp, registered for the Autograd dispatch key,
// every device: a torch::autograd::Function, or for the warp and the correlation, whose calls can be a few
// microseconds long, a graph node of its own). A C++ node costs a few microseconds per call where a Python autograd
// wrapper costs tens, which dominates a small op (RAFT's 9x9 lookups, SFNet's mask warps).
//
// First derivatives call the op's hand-written _<op>_backward kernel. A backward that autograd itself records
// (create_graph=True: gradient penalties, Hessian-vector products) instead calls _<op>_backward_reference, a
// CompositeImplicitAutograd op implemented in Python (pscfast/ops/_higher_order.py) that differentiates the
// plain PyTorch reference: its gradients carry a graph of their own, so every higher derivative is exact.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>

#include <array>
#include <cstddef>
#include <memory>
#include <type_traits>
#include <vector>

namespace pscfast {

// The typed handle of a pscfast operator, looked up once per call site.
template <typename Signature>
c10::TypedOperatorHandle<Signature> pscfast_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// A new graph node as the graph holds it: an intrusive pointer since torch 2.13, a shared pointer before.
template <typename N>
auto make_node() {
  if constexpr (std::is_base_of_v<c10::intrusive_ptr_target, N>) {
    return c10::make_intrusive<N>();
  } else {
    return std::shared_ptr<N>(new N(), [](N* node) { deleteNode(node); });  // torch::autograd's, found by ADL
  }
}

// _<op>_backward_reference returns one gradient per set output_mask entry; the autograd kernel returns one per
// differentiable input (undefined where not asked for).
template <size_t K>
torch::autograd::variable_list spread_masked(const std::vector<at::Tensor>& found, const std::array<bool, K>& mask) {
  torch::autograd::variable_list out(K);
  size_t next = 0;
  for (size_t k = 0; k < K; ++k)
    if (mask[k]) out[k] = found.at(next++);
  return out;
}

}  // namespace pscfast
