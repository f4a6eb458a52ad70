// pscfast::compose on CUDA: float, double, half, bfloat16 (float accumulation for the half types). Forward:
// one thread per output pixel; backward: one launch (ops/cuda/grid_composition.cuh).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>

#include "ops/common/field_sample.h"
#include "ops/common/flow_checks.h"
#include "ops/common/output_mask.h"
#include "ops/cuda/grid_composition.cuh"
#include "ops/cuda/launch.cuh"

namespace pscfast {
namespace {

using cuda_compose::BackwardArgs;
using cuda_compose::Dims;
using cuda_compose::dims_of;
using cuda_compose::kThreads;
using cuda_compose::launch_backward;

template <typename scalar_t>
__global__ void compose_kernel(const scalar_t* __restrict__ fab, const scalar_t* __restrict__ fbc,
                               scalar_t* __restrict__ out, Dims D, bool nearest) {
  using T = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= D.N * D.P) return;
  const int64_t n = idx / D.P, p = idx % D.P;
  const scalar_t* fab_n = fab + n * D.h * D.w * 2;
  T dpx, dpy;
  const auto t = compose_taps<T>(fbc + n * D.P * 2, p, D.h, D.w, nearest, &dpx, &dpy);
  out[2 * idx] = static_cast<scalar_t>(field_value(t, fab_n, 2, 0));
  out[2 * idx + 1] = static_cast<scalar_t>(field_value(t, fab_n, 2, 1));
}

at::Tensor compose_cuda(const at::Tensor& f_ab_, const at::Tensor& f_bc_, c10::string_view mode) {
  check_grid_pair("compose", f_ab_, f_bc_);
  const c10::cuda::CUDAGuard guard(f_ab_.device());
  const bool nearest = parse_mode(std::string(mode)) == SampleMode::kNearest;
  const auto f_ab = f_ab_.contiguous(), f_bc = f_bc_.contiguous();
  auto out = at::empty_like(f_bc);
  const Dims D = dims_of(f_ab, f_bc);
  if (D.N * D.P == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f_ab.scalar_type(), "compose_cuda", [&] {
    compose_kernel<scalar_t><<<blocks_for<kThreads>(D.N * D.P), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        f_ab.const_data_ptr<scalar_t>(), f_bc.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), D, nearest);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// Only the gradients in output_mask are computed (and allocated).
std::tuple<at::Tensor, at::Tensor> compose_backward_cuda(const at::Tensor& grad_out, const at::Tensor& f_ab_,
                                                         const at::Tensor& f_bc_, c10::string_view mode,
                                                         std::array<bool, 2> output_mask) {
  check_grid_pair("_compose_backward", f_ab_, f_bc_);
  TORCH_CHECK(grad_out.sizes() == f_bc_.sizes(), "pscfast::_compose_backward: grad_out must have f_bc's shape");
  const c10::cuda::CUDAGuard guard(f_ab_.device());
  // every element of a wanted gradient is written (the scatter as a gather)
  auto dfab = empty_if(output_mask[0], f_ab_.sizes(), f_ab_.options());
  auto dfbc = empty_if(output_mask[1], f_bc_.sizes(), f_bc_.options());
  if (!dfab.defined() && !dfbc.defined()) return {dfab, dfbc};
  const auto f_ab = f_ab_.contiguous(), f_bc = f_bc_.contiguous(), gout = grad_out.contiguous();
  const Dims D = dims_of(f_ab, f_bc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f_ab.scalar_type(), "compose_backward_cuda", [&] {
    launch_backward(BackwardArgs<scalar_t>{gout.const_data_ptr<scalar_t>(), f_ab.const_data_ptr<scalar_t>(),
                                           f_bc.const_data_ptr<scalar_t>(), nullptr, nullptr, nullptr,
                                           data_or_null<scalar_t>(dfab), data_or_null<scalar_t>(dfbc), D,
                                           parse_mode(std::string(mode)) == SampleMode::kNearest, false, 0});
  });
  return {dfab, dfbc};
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CUDA, m) {
  m.impl("compose", &compose_cuda);
  m.impl("_compose_backward", &compose_backward_cuda);
}

}  // namespace pscfast
