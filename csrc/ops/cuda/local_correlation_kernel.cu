// pscfast::local_correlation on CUDA: float, double, half and bfloat16 (accumulation in float for the half
// types, so large channel counts neither overflow nor lose the sum). Conventions:
// ops/common/local_correlation_geometry.h.
// Forward: one thread per output element. Backward in gather form: one thread per element of grad_a or
// grad_b sums gout * partner over displacements and window taps in a fixed order: no atomics, deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "ops/common/local_correlation_geometry.h"
#include "ops/common/output_mask.h"
#include "ops/cuda/launch.cuh"

namespace pscfast {
namespace {

constexpr int kThreads = 256;

__device__ inline bool inside(int y, int x, int H, int W) { return y >= 0 && y < H && x >= 0 && x < W; }

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                               scalar_t* __restrict__ out, CorrGeometry G) {
  using T = at::opmath_type<scalar_t>;
  const int P2 = G.P2;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= G.N * P2 * G.Ho * G.Wo) return;
  const int j = static_cast<int>(idx % G.Wo);
  const int i = static_cast<int>((idx / G.Wo) % G.Ho);
  const int p = static_cast<int>((idx / (static_cast<int64_t>(G.Wo) * G.Ho)) % P2);
  const int64_t n = idx / (static_cast<int64_t>(G.Wo) * G.Ho * P2);
  const int oy = G.oy(p), ox = G.ox(p);
  const int64_t plane = static_cast<int64_t>(G.H) * G.W;
  const scalar_t* an = a + n * G.C * plane;
  const scalar_t* bn = b + n * G.C * plane;
  T acc = T(0);
  for (int ki = 0; ki < G.kh; ++ki) {
    const int ya = i * G.sh - G.padh + ki * G.dilh;
    for (int kj = 0; kj < G.kw; ++kj) {
      const int xa = j * G.sw - G.padw + kj * G.dilw;
      if (!inside(ya, xa, G.H, G.W) || !inside(ya + oy, xa + ox, G.H, G.W)) continue;
      const int64_t oa = static_cast<int64_t>(ya) * G.W + xa, ob = static_cast<int64_t>(ya + oy) * G.W + xa + ox;
      for (int64_t c = 0; c < G.C; ++c) acc += static_cast<T>(an[c * plane + oa]) * static_cast<T>(bn[c * plane + ob]);
    }
  }
  out[idx] = static_cast<scalar_t>(acc);
}

// grad of a (sign = +1, other = b, partner at (y + oy, x + ox), window position (y, x)) or of b
// (sign = -1, other = a, partner at (y - oy, x - ox), which is also the window position).
template <typename scalar_t>
__global__ void backward_kernel(const scalar_t* __restrict__ gout, const scalar_t* __restrict__ other,
                                scalar_t* __restrict__ grad, CorrGeometry G, int sign) {
  using T = at::opmath_type<scalar_t>;
  const int P2 = G.P2;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= G.N * G.C * G.H * G.W) return;
  const int x = static_cast<int>(idx % G.W);
  const int y = static_cast<int>((idx / G.W) % G.H);
  const int64_t nc = idx / (static_cast<int64_t>(G.W) * G.H);
  const int64_t n = nc / G.C;
  const int64_t plane = static_cast<int64_t>(G.H) * G.W, oplane = static_cast<int64_t>(G.Ho) * G.Wo;
  const scalar_t* on = other + nc * plane;
  const scalar_t* gn = gout + n * P2 * oplane;
  T acc = T(0);
  for (int p = 0; p < P2; ++p) {
    const int py = y + sign * G.oy(p), px = x + sign * G.ox(p);
    if (!inside(py, px, G.H, G.W)) continue;
    const int wy = sign > 0 ? y : py, wx = sign > 0 ? x : px;
    T g = T(0);
    for (int ki = 0; ki < G.kh; ++ki) {
      const int i = window_index(wy, ki, G.padh, G.dilh, G.sh, G.Ho);
      if (i < 0) continue;
      for (int kj = 0; kj < G.kw; ++kj) {
        const int j = window_index(wx, kj, G.padw, G.dilw, G.sw, G.Wo);
        if (j >= 0) g += static_cast<T>(gn[p * oplane + static_cast<int64_t>(i) * G.Wo + j]);
      }
    }
    acc += g * static_cast<T>(on[static_cast<int64_t>(py) * G.W + px]);
  }
  grad[idx] = static_cast<scalar_t>(acc);
}

at::Tensor local_correlation_cuda(const at::Tensor& a_, const at::Tensor& b_, at::IntArrayRef kernel_size,
                                  at::IntArrayRef patch_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation, at::IntArrayRef dilation_patch) {
  const auto G = corr_geometry(a_, b_, kernel_size, patch_size, stride, padding, dilation, dilation_patch);
  const c10::cuda::CUDAGuard guard(a_.device());
  const auto a = a_.contiguous(), b = b_.contiguous();
  auto out = at::empty({G.N, G.P2, G.Ho, G.Wo}, a.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "local_correlation_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for<kThreads>(total), kThreads, 0, stream>>>(
        a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), G);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// Only the gradients in output_mask are computed (and allocated).
std::tuple<at::Tensor, at::Tensor> local_correlation_backward_cuda(const at::Tensor& grad_out, const at::Tensor& a_,
                                                                   const at::Tensor& b_, at::IntArrayRef kernel_size,
                                                                   at::IntArrayRef patch_size, at::IntArrayRef stride,
                                                                   at::IntArrayRef padding, at::IntArrayRef dilation,
                                                                   at::IntArrayRef dilation_patch,
                                                                   std::array<bool, 2> output_mask) {
  const auto G = corr_geometry(a_, b_, kernel_size, patch_size, stride, padding, dilation, dilation_patch);
  check_corr_grad(grad_out, a_, G);
  const c10::cuda::CUDAGuard guard(a_.device());
  const auto gout = grad_out.contiguous();
  auto grad_a = empty_if(output_mask[0], a_.sizes(), a_.options());
  auto grad_b = empty_if(output_mask[1], b_.sizes(), b_.options());
  const int64_t total = a_.numel();
  if (total == 0) return {grad_a, grad_b};
  auto stream = at::cuda::getCurrentCUDAStream();
  // sign +1: the gradient of a, partner b; -1: the gradient of b, partner a
  const auto gradient = [&](const at::Tensor& partner_, const at::Tensor& grad, int sign) {
    const auto partner = partner_.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a_.scalar_type(), "local_correlation_backward_cuda", [&] {
      backward_kernel<scalar_t><<<blocks_for<kThreads>(total), kThreads, 0, stream>>>(
          gout.const_data_ptr<scalar_t>(), partner.const_data_ptr<scalar_t>(), grad.mutable_data_ptr<scalar_t>(), G,
          sign);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  };
  if (grad_a.defined()) gradient(b_, grad_a, 1);
  if (grad_b.defined()) gradient(a_, grad_b, -1);
  return {grad_a, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CUDA, m) {
  m.impl("local_correlation", &local_correlation_cuda);
  m.impl("_local_correlation_backward", &local_correlation_backward_cuda);
}

}  // namespace pscfast
