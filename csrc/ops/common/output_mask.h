// ATen's convention for backward ops (convolution_backward, grid_sampler_2d_backward): the schema ends in
// `bool[K] output_mask`, one entry per differentiable input in input order, and the gradient of an input whose
// entry is false is neither allocated nor computed: it comes back as an undefined tensor (None in Python, an
// empty list for a Tensor[] input). Used by the CPU and CUDA kernels of every backward op.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

namespace pscfast {

// An uninitialised gradient for a kernel that writes every element, or an undefined tensor when not wanted.
inline at::Tensor empty_if(bool wanted, at::IntArrayRef sizes, const at::TensorOptions& options) {
  return wanted ? at::empty(sizes, options) : at::Tensor();
}

// A zero-filled gradient for a kernel that accumulates into it, or an undefined tensor when not wanted.
inline at::Tensor zeros_if(bool wanted, at::IntArrayRef sizes, const at::TensorOptions& options) {
  return wanted ? at::zeros(sizes, options) : at::Tensor();
}

// A gradient's data from element `offset` on, or nullptr for one not wanted (the kernels skip the work for null
// outputs).
template <typename T>
T* data_or_null(const at::Tensor& grad, int64_t offset = 0) {
  return grad.defined() ? grad.mutable_data_ptr<T>() + offset : nullptr;
}

}  // namespace pscfast
