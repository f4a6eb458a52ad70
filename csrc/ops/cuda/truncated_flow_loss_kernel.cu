// pscfast::truncated_flow_loss on CUDA: float, double, half, bfloat16 (float accumulation for the half
// types). Forward, one launch: per-block partial sums in a fixed tree, the last block sums them in block order
// (deterministic); backward pointwise.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ops/common/truncated_flow_loss_checks.h"
#include "ops/common/truncated_flow_loss_math.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/reduce.cuh"

namespace pscfast {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void truncated_loss_kernel(const scalar_t* __restrict__ pred, const scalar_t* __restrict__ target,
                                      const scalar_t* __restrict__ mask, at::opmath_type<scalar_t>* psum,
                                      unsigned* ticket, scalar_t* loss, int64_t N, int64_t P, double cap) {
  using T = at::opmath_type<scalar_t>;
  __shared__ T ssum[kThreads];
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  T e = T(0);
  if (k < N * P) {
    T dx, dy;
    const int64_t n = k / P;
    e = squared_error(pred + n * 2 * P, target + n * 2 * P, P, k - n * P, &dx, &dy);
    e = e > static_cast<T>(cap) ? static_cast<T>(cap) : e;
    if (mask) e *= static_cast<T>(mask[k]);
  }
  const T bs = block_sum(e, ssum);
  if (threadIdx.x == 0) psum[blockIdx.x] = bs;
  __syncthreads();
  if (!last_block(ticket)) return;
  const T total = sum_partials(psum, gridDim.x, ssum);
  if (threadIdx.x == 0) *loss = static_cast<scalar_t>(total);
}

// Gradients not asked for (null outputs) are neither computed nor written.
template <typename scalar_t>
__global__ void truncated_loss_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ pred,
                                               const scalar_t* __restrict__ target, const scalar_t* __restrict__ mask,
                                               scalar_t* dpred, scalar_t* dtarget, scalar_t* dmask, int64_t N,
                                               int64_t P, double cap) {
  using T = at::opmath_type<scalar_t>;
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (k >= N * P) return;
  const int64_t n = k / P, p = k - n * P, i0 = n * 2 * P + p;
  const T g = static_cast<T>(*grad), c = static_cast<T>(cap);
  T dx, dy;
  const T e = squared_error(pred + n * 2 * P, target + n * 2 * P, P, p, &dx, &dy);
  if (dmask) dmask[k] = static_cast<scalar_t>(g * (e > c ? c : e));
  if (!dpred && !dtarget) return;
  const T scale = e <= c ? g * (mask ? static_cast<T>(mask[k]) : T(1)) * T(2) : T(0);  // 0 where truncated
  if (dpred) {
    dpred[i0] = static_cast<scalar_t>(scale * dx);
    dpred[i0 + P] = static_cast<scalar_t>(scale * dy);
  }
  if (dtarget) {
    dtarget[i0] = static_cast<scalar_t>(-scale * dx);
    dtarget[i0 + P] = static_cast<scalar_t>(-scale * dy);
  }
}

at::Tensor truncated_flow_loss_cuda(const at::Tensor& pred_, const at::Tensor& target_,
                                    const c10::optional<at::Tensor>& mask_, double trunc) {
  check_loss("truncated_flow_loss", pred_, target_, mask_);
  const c10::cuda::CUDAGuard guard(pred_.device());
  const auto pred = pred_.contiguous(), target = target_.contiguous();
  const at::Tensor mask = mask_.has_value() ? mask_->contiguous() : at::Tensor();
  const int64_t N = pred.size(0), P = pred.size(2) * pred.size(3), blocks = blocks_for<kThreads>(N * P);
  auto loss = at::zeros({}, pred.options());
  if (blocks == 0) return loss;
  auto ticket = at::zeros({1}, pred.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "truncated_flow_loss_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    auto psum = at::empty({blocks}, pred.options().dtype(c10::CppTypeToScalarType<T>::value));
    truncated_loss_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        pred.const_data_ptr<scalar_t>(), target.const_data_ptr<scalar_t>(),
        mask.defined() ? mask.const_data_ptr<scalar_t>() : nullptr, psum.mutable_data_ptr<T>(),
        reinterpret_cast<unsigned*>(ticket.mutable_data_ptr<int32_t>()), loss.mutable_data_ptr<scalar_t>(), N, P,
        trunc * trunc);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return loss;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> truncated_flow_loss_backward_cuda(
    const at::Tensor& grad, const at::Tensor& pred_, const at::Tensor& target_, const c10::optional<at::Tensor>& mask_,
    double trunc, std::array<bool, 3> output_mask) {
  check_loss("_truncated_flow_loss_backward", pred_, target_, mask_);
  TORCH_CHECK(grad.numel() == 1, "pscfast::_truncated_flow_loss_backward: grad must be a scalar");
  const c10::cuda::CUDAGuard guard(pred_.device());
  const int64_t N = pred_.size(0), P = pred_.size(2) * pred_.size(3);
  at::Tensor d_pred, d_target, d_mask;
  std::tie(d_pred, d_target, d_mask) = loss_grad_buffers(pred_, mask_, output_mask);
  if (N * P == 0 || !(d_pred.defined() || d_target.defined() || d_mask.defined())) return {d_pred, d_target, d_mask};
  const auto pred = pred_.contiguous(), target = target_.contiguous();
  const at::Tensor mask = mask_.has_value() ? mask_->contiguous() : at::Tensor();
  const auto g = grad.to(pred.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, pred.scalar_type(), "truncated_flow_loss_backward_cuda", [&] {
        truncated_loss_backward_kernel<scalar_t>
            <<<blocks_for<kThreads>(N * P), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
                g.const_data_ptr<scalar_t>(), pred.const_data_ptr<scalar_t>(), target.const_data_ptr<scalar_t>(),
                mask.defined() ? mask.const_data_ptr<scalar_t>() : nullptr, data_or_null<scalar_t>(d_pred),
                data_or_null<scalar_t>(d_target), data_or_null<scalar_t>(d_mask), N, P, trunc * trunc);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {d_pred, d_target, d_mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CUDA, m) {
  m.impl("truncated_flow_loss", &truncated_flow_loss_cuda);
  m.impl("_truncated_flow_loss_backward", &truncated_flow_loss_backward_cuda);
}

}  // namespace pscfast
