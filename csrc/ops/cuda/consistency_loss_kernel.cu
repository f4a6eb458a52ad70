// pscfast::consistency_loss on CUDA: float, double, half, bfloat16 (float accumulation for the half types).
// Forward, one launch: one thread per output pixel computes the cycle, the release's mask and the squared
// error; each block reduces its partial (sum, count) in a fixed tree; the last block sums the partials in
// block order (deterministic). Backward: one launch (ops/cuda/grid_composition.cuh).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
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
#include "ops/cuda/reduce.cuh"

namespace pscfast {
namespace {

using cuda_compose::BackwardArgs;
using cuda_compose::Dims;
using cuda_compose::dims_of;
using cuda_compose::kThreads;
using cuda_compose::launch_backward;

template <typename scalar_t>
__global__ void loss_forward_kernel(const scalar_t* __restrict__ fwd, const scalar_t* __restrict__ bwd,
                                    const scalar_t* __restrict__ xs, const scalar_t* __restrict__ ys,
                                    at::opmath_type<scalar_t>* psum, int64_t* pcnt, unsigned* ticket, scalar_t* loss,
                                    int64_t* count, Dims D, int64_t blocks_per_sample, bool nearest) {
  using T = at::opmath_type<scalar_t>;
  __shared__ T ssum[kThreads];
  __shared__ int64_t scnt[kThreads];
  const int64_t n = blockIdx.x / blocks_per_sample;
  const int64_t p = (blockIdx.x % blocks_per_sample) * kThreads + threadIdx.x;
  T sq = T(0);
  int64_t c = 0;
  if (p < D.P) {
    T dpx, dpy;
    const scalar_t* fab_n = fwd + n * D.h * D.w * 2;
    const auto t = compose_taps<T>(bwd + n * D.P * 2, p, D.h, D.w, nearest, &dpx, &dpy);
    const T id[2] = {static_cast<T>(xs[p % D.wo]), static_cast<T>(ys[p / D.wo])};
    for (int k = 0; k < 2; ++k) {
      const T v = field_value(t, fab_n, 2, k);
      if (consistency_term(v, id[k])) {
        sq += (v - id[k]) * (v - id[k]);
        ++c;
      }
    }
  }
  const T bs = block_sum(sq, ssum);
  const int64_t bc = block_sum(c, scnt);
  if (threadIdx.x == 0) {
    psum[blockIdx.x] = bs;
    pcnt[blockIdx.x] = bc;
  }
  __syncthreads();
  if (!last_block(ticket)) return;
  const T total = sum_partials(psum, gridDim.x, ssum);
  const int64_t total_count = sum_partials(pcnt, gridDim.x, scnt);
  if (threadIdx.x == 0) {
    *loss = static_cast<scalar_t>(total / static_cast<T>(total_count > 0 ? total_count : 1));
    *count = total_count;
  }
}

std::tuple<at::Tensor, at::Tensor> consistency_loss_cuda(const at::Tensor& fwd_, const at::Tensor& bwd_,
                                                         const at::Tensor& xs_, const at::Tensor& ys_,
                                                         c10::string_view mode) {
  check_grid_pair("consistency_loss", fwd_, bwd_);
  check_identity("consistency_loss", bwd_, xs_, ys_);
  const c10::cuda::CUDAGuard guard(fwd_.device());
  const bool nearest = parse_mode(std::string(mode)) == SampleMode::kNearest;
  const auto fwd = fwd_.contiguous(), bwd = bwd_.contiguous(), xs = xs_.contiguous(), ys = ys_.contiguous();
  const Dims D = dims_of(fwd, bwd);
  auto loss = at::zeros({}, fwd.options());
  auto count = at::zeros({}, fwd.options().dtype(at::kLong));
  const int64_t per_sample = blocks_for<kThreads>(D.P), blocks = D.N * per_sample;
  if (blocks == 0) return {loss, count};
  TORCH_CHECK(blocks < (int64_t(1) << 31), "pscfast::consistency_loss: too many pixels");
  auto ticket = at::zeros({1}, fwd.options().dtype(at::kInt));
  auto pcnt = at::empty({blocks}, fwd.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fwd.scalar_type(), "consistency_loss_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    auto psum = at::empty({blocks}, fwd.options().dtype(c10::CppTypeToScalarType<T>::value));
    loss_forward_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        fwd.const_data_ptr<scalar_t>(), bwd.const_data_ptr<scalar_t>(), xs.const_data_ptr<scalar_t>(),
        ys.const_data_ptr<scalar_t>(), psum.mutable_data_ptr<T>(), pcnt.mutable_data_ptr<int64_t>(),
        reinterpret_cast<unsigned*>(ticket.mutable_data_ptr<int32_t>()), loss.mutable_data_ptr<scalar_t>(),
        count.mutable_data_ptr<int64_t>(), D, per_sample, nearest);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, count};
}

// Only the gradients in output_mask are computed (and allocated).
std::tuple<at::Tensor, at::Tensor> consistency_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& fwd_,
                                                                  const at::Tensor& bwd_, const at::Tensor& xs_,
                                                                  const at::Tensor& ys_, c10::string_view mode,
                                                                  const at::Tensor& count,
                                                                  std::array<bool, 2> output_mask) {
  check_grid_pair("_consistency_loss_backward", fwd_, bwd_);
  check_identity("_consistency_loss_backward", bwd_, xs_, ys_);
  TORCH_CHECK(grad.numel() == 1 && count.numel() == 1 && count.scalar_type() == at::kLong,
              "pscfast::_consistency_loss_backward: grad must be a scalar and count an int64 scalar");
  const c10::cuda::CUDAGuard guard(fwd_.device());
  // every element of a wanted gradient is written (the scatter as a gather)
  auto dfwd = empty_if(output_mask[0], fwd_.sizes(), fwd_.options());
  auto dbwd = empty_if(output_mask[1], bwd_.sizes(), bwd_.options());
  if (!dfwd.defined() && !dbwd.defined()) return {dfwd, dbwd};
  const auto fwd = fwd_.contiguous(), bwd = bwd_.contiguous(), xs = xs_.contiguous(), ys = ys_.contiguous();
  const auto g = grad.to(fwd.scalar_type()).contiguous(), c = count.contiguous();
  const Dims D = dims_of(fwd, bwd);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fwd.scalar_type(), "consistency_loss_backward_cuda", [&] {
    launch_backward(BackwardArgs<scalar_t>{g.const_data_ptr<scalar_t>(), fwd.const_data_ptr<scalar_t>(),
                                           bwd.const_data_ptr<scalar_t>(), xs.const_data_ptr<scalar_t>(),
                                           ys.const_data_ptr<scalar_t>(), c.const_data_ptr<int64_t>(),
                                           data_or_null<scalar_t>(dfwd), data_or_null<scalar_t>(dbwd), D,
                                           parse_mode(std::string(mode)) == SampleMode::kNearest, true, 0});
  });
  return {dfwd, dbwd};
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CUDA, m) {
  m.impl("consistency_loss", &consistency_loss_cuda);
  m.impl("_consistency_loss_backward", &consistency_loss_backward_cuda);
}

}  // namespace pscfast
