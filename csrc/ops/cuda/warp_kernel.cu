// pscfast::warp on CUDA: float, double, half and bfloat16 (accumulation in float for the half types).
// The backward (deterministic, without atomics) is in warp_backward_kernel.cu.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ops/common/warp_checks.h"
#include "ops/common/warp_pixel.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/warp_common.cuh"

namespace pscfast {
namespace {

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ grid,
                               scalar_t* __restrict__ out, Geometry G, SampleMode mode, Padding pad, bool align) {
  using T = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= G.N * G.Ho * G.Wo) return;
  const auto [n, oy, ox] = out_pixel(idx, G);
  const auto p = warp_pixel(grid + n * G.h * G.w * 2, G.w, G.direct, oy, ox, resize_index<T>(oy, G.h, G.Ho),
                            resize_index<T>(ox, G.w, G.Wo), G.H, G.W, mode, pad, align);
  const int64_t plane = static_cast<int64_t>(G.H) * G.W, oplane = static_cast<int64_t>(G.Ho) * G.Wo;
  const scalar_t* xn = x + n * G.C * plane;
  scalar_t* on = out + n * G.C * oplane + static_cast<int64_t>(oy) * G.Wo + ox;
  for (int64_t c = 0; c < G.C; ++c) on[c * oplane] = static_cast<scalar_t>(warp_sample(p, xn + c * plane, G.W, mode));
}

at::Tensor warp_cuda(const at::Tensor& x_, const at::Tensor& grid_, c10::IntArrayRef out_size, c10::string_view mode,
                     c10::string_view padding_mode, bool align_corners) {
  check_warp_inputs(x_, grid_, out_size);
  const c10::cuda::CUDAGuard guard(x_.device());
  const auto x = x_.contiguous();
  const auto grid = grid_.contiguous();
  const Geometry G = geometry(x.sizes(), grid, out_size[0], out_size[1]);
  auto out = at::empty({G.N, G.C, G.Ho, G.Wo}, x.options());
  const int64_t total = G.N * G.Ho * G.Wo;
  if (total == 0 || G.C == 0) return out;
  const auto m = parse_mode(std::string(mode));
  const auto p = parse_padding(std::string(padding_mode));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "warp_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for<kThreads>(total), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), grid.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), G, m, p,
        align_corners);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pscfast, CUDA, m) {
  m.impl("warp", &warp_cuda);
  m.impl("_warp_backward", &warp_backward_cuda);
}

}  // namespace pscfast
